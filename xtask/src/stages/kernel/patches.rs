//! The project's compatibility patches for building a 2007 kernel tree with
//! a current toolchain (`kernel-patches/`, one file per problem): applied
//! with GNU patch inside the build root, each checked first. A patch that
//! is already in the tree is said and skipped; one that no longer applies
//! stops the build, naming the patch, the file and the hunk.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::chroot::Chroot;
use crate::shell::StageShell;

/// The patch files of a directory, in name order.
#[derive(Debug, Clone)]
pub(crate) struct PatchSet {
    /// The directory, as the profile names it (for messages).
    pub(crate) dir: PathBuf,
    pub(crate) files: Vec<PathBuf>,
}

/// What became of one patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied,
    /// The tree already has it (it applies in reverse): skipped.
    AlreadyApplied,
}

impl PatchSet {
    /// Every `*.patch` in `dir`, sorted by name. A missing or empty
    /// directory is an error: the profile asked for patches.
    pub(crate) fn load(dir: &Path) -> Result<PatchSet> {
        let entries = fs::read_dir(dir)
            .with_context(|| format!("reading the kernel patches directory {}", dir.display()))?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "patch"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "{} holds no *.patch file (kernel.patches in the profile)",
                dir.display()
            );
        }
        Ok(PatchSet {
            dir: dir.to_owned(),
            files,
        })
    }

    /// Applies each patch with `patch -p1` in `tree` (a path inside the
    /// chroot), where `inside` is where this set's files are seen in the
    /// chroot. Each is tried with `--dry-run` first, so a patch that fails
    /// changes nothing. Returns each file name with what became of it.
    pub(crate) fn apply(
        &self,
        chroot: &Chroot,
        shell: &StageShell,
        tree: &str,
        inside: &str,
    ) -> Result<Vec<(String, Outcome)>> {
        let mut done = Vec::new();
        for file in &self.files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let patch = format!("{inside}/{name}");
            let patch_cmd = |extra: &[&str]| {
                let mut args = vec!["patch", "-p1", "--batch", "-i", &patch];
                args.extend_from_slice(extra);
                chroot.cmd_in(tree, &args, false)
            };
            let (fits, said) = shell.try_collect(patch_cmd(&["--forward", "--dry-run"]))?;
            let outcome = if fits {
                shell.run(patch_cmd(&["--forward"]))?;
                Outcome::Applied
            } else if shell.try_collect(patch_cmd(&["--reverse", "--dry-run"]))?.0 {
                Outcome::AlreadyApplied
            } else {
                bail!(
                    "the kernel patch {} no longer applies: {}; fix or remove it (the tree is kept in the kernel work dir)",
                    self.dir.join(&name).display(),
                    failed_hunks(&said)
                );
            };
            shell.step(&match outcome {
                Outcome::Applied => format!("applied {name}"),
                Outcome::AlreadyApplied => format!("{name}: already in the tree, skipped"),
            });
            done.push((name, outcome));
        }
        Ok(done)
    }
}

/// What GNU patch's output says failed, as `file: hunk #N (at line L)`
/// phrases, or the reason it gave when no hunk was tried.
pub(crate) fn failed_hunks(output: &str) -> String {
    let mut file = String::new();
    let mut failures = Vec::new();
    for line in output.lines().map(str::trim) {
        if let Some(f) = line
            .strip_prefix("checking file ")
            .or_else(|| line.strip_prefix("patching file "))
        {
            file = f.trim_matches(['\'', '"']).to_owned();
        } else if let Some(rest) = line.strip_prefix("Hunk #") {
            if let Some((number, after)) = rest.split_once(" FAILED") {
                let at = after
                    .trim()
                    .strip_prefix("at ")
                    .map(|l| format!(" (at line {})", l.trim_end_matches('.')))
                    .unwrap_or_default();
                failures.push(format!("{file}: hunk #{number} failed{at}"));
            }
        } else if line.starts_with("can't find file to patch") {
            failures.push(format!("a file it patches is missing ({line})"));
        } else if line.contains("Only garbage was found") || line.contains("malformed patch") {
            failures.push(format!("it is not a patch ({line})"));
        }
    }
    if failures.is_empty() {
        let last = output.lines().rev().find(|l| !l.trim().is_empty());
        return format!("patch said: {}", last.unwrap_or("nothing").trim());
    }
    failures.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_hunks_are_named_with_their_file_and_line() {
        // What GNU patch 2.7 prints for a --dry-run that does not fit.
        let out = "checking file _kernel/Makefile\n\
                   Hunk #1 succeeded at 415 (offset 3 lines).\n\
                   Hunk #2 FAILED at 1450.\n\
                   1 out of 2 hunks FAILED\n\
                   checking file _kernel/kernel/mutex.c\n\
                   Hunk #3 FAILED at 190.\n";
        assert_eq!(
            failed_hunks(out),
            "_kernel/Makefile: hunk #2 failed (at line 1450); _kernel/kernel/mutex.c: hunk #3 failed (at line 190)"
        );
        let missing = "can't find file to patch at input line 3\n\
                       Perhaps you used the wrong -p or --strip option?\n\
                       No file to patch.  Skipping patch.\n";
        assert!(failed_hunks(missing).starts_with("a file it patches is missing"));
        assert_eq!(
            failed_hunks("patch: **** Only garbage was found in the patch input.\n"),
            "it is not a patch (patch: **** Only garbage was found in the patch input.)"
        );
        assert_eq!(failed_hunks("weird\n\n"), "patch said: weird");
    }

    #[test]
    fn a_set_is_its_patch_files_in_name_order() {
        let t = tempfile::tempdir().unwrap();
        for name in ["02-b.patch", "01-a.patch", "README", "10-c.patch"] {
            fs::write(t.path().join(name), "x").unwrap();
        }
        let set = PatchSet::load(t.path()).unwrap();
        let names: Vec<_> = set
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["01-a.patch", "02-b.patch", "10-c.patch"]);
        let empty = tempfile::tempdir().unwrap();
        let err = PatchSet::load(empty.path()).unwrap_err().to_string();
        assert!(err.contains("holds no *.patch file"), "{err}");
    }

    #[test]
    fn the_shipped_patches_each_say_what_they_answer() {
        let set = PatchSet::load(&crate::project_root().join("kernel-patches")).unwrap();
        assert!(set.files.len() >= 6, "{:?}", set.files);
        for file in &set.files {
            let text = fs::read_to_string(file).unwrap();
            let header = &text[..text
                .find("\n--- a/")
                .unwrap_or_else(|| panic!("{} has no unified diff", file.display()))];
            assert!(
                header.starts_with("Answers: "),
                "{} must start with the compiler/binutils/make change it answers",
                file.display()
            );
            for line in text
                .lines()
                .filter(|l| l.starts_with("--- ") || l.starts_with("+++ "))
            {
                let path = &line[4..];
                assert!(
                    path.starts_with("a/") || path.starts_with("b/"),
                    "{}: {line}: paths must be a/… and b/… (patch -p1)",
                    file.display()
                );
            }
        }
    }
}
