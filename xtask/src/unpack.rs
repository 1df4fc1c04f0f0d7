//! Unpacking a source tarball, safely: every entry is checked before it is
//! written, the tree is built in a hidden sibling and renamed into place
//! only when complete, and a refused archive leaves nothing behind.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use tar::EntryType;

use crate::files;
use crate::interrupt;

/// What an unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    /// The archive's single top-level directory, if it had one (its
    /// contents are what `dest` holds).
    pub top: Option<String>,
}

/// Unpacks `archive` (.tar, .tar.gz/.tgz, .tar.bz2/.tbz2) so that `dest`
/// holds its tree. When every entry sits under one top-level directory
/// (`linux-2.6.20/…`), `dest` holds that directory's contents. An existing
/// `dest` is replaced only once the new tree is complete.
pub fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked> {
    let partial = files::sibling(dest, "partial");
    files::remove_tree(&partial)?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let result = unpack_into(archive, &partial).and_then(|(n, links)| {
        let top = single_top_dir(&partial)?;
        if let Some(name) = &top {
            check_links_without_top(archive, name, &links)?;
        }
        match &top {
            Some(name) => files::replace_with(&partial.join(name), dest)?,
            None => files::replace_with(&partial, dest)?,
        }
        Ok(Unpacked { entries: n, top })
    });
    // Whatever is left of the partial tree (all of it on error).
    if let Err(e) = files::remove_tree(&partial) {
        eprintln!("warning: could not remove {}: {e:#}", partial.display());
    }
    result
}

/// Unpacks `archive` into `parent`, naming the tree as the archive does:
/// its single top-level directory (`kerrighed-2.4.4/…`), else the
/// archive's file name without `.tar.gz`, `.tar.bz2`, … Returns the tree.
pub(crate) fn unpack_named(archive: &Path, parent: &Path) -> Result<PathBuf> {
    let staging = parent.join(".unpacking");
    let unpacked = unpack(archive, &staging)?;
    let name = unpacked.top.unwrap_or_else(|| archive_stem(archive));
    let dest = parent.join(name);
    files::replace_with(&staging, &dest)?;
    Ok(dest)
}

fn archive_stem(archive: &Path) -> String {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name)
        .to_owned()
}

fn open(archive: &Path) -> Result<Box<dyn Read>> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = BufReader::new(
        File::open(archive).with_context(|| format!("opening {}", archive.display()))?,
    );
    Ok(if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if name.ends_with(".tar.bz2") || name.ends_with(".tbz2") {
        Box::new(bzip2::read::BzDecoder::new(file))
    } else if name.ends_with(".tar") {
        Box::new(file)
    } else {
        bail!(
            "cannot unpack {}: only .tar, .tar.gz and .tar.bz2 are supported",
            archive.display()
        )
    })
}

/// Symlinks unpacked: (entry path, target).
type Links = Vec<(PathBuf, PathBuf)>;

