//! The static userland's builds (busybox, dropbear), kept beside the build
//! dir (`static-builds/<package>/`) by what makes them: the source
//! package's `.dsc` (name, size and hash, so its version), krgiso's recipe
//! for it, the build root's packages (the compilers and musl) and the
//! architecture. A `clean packages`, or a change to anything else in the
//! nodes root, then copies the build instead of compiling it again.
//!
//! An entry is written whole or not at all (made beside, then renamed),
//! and each package keeps its latest build only.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::bytes::sha256_hex;
use crate::files;

/// What one build is made from, as text (kept in the entry, to be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildKey {
    package: String,
    text: String,
}

impl BuildKey {
    /// One `name: value` line per part.
    pub(crate) fn new(package: &str, parts: &[(&str, String)]) -> BuildKey {
        BuildKey {
            package: package.to_owned(),
            text: format!("package: {package}\n{}", key_lines(parts)),
        }
    }

    fn digest(&self) -> String {
        sha256_hex(self.text.as_bytes())[..16].to_owned()
    }
}

/// The packages a root has, as dpkg records them (`Package` and
/// `Version` of each), as one digest: a compiler upgraded in the build
/// root changes it, a root built again from the same packages does not.
pub(crate) fn packages_of(root: &Path) -> Result<String> {
    let status = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status)
        .with_context(|| format!("reading {} (the root's packages)", status.display()))?;
    let mut packages: Vec<String> = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("Package: ") {
            name = Some(n.trim());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("Version: "), name) {
            packages.push(format!("{n} {}", v.trim()));
        } else if line.is_empty() {
            name = None;
        }
    }
    packages.sort();
    Ok(sha256_hex(packages.join("\n").as_bytes()))
}

/// A key's text: one `name: value` line per part, in the order given (the
/// kept builds' keys, and the kernel's kept tree's).
pub(crate) fn key_lines(parts: &[(&str, String)]) -> String {
    parts
        .iter()
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect()
}

/// The kept builds, in one directory.
pub(crate) struct StaticBuilds {
    dir: PathBuf,
}

/// In an entry: what it was made from, and the installed files.
const KEY_FILE: &str = "key";
const FILES: &str = "files";

impl StaticBuilds {
    pub(crate) fn new(dir: &Path) -> StaticBuilds {
        StaticBuilds {
            dir: dir.to_owned(),
        }
    }

    fn entry(&self, key: &BuildKey) -> PathBuf {
        self.dir.join(&key.package).join(key.digest())
    }

    /// The installed files of a build made from `key`, if one is kept.
    pub(crate) fn get(&self, key: &BuildKey) -> Option<PathBuf> {
        let entry = self.entry(key);
        let kept = fs::read_to_string(entry.join(KEY_FILE)).ok()?;
        (kept == key.text && entry.join(FILES).is_dir()).then(|| entry.join(FILES))
    }

    /// Keeps `installed` (a tree of the files the build installs) as the
    /// build made from `key`, in place of the package's earlier one.
    pub(crate) fn put(&self, key: &BuildKey, installed: &Path) -> Result<()> {
        let entry = self.entry(key);
        let partial = files::sibling(&entry, "partial");
        files::remove_tree(&partial)?;
        files::copy_tree(installed, &partial.join(FILES))?;
        fs::write(partial.join(KEY_FILE), &key.text)
            .with_context(|| format!("writing {}", partial.join(KEY_FILE).display()))?;
        let package = self.dir.join(&key.package);
        for old in fs::read_dir(&package).into_iter().flatten().flatten() {
            if old.path() != partial {
                files::remove_tree(&old.path())?;
            }
        }
        fs::rename(&partial, &entry)
            .with_context(|| format!("keeping the build in {}", entry.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: &str, recipe: &str) -> BuildKey {
        BuildKey::new(
            "busybox",
            &[
                ("source", format!("busybox_{version}.dsc 2262 sha256:ab12")),
                ("recipe", recipe.to_owned()),
            ],
        )
    }

    #[test]
    fn a_build_is_reused_for_the_same_key_only_and_the_latest_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let builds = StaticBuilds::new(&t.path().join("static-builds"));
        let installed = t.path().join("installed");
        fs::create_dir_all(installed.join("bin")).unwrap();
        fs::write(installed.join("bin/busybox"), "static busybox").unwrap();
        std::os::unix::fs::symlink("busybox", installed.join("bin/sh")).unwrap();

        let first = key("1.35.0-4", "CONFIG_STATIC=y");
        assert_eq!(builds.get(&first), None);
        builds.put(&first, &installed).unwrap();
        let files = builds.get(&first).unwrap();
        assert_eq!(
            fs::read_to_string(files.join("bin/busybox")).unwrap(),
            "static busybox"
        );
        assert_eq!(
            fs::read_link(files.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        // Another version, or another recipe: not this build.
        assert_eq!(builds.get(&key("1.36.1-1", "CONFIG_STATIC=y")), None);
        assert_eq!(builds.get(&key("1.35.0-4", "CONFIG_STATIC=n")), None);

        // A new build takes the package's place: the old one is gone.
        let second = key("1.36.1-1", "CONFIG_STATIC=y");
        builds.put(&second, &installed).unwrap();
        assert!(builds.get(&second).is_some());
        assert_eq!(builds.get(&first), None);
        let entries = fs::read_dir(t.path().join("static-builds/busybox"))
            .unwrap()
            .count();
        assert_eq!(entries, 1);

        // An entry whose key file does not match what it is named by (a
        // hand edit, a digest clash) is not used.
        let entry = builds.entry(&second);
        fs::write(entry.join(KEY_FILE), "package: busybox\nsomething else\n").unwrap();
        assert_eq!(builds.get(&second), None);
    }

    #[test]
    fn the_packages_digest_follows_names_and_versions_only() {
        let t = tempfile::tempdir().unwrap();
        let dpkg = t.path().join("var/lib/dpkg");
        fs::create_dir_all(&dpkg).unwrap();
        let status = |gcc: &str, order_swapped: bool| {
            let gcc = format!("Package: gcc-12\nStatus: install ok installed\nVersion: {gcc}\n");
            let musl = "Package: musl-tools\nVersion: 1.2.3-1\nInstalled-Size: 52\n";
            let text = if order_swapped {
                format!("{musl}\n{gcc}\n")
            } else {
                format!("{gcc}\n{musl}\n")
            };
            fs::write(dpkg.join("status"), text).unwrap();
            packages_of(t.path()).unwrap()
        };
        let first = status("12.2.0-14", false);
        assert_eq!(first, status("12.2.0-14", true));
        assert_ne!(first, status("12.2.0-14+deb12u1", false));
        fs::remove_file(dpkg.join("status")).unwrap();
        assert!(packages_of(t.path()).is_err());
    }
}
