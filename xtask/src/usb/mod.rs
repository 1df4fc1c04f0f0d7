//! `cargo xtask usb DEVICE`: the built image onto a USB stick, safely.
//!
//! Before a byte is written, the device must be a whole, removable (or USB)
//! disk that nothing uses, that does not hold this machine's system or build
//! directory, and that is big enough; every reason it is not is reported at
//! once. The image is verified against its `.sha256` before writing, the
//! device is read back after (past the page cache) and must match it.
//! `--data` then adds a `KRGISO-DATA` ext4 partition after the image, which
//! node1 uses for the nodes' root.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use xshell::cmd;

use crate::fetch::human_bytes;
use crate::files;
use crate::host::{self, HostTool};
use crate::interrupt::{self, Interrupted};
use crate::shell::{self, StageShell};

/// The label of the partition `--data` adds; node1's boot service looks for it.
pub const DATA_LABEL: &str = "KRGISO-DATA";
/// `--data` is refused when less than this would be free after the image.
pub const DATA_MIN_FREE: u64 = 64 * MIB;
/// Where MBR partition entry 3 lies in the first sector.
pub const MBR_ENTRY3: usize = 446 + 2 * 16;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// The unit of copying, reading back and checking for Ctrl-C.
const BLOCK: usize = 4 << 20;
/// Flush to the device this often, so the progress shows the stick's speed
/// (not the page cache's) and the last fsync does not hang for minutes.
const SYNC_EVERY: u64 = 64 * MIB;
/// `_IO(0x12, 97)`: write back and drop a block device's buffer cache.
const BLKFLSBUF: libc::Ioctl = 0x1261;
/// `_IO(0x12, 95)`: have the kernel read a disk's partition table again.
const BLKRRPART: libc::Ioctl = 0x125f;

