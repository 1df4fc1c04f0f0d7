//! Which block device a path is, and every reason not to write to it:
//! read from sysfs, mountinfo and /proc/swaps (fake trees in tests).

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::bytes::human_bytes;
use crate::files;

use super::SECTOR;

/// Where the kernel describes block devices, mounts and swap areas: the
/// real ones by default; tests point them at fake trees.
#[derive(Debug, Clone)]
pub(crate) struct Sysfs {
    /// `/sys`.
    pub(crate) root: PathBuf,
    /// `/proc/self/mountinfo`.
    pub(crate) mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub(crate) swaps: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Sysfs {
        Sysfs {
            root: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            swaps: PathBuf::from("/proc/swaps"),
        }
    }
}

/// A device number, `major:minor`, as sysfs and mountinfo write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DevNum {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl DevNum {
    pub(crate) fn from_dev_t(dev: u64) -> DevNum {
        DevNum {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    pub(crate) fn parse(text: &str) -> Option<DevNum> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Something whose disk must never be written: `/`, the build directory,
/// the image. `dev` is the device its file system is on.
#[derive(Debug, Clone)]
pub(crate) struct Protected {
    pub(crate) what: String,
    pub(crate) dev: DevNum,
}

impl Protected {
    /// The device `path` (or, if it does not exist yet, its nearest existing
    /// parent) is on; `None` when not even `/` can be read.
    pub(crate) fn of(what: &str, path: &Path) -> Option<Protected> {
        let abs = files::absolute(path).ok()?;
        let meta = abs.ancestors().find_map(|p| fs::metadata(p).ok())?;
        Some(Protected {
            what: what.to_owned(),
            dev: DevNum::from_dev_t(meta.dev()),
        })
    }
}

/// A partition of the disk about to be overwritten, for the warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    pub(crate) name: String,
    pub(crate) dev: DevNum,
    pub(crate) bytes: u64,
}

/// A whole disk that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct BlockDevice {
    /// The device node, symlinks resolved (`/dev/sdb`).
    pub(crate) node: PathBuf,
    /// The kernel's name (`sdb`).
    pub(crate) name: String,
    pub(crate) dev: DevNum,
    pub(crate) bytes: u64,
    pub(crate) vendor: String,
    pub(crate) model: String,
    pub(crate) usb: bool,
    pub(crate) partitions: Vec<Partition>,
}

/// Why a device must not be written: every reason, each naming the device
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[error("refusing to write to {device}:{}", bullets(.reasons))]
pub(crate) struct Refusal {
    pub(crate) device: String,
    pub(crate) reasons: Vec<String>,
}

fn bullets(reasons: &[String]) -> String {
    reasons.iter().map(|r| format!("\n  - {r}")).collect()
}

impl Sysfs {
    /// The device's directory under `/sys/devices`, through `/sys/dev/block/MAJ:MIN`.
    fn device_dir(&self, dev: DevNum) -> Option<PathBuf> {
        fs::canonicalize(self.root.join("dev/block").join(dev.to_string())).ok()
    }

