//! Leaner initramfs images: an initramfs-tools hook that leaves out the
//! kernel modules a boot cannot need. The firmware reads node1's initramfs
//! from the stick before anything else runs, and every node fetches its own
//! over TFTP: what is not in them is not read, sent or unpacked.

/// What node1's initramfs (MODULES=most) does without: node1 boots from
/// its own stick or CD, so it needs storage, USB and file system drivers;
/// network, graphics, sound and InfiniBand drivers load from the root
/// later.
pub const NODE1_UNNEEDED: &[&str] = &[
    "drivers/net",
    "drivers/gpu",
    "drivers/infiniband",
    "drivers/media",
    "drivers/bluetooth",
    "drivers/staging",
    "sound",
    "net/wireless",
    "net/bluetooth",
];

/// What a node's initramfs (MODULES=netboot, BOOT=nfs) does without: its
/// root is NFS, so no local file system, no RAID, no InfiniBand.
pub const NFS_NODE_UNNEEDED: &[&str] = &[
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
];

/// Where the hook goes in an initramfs-tools configuration directory.
pub const HOOK: &str = "hooks/krgiso-trim-modules";

/// The hook: removes those module directories from the image being made
/// (mkinitramfs runs depmod after the hooks).
pub fn trim_hook(why: &str, unneeded: &[&str]) -> String {
    let dirs = unneeded.join(" ");
    format!(
        "#!/bin/sh\n\
         # krgiso: {why}\n\
         # Written by krgiso; mkinitramfs runs depmod after the hooks.\n\
         case \"$1\" in prereqs) exit 0 ;; esac\n\
         # Only inside mkinitramfs: never on the running system.\n\
         [ -n \"${{DESTDIR:-}}\" ] && [ -n \"${{version:-}}\" ] && [ -d \"$DESTDIR\" ] || exit 0\n\
         for dir in {dirs}; do\n\
         \x20   rm -rf \"${{DESTDIR}}/lib/modules/${{version}}/kernel/$dir\"\n\
         done\n\
         exit 0\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    /// The hook run by sh as mkinitramfs runs it: only the listed
    /// directories go, in the image, never outside it.
    #[test]
    fn the_hook_removes_exactly_the_listed_module_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let kernel = dest.join("lib/modules/6.1.0-50-amd64/kernel");
        for dir in [
            "drivers/net/ethernet",
            "drivers/gpu/drm",
            "drivers/usb/storage",
            "fs/nfs",
        ] {
            fs::create_dir_all(kernel.join(dir)).unwrap();
            fs::write(kernel.join(dir).join("m.ko"), "ko").unwrap();
        }
        let outside = tmp
            .path()
            .join("lib/modules/6.1.0-50-amd64/kernel/drivers/gpu");
        fs::create_dir_all(&outside).unwrap();
        let hook = tmp.path().join("hook");
        fs::write(&hook, trim_hook("test", &["drivers/net", "drivers/gpu"])).unwrap();
        let status = Command::new("sh")
            .arg(&hook)
            .env("DESTDIR", &dest)
            .env("version", "6.1.0-50-amd64")
            .current_dir(tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!kernel.join("drivers/net").exists());
        assert!(!kernel.join("drivers/gpu").exists());
        assert!(kernel.join("drivers/usb/storage/m.ko").exists());
        assert!(kernel.join("fs/nfs/m.ko").exists());
        assert!(outside.exists(), "nothing outside DESTDIR is touched");
        let prereqs = Command::new("sh")
            .arg(&hook)
            .arg("prereqs")
            .output()
            .unwrap();
        assert!(prereqs.status.success() && prereqs.stdout.is_empty());
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
            assert!(!NODE1_UNNEEDED.contains(&needed), "{needed}");
        }
        for needed in ["fs/nfs", "drivers/net", "net/sunrpc"] {
            assert!(
                !NFS_NODE_UNNEEDED.iter().any(|d| needed.starts_with(d)),
                "{needed}"
            );
        }
    }
}
