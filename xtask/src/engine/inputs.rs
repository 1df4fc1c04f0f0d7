//! A stage's inputs as digests: profile values, files and trees (content,
//! mode, links), the outputs of earlier stages by generation.

use crate::bytes::{hash_reader, sha256_hex};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::layout::{Layout, Product};

/// What a stage reads, each with a digest. Keys name the input the way a
/// user would look for it: `profile [nodes]`, `file overlay/node1/etc/motd`.
pub struct Inputs<'a> {
    layout: &'a Layout,
    pub(super) digests: BTreeMap<String, String>,
    pub(super) upstream: Vec<(&'static str, &'static str)>,
}

impl<'a> Inputs<'a> {
    pub(super) fn new(layout: &'a Layout) -> Inputs<'a> {
        Inputs {
            layout,
            digests: BTreeMap::new(),
            upstream: Vec::new(),
        }
    }

    /// A value, typically a profile section: `inputs.value("profile [nodes]", &p.nodes)`.
    pub(crate) fn value(&mut self, key: &str, value: &impl Serialize) {
        let bytes = serde_json::to_vec(value).unwrap_or_else(|e| e.to_string().into_bytes());
        self.digests.insert(key.to_owned(), sha256_hex(&bytes));
    }

    /// A file's content and mode. A missing file is an input too ("missing").
    pub(crate) fn file(&mut self, path: &Path) -> Result<()> {
        let key = format!("file {}", self.layout.show(path));
        let digest = match fs::symlink_metadata(path) {
            Ok(meta) => entry_digest(path, &meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".to_owned(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        self.digests.insert(key, digest);
        Ok(())
    }

    /// Every file, symlink and directory under `dir`, one input each, so a
    /// change names the file that changed.
    pub(crate) fn tree(&mut self, dir: &Path) -> Result<()> {
        let shown = self.layout.show(dir);
        if !dir.exists() {
            self.digests
                .insert(format!("tree {shown}"), "missing".to_owned());
            return Ok(());
        }
        self.digests
            .insert(format!("tree {shown}"), "present".to_owned());
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", d.display()))?;
                let path = entry.path();
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let kind = if meta.is_dir() { "dir" } else { "file" };
                let key = format!("{kind} {}", self.layout.show(&path));
                self.digests.insert(key, entry_digest(&path, &meta)?);
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// An output of an earlier stage. The digest is that output's generation:
    /// it changes each time the earlier stage rebuilds it.
    pub(crate) fn output_of(&mut self, product: Product) {
        self.upstream.push((product.stage, product.name));
    }
}

fn entry_digest(path: &Path, meta: &fs::Metadata) -> Result<String> {
    let mode = meta.permissions().mode() & 0o7777;
    let mut h = Sha256::new();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        h.update(b"symlink\0");
        h.update(target.as_os_str().as_encoded_bytes());
    } else if meta.is_dir() {
        h.update(format!("dir {mode:o}").as_bytes());
    } else {
        h.update(format!("file {mode:o}\0").as_bytes());
        hash_reader(&mut h, path)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The input key under which a stage records an earlier stage's output.
pub(super) fn output_key(stage: &'static str, name: &'static str) -> String {
    Product { stage, name }.input_key()
}

pub(super) fn inputs_digest(inputs: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in inputs {
        h.update(k.as_bytes());
        h.update(b"\0");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}