    /// Checks that `dev` (the node `node`) is a whole removable disk, not in
    /// use, not holding anything in `protected`, and at least `image_len`
    /// bytes. Every failed check is one reason in the refusal.
    pub(crate) fn check_disk(
        &self,
        node: &Path,
        dev: DevNum,
        image_len: u64,
        protected: &[Protected],
    ) -> Result<BlockDevice, Refusal> {
        let shown = node.display().to_string();
        let refuse = |reasons: Vec<String>| Refusal {
            device: shown.clone(),
            reasons,
        };
        let Some(sys) = self.device_dir(dev) else {
            return Err(refuse(vec![format!(
                "{shown}: the kernel lists no block device {dev} (no {}): is the stick still plugged in? `lsblk` lists the disks",
                self.root.join("dev/block").join(dev.to_string()).display()
            )]));
        };
        let name = file_name(&sys);
        let mut reasons = Vec::new();

        let is_partition = sys.join("partition").exists();
        let disk_dir = match sys.parent() {
            Some(parent) if is_partition => parent.to_owned(),
            _ => sys.clone(),
        };
        let disk_name = file_name(&disk_dir);
        if is_partition {
            reasons.push(format!(
                "{shown} is a partition ({name}), not a whole disk: the image needs the whole disk, /dev/{disk_name}"
            ));
        }

        let removable = read_attr(&disk_dir.join("removable")).as_deref() == Some("1");
        let usb = self.is_usb(&disk_dir);
        if !removable && !usb {
            reasons.push(format!(
                "{shown} is not removable (its removable flag is not 1 and it is not on USB): krgiso only writes to USB sticks and removable disks; find the stick with `lsblk -o NAME,SIZE,RM,TRAN,MODEL`"
            ));
        }
        if read_attr(&sys.join("ro")).as_deref() == Some("1") {
            reasons.push(format!(
                "{shown} is read-only (a write-protect switch on the stick?): make it writable"
            ));
        }

        // What could be in use: the device itself and, for a disk, its partitions.
        let partitions = if is_partition {
            Vec::new()
        } else {
            partitions_of(&sys)
        };
        let mut members = vec![(name.clone(), dev, sys.clone())];
        members.extend(
            partitions
                .iter()
                .map(|p| (p.name.clone(), p.dev, sys.join(&p.name))),
        );
        reasons.extend(self.uses(&shown, &members));

        let holds = |what: &str| match is_partition {
            true => format!("is on the disk that holds {what} (/dev/{disk_name})"),
            false => format!("is the disk that holds {what}"),
        };
        for p in protected {
            if self.disks_of(p.dev).contains(&disk_name) {
                reasons.push(format!(
                    "{shown} {}: that is this machine's disk, not a USB stick; pick the stick's device (`lsblk`)",
                    holds(&p.what)
                ));
            }
        }

        let bytes = sectors_attr(&sys.join("size")) * SECTOR;
        if bytes < image_len {
            reasons.push(format!(
                "{shown} is too small: {}, the image needs {}: use a bigger stick",
                human_bytes(bytes),
                human_bytes(image_len)
            ));
        }

        if !reasons.is_empty() {
            return Err(refuse(reasons));
        }
        Ok(BlockDevice {
            node: node.to_owned(),
            name,
            dev,
            bytes,
            vendor: read_attr(&disk_dir.join("device/vendor")).unwrap_or_default(),
            model: read_attr(&disk_dir.join("device/model")).unwrap_or_default(),
            usb,
            partitions,
        })
    }

