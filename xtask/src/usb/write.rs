//! Writing the image onto the target and reading it back past the page
//! cache.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::bytes::human_bytes;
use crate::interrupt::{self, Interrupted};

use super::data::{DataPartition, DATA_LABEL, MBR_ENTRY3};
use super::device::{file_name, DevNum};
use super::image::{hash_stream, ByteBar, Image};
use super::{UsbTarget, BLKFLSBUF, BLKRRPART, BLOCK, SYNC_EVERY};

pub(super) fn open_for_writing(target: &UsbTarget, image_len: u64) -> Result<File> {
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

pub(super) fn open_error(node: &Path, e: std::io::Error) -> anyhow::Error {
    let n = node.display();
    let why = match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{n} is busy: something has it mounted or open (a desktop automounter?): unmount its partitions (`umount {n}?*`) and run the command again"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "permission denied opening {n} for writing: run it as root"
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

pub(super) fn copy_image(image: &mut Image, out: &mut File, shown: &str) -> Result<()> {
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

/// Reads the image's length back from the target past the page cache and
/// returns its sha256; it must be the image's. With `--data` (the partition
/// and the image's original MBR entry 3), MBR entry 3 must hold the data
/// partition and counts as the image's original bytes.
pub(super) fn read_back(
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
pub(super) fn drop_caches(file: &File, block_device: bool) {
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
pub(super) fn reread_partitions(target: &UsbTarget) {
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
