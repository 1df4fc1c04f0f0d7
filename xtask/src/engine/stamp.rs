//! The stamp a stage leaves when, and only when, it finished: the digests
//! of its inputs and a record of each output.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Written after a stage completed: what it was built from and what it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    pub(crate) format: u32,
    pub(crate) stage: String,
    pub(crate) digest: String,
    pub(crate) inputs: BTreeMap<String, String>,
    pub(crate) outputs: BTreeMap<String, OutputRecord>,
    pub(crate) finished_unix: u64,
    pub(crate) seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutputRecord {
    pub(crate) path: PathBuf,
    /// Changes each time the output is rebuilt; later stages depend on it.
    pub(crate) generation: String,
    pub(crate) bytes: u64,
    pub(crate) files: u64,
}

pub(super) const STAMP_FORMAT: u32 = 1;

impl Stamp {
    pub(crate) fn load(path: &Path) -> Option<Stamp> {
        let text = fs::read(path).ok()?;
        serde_json::from_slice::<Stamp>(&text)
            .ok()
            .filter(|s| s.format == STAMP_FORMAT)
    }
}
