//! e2e-security: node1 and its image tried as an outsider would. What
//! every copy of the smoke image carries and what its build left behind:
//! no private key in the ISO or its squashfs images (by name anywhere, by
//! content in the layers krgiso adds), the generated password in no log
//! of the build or the boot tests. node1's network surfaces, tried from
//! hosts in network namespaces (`node1::attackers`): the uplink, a proxy
//! LAN, rogue DHCP offers. node1's mounts are read in the boot tests,
//! planted links in `cargo test` (docs/security.md).

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use super::image::extract;
use super::kill::contents;
use super::smoke::{check_shell, SmokeRun, Timings};
use crate::files;
use crate::node1::accounts::read_saved_password;

/// A path that names a private key: OpenSSH's and dropbear's key files,
/// ssh host keys, TLS keys.
fn names_a_private_key(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"].contains(&name)
        || (name.starts_with("ssh_host_") && name.ends_with("_key"))
        || name.starts_with("dropbear_") && name.ends_with("_host_key")
        || name.ends_with(".key")
        || name.ends_with(".pem") && path.contains("/private/")
}

pub(crate) fn security(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-security")?;
    let sh = s.sh();
    let (iso, _) = run.layout().image(&run.profile.iso);
    ensure!(
        iso.is_file(),
        "e2e-security reads the image e2e-build leaves at {}: run `cargo xtask test --only e2e-build` first",
        iso.display()
    );
    let t = Instant::now();
    let tmp = run.build.with_file_name("security");
    files::remove_tree(&tmp)?;

    s.step("no private key in the image, by name");
    let mut entries = 0;
    for name in [None, Some("filesystem.squashfs"), Some("layers.squashfs")] {
        let listed = contents(&s, &iso, &tmp, name)?;
        entries += listed.len();
        let keys: Vec<&String> = listed
            .iter()
            .filter(|entry| entry.starts_with('-') && names_a_private_key(entry))
            .collect();
        ensure!(
            keys.is_empty(),
            "{} holds private keys, the same in every copy of the image: {keys:?}",
            name.unwrap_or("the ISO")
        );
    }
    s.step("no private key in what krgiso adds (the layers), by content");
    let layers = extract(&s, &iso, &tmp, "layers.squashfs")?;
    let tree = tmp.join("layers");
    cmd!(sh, "unsquashfs -q -n -d {tree} {layers}")
        .quiet()
        .run()?;
    let mut read = 0;
    for file in files::walk(&tree).into_iter().filter(|p| p.is_file()) {
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        read += 1;
        ensure!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "{} in the layers' image holds a private key",
            file.strip_prefix(&tree)?.display()
        );
    }
    files::remove_tree(&tmp)?;

    super::node1::attackers(&run, &s)?;

    s.step("the generated password in no log");
    let user = &run.profile.cluster.user;
    let password = read_saved_password(&run.layout().credentials(), user)
        .context("the smoke build has no generated password in build/credentials")?;
    let mut logs = 0;
    for dir in [
        run.layout().logs(),
        run.layout().qemu(),
        run.layout().qemu_uefi(),
        project.join("build/logs"),
    ] {
        for file in files::walk(&dir).into_iter().filter(|p| p.is_file()) {
            let bytes = fs::read(&file).unwrap_or_default();
            logs += 1;
            ensure!(
                !bytes
                    .windows(password.len())
                    .any(|w| w == password.as_bytes()),
                "{} holds the cluster user's generated password",
                file.display()
            );
        }
    }
    ensure!(logs > 5, "only {logs} log files read");
    s.note(&format!(
        "no private key among {entries} image entries (by name) and {read} files of the layers (by content); the password in none of {logs} logs"
    ));
    Ok(vec![(
        "the image, its logs, node1 tried from outside".to_owned(),
        t.elapsed().as_secs_f64(),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_told_from_public_halves_and_namesakes() {
        for key in [
            "-rw------- 1000/1000 /home/krg/.ssh/id_rsa",
            "-rw------- 0/0 /etc/ssh/ssh_host_ed25519_key",
            "-rw------- 0/0 /etc/dropbear/dropbear_rsa_host_key",
            "-rw-r----- 0/0 /etc/ssl/private/ssl-cert-snakeoil.key",
        ] {
            assert!(names_a_private_key(key), "{key}");
        }
        for not in [
            "-rw-r--r-- 1000/1000 /home/krg/.ssh/id_rsa.pub",
            "-rw-r--r-- 0/0 /etc/ssh/ssh_host_ed25519_key.pub",
            "-rw-r--r-- 0/0 /usr/share/ca-certificates/mozilla/ISRG_Root_X1.pem",
            "-rwxr-xr-x 0/0 /usr/bin/ssh-keygen",
        ] {
            assert!(!names_a_private_key(not), "{not}");
        }
    }
}
