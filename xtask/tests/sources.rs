//! Unpacking source tarballs the tests build (good and malicious), and the
//! kerrighed modules Makefile SHELL patch on an unpacked tree.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tar::{EntryType, Header};
use xtask::stages::kernel::makefile_shell::{use_bash, ShellLine};
use xtask::unpack::unpack;

/// A tar entry written with a raw header, so the test can say things a
/// well-behaved tar writer would refuse to.
struct Entry<'a> {
    name: &'a str,
    kind: EntryType,
    link: Option<&'a str>,
    data: &'a [u8],
    mode: u32,
}

fn file<'a>(name: &'a str, data: &'a [u8], mode: u32) -> Entry<'a> {
    Entry {
        name,
        kind: EntryType::Regular,
        link: None,
        data,
        mode,
    }
}

fn dir(name: &str) -> Entry<'_> {
    Entry {
        name,
        kind: EntryType::Directory,
        link: None,
        data: b"",
        mode: 0o755,
    }
}

fn link<'a>(name: &'a str, kind: EntryType, target: &'a str) -> Entry<'a> {
    Entry {
        name,
        kind,
        link: Some(target),
        data: b"",
        mode: 0o777,
    }
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        if let Some(l) = e.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_mtime(1_200_000_000);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes the archive compressed as its name says.
fn write_archive(path: &Path, entries: &[Entry]) {
    let raw = tar_bytes(entries);
    let name = path.to_string_lossy();
    let bytes = if name.ends_with(".tar.gz") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap()
    } else if name.ends_with(".tar.bz2") {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap()
    } else {
        raw
    };
    fs::write(path, bytes).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_good_tarball_unpacks_with_modes_links_and_its_top_dir_stripped() {
    for archive_name in ["linux-2.6.20.tar.bz2", "kerrighed-2.4.1.tar.gz"] {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join(archive_name);
        write_archive(
            &archive,
            &[
                dir("top/"),
                file("top/configure", b"#!/bin/sh\necho configured\n", 0o755),
                dir("top/include/asm-i386/"),
                file("top/include/asm-i386/page.h", b"/* page */\n", 0o644),
                link("top/include/asm", EntryType::Symlink, "asm-i386"),
                link(
                    "top/scripts/up",
                    EntryType::Symlink,
                    "../include/asm-i386/page.h",
                ),
                link(
                    "top/page-copy.h",
                    EntryType::Link,
                    "top/include/asm-i386/page.h",
                ),
            ],
        );
        let dest = tmp.path().join("usr/src/linux");
        let got = unpack(&archive, &dest).unwrap();
        assert_eq!(got.top.as_deref(), Some("top"));
        assert_eq!(got.entries, 7);
        assert_eq!(
            mode(&dest.join("configure")),
            0o755,
            "configure must stay executable"
        );
        assert_eq!(mode(&dest.join("include/asm-i386/page.h")), 0o644);
        assert_eq!(
            fs::read_link(dest.join("include/asm")).unwrap(),
            Path::new("asm-i386")
        );
        assert_eq!(
            fs::read_to_string(dest.join("scripts/up")).unwrap(),
            "/* page */\n"
        );
        assert_eq!(
            fs::read_to_string(dest.join("page-copy.h")).unwrap(),
            "/* page */\n"
        );
        let mtime = fs::metadata(dest.join("configure"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_200_000_000
        );
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the tree, no partial left: {names:?}");
    }
}

#[test]
fn an_existing_tree_is_replaced_only_by_a_complete_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("src");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("old-file"), "old").unwrap();

    let bad = tmp.path().join("bad.tar.gz");
    write_archive(
        &bad,
        &[file("t/a", b"a", 0o644), file("/etc/evil", b"x", 0o644)],
    );
    assert!(unpack(&bad, &dest).is_err());
    assert!(
        dest.join("old-file").exists(),
        "a refused archive leaves the old tree as it was"
    );

    let good = tmp.path().join("good.tar.gz");
    write_archive(&good, &[file("t/a", b"a", 0o644)]);
    unpack(&good, &dest).unwrap();
    assert!(!dest.join("old-file").exists());
    assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "a");
}

