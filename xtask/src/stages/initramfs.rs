//! Leaner and quicker initramfs images. The firmware reads node1's
//! initramfs from the stick before anything else runs, and every node
//! fetches its own from node1: what is not in them is not read, sent or
//! unpacked. And initramfs-tools' own module selection forks a few
//! programs per module for every module it has already copied (13,000
//! forks for node1's image, most of its 20 s): the hook here picks the same
//! modules with one `modprobe` and one `cp`.
//!
//! Both images are made the same way: `mkinitramfs -d` with a private copy
//! of the root's `/etc/initramfs-tools` (MODULES=list, plus the hook), so
//! the root's own configuration stays as Debian shipped it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files;

/// Which kernel modules an initramfs carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModuleSet {
    /// Why, said in the hook's header.
    pub(crate) why: &'static str,
    /// initramfs-tools' module groups (the arguments of its
    /// `auto_add_modules`): MODULES=most is all of them, MODULES=netboot
    /// is `base` and `net`.
    pub(crate) groups: &'static [&'static str],
    /// Module directories under `kernel/` left out, also when another hook
    /// (live-boot's adds every network driver) put them in.
    pub(crate) unneeded: &'static [&'static str],
}

/// node1's live-boot image: MODULES=most without network, graphics and
/// sound. node1 boots from its own stick or CD, so it needs storage, USB
/// and file system drivers; the rest loads from the root later.
pub(crate) const NODE1_MODULES: ModuleSet = ModuleSet {
    why: "node1 boots from its stick: no network, graphics or sound modules in its initramfs",
    groups: &[
        "base",
        "net",
        "ide",
        "scsi",
        "block",
        "ata",
        "dasd",
        "firewire",
        "mmc",
        "usb_storage",
        "fb",
    ],
    unneeded: &[
        "drivers/net",
        "drivers/gpu",
        "drivers/infiniband",
        "drivers/media",
        "drivers/bluetooth",
        "drivers/staging",
        "sound",
        "net/wireless",
        "net/bluetooth",
    ],
};

/// A node's NFS-root image: MODULES=netboot without local file systems,
/// RAID or InfiniBand.
pub(crate) const NFS_NODE_MODULES: ModuleSet = ModuleSet {
    why: "a node's root is NFS: no local file system or RAID modules in its initramfs",
    groups: &["base", "net"],
    unneeded: &[
        "drivers/infiniband",
        "drivers/md",
        "drivers/gpu",
        "fs/btrfs",
        "fs/xfs",
        "fs/f2fs",
        "fs/ext4",
        "fs/jbd2",
        "fs/jfs",
        "fs/reiserfs",
        "fs/ocfs2",
        "fs/gfs2",
        "fs/nilfs2",
        "fs/udf",
        "fs/isofs",
        "fs/ntfs3",
        "fs/fat",
        "fs/squashfs",
        "fs/overlayfs",
    ],
};

/// Where the hook goes in an initramfs-tools configuration directory
/// (mkinitramfs runs the configuration's hooks after its own).
pub(crate) const HOOK: &str = "hooks/krgiso-modules";

/// initramfs-tools' shell functions, which every hook sources.
const HOOK_FUNCTIONS: &str = "/usr/share/initramfs-tools/hook-functions";

/// The private configuration directory, inside the root.
pub(crate) const CONF_DIR: &str = "/tmp/krgiso-initramfs";

