//! The kerrighed-2.4.1 modules Makefile SHELL bug (KERRIGHED.md, seed 001).
//!
//! `modules/Makefile.in` sets `SHELL = /bin/sh`, and a recipe tests
//! `[ "$(top_builddir)" == "$(top_srcdir)" ]`: `==` inside `[` is bash-only,
//! so where /bin/sh is dash the test fails, `lndir` runs on an in-tree build
//! and the build stops with `make[1]: *** [all-y] Error 1`. The fix: that
//! one `SHELL` assignment uses /bin/bash. No other line, no other Makefile.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What was found in one modules Makefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellLine {
    /// The assignment now reads `/bin/bash`; `was` is its old value.
    Patched { file: PathBuf, was: String },
    /// `/bin/bash` already, or autoconf's `@SHELL@` with no bash-only test.
    AlreadyCorrect { file: PathBuf },
    /// No `SHELL` assignment at the top: left alone (a warning, not an error).
    PatternNotFound { file: PathBuf },
}

impl ShellLine {
    /// One line for the log and the terminal.
    pub fn describe(&self) -> String {
        match self {
            ShellLine::Patched { file, was } => {
                format!("patched {}: SHELL {was} -> /bin/bash", file.display())
            }
            ShellLine::AlreadyCorrect { file } => {
                format!("{}: SHELL already correct", file.display())
            }
            ShellLine::PatternNotFound { file } => format!(
                "warning: {}: no SHELL assignment found (pattern not found); left unchanged",
                file.display()
            ),
        }
    }
}

/// The modules Makefiles of a kerrighed tree: `Makefile.in` (what configure
/// reads) and `Makefile` (what configure wrote), whichever exist.
pub fn use_bash(tree: &Path) -> Result<Vec<ShellLine>> {
    let mut out = Vec::new();
    for name in ["Makefile.in", "Makefile"] {
        let file = tree.join("modules").join(name);
        if file.exists() {
            out.push(patch_file(&file)?);
        }
    }
    if out.is_empty() {
        out.push(ShellLine::PatternNotFound {
            file: tree.join("modules/Makefile.in"),
        });
    }
    Ok(out)
}

fn patch_file(file: &Path) -> Result<ShellLine> {
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let file_buf = file.to_owned();
    let Some(value) = find_value(&text) else {
        return Ok(ShellLine::PatternNotFound { file: file_buf });
    };
    let was = text[value.clone()].to_owned();
    let bashism = text.contains(" == ");
    if was == "/bin/bash" || (was == "@SHELL@" && !bashism) {
        return Ok(ShellLine::AlreadyCorrect { file: file_buf });
    }
    let patched = format!("{}/bin/bash{}", &text[..value.start], &text[value.end..]);
    let mode = fs::metadata(file)?.permissions();
    crate::files::write_atomic(file, patched.as_bytes())?;
    fs::set_permissions(file, mode)
        .with_context(|| format!("keeping the mode of {}", file.display()))?;
    Ok(ShellLine::Patched {
        file: file_buf,
        was,
    })
}

/// Where the value of the first `SHELL = value`, `SHELL=value` or
/// `SHELL := value` outside a recipe stands (its first word only: a
/// trailing comment stays).
fn find_value(text: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if line.starts_with('\t') {
            continue; // a recipe line, not an assignment
        }
        let Some(rest) = line.trim_start().strip_prefix("SHELL") else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(value) = rest.strip_prefix(":=").or_else(|| rest.strip_prefix('=')) else {
            continue; // SHELLFLAGS, SHELL_PATH, ...
        };
        let value = value.trim_start();
        let word = value.split_whitespace().next()?;
        if word.starts_with('#') {
            continue;
        }
        let at = start + (line.len() - value.len());
        return Some(at..at + word.len());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_a_real_assignment() {
        let text = "# Makefile\nSHELLFLAGS = -e\n\tSHELL=x\nSHELL  :=  sh  # old\nall:\n";
        assert_eq!(&text[find_value(text).unwrap()], "sh");
        assert!(find_value("all:\n\techo SHELL = /bin/sh\n").is_none());
    }
}
