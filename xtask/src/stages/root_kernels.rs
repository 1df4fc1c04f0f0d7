//! The kernels installed in a root filesystem: packages makes node1's
//! initramfs for them, iso boots the newest, the stock kernel stage stages
//! the nodes' newest.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// The kernels a root has (in /boot with their modules), oldest first by
/// version.
pub(crate) fn installed_kernels(root: &Path) -> Vec<String> {
    let mut releases: Vec<String> = fs::read_dir(root.join("lib/modules"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|r| root.join(format!("boot/vmlinuz-{r}")).exists())
        .collect();
    releases.sort_by_key(|r| version_key(r));
    releases
}

/// The newest kernel (by version) a root has; `section` names the root and
/// its profile section in the error.
pub(crate) fn newest_kernel(root: &Path, section: &str) -> Result<String> {
    installed_kernels(root).pop().with_context(|| {
        format!("the {section} root has no kernel: add a kernel package (e.g. linux-image-amd64) to [{section}] packages")
    })
}

fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernel_wins_by_version_not_by_name() {
        let t = tempfile::tempdir().unwrap();
        for r in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-28-amd64"] {
            fs::create_dir_all(t.path().join("lib/modules").join(r)).unwrap();
            fs::create_dir_all(t.path().join("boot")).unwrap();
            fs::write(t.path().join(format!("boot/vmlinuz-{r}")), "k").unwrap();
        }
        fs::create_dir_all(t.path().join("lib/modules/7.0.0-no-vmlinuz")).unwrap();
        assert_eq!(newest_kernel(t.path(), "nodes").unwrap(), "6.1.0-10-amd64");
        let empty = tempfile::tempdir().unwrap();
        assert!(newest_kernel(empty.path(), "nodes")
            .unwrap_err()
            .to_string()
            .contains("has no kernel"));
    }
}