/// The hook: adds the set's modules and their dependencies, then removes
/// the unneeded directories from the image being made (mkinitramfs runs
/// depmod after the hooks).
pub(crate) fn modules_hook(set: &ModuleSet) -> String {
    let groups = set.groups.join(" ");
    let dirs = set.unneeded.join(" ");
    let filter = if set.unneeded.is_empty() {
        "cat".to_owned()
    } else {
        let patterns: String = set
            .unneeded
            .iter()
            .map(|d| format!(" -e '/kernel/{d}/'"))
            .collect();
        format!("grep -v{patterns} || true")
    };
    format!(
        r#"#!/bin/sh
# krgiso: {why}
# Written by krgiso. What MODULES=most or netboot would add (initramfs-tools'
# own groups: {groups}), resolved with one modprobe and copied with one cp.
case "$1" in prereqs) exit 0 ;; esac
# Only inside mkinitramfs: never on the running system.
[ -n "${{DESTDIR:-}}" ] && [ -n "${{version:-}}" ] && [ -d "$DESTDIR" ] || exit 0
. {HOOK_FUNCTIONS}
wanted=
# auto_add_modules hands its modules here, growing list and all.
manual_add_modules() {{ wanted="$wanted $*"; }}
auto_add_modules {groups}
list=$(mktemp) || exit 1
# As hook-functions does: with and without install lines, for softdeps.
# shellcheck disable=SC2086
{{ modprobe --all --set-version="$version" --ignore-install --quiet --show-depends $wanted || true
  modprobe --all --set-version="$version" --quiet --show-depends $wanted || true; }} |
    awk '$1 == "insmod" {{ sub("^/", "", $2); print $2 }}' | sort -u |
    {{ {filter}; }} >"$list"
if [ -s "$list" ]; then
    (cd / && xargs cp -p --parents -t "$DESTDIR") <"$list" || exit 1
    (cd / && xargs modinfo -k "$version" -F firmware) <"$list" | sort -u |
        while read -r firmware; do add_firmware "$firmware" || true; done
fi
rm -f "$list"
for dir in {dirs}; do
    rm -rf "${{DESTDIR}}/lib/modules/${{version}}/kernel/$dir"
done
exit 0
"#,
        why = set.why,
        HOOK_FUNCTIONS = HOOK_FUNCTIONS,
    )
}

/// live-boot's initramfs hook, which does not answer `prereqs`:
/// mkinitramfs's question runs the whole hook, a second time (2 s of
/// node1's initramfs). A wrapper answers it and hands every other call to
/// the hook, diverted with dpkg-divert (an upgrade of live-boot then updates
/// the diverted file, not the wrapper).
pub(crate) const LIVE_HOOK: &str = "/usr/share/initramfs-tools/hooks/live";
/// Where the diverted hook goes: outside the hooks directory, which
/// mkinitramfs runs every program of.
pub(crate) const LIVE_HOOK_DIVERTED: &str = "/usr/share/initramfs-tools/live-hook.distrib";

/// The root's live-boot hook runs in full when asked for its prereqs.
pub(crate) fn live_hook_needs_wrapper(root: &Path) -> bool {
    fs::read_to_string(root.join(LIVE_HOOK.trim_start_matches('/')))
        .is_ok_and(|text| !text.contains("prereqs"))
}

/// The dpkg-divert command that moves the live-boot hook aside.
pub(crate) fn divert_live_hook() -> [&'static str; 7] {
    [
        "dpkg-divert",
        "--local",
        "--rename",
        "--divert",
        LIVE_HOOK_DIVERTED,
        "--add",
        LIVE_HOOK,
    ]
}

/// The wrapper put where the live-boot hook was.
pub(crate) fn live_hook_wrapper() -> String {
    format!(
        r#"#!/bin/sh
# krgiso: live-boot's hook, diverted to {LIVE_HOOK_DIVERTED}, runs in full when
# mkinitramfs asks for its prereqs; this answers that and runs it once.
case "$1" in prereqs) exit 0 ;; esac
exec {LIVE_HOOK_DIVERTED} "$@"
"#
    )
}

/// A private copy of `root`'s initramfs-tools configuration at
/// [`CONF_DIR`] with these settings and the modules hook; removed when
/// dropped. MODULES is always `list`: the hook adds the modules.
pub(crate) struct ConfDir {
    dir: PathBuf,
}

impl ConfDir {
    pub(crate) fn write(
        root: &Path,
        settings: &[(&str, &str)],
        set: &ModuleSet,
    ) -> Result<ConfDir> {
        let dir = root.join(CONF_DIR.trim_start_matches('/'));
        files::remove_tree(&dir)?;
        files::copy_tree(&root.join("etc/initramfs-tools"), &dir)?;
        let conf = ConfDir { dir };
        let conf_file = conf.dir.join("initramfs.conf");
        let text = fs::read_to_string(&conf_file).unwrap_or_default();
        let mut vars = vec![("MODULES", "list")];
        vars.extend_from_slice(settings);
        fs::write(&conf_file, set_shell_vars(&text, &vars))
            .with_context(|| format!("writing {}", conf_file.display()))?;
        let hook = conf.dir.join(HOOK);
        fs::create_dir_all(hook.parent().unwrap_or(&conf.dir))
            .and_then(|()| fs::write(&hook, modules_hook(set)))
            .and_then(|()| fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("writing {}", hook.display()))?;
        Ok(conf)
    }
}