    /// On USB: a `usbN` component in its path under `/sys/devices`.
    fn is_usb(&self, dir: &Path) -> bool {
        let root = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let rel = dir.strip_prefix(&root).unwrap_or(dir);
        rel.components().any(|c| {
            c.as_os_str()
                .to_str()
                .and_then(|s| s.strip_prefix("usb"))
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
    }

    /// Why any of `members` (name, number, sysfs dir) is in use: mounted,
    /// swapped on, or held by a device-mapper or md device.
    fn uses(&self, shown: &str, members: &[(String, DevNum, PathBuf)]) -> Vec<String> {
        let mut reasons = Vec::new();
        let mounts = self.mounts();
        for (name, dev, _) in members {
            for at in mounts.iter().filter(|(d, _)| d == dev).map(|(_, at)| at) {
                reasons.push(format!(
                    "{shown} is in use: /dev/{name} is mounted on {at}: unmount it first (`umount {at}`)"
                ));
            }
        }
        for swap in self.swaps() {
            let base = fs::canonicalize(&swap)
                .unwrap_or_else(|_| PathBuf::from(&swap))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some((name, _, _)) = members.iter().find(|(n, _, _)| *n == base) {
                reasons.push(format!(
                    "{shown} is in use: /dev/{name} is an active swap area: `swapoff {swap}` first"
                ));
            }
        }
        for (name, _, dir) in members {
            for holder in dir_names(&dir.join("holders")) {
                let label = read_attr(&dir.join("holders").join(&holder).join("dm/name"))
                    .map(|n| format!("{holder} ({n})"))
                    .unwrap_or_else(|| holder.clone());
                let mounted: Vec<&str> = DevNum::parse(
                    &read_attr(&dir.join("holders").join(&holder).join("dev")).unwrap_or_default(),
                )
                .map(|hd| {
                    mounts
                        .iter()
                        .filter(|(d, _)| *d == hd)
                        .map(|(_, at)| at.as_str())
                        .collect()
                })
                .unwrap_or_default();
                let on = if mounted.is_empty() {
                    String::new()
                } else {
                    format!(", mounted on {}", mounted.join(", "))
                };
                reasons.push(format!(
                    "{shown} is in use: /dev/{name} is held by {label}{on} (device mapper, LVM, LUKS or RAID): release it first (`umount`, then `dmsetup remove`, `cryptsetup close`, `vgchange -an` or `mdadm --stop`)"
                ));
            }
        }
        reasons
    }

    /// Mounted file systems: (device, mount point), from mountinfo's third
    /// and fifth fields.
    fn mounts(&self) -> Vec<(DevNum, String)> {
        let text = fs::read_to_string(&self.mountinfo).unwrap_or_default();
        files::mountinfo_entries(&text)
            .filter_map(|(dev, at)| Some((DevNum::parse(dev)?, at.to_string_lossy().into_owned())))
            .collect()
    }

    /// Active swap areas: the file names in /proc/swaps.
    fn swaps(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.swaps).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(files::unescape_mountinfo)
            .collect()
    }

    /// The whole disks a file system on `dev` lives on: a partition's disk,
    /// and through a device-mapper or md device's `slaves/` the disks under it.
    pub(crate) fn disks_of(&self, dev: DevNum) -> Vec<String> {
        let mut disks = Vec::new();
        if let Some(dir) = self.device_dir(dev) {
            disks_under(&dir, 0, &mut disks);
        }
        disks
    }
}

fn disks_under(dir: &Path, depth: usize, disks: &mut Vec<String>) {
    let slaves = dir_names(&dir.join("slaves"));
    if !slaves.is_empty() && depth < 16 {
        for slave in slaves {
            if let Ok(d) = fs::canonicalize(dir.join("slaves").join(slave)) {
                disks_under(&d, depth + 1, disks);
            }
        }
        return;
    }
    let disk = match dir.parent() {
        Some(parent) if dir.join("partition").exists() => file_name(parent),
        _ => file_name(dir),
    };
    if !disks.contains(&disk) {
        disks.push(disk);
    }
}

/// A disk's partitions: its subdirectories named after it with a `partition` file.
fn partitions_of(disk: &Path) -> Vec<Partition> {
    let disk_name = file_name(disk);
    let mut parts: Vec<Partition> = dir_names(disk)
        .into_iter()
        .filter(|n| n.starts_with(&disk_name) && disk.join(n).join("partition").exists())
        .filter_map(|n| {
            let dir = disk.join(&n);
            Some(Partition {
                dev: DevNum::parse(&read_attr(&dir.join("dev"))?)?,
                bytes: sectors_attr(&dir.join("size")) * SECTOR,
                name: n,
            })
        })
        .collect();
    parts.sort_by_key(|p| p.dev);
    parts
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_attr(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn sectors_attr(p: &Path) -> u64 {
    read_attr(p).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::usb::{describe, UsbTarget, MIB};
    use std::os::unix::fs::symlink;

    const GIB: u64 = 1 << 30;
    const USB_HOST: &str =
        "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
    const SATA_HOST: &str = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";

    /// A fake /sys (and mountinfo, swaps) in a temporary directory.
    pub(in crate::usb) struct FakeSysfs {
        _dir: tempfile::TempDir,
        pub(in crate::usb) sysfs: Sysfs,
    }

    impl FakeSysfs {
        pub(in crate::usb) fn new() -> FakeSysfs {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("sys");
            fs::create_dir_all(root.join("dev/block")).unwrap();
            fs::create_dir_all(root.join("block")).unwrap();
            let mountinfo = dir.path().join("mountinfo");
            fs::write(
                &mountinfo,
                "22 27 0:21 / /proc rw,relatime - proc proc rw\n",
            )
            .unwrap();
            let swaps = dir.path().join("swaps");
            fs::write(&swaps, "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n").unwrap();
            FakeSysfs {
                _dir: dir,
                sysfs: Sysfs {
                    root,
                    mountinfo,
                    swaps,
                },
            }
        }

        fn link_dev(&self, dir: &Path, dev: &str) {
            symlink(dir, self.sysfs.root.join("dev/block").join(dev)).unwrap();
        }

        fn disk(&self, host: &str, name: &str, dev: &str, removable: bool, bytes: u64) -> PathBuf {
            let dir = self.sysfs.root.join(host).join("block").join(name);
            for sub in ["holders", "slaves", "device"] {
                fs::create_dir_all(dir.join(sub)).unwrap();
            }
            fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(dir.join("ro"), "0\n").unwrap();
            fs::write(dir.join("size"), format!("{}\n", bytes / 512)).unwrap();
            fs::write(dir.join("device/vendor"), "SanDisk \n").unwrap();
            fs::write(dir.join("device/model"), "Cruzer Blade    \n").unwrap();
            self.link_dev(&dir, dev);
            symlink(&dir, self.sysfs.root.join("block").join(name)).unwrap();
            dir
        }

        fn partition(&self, disk: &Path, name: &str, dev: &str, bytes: u64) -> PathBuf {
            let dir = disk.join(name);
            fs::create_dir_all(dir.join("holders")).unwrap();
            fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(dir.join("partition"), "1\n").unwrap();
            fs::write(dir.join("size"), format!("{}\n", bytes / 512)).unwrap();
            self.link_dev(&dir, dev);
            dir
        }

        /// A device-mapper device over `slaves` (which list it as a holder).
        fn dm(&self, name: &str, dev: &str, dm_name: &str, slaves: &[&Path]) -> PathBuf {
            let dir = self.sysfs.root.join("devices/virtual/block").join(name);
            fs::create_dir_all(dir.join("slaves")).unwrap();
            fs::create_dir_all(dir.join("holders")).unwrap();
            fs::create_dir_all(dir.join("dm")).unwrap();
            fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(dir.join("dm/name"), format!("{dm_name}\n")).unwrap();
            for slave in slaves {
                symlink(slave, dir.join("slaves").join(file_name(slave))).unwrap();
                symlink(&dir, slave.join("holders").join(name)).unwrap();
            }
            self.link_dev(&dir, dev);
            dir
        }

        fn mount(&self, dev: &str, at: &str) {
            let mut text = fs::read_to_string(&self.sysfs.mountinfo).unwrap();
            text.push_str(&format!(
                "40 27 {dev} / {at} rw,nosuid,relatime shared:200 - vfat /dev/x rw\n"
            ));
            fs::write(&self.sysfs.mountinfo, text).unwrap();
        }

        fn swap(&self, file: &str) {
            let mut text = fs::read_to_string(&self.sysfs.swaps).unwrap();
            text.push_str(&format!(
                "{file}                               partition\t1048572\t\t0\t\t-2\n"
            ));
            fs::write(&self.sysfs.swaps, text).unwrap();
        }

        fn check(&self, node: &str, dev: &str, image_len: u64) -> Result<BlockDevice, Refusal> {
            self.check_protecting(node, dev, image_len, &[])
        }

        fn check_protecting(
            &self,
            node: &str,
            dev: &str,
            image_len: u64,
            protected: &[Protected],
        ) -> Result<BlockDevice, Refusal> {
            self.sysfs.check_disk(
                Path::new(node),
                DevNum::parse(dev).unwrap(),
                image_len,
                protected,
            )
        }
    }

    fn assert_only_reason(r: &Refusal, needles: &[&str]) {
        assert_eq!(r.reasons.len(), 1, "{r}");
        for n in needles {
            assert!(r.reasons[0].contains(n), "no `{n}` in: {r}");
        }
    }

    #[test]
    fn a_removable_whole_disk_is_accepted_and_described() {
        let fake = FakeSysfs::new();
        let sdb = fake.disk(USB_HOST, "sdb", "8:16", true, 16 * GIB);
        fake.partition(&sdb, "sdb1", "8:17", 16 * GIB - MIB);
        let disk = fake.check("/dev/sdb", "8:16", GIB).unwrap();
        assert_eq!(disk.name, "sdb");
        assert_eq!(disk.bytes, 16 * GIB);
        assert_eq!(
            (disk.vendor.as_str(), disk.model.as_str()),
            ("SanDisk", "Cruzer Blade")
        );
        assert_eq!(disk.partitions.len(), 1);
        assert_eq!(
            disk.partitions[0].dev,
            DevNum {
                major: 8,
                minor: 17
            }
        );
        let text = describe(
            &UsbTarget::Disk(disk),
            &[("sdb1".to_owned(), "vfat \"STICK\"".to_owned())],
        );
        assert!(
            text.contains("/dev/sdb (sdb): SanDisk Cruzer Blade, 16.0 GiB, USB"),
            "{text}"
        );
        assert!(
            text.contains("/dev/sdb1") && text.contains("vfat \"STICK\""),
            "{text}"
        );
        assert!(
            text.contains("everything on /dev/sdb will be destroyed"),
            "{text}"
        );
    }

    #[test]
    fn a_partition_is_refused_naming_its_disk() {
        let fake = FakeSysfs::new();
        let sdb = fake.disk(USB_HOST, "sdb", "8:16", true, 16 * GIB);
        fake.partition(&sdb, "sdb1", "8:17", 8 * GIB);
        let r = fake.check("/dev/sdb1", "8:17", GIB).unwrap_err();
        assert_only_reason(&r, &["/dev/sdb1 is a partition", "whole disk, /dev/sdb"]);
    }

    #[test]
    fn a_fixed_sata_disk_is_refused() {
        let fake = FakeSysfs::new();
        fake.disk(SATA_HOST, "sda", "8:0", false, 500 * GIB);
        let r = fake.check("/dev/sda", "8:0", GIB).unwrap_err();
        assert_only_reason(&r, &["/dev/sda is not removable", "lsblk"]);
    }

    #[test]
    fn a_usb_disk_without_the_removable_flag_is_accepted() {
        let fake = FakeSysfs::new();
        fake.disk(USB_HOST, "sdc", "8:32", false, 32 * GIB);
        let disk = fake.check("/dev/sdc", "8:32", GIB).unwrap();
        assert!(disk.usb);
    }

    #[test]
    fn a_mounted_partition_is_refused_naming_the_mount_point() {
        let fake = FakeSysfs::new();
        let sdb = fake.disk(USB_HOST, "sdb", "8:16", true, 16 * GIB);
        fake.partition(&sdb, "sdb1", "8:17", 8 * GIB);
        fake.mount("8:17", r"/media/me/MY\040STICK");
        let r = fake.check("/dev/sdb", "8:16", GIB).unwrap_err();
        assert_only_reason(
            &r,
            &[
                "/dev/sdb1 is mounted on /media/me/MY STICK",
                "umount /media/me/MY STICK",
            ],
        );
    }

    #[test]
    fn an_active_swap_partition_is_refused() {
        let fake = FakeSysfs::new();
        let sdb = fake.disk(USB_HOST, "sdb", "8:16", true, 16 * GIB);
        fake.partition(&sdb, "sdb2", "8:18", 2 * GIB);
        fake.swap("/dev/sdb2");
        let r = fake.check("/dev/sdb", "8:16", GIB).unwrap_err();
        assert_only_reason(
            &r,
            &["/dev/sdb2 is an active swap area", "swapoff /dev/sdb2"],
        );
    }

    #[test]
    fn a_partition_held_by_device_mapper_is_refused() {
        let fake = FakeSysfs::new();
        let sdb = fake.disk(USB_HOST, "sdb", "8:16", true, 16 * GIB);
        let sdb1 = fake.partition(&sdb, "sdb1", "8:17", 8 * GIB);
        fake.dm("dm-3", "254:3", "stick-crypt", &[&sdb1]);
        fake.mount("254:3", "/mnt/secret");
        let r = fake.check("/dev/sdb", "8:16", GIB).unwrap_err();
        assert_only_reason(
            &r,
            &["/dev/sdb1 is held by dm-3 (stick-crypt), mounted on /mnt/secret"],
        );
    }

    #[test]
    fn the_disk_holding_root_is_refused_directly_and_through_device_mapper() {
        let fake = FakeSysfs::new();
        // A removable disk holding / on a partition.
        let sdb = fake.disk(USB_HOST, "sdb", "8:16", true, 16 * GIB);
        fake.partition(&sdb, "sdb1", "8:17", 8 * GIB);
        let root = Protected {
            what: "/ (the running system)".to_owned(),
            dev: DevNum::parse("8:17").unwrap(),
        };
        let r = fake
            .check_protecting("/dev/sdb", "8:16", GIB, &[root])
            .unwrap_err();
        assert_only_reason(
            &r,
            &["/dev/sdb is the disk that holds / (the running system): that is this machine's disk"],
        );

        // The build directory on LVM over a partition of another USB disk.
        let sdc = fake.disk(USB_HOST, "sdc", "8:32", false, 64 * GIB);
        let sdc2 = fake.partition(&sdc, "sdc2", "8:34", 60 * GIB);
        let dm = fake.dm("dm-0", "254:0", "vg-build", &[&sdc2]);
        let build = Protected {
            what: "the build directory /srv/krgiso/build".to_owned(),
            dev: DevNum::parse("254:0").unwrap(),
        };
        assert_eq!(fake.sysfs.disks_of(build.dev), ["sdc"]);
        let r = fake
            .check_protecting("/dev/sdc", "8:32", GIB, std::slice::from_ref(&build))
            .unwrap_err();
        assert!(
            r.reasons
                .iter()
                .any(|x| x.contains("holds the build directory /srv/krgiso/build")),
            "{r}"
        );
        // The other disk is not held by it.
        fake.check_protecting("/dev/sdb", "8:16", GIB, &[build])
            .unwrap();
        // A dm device over a dm device over two disks: both are found.
        let sdd = fake.disk(USB_HOST, "sdd", "8:48", true, 8 * GIB);
        let top = fake.dm("dm-1", "254:1", "top", &[&dm, &sdd]);
        assert!(top.exists());
        assert_eq!(
            fake.sysfs.disks_of(DevNum::parse("254:1").unwrap()),
            ["sdc", "sdd"]
        );
    }

    #[test]
    fn a_too_small_disk_is_refused_with_both_sizes() {
        let fake = FakeSysfs::new();
        fake.disk(USB_HOST, "sdb", "8:16", true, GIB);
        let r = fake
            .check("/dev/sdb", "8:16", 2 * GIB + 300 * MIB)
            .unwrap_err();
        assert_only_reason(
            &r,
            &["/dev/sdb is too small: 1.0 GiB, the image needs 2.3 GiB"],
        );
    }

    #[test]
    fn every_reason_is_reported_at_once() {
        let fake = FakeSysfs::new();
        let sda = fake.disk(SATA_HOST, "sda", "8:0", false, 500 * GIB);
        fake.partition(&sda, "sda1", "8:1", 100 * MIB);
        fake.mount("8:1", "/boot/efi");
        let root = Protected {
            what: "/".to_owned(),
            dev: DevNum::parse("8:1").unwrap(),
        };
        let r = fake
            .check_protecting("/dev/sda1", "8:1", GIB, &[root])
            .unwrap_err();
        let text = r.to_string();
        assert!(
            text.starts_with("refusing to write to /dev/sda1:\n  - "),
            "{text}"
        );
        for needle in [
            "is a partition (sda1), not a whole disk",
            "is not removable",
            "/dev/sda1 is mounted on /boot/efi",
            "/dev/sda1 is on the disk that holds / (/dev/sda)",
            "too small: 100.0 MiB, the image needs 1.0 GiB",
        ] {
            assert!(text.contains(needle), "no `{needle}` in:\n{text}");
        }
        assert_eq!(r.reasons.len(), 5, "{text}");
    }

    #[test]
    fn a_device_sysfs_does_not_know_is_refused() {
        let fake = FakeSysfs::new();
        let r = fake.check("/dev/sdz", "8:240", GIB).unwrap_err();
        assert_only_reason(&r, &["no block device 8:240", "plugged in"]);
    }
}
