//! Bad input everywhere a user types, generated: property tests over the
//! profile parser (never a panic; every error names its line, and its key
//! when it is about one) and over the tarball unpacker (never a file, link
//! or directory outside the destination).
//!
//! proptest draws the cases from a random seed and, on a failure, prints
//! the smallest input that still fails and saves its seed in
//! `properties.proptest-regressions` beside this file (kept in git), so
//! every later run tries it first. PROPTEST_CASES sets the number of cases
//! (default 256 per property, about a second).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tar::{EntryType, Header};
use xtask::profile::Profile;
use xtask::unpack::unpack;

// ---- the profile parser -------------------------------------------------

const SHIPPED: [&str; 3] = ["smoke", "kerrighed-2.4.1-lenny", "kerrighed-2.4.4"];

fn shipped(name: &str) -> String {
    let path = xtask::project_root().join(format!("profiles/{name}.toml"));
    fs::read_to_string(path).expect("a shipped profile")
}

/// One edit a user might make, by mistake or on purpose.
#[derive(Debug, Clone)]
enum Edit {
    /// The value of the nth `key = value` line becomes this text.
    Value(usize, String),
    DeleteLine(usize),
    DuplicateLine(usize),
    /// A line of this text goes before the nth line.
    Insert(usize, String),
    /// The file ends at this fraction of its length.
    Truncate(f64),
}

fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9./: -]{0,12}".prop_map(|s| format!("\"{s}\"")),
        "[ -~]{0,16}",
        Just("\"10.77.0.300/24\"".to_owned()),
        Just("\"10.77.0.1/33\"".to_owned()),
        Just("[\"a\", 1]".to_owned()),
        Just("{ x = 1 }".to_owned()),
        Just("\"\"".to_owned()),
        Just("300".to_owned()),
        Just("-1".to_owned()),
    ]
}

fn lines() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,10} = [0-9]{1,3}",
        "\\[[a-z_.]{1,10}\\]",
        "\\[\\[[a-z]{1,8}\\]\\]",
        "[ -~]{0,20}",
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        3 => (0usize..200, values()).prop_map(|(n, v)| Edit::Value(n, v)),
        1 => (0usize..200).prop_map(Edit::DeleteLine),
        1 => (0usize..200).prop_map(Edit::DuplicateLine),
        1 => (0usize..200, lines()).prop_map(|(n, l)| Edit::Insert(n, l)),
        1 => (0.0f64..1.0).prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for edit in edits {
        let n = lines.len().max(1);
        match edit {
            Edit::Value(i, value) => {
                let keyed: Vec<usize> = (0..lines.len())
                    .filter(|&l| {
                        let t = lines[l].trim_start();
                        !t.starts_with('#') && !t.starts_with('[') && t.contains(" = ")
                    })
                    .collect();
                if let Some(&l) = keyed.get(i % keyed.len().max(1)) {
                    let key = lines[l].split(" = ").next().unwrap_or("").to_owned();
                    lines[l] = format!("{key} = {value}");
                }
            }
            Edit::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::DuplicateLine(i) if !lines.is_empty() => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Edit::Insert(i, line) => lines.insert(i % (lines.len() + 1), line.clone()),
            Edit::Truncate(f) => {
                let joined = lines.join("\n");
                let mut cut = (joined.len() as f64 * f) as usize;
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    /// Whatever the edits, the parser answers: a profile, or an error that
    /// names the file's line (and the key, unless the text is not TOML at
    /// that point) and renders as one line a user can act on.
    #[test]
    fn an_edited_profile_is_parsed_or_refused_with_its_line(
        which in 0usize..SHIPPED.len(),
        edits in edits(),
    ) {
        let text = apply(&shipped(SHIPPED[which]), &edits);
        let file = Path::new("profiles/edited.toml");
        match std::panic::catch_unwind(|| Profile::parse(&text, file)) {
            Err(_) => prop_assert!(false, "the parser panicked on:\n{text}"),
            Ok(Ok(profile)) => {
                // What is accepted reads back the same: written out and
                // parsed again, it is the same profile.
                let written = toml::to_string(&profile).unwrap();
                let again = Profile::parse(&written, file);
                prop_assert!(again.is_ok(), "an accepted profile, written out, is refused: {again:?}\n{written}");
                let rewritten = toml::to_string(&again.unwrap()).unwrap();
                prop_assert_eq!(written, rewritten);
            }
            Ok(Err(e)) => {
                // In the edited profile, or in a file it includes.
                let included = xtask::project_root().join("profiles/include");
                prop_assert!(e.file == file || e.file.starts_with(&included), "{e}");
                let text = if e.file == file {
                    text.clone()
                } else {
                    fs::read_to_string(&e.file).unwrap()
                };
                let lines = text.lines().count().max(1);
                prop_assert!(
                    e.line >= 1 && e.line <= lines + 1,
                    "an error without its line ({}): {e}\n{text}", e.line
                );
                let shown = e.to_string();
                prop_assert!(shown.starts_with(&format!("profile {}, line ", e.file.display())), "{shown}");
                prop_assert!(!shown.trim().is_empty() && !shown.contains('\n'), "{shown:?}");
                // A value the parser read (not a syntax error) is refused
                // by its key.
                let syntax = e.key.is_empty();
                if !syntax {
                    // `sources[1].sha256`: the leaf is `sha256`; `a[0]`: `a`.
                    let leaf = e.key.rsplit('.').next().unwrap_or("");
                    let leaf = leaf.split('[').next().unwrap_or(leaf);
                    prop_assert!(
                        text.contains(leaf),
                        "the error names key `{}`, not in the text: {e}\n{text}", e.key
                    );
                }
            }
        }
    }
}

// ---- the tarball unpacker -----------------------------------------------

/// Names an archive might carry, the good and the hostile: `..`, `.`,
/// absolute ones, empty segments, a name that exists outside.
fn entry_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => Just("top".to_owned()),
        3 => "[a-c]{1,2}".prop_map(|s| s),
        2 => Just("..".to_owned()),
        1 => Just(".".to_owned()),
        1 => Just("".to_owned()),
        1 => Just("escape".to_owned()),
    ];
    (
        prop_oneof![
            6 => Just(""),
            1 => Just("/"),
            1 => Just("/tmp/krgiso-proptest-escape/"),
        ],
        proptest::collection::vec(segment, 1..5),
    )
        .prop_map(|(lead, segs)| format!("{lead}{}", segs.join("/")))
        .prop_filter("fits a tar header", |p| !p.is_empty() && p.len() < 99)
}