/// Where the kernel describes block devices, mounts and swap areas: the
/// real ones by default; tests point them at fake trees.
#[derive(Debug, Clone)]
pub struct Sysfs {
    /// `/sys`.
    pub root: PathBuf,
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
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
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn from_dev_t(dev: u64) -> DevNum {
        DevNum {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    pub fn parse(text: &str) -> Option<DevNum> {
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
pub struct Protected {
    pub what: String,
    pub dev: DevNum,
}

impl Protected {
    /// The device `path` (or, if it does not exist yet, its nearest existing
    /// parent) is on; `None` when not even `/` can be read.
    pub fn of(what: &str, path: &Path) -> Option<Protected> {
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
pub struct Partition {
    pub name: String,
    pub dev: DevNum,
    pub bytes: u64,
}

/// A whole disk that passed every check.
#[derive(Debug, Clone)]
pub struct BlockDevice {
    /// The device node, symlinks resolved (`/dev/sdb`).
    pub node: PathBuf,
    /// The kernel's name (`sdb`).
    pub name: String,
    pub dev: DevNum,
    pub bytes: u64,
    pub vendor: String,
    pub model: String,
    pub usb: bool,
    pub partitions: Vec<Partition>,
}

/// Why a device must not be written: every reason, each naming the device
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[error("refusing to write to {device}:{}", bullets(.reasons))]
pub struct Refusal {
    pub device: String,
    pub reasons: Vec<String>,
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
    pub fn check_disk(
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
    pub fn disks_of(&self, dev: DevNum) -> Vec<String> {
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

fn file_name(p: &Path) -> String {
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

/// Where the image goes.
#[derive(Debug, Clone)]
pub enum UsbTarget {
    Disk(BlockDevice),
    /// A regular file (`--allow-file`); `bytes` is its length now (0 if missing).
    File {
        path: PathBuf,
        exists: bool,
        bytes: u64,
    },
}

impl UsbTarget {
    pub fn path(&self) -> &Path {
        match self {
            UsbTarget::Disk(d) => &d.node,
            UsbTarget::File { path, .. } => path,
        }
    }

    /// Its size once the image is written: a file grows to hold the image.
    pub fn bytes_after(&self, image_len: u64) -> u64 {
        match self {
            UsbTarget::Disk(d) => d.bytes,
            UsbTarget::File { bytes, .. } => (*bytes).max(image_len),
        }
    }

    fn is_disk(&self) -> bool {
        matches!(self, UsbTarget::Disk(_))
    }
}

/// The MBR partition `--data` adds: entry 3, from the first 1 MiB boundary
/// after the image to the end of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPartition {
    pub start_lba: u32,
    pub sectors: u32,
}

impl DataPartition {
    /// Plans the partition after an image whose first sector is `mbr` on a
    /// target of `target_len` bytes. Refuses when the image has no MBR, less
    /// than [`DATA_MIN_FREE`] would be free, entry 3 or 4 is used by
    /// something else, or entry 1 or 2 reaches into the space.
    pub fn plan(
        mbr: &[u8],
        image_len: u64,
        target_len: u64,
        target: &str,
    ) -> Result<DataPartition> {
        if mbr.len() < 512 || mbr[510..512] != [0x55, 0xAA] {
            bail!("--data: the image has no MBR (no 0x55AA signature in its first sector), so it is not a hybrid image a partition can be added to: rebuild it with `cargo xtask iso`");
        }
        let start = image_len.div_ceil(MIB) * MIB;
        let free = target_len.saturating_sub(start);
        if free < DATA_MIN_FREE {
            bail!(
                "--data: only {} would be free on {target} after the image ({}, rounded up to {}); the data partition needs at least {}: use a bigger stick or leave out --data",
                human_bytes(free),
                human_bytes(image_len),
                human_bytes(start),
                human_bytes(DATA_MIN_FREE)
            );
        }
        let start_lba = u32::try_from(start / SECTOR).context(
            "--data: the image ends beyond what an MBR can address (2 TiB): leave out --data",
        )?;
        // An MBR addresses at most 2^32 sectors: on a bigger disk, stop there.
        let end_lba = (target_len / SECTOR).min(u64::from(u32::MAX));
        let planned = DataPartition {
            start_lba,
            sectors: (end_lba - u64::from(start_lba)) as u32,
        };
        for (i, entry) in mbr_entries(mbr).iter().enumerate() {
            if entry.iter().all(|&b| b == 0) {
                continue;
            }
            let first = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]);
            let count = u32::from_le_bytes([entry[12], entry[13], entry[14], entry[15]]);
            let what = format!(
                "MBR partition {} of the image (type 0x{:02x}, sectors {first}..{})",
                i + 1,
                entry[4],
                u64::from(first) + u64::from(count)
            );
            match i {
                2 if *entry == planned.entry() => {}
                2 | 3 => bail!(
                    "--data: {what} is already used, not by krgiso: adding {DATA_LABEL} would overwrite it; write the image without --data"
                ),
                _ if u64::from(first) + u64::from(count) > u64::from(start_lba) => bail!(
                    "--data: {what} reaches past the image's end into the space for {DATA_LABEL}: write the image without --data"
                ),
                _ => {}
            }
        }
        Ok(planned)
    }

    /// The 16 bytes of the MBR entry: not bootable, CHS "beyond 1024
    /// cylinders" placeholders, type 0x83 (Linux), LBA start and count.
    pub fn entry(&self) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[4] = 0x83;
        e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&self.start_lba.to_le_bytes());
        e[12..16].copy_from_slice(&self.sectors.to_le_bytes());
        e
    }

    pub fn offset(&self) -> u64 {
        u64::from(self.start_lba) * SECTOR
    }

    pub fn bytes(&self) -> u64 {
        u64::from(self.sectors) * SECTOR
    }
}

fn mbr_entries(mbr: &[u8]) -> [[u8; 16]; 4] {
    let mut out = [[0u8; 16]; 4];
    for (i, e) in out.iter_mut().enumerate() {
        e.copy_from_slice(&mbr[446 + 16 * i..446 + 16 * (i + 1)]);
    }
    out
}

/// The image and the sha256 its `.sha256` file promises.
struct Image {
    path: PathBuf,
    file: File,
    len: u64,
    sha256: String,
}

impl Image {
    fn open(path: &Path, checksum: &Path) -> Result<Image> {
        let build = crate::layout::NO_IMAGE_HINT;
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no image at {}: {build}", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let text = match fs::read_to_string(checksum) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no image at {} (its checksum {} is missing): {build}",
                path.display(),
                checksum.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", checksum.display())),
        };
        let sha256 = parse_checksum(&text, &file_name(path)).with_context(|| {
            format!(
                "{} is not the image's checksum: rebuild the image with `cargo xtask iso`",
                checksum.display()
            )
        })?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len < SECTOR {
            bail!(
                "the image {} is {len} bytes, not an image: {build}",
                path.display()
            );
        }
        Ok(Image {
            path: path.to_owned(),
            file,
            len,
            sha256,
        })
    }

    fn first_sector(&mut self) -> Result<[u8; 512]> {
        let mut mbr = [0u8; 512];
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .read_exact(&mut mbr)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(mbr)
    }

    /// Hashes the whole image: it must match its `.sha256` before it is written.
    fn verify(&mut self) -> Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        let bar = ByteBar::new(
            "verify the image",
            &self.path.display().to_string(),
            self.len,
        );
        let got = hash_stream(&mut self.file, self.len, None, &bar)
            .with_context(|| format!("reading {}", self.path.display()))?;
        bar.finish();
        if got != self.sha256 {
            bail!(
                "the image {} does not match its checksum (sha256 {got}, its .sha256 says {}): it is corrupted or half-written; nothing was written: rebuild it with `cargo xtask iso`",
                self.path.display(),
                self.sha256
            );
        }
        Ok(())
    }
}

/// The hash in a sha256sum line (`<hex>  <name>`) for `name`.
pub fn parse_checksum(text: &str, name: &str) -> Result<String> {
    let line = text.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    let hex = words.next().unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("its first line is not `<sha256>  <name>`");
    }
    if let Some(named) = words.next() {
        let named = named.trim_start_matches('*');
        if named != name {
            bail!("it is the checksum of {named}, not of {name}");
        }
    }
    Ok(hex.to_ascii_lowercase())
}

/// What `cargo xtask usb` does, as plain values (the CLI maps its arguments here).
#[derive(Debug, Clone)]
pub struct UsbOptions {
    /// The stick (or, with `allow_file`, a file).
    pub device: PathBuf,
    pub image: PathBuf,
    /// The image's `.sha256`.
    pub checksum: PathBuf,
    /// Write without asking.
    pub yes: bool,
    /// `device` may be a regular file (created if missing): for tests.
    pub allow_file: bool,
    /// Add the `KRGISO-DATA` partition after the image.
    pub data: bool,
    /// Check everything, say what would be written, write nothing.
    pub dry_run: bool,
    /// Paths whose disk must never be written, with what they are.
    pub protected: Vec<(String, PathBuf)>,
    pub sysfs: Sysfs,
    /// Where `host.log` (tool installs) and `usb.log` go.
    pub logs: PathBuf,
}

/// What a finished write did.
#[derive(Debug, Clone)]
pub struct Written {
    pub target: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    pub sha256: String,
    pub data: Option<DataPartition>,
}

/// `cargo xtask usb`: checks, shows, asks, writes, reads back.
pub fn write(opts: &UsbOptions) -> Result<Option<Written>> {
    let mut image = Image::open(&opts.image, &opts.checksum)?;
    let protected: Vec<Protected> = opts
        .protected
        .iter()
        .filter_map(|(what, path)| Protected::of(what, path))
        .collect();
    let target = resolve_target(opts, &image, &protected)?;
    let shown = target.path().display().to_string();
    // With --data: the partition to add, and the image's own MBR entry 3,
    // which it replaces (the read-back counts the image's bytes there).
    let data = if opts.data {
        let mbr = image.first_sector()?;
        let plan = DataPartition::plan(&mbr, image.len, target.bytes_after(image.len), &shown)?;
        Some((plan, mbr_entries(&mbr)[2]))
    } else {
        None
    };
    let plan = data.as_ref().map(|(d, _)| d);
    host_tools(opts, &target, data.is_some())?;
    image.verify()?;

    eprint!("{}", describe(&target, &filesystems(&target)));
    announce(&image, &target, plan, opts.dry_run);
    if opts.dry_run {
        println!("nothing was written (--dry-run)");
        return Ok(None);
    }
    confirm(&target, opts.yes)?;

    let started = Instant::now();
    let mut out = open_for_writing(&target, image.len)?;
    copy_image(&mut image, &mut out, &shown)?;
    drop(out);
    let write_secs = started.elapsed().as_secs_f64();

    if let Some(d) = plan {
        let shell = StageShell::new("usb", &opts.logs.join("usb.log"), true)?;
        add_data_partition(&shell, &target, d)?;
        shell.finish();
    }
    let sha256 = read_back(&target, &image, data.as_ref().map(|(d, e)| (d, *e)))?;
    if target.is_disk() {
        reread_partitions(&target);
    }

    println!(
        "wrote {} ({} bytes) to {shown} in {write_secs:.1}s ({:.1} MB/s); verified sha256 {sha256}",
        human_bytes(image.len),
        image.len,
        image.len as f64 / 1e6 / write_secs.max(0.001)
    );
    if let Some(d) = plan {
        println!(
            "{shown}: partition 3 {DATA_LABEL}, ext4, {} at {}",
            human_bytes(d.bytes()),
            human_bytes(d.offset())
        );
    }
    Ok(Some(Written {
        target: target.path().to_owned(),
        bytes: image.len,
        seconds: write_secs,
        sha256,
        data: data.map(|(d, _)| d),
    }))
}

/// mkfs.ext4 for `--data` (installed on Debian as root); blkid to show the
/// partitions about to be destroyed, when it can be had. A dry run installs
/// nothing and says what it would install.
fn host_tools(opts: &UsbOptions, target: &UsbTarget, data: bool) -> Result<()> {
    let mkfs = HostTool::new("mkfs.ext4", "e2fsprogs");
    let blkid = HostTool::new("blkid", "util-linux");
    let host_log = opts.logs.join("host.log");
    if opts.dry_run {
        let wanted = [(data, mkfs), (target.is_disk(), blkid)];
        let tools: Vec<HostTool> = wanted
            .into_iter()
            .filter(|(w, _)| *w)
            .map(|(_, t)| t)
            .collect();
        let missing: Vec<&str> = host::missing(&tools)
            .iter()
            .map(|t| t.package.as_str())
            .collect();
        if !missing.is_empty() {
            println!("would install {} first", missing.join(" "));
        }
        return Ok(());
    }
    if data {
        host::ensure_tools(&[mkfs], true, &host_log)?;
    }
    if target.is_disk() {
        if let Err(e) = host::ensure_tools(&[blkid], true, &host_log) {
            eprintln!("warning: {e}; the partitions are shown without their file systems");
        }
    }
    Ok(())
}

/// The line saying what is (or would be) written where.
fn announce(image: &Image, target: &UsbTarget, data: Option<&DataPartition>, dry_run: bool) {
    let (write, add) = match dry_run {
        true => ("would write", "would add"),
        false => ("writing", "then adding"),
    };
    println!(
        "{write} {} ({}, sha256 {}) to {}",
        image.path.display(),
        human_bytes(image.len),
        image.sha256,
        target.path().display()
    );
    if let Some(d) = data {
        println!(
            "{add} MBR partition 3 {DATA_LABEL} (ext4, {} at {})",
            human_bytes(d.bytes()),
            human_bytes(d.offset())
        );
    }
}

/// Resolves DEVICE (symlinks such as `/dev/disk/by-id/...` followed) and
/// checks it; a refusal lists every reason.
fn resolve_target(opts: &UsbOptions, image: &Image, protected: &[Protected]) -> Result<UsbTarget> {
    let given = &opts.device;
    let meta = match fs::metadata(given) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.allow_file => {
            let path = files::absolute(given)?;
            return Ok(UsbTarget::File {
                path,
                exists: false,
                bytes: 0,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no such device {}: is the stick plugged in? `lsblk -o NAME,SIZE,RM,TRAN,MODEL` lists the disks",
            given.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", given.display())),
    };
    let node = fs::canonicalize(given).with_context(|| format!("resolving {}", given.display()))?;
    let shown = if node == *given {
        node.display().to_string()
    } else {
        format!("{} ({})", given.display(), node.display())
    };
    if meta.file_type().is_block_device() {
        let disk = opts
            .sysfs
            .check_disk(&node, DevNum::from_dev_t(meta.rdev()), image.len, protected)
            .map_err(|mut r| {
                r.device = shown.clone();
                r
            })?;
        return Ok(UsbTarget::Disk(disk));
    }
    if meta.is_file() && opts.allow_file {
        let image_meta = image.file.metadata()?;
        if meta.dev() == image_meta.dev() && meta.ino() == image_meta.ino() {
            bail!("{shown} is the image itself: give another file");
        }
        return Ok(UsbTarget::File {
            path: node,
            exists: true,
            bytes: meta.len(),
        });
    }
    let kind = if meta.is_file() {
        "a regular file"
    } else if meta.is_dir() {
        "a directory"
    } else {
        "not a disk"
    };
    Err(Refusal {
        device: shown.clone(),
        reasons: vec![format!(
            "{shown} is not a block device ({kind}): give the stick's whole disk, e.g. /dev/sdb (`lsblk`); --allow-file writes to a regular file instead, for tests"
        )],
    }
    .into())
}

/// Each partition's file system and label, from `blkid` when it is there.
fn filesystems(target: &UsbTarget) -> Vec<(String, String)> {
    let UsbTarget::Disk(d) = target else {
        return Vec::new();
    };
    if host::find_program("blkid").is_none() {
        return Vec::new();
    }
    d.partitions
        .iter()
        .filter_map(|p| {
            let out = std::process::Command::new("blkid")
                .args(["-o", "export"])
                .arg(format!("/dev/{}", p.name))
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let mut about = field("TYPE").unwrap_or_default();
            if let Some(label) = field("LABEL") {
                about.push_str(&format!(" \"{label}\""));
            }
            Some((p.name.clone(), about))
        })
        .collect()
}

/// What is about to be destroyed: the disk, its size and its partitions.
pub fn describe(target: &UsbTarget, filesystems: &[(String, String)]) -> String {
    match target {
        UsbTarget::Disk(d) => {
            let who = [d.vendor.as_str(), d.model.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let who = if who.is_empty() {
                "unknown model".to_owned()
            } else {
                who
            };
            let mut text = format!(
                "{} ({}): {who}, {}{}\n",
                d.node.display(),
                d.name,
                human_bytes(d.bytes),
                if d.usb { ", USB" } else { ", removable" }
            );
            if d.partitions.is_empty() {
                text.push_str("  no partitions\n");
            }
            for p in &d.partitions {
                let fs = filesystems
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map(|(_, f)| format!("  {f}"))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "  /dev/{:<10} {:>10}{fs}\n",
                    p.name,
                    human_bytes(p.bytes)
                ));
            }
            text.push_str(&format!(
                "everything on {} will be destroyed\n",
                d.node.display()
            ));
            text
        }
        UsbTarget::File {
            path,
            exists,
            bytes,
        } if *exists => format!(
            "{} (a regular file, --allow-file): {}; its start will be overwritten\n",
            path.display(),
            human_bytes(*bytes)
        ),
        UsbTarget::File { path, .. } => format!(
            "{} (a regular file, --allow-file): will be created\n",
            path.display()
        ),
    }
}

/// Does the answer confirm writing to the disk called `name`?
pub fn confirms(answer: &str, name: &str) -> bool {
    let answer = answer.trim();
    answer == "yes" || answer == name || answer.strip_prefix("/dev/") == Some(name)
}

fn confirm(target: &UsbTarget, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let name = match target {
        UsbTarget::Disk(d) => d.name.clone(),
        UsbTarget::File { path, .. } => file_name(path),
    };
    if !std::io::stdin().is_terminal() {
        bail!(
            "not writing to {}: nobody can confirm (standard input is not a terminal): pass --yes to write without asking",
            target.path().display()
        );
    }
    eprint!("type {name} (or yes) to write the image onto it, anything else to stop: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if !confirms(&answer, &name) {
        bail!(
            "not confirmed: nothing was written to {}",
            target.path().display()
        );
    }
    Ok(())
}

fn open_for_writing(target: &UsbTarget, image_len: u64) -> Result<File> {
    match target {
        UsbTarget::Disk(d) => {
            // O_EXCL on a block device: refused while mounted or claimed.
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_EXCL)
                .open(&d.node)
                .map_err(|e| open_error(&d.node, e))?;
            let now = DevNum::from_dev_t(file.metadata()?.rdev());
            if now != d.dev {
                bail!(
                    "{} changed while it was checked (was {}, now {}): was the stick replaced? run the command again",
                    d.node.display(),
                    d.dev,
                    now
                );
            }
            Ok(file)
        }
        UsbTarget::File { path, .. } => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("opening {} for writing", path.display()))?;
            let len = file.metadata()?.len();
            if len < image_len {
                file.set_len(image_len)
                    .with_context(|| format!("growing {} to the image's size", path.display()))?;
            }
            Ok(file)
        }
    }
}