#[test]
fn every_dangerous_entry_is_refused_by_name_and_nothing_is_left() {
    let cases: Vec<(Entry, &str)> = vec![
        (file("/etc/cron.d/evil", b"x", 0o644), "is an absolute path"),
        (file("top/../../evil", b"x", 0o644), "has a `..` component"),
        (
            link("top/ln", EntryType::Symlink, "/etc/passwd"),
            "outside the destination",
        ),
        (
            link("top/ln", EntryType::Symlink, "../../outside"),
            "outside the destination",
        ),
        (
            link("top/sub/ln", EntryType::Symlink, "x/../../../y"),
            "follows a name",
        ),
        // Inside the archive, but beside the destination once the top
        // directory is taken off (found by tests/properties.rs).
        (
            link("top/up", EntryType::Symlink, ".."),
            "once the top directory `top/` is taken off",
        ),
        (
            link("top/sub/up", EntryType::Symlink, "../../top/ok"),
            "once the top directory `top/` is taken off",
        ),
        (
            link("top/hl", EntryType::Link, "/etc/shadow"),
            "is a hard link",
        ),
        (
            link("top/hl", EntryType::Link, "top/../../x"),
            "is a hard link",
        ),
        (
            Entry {
                name: "top/dev/sda",
                kind: EntryType::Block,
                link: None,
                data: b"",
                mode: 0o600,
            },
            "is a device node",
        ),
        (
            Entry {
                name: "top/tty",
                kind: EntryType::Char,
                link: None,
                data: b"",
                mode: 0o600,
            },
            "is a device node",
        ),
        (
            Entry {
                name: "top/pipe",
                kind: EntryType::Fifo,
                link: None,
                data: b"",
                mode: 0o600,
            },
            "is a fifo",
        ),
    ];
    for (evil, why) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("evil.tar.gz");
        let name = evil.name.to_owned();
        write_archive(
            &archive,
            &[dir("top/"), file("top/ok", b"fine", 0o644), evil],
        );
        let dest = tmp.path().join("out/tree");
        let err = unpack(&archive, &dest).unwrap_err().to_string();
        assert!(
            err.contains(&format!("entry `{name}`")) && err.contains(why),
            "{name}: {err}"
        );
        let left: Vec<_> = fs::read_dir(tmp.path().join("out"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
        assert!(
            !tmp.path().join("evil").exists()
                && !tmp.path().parent().unwrap().join("evil").exists()
        );
    }
}

const MODULES_MAKEFILE_IN: &str = "\
# Kerrighed modules Makefile (handwritten)
SHELL = /bin/sh
top_builddir = @top_builddir@
top_srcdir = @top_srcdir@

all-y:
\t[ \"$(top_builddir)\" == \"$(top_srcdir)\" ] || lndir $(top_srcdir)/modules
\t$(MAKE) -C $(KERNEL) M=$(CURDIR) modules
";

const TOP_MAKEFILE_IN: &str = "SHELL = /bin/sh\nSUBDIRS = modules libs tools\n";

/// A kerrighed-2.4.1-like tree, unpacked from a tarball as the kernel stage does.
fn kerrighed_tree(base: &Path, modules_makefile: &str) -> std::path::PathBuf {
    let archive = base.join("kerrighed-2.4.1.tar.gz");
    write_archive(
        &archive,
        &[
            dir("kerrighed-2.4.1/"),
            file("kerrighed-2.4.1/configure", b"#!/bin/sh\n", 0o755),
            file(
                "kerrighed-2.4.1/Makefile.in",
                TOP_MAKEFILE_IN.as_bytes(),
                0o644,
            ),
            file(
                "kerrighed-2.4.1/modules/Makefile.in",
                modules_makefile.as_bytes(),
                0o644,
            ),
            file(
                "kerrighed-2.4.1/libs/Makefile.in",
                TOP_MAKEFILE_IN.as_bytes(),
                0o644,
            ),
        ],
    );
    let tree = base.join("usr/src/kerrighed-2.4.1");
    unpack(&archive, &tree).unwrap();
    tree
}

#[test]
fn the_shell_line_is_patched_in_each_form_and_nothing_else_changes() {
    for (line, patched, was) in [
        ("SHELL = /bin/sh", "SHELL = /bin/bash", "/bin/sh"),
        ("SHELL=sh", "SHELL=/bin/bash", "sh"),
        ("SHELL := sh", "SHELL := /bin/bash", "sh"),
        (
            "SHELL = /bin/sh  # portable, they said",
            "SHELL = /bin/bash  # portable, they said",
            "/bin/sh",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let original = MODULES_MAKEFILE_IN.replace("SHELL = /bin/sh", line);
        let tree = kerrighed_tree(tmp.path(), &original);
        let report = use_bash(&tree).unwrap();
        let target = tree.join("modules/Makefile.in");
        assert_eq!(
            report,
            [ShellLine::Patched {
                file: target.clone(),
                was: was.to_owned()
            }],
            "{line}"
        );
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            original.replace(line, patched)
        );
        assert_eq!(mode(&target), 0o644);
        // Other Makefiles byte-identical, even though they say SHELL = /bin/sh too.
        assert_eq!(
            fs::read_to_string(tree.join("Makefile.in")).unwrap(),
            TOP_MAKEFILE_IN
        );
        assert_eq!(
            fs::read_to_string(tree.join("libs/Makefile.in")).unwrap(),
            TOP_MAKEFILE_IN
        );

        // Idempotent: the second run changes nothing and says so.
        let again = use_bash(&tree).unwrap();
        assert_eq!(
            again,
            [ShellLine::AlreadyCorrect {
                file: target.clone()
            }]
        );
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            original.replace(line, patched)
        );
    }
}

#[test]
fn after_configure_both_modules_makefiles_are_patched() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = kerrighed_tree(tmp.path(), MODULES_MAKEFILE_IN);
    fs::write(
        tree.join("modules/Makefile"),
        MODULES_MAKEFILE_IN.replace("@top_srcdir@", ".."),
    )
    .unwrap();
    let report = use_bash(&tree).unwrap();
    assert_eq!(report.len(), 2);
    assert!(
        report
            .iter()
            .all(|r| matches!(r, ShellLine::Patched { .. })),
        "{report:?}"
    );
    assert!(fs::read_to_string(tree.join("modules/Makefile"))
        .unwrap()
        .contains("SHELL = /bin/bash\n"));
}

