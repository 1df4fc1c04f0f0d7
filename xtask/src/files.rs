//! File-system operations the pipeline needs to be safe: never delete a tree
//! with something mounted under it, never leave a half-written file that
//! looks finished.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Mount points at or under `dir`, deepest first (the order to unmount them).
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        // No /proc (not Linux): nothing we mounted can be there.
        Err(_) => return Ok(Vec::new()),
    };
    let dir = absolute(dir)?;
    let mut found: Vec<PathBuf> = mountinfo_entries(&mountinfo)
        .map(|(_, at)| at)
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// The mounts a mountinfo file (`/proc/<pid>/mountinfo`) lists: each line's
/// device (`major:minor`, the third field) and mount point (the fifth,
/// unescaped). Lines with fewer fields are skipped.
pub(crate) fn mountinfo_entries(text: &str) -> impl Iterator<Item = (&str, PathBuf)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let at = fields.nth(1)?;
        Some((dev, PathBuf::from(unescape_mountinfo(at))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` octal.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` made absolute and free of symlinks where it exists.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Ok(p);
    }
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    // Canonicalize the part that exists, keep the rest as written.
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
    let mut out = fs::canonicalize(existing).unwrap_or_else(|_| existing.to_owned());
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Removes a file or a directory tree. Refuses, naming them, when anything is
/// mounted at or under it: deleting through a bind mount of /dev would delete
/// the host's /dev. Does not follow symlinks. Missing is not an error.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).with_context(|| format!("removing {}", path.display()));
    }
    let mounts = mounts_under(path)?;
    if !mounts.is_empty() {
        let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
        bail!(
            "refusing to delete {}: still mounted under it: {} (unmount them, e.g. `umount -R {}`)",
            path.display(),
            list.join(", "),
            mounts[mounts.len() - 1].display()
        );
    }
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// Writes a file so that readers see the old content or the new, never a part:
/// temporary sibling, fsync, rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = sibling(path, "tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}

/// `dir/.name.suffix`: where a path's replacement is built, or its previous
/// version parked while the replacement moves in. Hidden, so nobody takes it
/// for the real thing.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Moves a finished `built` file or directory to `dest`, replacing what was
/// there. For a file this is one rename; a directory's predecessor is parked
/// beside it first and removed after.
pub(crate) fn replace_with(built: &Path, dest: &Path) -> Result<()> {
    let parked = sibling(dest, "old");
    remove_tree(&parked)?;
    let had_old = fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir());
    if had_old {
        fs::rename(dest, &parked).with_context(|| format!("moving {} aside", dest.display()))?;
    }
    if let Err(e) = fs::rename(built, dest) {
        if had_old {
            let _ = fs::rename(&parked, dest);
        }
        return Err(e).with_context(|| format!("moving {} to {}", built.display(), dest.display()));
    }
    if had_old {
        remove_tree(&parked)?;
    }
    Ok(())
}

/// Bytes and files in a tree (symlinks counted, not followed).
pub(crate) fn tree_size(path: &Path) -> (u64, u64) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return (0, 0);
    };
    if !meta.is_dir() {
        return (meta.len(), 1);
    }
    let mut totals = (0, 0);
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                totals.0 += meta.len();
                totals.1 += 1;
            }
        }
    }
    totals
}

/// Copies a tree into `to` (merging with what is there; the copy wins):
/// modes and symlinks kept, owned by root, `.gitkeep` placeholders skipped.
/// Missing `from` copies nothing.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", from.display()))?;
        if e.file_name() == ".gitkeep" {
            continue;
        }
        let (src, dest) = (e.path(), to.join(e.file_name()));
        let meta = fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&src)?;
            let _ = fs::remove_file(&dest);
            std::os::unix::fs::symlink(target, &dest)
                .with_context(|| format!("linking {}", dest.display()))?;
        } else if meta.is_dir() {
            copy_tree(&src, &dest)?;
            fs::set_permissions(&dest, meta.permissions())?;
        } else {
            let _ = fs::remove_file(&dest);
            fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(meta.permissions().mode()))?;
        }
        std::os::unix::fs::lchown(&dest, Some(0), Some(0)).ok();
    }
    Ok(())
}

/// `dir` and everything under it, each directory before its entries
/// (symlinks not followed into).
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if fs::symlink_metadata(&out[i]).is_ok_and(|m| m.is_dir()) {
            let mut children: Vec<PathBuf> = fs::read_dir(&out[i])
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            out.append(&mut children);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/tail\"), "/tail\\");
    }

    #[test]
    fn mountinfo_entries_give_device_and_unescaped_mount_point() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    short line\n\
                    37 36 8:1 / /boot rw - vfat /dev/sda1 rw\n";
        let got: Vec<(&str, PathBuf)> = mountinfo_entries(text).collect();
        assert_eq!(
            got,
            vec![
                ("98:0", PathBuf::from("/mnt/a b")),
                ("8:1", PathBuf::from("/boot")),
            ]
        );
    }

    #[test]
    fn root_has_mounts_under_it_and_refuses_deletion() {
        // "/" always has /proc mounted under it on Linux: the refusal path.
        let mounts = mounts_under(Path::new("/")).unwrap();
        assert!(mounts.iter().any(|m| m == Path::new("/proc")), "{mounts:?}");
        let err = remove_tree(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("refusing to delete /"), "{err}");
    }

    #[test]
    fn replace_with_swaps_directories_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("root");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old"), "1").unwrap();
        let built = sibling(&dest, "partial");
        fs::create_dir(&built).unwrap();
        fs::write(built.join("new"), "2").unwrap();
        replace_with(&built, &dest).unwrap();
        assert!(dest.join("new").exists());
        assert!(!dest.join("old").exists());
        assert!(!built.exists());
        assert!(!sibling(&dest, "old").exists());

        let file = tmp.path().join("a.iso");
        fs::write(&file, "old").unwrap();
        let part = sibling(&file, "partial");
        fs::write(&part, "new").unwrap();
        replace_with(&part, &file).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
    }

    #[test]
    fn write_atomic_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("sub/stamp.json");
        write_atomic(&p, b"x").unwrap();
        write_atomic(&p, b"y").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "y");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