fn open_error(node: &Path, e: std::io::Error) -> anyhow::Error {
    let n = node.display();
    let why = match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{n} is busy: something has it mounted or open (a desktop automounter?): unmount its partitions (`umount {n}?*`) and run the command again"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "permission denied opening {n} for writing: run as root (`sudo cargo xtask usb {n}`)"
        ),
        Some(libc::EROFS) => format!("{n} is read-only (a write-protect switch?): make it writable"),
        Some(libc::ENOMEDIUM) => format!("no medium in {n}: insert the card or stick"),
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
            format!("{n} is gone: was the stick removed? plug it in and run the command again")
        }
        _ => format!("cannot open {n} for writing: {e}"),
    };
    anyhow::Error::new(e).context(why)
}

fn copy_image(image: &mut Image, out: &mut File, shown: &str) -> Result<()> {
    image.file.seek(SeekFrom::Start(0))?;
    let bar = ByteBar::new(
        "write",
        &format!("{} to {shown}", file_name(&image.path)),
        image.len,
    );
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    let mut unsynced = 0u64;
    let bad = |done: u64, e: std::io::Error| {
        anyhow::Error::new(e).context(format!(
            "writing {shown} failed after {}: the stick is bad or was removed; what is on it now will not boot (write it again, or use another stick)",
            human_bytes(done)
        ))
    };
    while done < image.len {
        if interrupt::is_interrupted() {
            bar.finish();
            eprintln!(
                "usb: stopped after {} of {}: {shown} holds part of the image and will not boot",
                human_bytes(done),
                human_bytes(image.len)
            );
            return Err(Interrupted.into());
        }
        let want = (image.len - done).min(BLOCK as u64) as usize;
        image
            .file
            .read_exact(&mut buf[..want])
            .with_context(|| format!("reading {}", image.path.display()))?;
        out.write_all(&buf[..want]).map_err(|e| bad(done, e))?;
        done += want as u64;
        unsynced += want as u64;
        if unsynced >= SYNC_EVERY {
            out.sync_data().map_err(|e| bad(done, e))?;
            unsynced = 0;
        }
        bar.set(done);
    }
    out.sync_all().map_err(|e| bad(done, e))?;
    bar.finish();
    Ok(())
}