#[derive(Debug, Clone)]
struct Item {
    path: String,
    kind: u8,
    target: String,
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    proptest::collection::vec(
        (entry_path(), 0u8..4, entry_path()).prop_map(|(path, kind, target)| Item {
            path,
            kind,
            target,
        }),
        1..7,
    )
}

fn archive(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..item.path.len()].copy_from_slice(item.path.as_bytes());
        let kind = match item.kind {
            0 => EntryType::Regular,
            1 => EntryType::Directory,
            2 => EntryType::Symlink,
            _ => EntryType::Link,
        };
        if matches!(kind, EntryType::Symlink | EntryType::Link) {
            h.as_old_mut().linkname[..item.target.len()].copy_from_slice(item.target.as_bytes());
        }
        let data: &[u8] = if kind == EntryType::Regular {
            b"data"
        } else {
            b""
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_200_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A path with `.` and `..` resolved on its text alone (no link
/// followed); `None` if a `..` climbs above its start.
fn lexical(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

#[test]
fn lexical_resolution_never_follows_a_link() {
    assert_eq!(
        lexical(Path::new("/d/tree/a/../b/./c")),
        Some(PathBuf::from("/d/tree/b/c"))
    );
    assert_eq!(lexical(Path::new("/d/tree/a/../../../../x")), None);
    assert!(!lexical(Path::new("/d/tree/a/../../x"))
        .unwrap()
        .starts_with("/d/tree"));
}

/// Every path under `dir`, links not followed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, out);
        }
    }
}

proptest! {
    /// Whatever the archive holds, nothing lands outside the destination:
    /// no file beside it or above it, nothing at an absolute path, and
    /// every symlink left in the tree points inside it. A refused archive
    /// leaves nothing at all.
    #[test]
    fn no_archive_writes_outside_the_destination(items in items()) {
        let escape_dir = Path::new("/tmp/krgiso-proptest-escape");
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let sandbox = t.join("sandbox");
        fs::create_dir_all(&sandbox).unwrap();
        let tarball = t.join("a.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&archive(&items)).unwrap();
        fs::write(&tarball, gz.finish().unwrap()).unwrap();
        let dest = sandbox.join("out/tree");
        let result = unpack(&tarball, &dest);

        let mut everything = Vec::new();
        walk(t, &mut everything);
        let outside: Vec<&PathBuf> = everything
            .iter()
            .filter(|p| !p.starts_with(&dest) && **p != tarball && **p != sandbox
                && **p != sandbox.join("out"))
            .collect();
        prop_assert!(outside.is_empty(), "written outside {}: {outside:?} ({result:?})", dest.display());
        prop_assert!(!escape_dir.exists(), "written at an absolute path: {}", escape_dir.display());
        match &result {
            Ok(_) => {
                let root = fs::canonicalize(&dest).unwrap();
                for p in everything.iter().filter(|p| p.starts_with(&dest)) {
                    if !p.is_symlink() {
                        continue;
                    }
                    // Read as written, so a dangling link (the classic
                    // escape: its target made later) is checked too.
                    let target = fs::read_link(p).unwrap();
                    let lexical = target
                        .is_relative()
                        .then(|| lexical(&p.parent().unwrap().join(&target)))
                        .flatten();
                    prop_assert!(
                        lexical.as_ref().is_some_and(|l| l.starts_with(&dest)),
                        "{} -> {} leaves the tree", p.display(), target.display()
                    );
                    if let Ok(resolved) = fs::canonicalize(p) {
                        prop_assert!(
                            resolved.starts_with(&root),
                            "{} points outside the tree: {}", p.display(), resolved.display()
                        );
                    }
                }
            }
            Err(e) => prop_assert!(!dest.exists(), "a refused archive left {} ({e})", dest.display()),
        }
    }
}
