//! The stamp a stage leaves when, and only when, it finished: the digests
//! of its inputs and a record of each output.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Written after a stage completed: what it was built from and what it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    pub format: u32,
    pub stage: String,
    pub digest: String,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub finished_unix: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub path: PathBuf,
    /// Changes each time the output is rebuilt; later stages depend on it.
    pub generation: String,
    pub bytes: u64,
    pub files: u64,
}

pub(super) const STAMP_FORMAT: u32 = 1;

impl Stamp {
    pub fn load(path: &Path) -> Option<Stamp> {
        let text = fs::read(path).ok()?;
        serde_json::from_slice::<Stamp>(&text)
            .ok()
            .filter(|s| s.format == STAMP_FORMAT)
    }
}