/// Writes MBR entry 3, then makes the ext4 file system inside it, through
/// mkfs's offset (no partition node or loop device needed).
fn add_data_partition(shell: &StageShell, target: &UsbTarget, d: &DataPartition) -> Result<()> {
    let node = target.path();
    shell.step(&format!(
        "add partition 3 {DATA_LABEL}: {} from {}",
        human_bytes(d.bytes()),
        human_bytes(d.offset())
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(if target.is_disk() { libc::O_EXCL } else { 0 })
        .open(node)
        .map_err(|e| open_error(node, e))?;
    file.seek(SeekFrom::Start(MBR_ENTRY3 as u64))?;
    file.write_all(&d.entry())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the partition table of {}", node.display()))?;
    drop(file);
    let sh = shell.sh();
    // nodiscard: a discard would be slow on a stick and has nothing to gain
    // on a device the image was just written to.
    let extended = format!("offset={},nodiscard", d.offset());
    let kib = format!("{}k", d.bytes() / 1024);
    shell
        .run(cmd!(
            sh,
            "mkfs.ext4 -F -q -L {DATA_LABEL} -E {extended} {node} {kib}"
        ))
        .with_context(|| format!("making the {DATA_LABEL} file system on {}", node.display()))
}

/// Reads the image's length back from the target past the page cache and
/// returns its sha256; it must be the image's. With `--data` (the partition
/// and the image's original MBR entry 3), MBR entry 3 must hold the data
/// partition and counts as the image's original bytes.
fn read_back(
    target: &UsbTarget,
    image: &Image,
    data: Option<(&DataPartition, [u8; 16])>,
) -> Result<String> {
    let node = target.path();
    let shown = node.display().to_string();
    let mut file = File::open(node).map_err(|e| open_error(node, e))?;
    drop_caches(&file, target.is_disk());
    if let Some((d, _)) = data {
        let mut entry = [0u8; 16];
        file.seek(SeekFrom::Start(MBR_ENTRY3 as u64))?;
        file.read_exact(&mut entry)
            .with_context(|| format!("reading back {shown}"))?;
        if entry != d.entry() {
            bail!("read back from {shown}: MBR partition 3 is not the {DATA_LABEL} entry just written: the stick is bad or was removed");
        }
        file.seek(SeekFrom::Start(0))?;
    }
    let bar = ByteBar::new("read back and verify", &shown, image.len);
    let restore = data.map(|(_, e)| (MBR_ENTRY3 as u64, e));
    let got = match hash_stream(&mut file, image.len, restore, &bar) {
        Ok(got) => got,
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => {
            return Err(e.context(format!(
                "reading back {shown} failed: the stick is bad or was removed"
            )))
        }
    };
    bar.finish();
    if got != image.sha256 {
        bail!(
            "read back from {shown}: sha256 {got}, but the image's is {}: the stick is bad or was removed; do not boot from it (write it again, or use another stick)",
            image.sha256
        );
    }
    Ok(got)
}

/// Drops the target's cached pages so the read-back comes from the device.
fn drop_caches(file: &File, block_device: bool) {
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open descriptor owned by `file`; advice and ioctl only
    // drop caches and take no pointers.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        if block_device {
            libc::ioctl(fd, BLKFLSBUF, 0);
        }
    }
}