fn unpack_into(archive: &Path, into: &Path) -> Result<(usize, Links)> {
    let mut tar = tar::Archive::new(open(archive)?);
    tar.set_preserve_permissions(false); // modes kept, but no setuid/setgid from a tarball
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    let shown = archive.display();
    let mut count = 0;
    let mut links = Links::new();
    for entry in tar.entries().with_context(|| format!("reading {shown}"))? {
        interrupt::check()?;
        let mut entry = entry.with_context(|| format!("reading {shown} (is it truncated?)"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let refuse = |why: &str| anyhow::anyhow!("refusing {shown}: entry `{raw}` {why}");
        let path = PathBuf::from(&raw);
        check_path(&path).map_err(refuse)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink => {
                let target = link_target(&entry).map_err(|why| refuse(&why))?;
                check_symlink(&path, &target).map_err(|why| refuse(&why))?;
                links.push((path.clone(), target));
            }
            EntryType::Link => {
                let target = link_target(&entry).map_err(|why| refuse(&why))?;
                check_path(&target).map_err(|why| {
                    refuse(&format!(
                        "is a hard link to `{}`, which {why}",
                        target.display()
                    ))
                })?;
            }
            EntryType::Char | EntryType::Block => return Err(refuse("is a device node")),
            EntryType::Fifo => return Err(refuse("is a fifo")),
            other => {
                return Err(refuse(&format!(
                    "has an entry type this unpacker does not take ({other:?})"
                )))
            }
        }
        let inside = entry
            .unpack_in(into)
            .with_context(|| format!("unpacking `{raw}` from {shown}"))?;
        if !inside {
            return Err(refuse("would be written outside the destination"));
        }
        count += 1;
    }
    Ok((count, links))
}

/// The tree loses its top directory (`linux-2.6.20/`): a symlink that
/// climbed to the archive's root (`top/x -> ..`, `top/x -> ../top/y`) would
/// then point beside the destination. Each is checked again from where it
/// ends up.
fn check_links_without_top(archive: &Path, top: &str, links: &Links) -> Result<()> {
    for (path, target) in links {
        let inner: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .skip(1)
            .collect();
        if let Err(why) = check_symlink(&inner, target) {
            bail!(
                "refusing {}: entry `{}` {why} once the top directory `{top}/` is taken off",
                archive.display(),
                path.display()
            );
        }
    }
    Ok(())
}

fn link_target<R: Read>(entry: &tar::Entry<R>) -> Result<PathBuf, String> {
    match entry.link_name() {
        Ok(Some(t)) => Ok(t.into_owned()),
        Ok(None) => Err("is a link without a target".into()),
        Err(e) => Err(format!("has an unreadable link target ({e})")),
    }
}

/// An entry's own path: relative, and never climbing out.
fn check_path(path: &Path) -> Result<(), &'static str> {
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            Component::ParentDir => return Err("has a `..` component"),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

/// A symlink must stay inside the tree: relative, with `..` only at the
/// start (so it climbs real directories, never another link's target), and
/// never above the top.
fn check_symlink(path: &Path, target: &Path) -> Result<(), String> {
    let outside = |why: &str| format!("is a symlink to `{}`, {why}", target.display());
    let depth = path
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count()
        })
        .unwrap_or(0);
    let mut climbs = 0;
    let mut descended = false;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(outside("outside the destination"))
            }
            Component::ParentDir if descended => {
                return Err(outside(
                    "whose `..` follows a name (it could climb out through another link)",
                ))
            }
            Component::ParentDir => climbs += 1,
            Component::Normal(_) => descended = true,
            Component::CurDir => {}
        }
    }
    if climbs > depth {
        return Err(outside("outside the destination"));
    }
    Ok(())
}

/// The one directory every entry sits under, if there is exactly one.
fn single_top_dir(dir: &Path) -> Result<Option<String>> {
    let mut entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let (Some(first), None) = (entries.next(), entries.next()) else {
        return Ok(None);
    };
    let first = first.with_context(|| format!("reading {}", dir.display()))?;
    let is_dir = first.file_type().map(|t| t.is_dir()).unwrap_or(false);
    Ok(is_dir.then(|| first.file_name().to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_named_by_its_top_directory_else_by_the_archive() {
        let t = tempfile::tempdir().unwrap();
        let tarball = |name: &str, paths: &[&str]| {
            let mut b = tar::Builder::new(Vec::new());
            for p in paths {
                let mut h = tar::Header::new_gnu();
                h.set_path(p).unwrap();
                h.set_size(1);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
            let path = t.path().join(name);
            fs::write(&path, b.into_inner().unwrap()).unwrap();
            path
        };
        let krg = tarball("kerrighed-2.4.4.tar", &["kerrighed-2.4.9/configure"]);
        let tree = unpack_named(&krg, &t.path().join("work")).unwrap();
        assert_eq!(tree, t.path().join("work/kerrighed-2.4.9"));
        assert!(tree.join("configure").is_file());
        let flat = tarball("flat-1.0.tar", &["a", "b"]);
        let tree = unpack_named(&flat, &t.path().join("work")).unwrap();
        assert_eq!(tree, t.path().join("work/flat-1.0"));
        assert!(tree.join("a").is_file() && tree.join("b").is_file());
        assert!(!t.path().join("work/.unpacking").exists());
    }

    #[test]
    fn paths_and_symlinks() {
        assert!(check_path(Path::new("linux-2.6.20/Makefile")).is_ok());
        assert!(check_path(Path::new("./a/b")).is_ok());
        assert!(check_path(Path::new("/etc/passwd")).is_err());
        assert!(check_path(Path::new("a/../../b")).is_err());

        let link = Path::new("top/include/asm");
        assert!(check_symlink(link, Path::new("asm-i386")).is_ok());
        assert!(check_symlink(link, Path::new("../../top/x")).is_ok());
        assert!(check_symlink(link, Path::new("../../../x")).is_err());
        assert!(check_symlink(link, Path::new("/usr/include")).is_err());
        assert!(check_symlink(link, Path::new("sub/../../x")).is_err());
    }
}
