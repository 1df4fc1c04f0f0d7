//! What the engine, fetch and the commands say about bytes: their sha256,
//! and their size for a person. Below every other module, so that the
//! engine and fetch need not import each other.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Feeds a file's bytes into a hasher, a block at a time.
pub(crate) fn hash_reader(h: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// A file's sha256, in lowercase hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    hash_reader(&mut h, path)?;
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A size as a person reads it: `512 B`, `44.5 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(44 * 1024 * 1024 + 512 * 1024), "44.5 MiB");
    }

    #[test]
    fn a_file_and_its_bytes_hash_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let body = b"krgiso".repeat(20_000);
        fs::write(&path, &body).unwrap();
        assert_eq!(sha256_of(&path).unwrap(), sha256_hex(&body));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