impl ConfDir {
    /// The mkinitramfs command that makes the image at `output` (a path
    /// inside the root) for kernel `version` with this configuration.
    pub(crate) fn mkinitramfs<'a>(&self, output: &'a str, version: &'a str) -> [&'a str; 6] {
        ["mkinitramfs", "-d", CONF_DIR, "-o", output, version]
    }
}

impl Drop for ConfDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Shell-variable config text (`KEY=value` lines) with these keys set.
pub(crate) fn set_shell_vars(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut done = Vec::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match vars
            .iter()
            .find(|(k, _)| *k == key && !line.trim_start().starts_with('#'))
        {
            Some((k, v)) => {
                out.push_str(&format!("{k}={v}\n"));
                done.push(*k);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, v) in vars {
        if !done.contains(k) {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The hook run by sh as mkinitramfs runs it, against stand-ins for
    /// initramfs-tools' functions and for modprobe and modinfo: every module
    /// the groups named (and their dependencies, once each) is copied
    /// unless it is in an unneeded directory, their firmware is added, and
    /// what another hook put in an unneeded directory is removed.
    #[test]
    fn the_hook_copies_the_groups_modules_and_leaves_out_the_unneeded() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let kernel = t.join("lib/modules/6.1.0-50-amd64/kernel");
        for m in [
            "drivers/ata/ahci",
            "drivers/ata/libata",
            "fs/isofs/isofs",
            "drivers/net/e1000",
        ] {
            let ko = kernel.join(format!("{m}.ko"));
            fs::create_dir_all(ko.parent().unwrap()).unwrap();
            fs::write(&ko, m).unwrap();
        }
        let k = kernel.display();
        // auto_add_modules hands over a growing list, duplicates and all.
        let functions = t.join("hook-functions");
        fs::write(
            &functions,
            format!(
                "auto_add_modules() {{ echo \"groups: $*\" >>{log}; manual_add_modules ahci e1000; manual_add_modules ahci e1000 isofs; }}\n\
                 add_firmware() {{ echo \"firmware: $1\" >>{log}; }}\n",
                log = t.join("log").display()
            ),
        )
        .unwrap();
        let bin = t.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let script = |name: &str, body: String| {
            let path = bin.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "modprobe",
            format!(
                "for m in \"$@\"; do case $m in\n\
                 ahci) echo \"insmod {k}/drivers/ata/libata.ko\"; echo \"insmod {k}/drivers/ata/ahci.ko\" ;;\n\
                 e1000) echo \"insmod {k}/drivers/net/e1000.ko\" ;;\n\
                 isofs) echo \"insmod {k}/fs/isofs/isofs.ko\"; echo 'builtin cdrom' ;;\n\
                 esac; done\n"
            ),
        );
        script(
            "modinfo",
            "for m in \"$@\"; do case $m in *ahci.ko) echo ahci-fw.bin ;; *e1000.ko) echo e1000-fw.bin ;; esac; done\n".to_owned(),
        );
        let dest = t.join("dest");
        let another_hooks = dest.join("lib/modules/6.1.0-50-amd64/kernel/drivers/net/other.ko");
        fs::create_dir_all(another_hooks.parent().unwrap()).unwrap();
        fs::write(&another_hooks, "from live-boot's hook").unwrap();
        let set = ModuleSet {
            why: "test",
            groups: &["base", "ata"],
            unneeded: &["drivers/net"],
        };
        let hook = t.join("hook");
        let text = modules_hook(&set).replace(HOOK_FUNCTIONS, &functions.display().to_string());
        fs::write(&hook, text).unwrap();
        let status = Command::new("sh")
            .arg(&hook)
            .env("DESTDIR", &dest)
            .env("version", "6.1.0-50-amd64")
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .status()
            .unwrap();
        assert!(status.success());
        let copied = |m: &str| {
            dest.join(kernel.strip_prefix("/").unwrap())
                .join(format!("{m}.ko"))
        };
        for m in ["drivers/ata/ahci", "drivers/ata/libata", "fs/isofs/isofs"] {
            assert_eq!(fs::read_to_string(copied(m)).unwrap(), m);
        }
        assert!(!copied("drivers/net/e1000").exists());
        assert!(
            !another_hooks.exists(),
            "another hook's network driver is trimmed"
        );
        let log = fs::read_to_string(t.join("log")).unwrap();
        assert_eq!(log, "groups: base ata\nfirmware: ahci-fw.bin\n");

        // Outside mkinitramfs (no DESTDIR) and for prereqs it does nothing.
        for (arg, destdir) in [("prereqs", dest.as_os_str()), ("", "".as_ref())] {
            let out = Command::new("sh")
                .arg(&hook)
                .arg(arg)
                .env("DESTDIR", destdir)
                .env("version", "6.1.0-50-amd64")
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .output()
                .unwrap();
            assert!(out.status.success() && out.stdout.is_empty());
        }
        assert_eq!(fs::read_to_string(t.join("log")).unwrap(), log);
    }

    /// The wrapper answers `prereqs` without running the hook, runs it with
    /// any other argument, and is not wrapped again.
    #[test]
    fn the_live_hook_wrapper_answers_prereqs_and_runs_the_hook_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let hook = root.join(LIVE_HOOK.trim_start_matches('/'));
        assert!(
            !live_hook_needs_wrapper(root),
            "no live-boot, nothing to wrap"
        );
        fs::create_dir_all(hook.parent().unwrap()).unwrap();
        let ran = root.join("ran");
        fs::write(
            &hook,
            format!("#!/bin/sh\necho \"$@\" >>{}\n", ran.display()),
        )
        .unwrap();
        assert!(live_hook_needs_wrapper(root));

        let diverted = root.join("live-hook.distrib");
        fs::rename(&hook, &diverted).unwrap();
        fs::set_permissions(&diverted, fs::Permissions::from_mode(0o755)).unwrap();
        let wrapper =
            live_hook_wrapper().replace(LIVE_HOOK_DIVERTED, &diverted.display().to_string());
        fs::write(&hook, wrapper).unwrap();
        assert!(!live_hook_needs_wrapper(root));
        for arg in ["prereqs", ""] {
            let out = Command::new("sh").arg(&hook).arg(arg).output().unwrap();
            assert!(out.status.success() && out.stdout.is_empty());
        }
        assert_eq!(
            fs::read_to_string(&ran).unwrap(),
            "\n",
            "run once, for the image"
        );
        assert_eq!(
            divert_live_hook()[4..],
            [LIVE_HOOK_DIVERTED, "--add", LIVE_HOOK]
        );
    }

    #[test]
    fn node1_keeps_what_a_live_boot_from_a_stick_needs() {
        for needed in [
            "drivers/usb",
            "drivers/scsi",
            "drivers/ata",
            "fs",
            "drivers/block",
        ] {
            assert!(!NODE1_MODULES.unneeded.contains(&needed), "{needed}");
        }
        for needed in ["fs/nfs", "drivers/net", "net/sunrpc"] {
            assert!(
                !NFS_NODE_MODULES
                    .unneeded
                    .iter()
                    .any(|d| needed.starts_with(d)),
                "{needed}"
            );
        }
        assert!(NFS_NODE_MODULES.groups.contains(&"net"));
    }

    #[test]
    fn initramfs_settings_are_set_in_place_or_added() {
        let conf = "# comment\nMODULES=most\n#BOOT=local\nBUSYBOX=auto\n";
        assert_eq!(
            set_shell_vars(conf, &[("MODULES", "list"), ("BOOT", "nfs")]),
            "# comment\nMODULES=list\n#BOOT=local\nBUSYBOX=auto\nBOOT=nfs\n"
        );
    }

    /// The private configuration: MODULES=list, the settings, the hook
    /// executable; the root's own configuration untouched; gone on drop.
    #[test]
    fn the_private_configuration_leaves_the_roots_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let etc = root.join("etc/initramfs-tools");
        fs::create_dir_all(etc.join("hooks")).unwrap();
        fs::write(etc.join("initramfs.conf"), "MODULES=most\nCOMPRESS=zstd\n").unwrap();
        fs::write(etc.join("modules"), "# none\n").unwrap();
        let conf = ConfDir::write(root, &[("BOOT", "nfs")], &NFS_NODE_MODULES).unwrap();
        let dir = root.join(CONF_DIR.trim_start_matches('/'));
        assert_eq!(
            fs::read_to_string(dir.join("initramfs.conf")).unwrap(),
            "MODULES=list\nCOMPRESS=zstd\nBOOT=nfs\n"
        );
        assert!(dir.join("modules").is_file());
        let mode = fs::metadata(dir.join(HOOK)).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            fs::read_to_string(etc.join("initramfs.conf")).unwrap(),
            "MODULES=most\nCOMPRESS=zstd\n"
        );
        assert!(!etc.join(HOOK).exists());
        drop(conf);
        assert!(!dir.exists());
    }
}
