//! Golden files for the config files krgiso renders: the expected text is
//! a reviewed file in the tree, beside the code that renders it.

use std::path::{Path, PathBuf};

/// Whether this run rewrites golden files: `KRGISO_BLESS=1`, and only that
/// (an empty or `0` value is a run like any other).
fn blessing() -> bool {
    blesses(std::env::var("KRGISO_BLESS").ok().as_deref())
}

fn blesses(value: Option<&str>) -> bool {
    value == Some("1")
}

fn file_of(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(path)
}

/// Compares `text` with the golden file `xtask/src/<path>`.
/// `KRGISO_BLESS=1` rewrites the golden file instead: review its diff
/// before committing, the golden file is the review.
pub(crate) fn check(path: &str, text: &str) {
    let file = file_of(path);
    if blessing() {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).expect("creating the golden dir");
        }
        std::fs::write(&file, text).expect("writing the golden file");
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "no golden file {} (run with KRGISO_BLESS=1 and review it)",
            file.display()
        )
    });
    assert_eq!(
        text,
        expected,
        "{} differs from its golden file",
        file.display()
    );
}

/// Fails on any file under the golden dir `xtask/src/<dir>` that is not
/// one of `checked` (paths as given to [`check`]): the golden file of an
/// output no longer rendered. `KRGISO_BLESS=1` removes them instead.
pub(crate) fn no_stale_files(dir: &str, checked: &[String]) {
    let root = file_of(dir);
    let stale: Vec<PathBuf> = crate::files::walk(&root)
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| !checked.iter().any(|c| file_of(c) == *p))
        .collect();
    if blessing() {
        for file in &stale {
            std::fs::remove_file(file).expect("removing a stale golden file");
        }
        return;
    }
    assert!(
        stale.is_empty(),
        "golden files of outputs no longer rendered (remove them, or run with KRGISO_BLESS=1): {stale:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_blesses() {
        assert!(blesses(Some("1")));
        for value in [None, Some("0"), Some(""), Some("yes"), Some("1 ")] {
            assert!(!blesses(value), "{value:?}");
        }
    }
}
