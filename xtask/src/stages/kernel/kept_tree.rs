//! The Kerrighed build tree, kept in `build/kernel-work/` after the stage
//! (like mkosi's build directory): the next run, after `clean kernel` or a
//! fragment change, makes it again incrementally instead of unpacking,
//! patching, configuring and compiling it anew. kbuild rebuilds what a
//! changed config symbol touches, so only what the tree was *prepared*
//! from must be the same: that is the [`TreeKey`], written beside the tree
//! once a run has left it in a state make can go on from.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::stages::static_builds::key_lines;

/// The file in the work dir that says what the tree was prepared from.
const KEY_FILE: &str = "krgiso-tree-key";

/// What a kernel tree is prepared from: the sources' pins, the project's
/// patches, the compilers (the package set of the root that builds it) and
/// how kerrighed is configured. Two runs with the same key would unpack,
/// patch and configure byte-identical trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeKey(String);

impl TreeKey {
    /// One `name: value` line per part, in the order given.
    pub(crate) fn new(parts: &[(&str, String)]) -> TreeKey {
        TreeKey(key_lines(parts))
    }
}

/// The tree kept in `work`, if it was prepared from `key` and is still
/// there: its path. The key file is taken away either way, so a run that
/// is killed while it makes the tree (a half-written object file looks
/// up to date to make) never leaves it to the next one; [`keep`] writes it
/// back when the run leaves the tree whole.
pub(crate) fn take(work: &Path, key: &TreeKey) -> Result<Option<PathBuf>> {
    let file = work.join(KEY_FILE);
    let Ok(text) = fs::read_to_string(&file) else {
        return Ok(None);
    };
    fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    let Some((kept, tree)) = text.rsplit_once("tree: ") else {
        return Ok(None);
    };
    let tree = work.join(tree.trim());
    Ok((kept == key.0 && tree.is_dir() && tree != work).then_some(tree))
}

/// Says the tree in `work` was prepared from `key` and is whole: the next
/// run may make it again.
pub(crate) fn keep(work: &Path, key: &TreeKey, tree: &Path) -> Result<()> {
    let name = tree
        .file_name()
        .context("the kernel tree has no name")?
        .to_string_lossy();
    let file = work.join(KEY_FILE);
    fs::write(&file, format!("{}tree: {name}\n", key.0))
        .with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(patch: &str) -> TreeKey {
        TreeKey::new(&[
            ("linux", "linux-2.6.20.tar.bz2 2be14ada".to_owned()),
            ("patch 01.patch", patch.to_owned()),
        ])
    }

    #[test]
    fn a_kept_tree_is_reused_once_and_only_for_the_same_key() {
        let t = tempfile::tempdir().unwrap();
        let work = t.path();
        let tree = work.join("kerrighed-2.4.4");
        fs::create_dir_all(&tree).unwrap();
        // Nothing kept yet.
        assert_eq!(take(work, &key("a")).unwrap(), None);

        keep(work, &key("a"), &tree).unwrap();
        assert_eq!(take(work, &key("a")).unwrap(), Some(tree.clone()));
        // Taken: a run killed after this must not leave it to the next.
        assert_eq!(take(work, &key("a")).unwrap(), None);

        // Another patch: the tree is not this key's.
        keep(work, &key("a"), &tree).unwrap();
        assert_eq!(take(work, &key("b")).unwrap(), None);
        assert!(!work.join(KEY_FILE).exists());

        // The key says a tree that is gone.
        keep(work, &key("a"), &tree).unwrap();
        fs::remove_dir_all(&tree).unwrap();
        assert_eq!(take(work, &key("a")).unwrap(), None);
    }
}
