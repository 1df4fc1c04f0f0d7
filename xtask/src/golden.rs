//! Golden files for the config files krgiso renders: the expected text is
//! a reviewed file in the tree, beside the code that renders it.

use std::path::Path;

/// Compares `text` with the golden file `xtask/src/<path>`.
/// `KRGISO_BLESS=1` rewrites the golden file instead: review its diff
/// before committing, the golden file is the review.
pub fn check(path: &str, text: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(path);
    if std::env::var_os("KRGISO_BLESS").is_some() {
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
