//! `cargo xtask usb DEVICE`: the built image onto a USB stick, safely.
//!
//! Before a byte is written, the device must be a whole, removable (or USB)
//! disk that nothing uses, that does not hold this machine's system or build
//! directory, and that is big enough; every reason it is not is reported at
//! once. The image is verified against its `.sha256` before writing, the
//! device is read back after (past the page cache) and must match it.
//! `--data` then adds a `KRGISO-DATA` ext4 partition after the image, which
//! node1 uses for the nodes' root.

mod data;
mod device;
mod image;
mod write;

use std::fs::{self};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bytes::human_bytes;
use crate::files;
use crate::host::{self, HostTool};
use crate::shell::StageShell;
use data::mbr_entries;
use device::file_name;
use image::Image;
use write::{copy_image, open_for_writing, read_back, reread_partitions};

pub(crate) use data::{DataPartition, DATA_LABEL, MBR_ENTRY3};
pub(crate) use device::{BlockDevice, DevNum, Protected, Refusal, Sysfs};

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

/// Where the image goes.
#[derive(Debug, Clone)]
pub(crate) enum UsbTarget {
    Disk(BlockDevice),
    /// A regular file (`--allow-file`); `bytes` is its length now (0 if missing).
    File {
        path: PathBuf,
        exists: bool,
        bytes: u64,
    },
}

impl UsbTarget {
    pub(crate) fn path(&self) -> &Path {
        match self {
            UsbTarget::Disk(d) => &d.node,
            UsbTarget::File { path, .. } => path,
        }
    }

    /// Its size once the image is written: a file grows to hold the image.
    pub(crate) fn bytes_after(&self, image_len: u64) -> u64 {
        match self {
            UsbTarget::Disk(d) => d.bytes,
            UsbTarget::File { bytes, .. } => (*bytes).max(image_len),
        }
    }

    fn is_disk(&self) -> bool {
        matches!(self, UsbTarget::Disk(_))
    }
}

/// What `cargo xtask usb` does, as plain values (the CLI maps its arguments here).
#[derive(Debug, Clone)]
pub(crate) struct UsbOptions {
    /// The stick (or, with `allow_file`, a file).
    pub(crate) device: PathBuf,
    pub(crate) image: PathBuf,
    /// The image's `.sha256`.
    pub(crate) checksum: PathBuf,
    /// Write without asking.
    pub(crate) yes: bool,
    /// `device` may be a regular file (created if missing): for tests.
    pub(crate) allow_file: bool,
    /// Add the `KRGISO-DATA` partition after the image.
    pub(crate) data: bool,
    /// Check everything, say what would be written, write nothing.
    pub(crate) dry_run: bool,
    /// Paths whose disk must never be written, with what they are.
    pub(crate) protected: Vec<(String, PathBuf)>,
    pub(crate) sysfs: Sysfs,
    /// Where `host.log` (tool installs) and `usb.log` go.
    pub(crate) logs: PathBuf,
}

/// `cargo xtask usb`: checks, shows, asks, writes, reads back.
pub(crate) fn write(opts: &UsbOptions) -> Result<()> {
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
        return Ok(());
    }
    confirm(&target, opts.yes)?;

    let started = Instant::now();
    let mut out = open_for_writing(&target, image.len)?;
    copy_image(&mut image, &mut out, &shown)?;
    let write_secs = started.elapsed().as_secs_f64();
    if let Some(d) = plan {
        data::write_entry(&mut out, d, &shown)?;
    }
    // mkfs opens the device itself, with O_EXCL too.
    drop(out);

    if let Some(d) = plan {
        let shell = StageShell::new("usb", &opts.logs.join("usb.log"), true)?;
        data::make_filesystem(&shell, &target, d)?;
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
    Ok(())
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
pub(crate) fn describe(target: &UsbTarget, filesystems: &[(String, String)]) -> String {
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
pub(crate) fn confirms(answer: &str, name: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use data::tests::hybrid_mbr;
    use device::tests::FakeSysfs;
    use image::parse_checksum;
    use sha2::{Digest, Sha256};

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
        write(&options(tmp.path(), &img, &sum, &target)).unwrap();
        let got = fs::read(&target).unwrap();
        let want = fs::read(&img).unwrap();
        assert_eq!(
            got.len(),
            12 * MIB as usize,
            "a bigger file is never shrunk"
        );
        assert!(got[..want.len()] == want[..], "the image bytes differ");
        assert!(got[want.len()..].iter().all(|&b| b == 0xAA));

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
        write(&dry).unwrap();
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