#[test]
fn kerrighed_2_4_4s_autoconf_shell_is_left_alone_unless_the_bashism_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = MODULES_MAKEFILE_IN
        .replace("SHELL = /bin/sh", "SHELL = @SHELL@")
        .replace(" == ", " = ");
    let tree = kerrighed_tree(tmp.path(), &fixed);
    assert!(matches!(
        use_bash(&tree).unwrap()[..],
        [ShellLine::AlreadyCorrect { .. }]
    ));
    assert_eq!(
        fs::read_to_string(tree.join("modules/Makefile.in")).unwrap(),
        fixed
    );

    let tmp = tempfile::tempdir().unwrap();
    let broken = MODULES_MAKEFILE_IN.replace("SHELL = /bin/sh", "SHELL = @SHELL@");
    let tree = kerrighed_tree(tmp.path(), &broken);
    assert!(matches!(
        use_bash(&tree).unwrap()[..],
        [ShellLine::Patched { .. }]
    ));
}

#[test]
fn a_makefile_without_the_line_gives_a_warning_and_stays_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let without = MODULES_MAKEFILE_IN.replace("SHELL = /bin/sh\n", "");
    let tree = kerrighed_tree(tmp.path(), &without);
    let report = use_bash(&tree).unwrap();
    assert!(
        matches!(&report[..], [ShellLine::PatternNotFound { .. }]),
        "{report:?}"
    );
    assert!(
        report[0].describe().starts_with("warning: ")
            && report[0].describe().contains("pattern not found")
    );
    assert_eq!(
        fs::read_to_string(tree.join("modules/Makefile.in")).unwrap(),
        without
    );
}

#[test]
fn bytes_that_are_not_utf8_survive_the_shell_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = kerrighed_tree(tmp.path(), MODULES_MAKEFILE_IN);
    let target = tree.join("modules/Makefile.in");
    // A Latin-1 author name before the line and a stray byte after it.
    let mut original = b"# Copyright Ren\xe9 Lottiaux\n".to_vec();
    original.extend_from_slice(MODULES_MAKEFILE_IN.as_bytes());
    original.extend_from_slice(b"# \xff end\n");
    fs::write(&target, &original).unwrap();
    let report = use_bash(&tree).unwrap();
    assert!(
        matches!(&report[..], [ShellLine::Patched { was, .. }] if was == "/bin/sh"),
        "{report:?}"
    );
    let at = original
        .windows(15)
        .position(|w| w == b"SHELL = /bin/sh")
        .unwrap();
    let expected = [&original[..at], b"SHELL = /bin/bash", &original[at + 15..]].concat();
    assert_eq!(fs::read(&target).unwrap(), expected);
}
