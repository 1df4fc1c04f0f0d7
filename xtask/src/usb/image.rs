//! The image to write, verified against its `.sha256`, and streaming a
//! device's or file's bytes through sha256 with a progress bar.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::bytes::human_bytes;
use crate::interrupt;
use crate::shell;

use super::device::file_name;
use super::{BLOCK, SECTOR};

/// The image and the sha256 its `.sha256` file promises.
pub(super) struct Image {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) sha256: String,
}

impl Image {
    pub(super) fn open(path: &Path, checksum: &Path) -> Result<Image> {
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

    pub(super) fn first_sector(&mut self) -> Result<[u8; 512]> {
        let mut mbr = [0u8; 512];
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .read_exact(&mut mbr)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(mbr)
    }

    /// Hashes the whole image: it must match its `.sha256` before it is written.
    pub(super) fn verify(&mut self) -> Result<()> {
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
pub(crate) fn parse_checksum(text: &str, name: &str) -> Result<String> {
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

/// The sha256 of the first `len` bytes of `from`, with the bytes at
/// `restore.0` replaced by `restore.1`; checks for Ctrl-C between blocks.
pub(super) fn hash_stream(
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
pub(super) struct ByteBar {
    bar: Option<ProgressBar>,
    step: String,
    started: Instant,
    total: u64,
}

impl ByteBar {
    pub(super) fn new(step: &str, what: &str, total: u64) -> ByteBar {
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

    pub(super) fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    pub(super) fn finish(&self) {
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