/// Asks the kernel to read the partition table again; busy is a warning.
fn reread_partitions(target: &UsbTarget) {
    let node = target.path();
    let Ok(file) = File::open(node) else {
        eprintln!(
            "warning: cannot open {} to re-read its partitions: unplug and replug the stick",
            node.display()
        );
        return;
    };
    // SAFETY: BLKRRPART takes no argument; fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART, 0) };
    if rc != 0 {
        eprintln!(
            "warning: the kernel could not re-read the partitions of {} ({}): unplug and replug the stick to see them",
            node.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// The sha256 of the first `len` bytes of `from`, with the bytes at
/// `restore.0` replaced by `restore.1`; checks for Ctrl-C between blocks.
fn hash_stream(
    from: &mut File,
    len: u64,
    restore: Option<(u64, [u8; 16])>,
    bar: &ByteBar,
) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    while done < len {
        interrupt::check()?;
        let want = (len - done).min(BLOCK as u64) as usize;
        from.read_exact(&mut buf[..want])
            .with_context(|| format!("reading at {} of {}", human_bytes(done), human_bytes(len)))?;
        if let Some((at, bytes)) = restore {
            for (i, b) in bytes.iter().enumerate() {
                let pos = at + i as u64;
                if (done..done + want as u64).contains(&pos) {
                    buf[(pos - done) as usize] = *b;
                }
            }
        }
        h.update(&buf[..want]);
        done += want as u64;
        bar.set(done);
    }
    Ok(hex::encode(h.finalize()))
}

/// Bytes, rate and ETA on a terminal; a start and an end line elsewhere.
struct ByteBar {
    bar: Option<ProgressBar>,
    step: String,
    started: Instant,
    total: u64,
}

impl ByteBar {
    fn new(step: &str, what: &str, total: u64) -> ByteBar {
        eprintln!("==> usb: {step}: {what} ({})", human_bytes(total));
        let bar = shell::byte_bar(Some(total), format!("usb: {step}"));
        if let Some(bar) = &bar {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        ByteBar {
            bar,
            step: step.to_owned(),
            started: Instant::now(),
            total,
        }
    }

    fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprintln!(
            "==> usb: {}: {} in {secs:.1}s ({:.1} MB/s)",
            self.step,
            human_bytes(self.total),
            self.total as f64 / 1e6 / secs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const GIB: u64 = 1 << 30;
    const USB_HOST: &str =
        "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
    const SATA_HOST: &str = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";

    /// A fake /sys (and mountinfo, swaps) in a temporary directory.
    struct FakeSysfs {
        _dir: tempfile::TempDir,
        sysfs: Sysfs,
    }

    impl FakeSysfs {
        fn new() -> FakeSysfs {
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

    /// The first sector of a 5 MiB xorriso hybrid: partition 1 (type 0)
    /// over the image, partition 2 the EFI image.
    fn hybrid_mbr(image_sectors: u32) -> [u8; 512] {
        let mut mbr = [0u8; 512];
        let e1 = &mut mbr[446..462];
        e1[0] = 0x80;
        e1[8..12].copy_from_slice(&0u32.to_le_bytes());
        e1[12..16].copy_from_slice(&image_sectors.to_le_bytes());
        let e2 = &mut mbr[462..478];
        e2[4] = 0xef;
        e2[8..12].copy_from_slice(&136u32.to_le_bytes());
        e2[12..16].copy_from_slice(&2048u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        mbr
    }

    #[test]
    fn the_data_partition_starts_at_the_next_mib_and_runs_to_the_end() {
        let image = 5 * MIB + 4096;
        let mbr = hybrid_mbr((image / 512) as u32);
        let target = 256 * MIB + 300; // a trailing part-sector is not used
        let d = DataPartition::plan(&mbr, image, target, "t").unwrap();
        assert_eq!(d.offset(), 6 * MIB);
        assert_eq!(d.start_lba, 6 * 2048);
        assert_eq!(u64::from(d.start_lba) + u64::from(d.sectors), 256 * 2048);
        let e = d.entry();
        assert_eq!(e[0], 0, "not bootable");
        assert_eq!(e[4], 0x83);
        assert_eq!(&e[1..4], &[0xFE, 0xFF, 0xFF]);
        assert_eq!(&e[8..12], &(6u32 * 2048).to_le_bytes());
        assert_eq!(&e[12..16], &(250u32 * 2048).to_le_bytes());

        // An image ending on a boundary: the partition starts right there.
        let d = DataPartition::plan(&hybrid_mbr(5 * 2048), 5 * MIB, GIB, "t").unwrap();
        assert_eq!(d.offset(), 5 * MIB);
        // Our own entry already there (written before) is fine.
        let mut ours = hybrid_mbr(5 * 2048);
        ours[MBR_ENTRY3..MBR_ENTRY3 + 16].copy_from_slice(&d.entry());
        assert_eq!(DataPartition::plan(&ours, 5 * MIB, GIB, "t").unwrap(), d);
    }

    #[test]
    fn the_data_partition_needs_64_mib_after_the_image() {
        let mbr = hybrid_mbr(5 * 2048);
        let err = DataPartition::plan(&mbr, 5 * MIB, 5 * MIB + 63 * MIB, "/dev/sdb")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only 63.0 MiB would be free on /dev/sdb") && err.contains("64.0 MiB"),
            "{err}"
        );
        DataPartition::plan(&mbr, 5 * MIB, 5 * MIB + 64 * MIB, "/dev/sdb").unwrap();
    }

    #[test]
    fn the_data_partition_is_refused_when_entries_are_taken() {
        let mut used3 = hybrid_mbr(5 * 2048);
        used3[MBR_ENTRY3 + 4] = 0x0c;
        used3[MBR_ENTRY3 + 12] = 1;
        let err = DataPartition::plan(&used3, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MBR partition 3 of the image (type 0x0c")
                && err.contains("not by krgiso"),
            "{err}"
        );

        let mut used4 = hybrid_mbr(5 * 2048);
        used4[446 + 48 + 4] = 0x83;
        let err = DataPartition::plan(&used4, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("MBR partition 4"), "{err}");

        // Partition 1 reaching past the image into the data space.
        let long = hybrid_mbr(20 * 2048);
        let err = DataPartition::plan(&long, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MBR partition 1") && err.contains("reaches past"),
            "{err}"
        );

        let mut no_mbr = hybrid_mbr(5 * 2048);
        no_mbr[510] = 0;
        let err = DataPartition::plan(&no_mbr, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no MBR"), "{err}");
    }

    #[test]
    fn checksum_lines_and_confirmations() {
        let sum = "ab".repeat(32);
        assert_eq!(
            parse_checksum(&format!("{sum}  k.iso\n"), "k.iso").unwrap(),
            sum
        );
        assert_eq!(
            parse_checksum(&format!("{sum} *k.iso\n"), "k.iso").unwrap(),
            sum
        );
        let err = parse_checksum(&format!("{sum}  other.iso\n"), "k.iso").unwrap_err();
        assert!(
            err.to_string().contains("of other.iso, not of k.iso"),
            "{err}"
        );
        assert!(parse_checksum("nothing\n", "k.iso").is_err());

        assert!(confirms("sdb\n", "sdb"));
        assert!(confirms(" /dev/sdb ", "sdb"));
        assert!(confirms("yes\n", "sdb"));
        assert!(!confirms("y\n", "sdb"));
        assert!(!confirms("sda\n", "sdb"));
        assert!(!confirms("\n", "sdb"));
    }

    /// An image (random bytes with a hybrid-looking MBR) and its .sha256.
    fn image(dir: &Path, len: usize) -> (PathBuf, PathBuf) {
        let mut bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        bytes[..512].copy_from_slice(&hybrid_mbr((len / 512) as u32));
        let path = dir.join("k.iso");
        fs::write(&path, &bytes).unwrap();
        let sum = hex::encode(Sha256::digest(&bytes));
        let checksum = dir.join("k.iso.sha256");
        fs::write(&checksum, format!("{sum}  k.iso\n")).unwrap();
        (path, checksum)
    }

    fn options(dir: &Path, image: &Path, checksum: &Path, device: &Path) -> UsbOptions {
        UsbOptions {
            device: device.to_owned(),
            image: image.to_owned(),
            checksum: checksum.to_owned(),
            yes: true,
            allow_file: true,
            data: false,
            dry_run: false,
            protected: Vec::new(),
            sysfs: FakeSysfs::new().sysfs,
            logs: dir.join("logs"),
        }
    }

    #[test]
    fn a_file_target_gets_the_image_and_keeps_what_lies_beyond() {
        let tmp = tempfile::tempdir().unwrap();
        let (img, sum) = image(tmp.path(), 9 * MIB as usize + 512);
        let target = tmp.path().join("stick.img");
        fs::write(&target, vec![0xAAu8; 12 * MIB as usize]).unwrap();
        let written = write(&options(tmp.path(), &img, &sum, &target))
            .unwrap()
            .unwrap();
        let got = fs::read(&target).unwrap();
        let want = fs::read(&img).unwrap();
        assert_eq!(
            got.len(),
            12 * MIB as usize,
            "a bigger file is never shrunk"
        );
        assert!(got[..want.len()] == want[..], "the image bytes differ");
        assert!(got[want.len()..].iter().all(|&b| b == 0xAA));
        assert_eq!(written.bytes, want.len() as u64);
        assert_eq!(written.sha256, hex::encode(Sha256::digest(&want)));

        // A missing file is created at the image's size.
        let fresh = tmp.path().join("new.img");
        write(&options(tmp.path(), &img, &sum, &fresh)).unwrap();
        assert!(fs::read(&fresh).unwrap() == want);
    }

    #[test]
    fn nothing_is_written_from_a_corrupted_image_or_in_a_dry_run() {
        let tmp = tempfile::tempdir().unwrap();
        let (img, sum) = image(tmp.path(), MIB as usize);
        let target = tmp.path().join("stick.img");

        let mut dry = options(tmp.path(), &img, &sum, &target);
        dry.dry_run = true;
        assert!(write(&dry).unwrap().is_none());
        assert!(!target.exists(), "a dry run created the target");

        let mut bytes = fs::read(&img).unwrap();
        bytes[700_000] ^= 1;
        fs::write(&img, &bytes).unwrap();
        let err = write(&options(tmp.path(), &img, &sum, &target))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not match its checksum") && err.contains("nothing was written"),
            "{err}"
        );
        assert!(!target.exists());
    }

    #[test]
    fn a_missing_image_or_checksum_says_to_build() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("stick.img");
        let img = tmp.path().join("k.iso");
        let sum = tmp.path().join("k.iso.sha256");
        let err = write(&options(tmp.path(), &img, &sum, &target))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("no image at {}", img.display()))
                && err.contains("run `cargo xtask build` (or `cargo xtask iso`)"),
            "{err}"
        );
        fs::write(&img, vec![0u8; 4096]).unwrap();
        let err = write(&options(tmp.path(), &img, &sum, &target))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no image at") && err.contains("checksum"),
            "{err}"
        );
    }

    #[test]
    fn a_regular_file_without_allow_file_is_not_a_block_device() {
        let tmp = tempfile::tempdir().unwrap();
        let (img, sum) = image(tmp.path(), MIB as usize);
        let target = tmp.path().join("stick.img");
        fs::write(&target, b"keep me").unwrap();
        let mut opts = options(tmp.path(), &img, &sum, &target);
        opts.allow_file = false;
        let err = write(&opts).unwrap_err().to_string();
        assert!(
            err.contains("is not a block device (a regular file)") && err.contains("--allow-file"),
            "{err}"
        );
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
        // Nor may the image be written over itself.
        let mut opts = options(tmp.path(), &img, &sum, &img);
        opts.allow_file = true;
        let err = write(&opts).unwrap_err().to_string();
        assert!(err.contains("is the image itself"), "{err}");
    }
}
