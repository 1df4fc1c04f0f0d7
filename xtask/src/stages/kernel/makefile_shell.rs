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
    // Bytes, not text: a Makefile may hold bytes that are not UTF-8
    // (a Latin-1 name in a comment); everything but the value is kept as is.
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let file_buf = file.to_owned();
    let Some(value) = find_value(&bytes) else {
        return Ok(ShellLine::PatternNotFound { file: file_buf });
    };
    let was = String::from_utf8_lossy(&bytes[value.clone()]).into_owned();
    let bashism = bytes.windows(4).any(|w| w == b" == ");
    if was == "/bin/bash" || (was == "@SHELL@" && !bashism) {
        return Ok(ShellLine::AlreadyCorrect { file: file_buf });
    }
    let patched = [&bytes[..value.start], b"/bin/bash", &bytes[value.end..]].concat();
    let mode = fs::metadata(file)?.permissions();
    crate::files::write_atomic(file, &patched)?;
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
fn find_value(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let blank = |b: &u8| b.is_ascii_whitespace();
    let skip_blanks = |s: &[u8]| -> usize { s.iter().take_while(|b| blank(b)).count() };
    let mut offset = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let start = offset;
        offset += line.len();
        if line.first() == Some(&b'\t') {
            continue; // a recipe line, not an assignment
        }
        let mut at = skip_blanks(line);
        let Some(rest) = line[at..].strip_prefix(b"SHELL") else {
            continue;
        };
        at += 5;
        at += skip_blanks(rest);
        let rest = &line[at..];
        let op = if rest.starts_with(b":=") {
            2
        } else if rest.starts_with(b"=") {
            1
        } else {
            continue; // SHELLFLAGS, SHELL_PATH, ...
        };
        at += op;
        at += skip_blanks(&line[at..]);
        let word = line[at..].iter().take_while(|b| !blank(b)).count();
        if word == 0 {
            return None;
        }
        if line[at] == b'#' {
            continue;
        }
        return Some(start + at..start + at + word);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_a_real_assignment() {
        let text = b"# Makefile\nSHELLFLAGS = -e\n\tSHELL=x\nSHELL  :=  sh  # old\nall:\n";
        assert_eq!(&text[find_value(text).unwrap()], b"sh");
        assert!(find_value(b"all:\n\techo SHELL = /bin/sh\n").is_none());
        assert_eq!(
            &b"SHELL=/bin/sh"[find_value(b"SHELL=/bin/sh").unwrap()],
            b"/bin/sh"
        );
    }
}
