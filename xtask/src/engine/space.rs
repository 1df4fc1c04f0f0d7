//! Disk space: what a plan needs on each file system, checked before any
//! stage starts, and the message for a stage that ran out anyway.
//!
//! A stage needs room for each output it writes (the new one is built
//! beside the old one, so a rebuild needs it again) and for its working
//! files. An output's size is the one its last stamp recorded, else the
//! stage's first-build estimate.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bytes::human_bytes;

/// Room one stage needs at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpaceNeed {
    pub(crate) stage: &'static str,
    /// Where it writes: an output, or a working directory.
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
}

/// A file system, as seen from the nearest existing directory of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileSystem {
    /// `st_dev` of that directory.
    pub(crate) device: u64,
    /// The directory it was looked at from.
    pub(crate) seen_at: PathBuf,
    /// Bytes an unprivileged writer may still use.
    pub(crate) free: u64,
}

/// `path`, or its nearest ancestor that exists.
fn existing_ancestor(path: &Path) -> &Path {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return Path::new("."),
        }
    }
    at
}

/// The file system `path` is (or would be) written to, and its free space.
pub(super) fn file_system(path: &Path) -> Result<FileSystem> {
    let at = existing_ancestor(path);
    let device = at
        .metadata()
        .with_context(|| format!("looking at {}", at.display()))?
        .dev();
    let c = CString::new(at.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", at.display()))?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("asking how much space is free under {}", at.display()));
    }
    Ok(FileSystem {
        device,
        seen_at: at.to_owned(),
        free: st.f_bavail as u64 * st.f_frsize as u64,
    })
}

/// Every need, grouped by the file system it falls on; each with its free
/// space, in the order the file systems are first met.
pub(super) fn by_file_system(needs: &[SpaceNeed]) -> Result<Vec<(FileSystem, Vec<&SpaceNeed>)>> {
    let mut groups: Vec<(FileSystem, Vec<&SpaceNeed>)> = Vec::new();
    for need in needs {
        let fs = file_system(&need.path)?;
        match groups.iter_mut().find(|(g, _)| g.device == fs.device) {
            Some((_, list)) => list.push(need),
            None => groups.push((fs, vec![need])),
        }
    }
    Ok(groups)
}

/// Stops a plan that cannot fit: one message per short file system, naming
/// where, what each stage needs there and what is free.
pub(super) fn check(needs: &[SpaceNeed]) -> Result<()> {
    for (fs, list) in by_file_system(needs)? {
        let total: u64 = list.iter().map(|n| n.bytes).sum();
        if total > fs.free {
            let mut per_stage: BTreeMap<&str, u64> = BTreeMap::new();
            for n in &list {
                *per_stage.entry(n.stage).or_default() += n.bytes;
            }
            let parts: Vec<String> = list
                .iter()
                .map(|n| n.stage)
                .fold(Vec::new(), |mut seen, s| {
                    if !seen.contains(&s) {
                        seen.push(s);
                    }
                    seen
                })
                .into_iter()
                .map(|s| format!("{s} {}", human_bytes(per_stage[s])))
                .collect();
            bail!(
                "not enough disk space under {}: this build needs about {} there ({}) and {} is free. Free some space, or build on a larger disk with --build-dir DIR",
                fs.seen_at.display(),
                human_bytes(total),
                parts.join(", "),
                human_bytes(fs.free)
            );
        }
    }
    Ok(())
}

/// Whether a stage's failure was the disk filling: ENOSPC anywhere in the
/// error's chain, or in the last lines the stage's commands logged.
pub(super) fn ran_out(err: &anyhow::Error, log_tail: &[String]) -> bool {
    let in_chain = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
    });
    in_chain
        || log_tail
            .iter()
            .any(|l| l.contains("No space left on device"))
}

/// The one line for a stage that ran out: where (the fullest file system
/// among those it writes to), what is free there now, what it needs.
pub(super) fn ran_out_message(stage: &str, needs: &[SpaceNeed]) -> String {
    let fullest = by_file_system(needs).ok().and_then(|groups| {
        groups
            .into_iter()
            .map(|(fs, list)| {
                let bytes: u64 = list.iter().map(|n| n.bytes).sum();
                (fs, bytes)
            })
            .min_by_key(|(fs, _)| fs.free)
    });
    match fullest {
        Some((fs, bytes)) => format!(
            "the disk is full under {} ({} free): stage {stage} needs about {} there. Free some space (or build on a larger disk with --build-dir DIR) and run the same command again: the stages already done are kept",
            fs.seen_at.display(),
            human_bytes(fs.free),
            human_bytes(bytes)
        ),
        None => format!(
            "the disk is full: free some space and run the same command again (stage {stage})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(stage: &'static str, path: &Path, bytes: u64) -> SpaceNeed {
        SpaceNeed {
            stage,
            path: path.to_owned(),
            bytes,
        }
    }

    #[test]
    fn a_path_not_made_yet_is_measured_where_it_will_be() {
        let dir = tempfile::tempdir().unwrap();
        let fs = file_system(&dir.path().join("build/roots/node1")).unwrap();
        assert_eq!(fs.seen_at, dir.path());
        assert!(fs.free > 0);
    }

    #[test]
    fn a_plan_larger_than_the_disk_names_the_place_and_each_stage() {
        let dir = tempfile::tempdir().unwrap();
        let free = file_system(dir.path()).unwrap().free;
        // A quarter more than is free: other tests write to the same disk.
        let needs = [
            need("packages", &dir.path().join("roots/node1"), free / 8 * 5),
            need("iso", &dir.path().join("out/x.iso"), free / 8 * 5),
        ];
        let err = check(&needs).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("packages ") && err.contains(", iso "), "{err}");
        assert!(err.contains("--build-dir"), "{err}");
        check(&[need("packages", dir.path(), 1 << 20)]).unwrap();
    }

    #[test]
    fn enospc_is_found_in_the_chain_or_the_log() {
        let err = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing the stamp");
        assert!(ran_out(&err, &[]));
        let other = anyhow::anyhow!("apt-get failed");
        assert!(!ran_out(
            &other,
            &["E: Unable to locate package foo".into()]
        ));
        assert!(ran_out(
            &other,
            &["dpkg: error: No space left on device".into()]
        ));
    }

    #[test]
    fn the_message_names_the_stage_the_place_and_the_need() {
        let dir = tempfile::tempdir().unwrap();
        let msg = ran_out_message("packages", &[need("packages", dir.path(), 3 << 30)]);
        assert!(msg.contains("stage packages needs about 3.0 GiB"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
