//! The cluster's user: in both roots, with no known password. The profile
//! gives a crypt(3) hash and/or ssh keys; with neither, a random password is
//! made once per build dir and kept in `build/credentials` (0600), never
//! printed or logged. No private key goes into the image: node1 makes the
//! cluster key pair at its first boot (`cluster-key`, in the image), which
//! lets the user ssh from node1 to any node.
//!
//! The roots are not touched: their passwd, shadow, group and gshadow are
//! read, the user is added, and the results go into the layers.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::layout::Layout;
use crate::profile::Cluster;
use crate::shell::StageShell;

/// What the user logs in with, once decided for this build dir.
pub(crate) struct Credentials {
    pub(crate) user: String,
    /// crypt(3) hash, or `!` (no password login: keys only).
    pub(crate) password_hash: String,
    /// Set when krgiso made the password (kept in build/credentials).
    pub(crate) generated: bool,
}

impl Credentials {
    /// Decides the credentials, reusing what an earlier run of this build
    /// dir made (so rebuilding the image keeps the same password).
    pub(crate) fn for_build(
        cluster: &Cluster,
        layout: &Layout,
        shell: &StageShell,
    ) -> Result<Credentials> {
        let sh = shell.sh();
        let (password_hash, generated) = match &cluster.password_hash {
            Some(hash) => (hash.clone(), false),
            None if !cluster.authorized_keys.is_empty() => ("!".to_owned(), false),
            None => {
                let saved = layout.credentials();
                let password = match read_saved_password(&saved, &cluster.user) {
                    Some(p) => p,
                    None => {
                        let p = random_password()?;
                        let text = format!(
                            "# krgiso: the cluster user's password, made by the build (no hash or key in the profile)\nuser={}\npassword={p}\n",
                            cluster.user
                        );
                        crate::files::write_atomic(&saved, text.as_bytes())?;
                        fs::set_permissions(&saved, fs::Permissions::from_mode(0o600))?;
                        p
                    }
                };
                let hash = cmd!(sh, "openssl passwd -6 -stdin")
                    .stdin(password.as_bytes())
                    .quiet()
                    .read()
                    .context("hashing the generated password with openssl")?;
                (hash, true)
            }
        };
        Ok(Credentials {
            user: cluster.user.clone(),
            password_hash,
            generated,
        })
    }
}

/// The password the build made for `user`, if it made one.
pub(crate) fn read_saved_password(path: &Path, user: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(str::to_owned))
    };
    (field("user=")? == user).then(|| field("password="))?
}

/// 16 characters from an alphabet without look-alikes, from the kernel's RNG.
fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 64];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - (256 % ALPHABET.len());
    let out: String = bytes
        .iter()
        .filter(|&&b| (b as usize) < limit)
        .take(16)
        .map(|&b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect();
    if out.len() < 16 {
        bail!("not enough randomness for a password");
    }
    Ok(out)
}

/// The group whose members may use sudo (with their password) on Debian.
const SUDO_GROUP: &str = "sudo";

/// `group` (an /etc/group or /etc/gshadow text) with `user` added to the
/// members (the last field) of group `name`, if the group is there.
fn with_member(group: &str, name: &str, user: &str) -> String {
    group
        .lines()
        .map(|line| {
            if line.split(':').next() != Some(name) {
                return line.to_owned();
            }
            let (head, members) = line.rsplit_once(':').unwrap_or((line, ""));
            let sep = if members.is_empty() { "" } else { "," };
            format!("{head}:{members}{sep}{user}")
        })
        .map(|l| l + "\n")
        .collect()
}

/// Adds the user to a root's account files, writing the results into
/// `layer` (the root itself is not changed). An `admin` may use sudo there
/// (with the cluster password) if the root has sudo. Returns the uid given.
pub(crate) fn add_user(
    root: &Path,
    layer: &Path,
    creds: &Credentials,
    cluster: &Cluster,
    admin: bool,
) -> Result<u32> {
    let read = |name: &str| fs::read_to_string(root.join("etc").join(name)).unwrap_or_default();
    let sudo = admin && root.join("usr/bin/sudo").exists();
    let member_of_sudo = |text: String| {
        if sudo {
            with_member(&text, SUDO_GROUP, &creds.user)
        } else {
            text
        }
    };
    let passwd = read("passwd");
    let user = &creds.user;
    if passwd
        .lines()
        .any(|l| l.split(':').next() == Some(user.as_str()))
    {
        bail!(
            "the user `{user}` ([cluster] user) already exists in {}: choose another name",
            root.display()
        );
    }
    let group = read("group");
    let uid = first_free_id(&passwd, &group);
    // bash where the root has it; a busybox root has only sh.
    let shell = if root.join("bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86400)
        .unwrap_or(0);
    let files = [
        (
            "passwd",
            passwd.clone(),
            format!("{user}:x:{uid}:{uid}:krgiso cluster user:/home/{user}:{shell}"),
            0o644,
        ),
        (
            "shadow",
            read("shadow"),
            format!("{user}:{}:{days}:0:99999:7:::", creds.password_hash),
            0o640,
        ),
        (
            "group",
            member_of_sudo(group.clone()),
            format!("{user}:x:{uid}:"),
            0o644,
        ),
        (
            "gshadow",
            member_of_sudo(read("gshadow")),
            format!("{user}:!::"),
            0o640,
        ),
    ];
    let etc = layer.join("etc");
    fs::create_dir_all(&etc)?;
    for (name, current, line, mode) in files {
        if name == "gshadow" && current.is_empty() {
            continue; // a root without gshadow keeps none
        }
        let mut text = current;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        let path = etc.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        if mode == 0o640 {
            // shadow files belong to group shadow where the root has one.
            if let Some(gid) = group_id(&group, "shadow") {
                chown(&path, Some(0), Some(gid)).ok();
            }
        }
    }

    let home = layer.join("home").join(user);
    let ssh = home.join(".ssh");
    fs::create_dir_all(&ssh)?;
    // The user's own keys. On the nodes, node1 adds the cluster key it
    // makes at its first boot to a copy of this file.
    let keys: String = cluster
        .authorized_keys
        .iter()
        .map(|key| format!("{key}\n"))
        .collect();
    fs::write(ssh.join("authorized_keys"), keys)?;
    fs::set_permissions(
        ssh.join("authorized_keys"),
        fs::Permissions::from_mode(0o600),
    )?;
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o750))?;
    for path in crate::files::walk(&home) {
        chown(&path, Some(uid), Some(uid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(uid)
}

fn first_free_id(passwd: &str, group: &str) -> u32 {
    let used = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let (u, g) = (used(passwd), used(group));
    (1000..60000)
        .find(|id| !u.contains(id) && !g.contains(id))
        .unwrap_or(60000)
}

fn group_id(group: &str, name: &str) -> Option<u32> {
    group
        .lines()
        .find(|l| l.split(':').next() == Some(name))?
        .split(':')
        .nth(2)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_sixteen_unambiguous_characters_and_differ() {
        let (a, b) = (random_password().unwrap(), random_password().unwrap());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(!a.contains(['0', 'O', 'l', '1', 'I']), "{a}");
    }

    #[test]
    fn the_first_free_id_skips_users_and_groups() {
        let passwd = "root:x:0:0::/root:/bin/bash\nold:x:1000:1000::/home/old:/bin/sh\n";
        let group = "root:x:0:\nold:x:1000:\nstaff:x:1001:\n";
        assert_eq!(first_free_id(passwd, group), 1002);
    }

    #[test]
    fn an_admin_joins_the_sudo_group_where_the_root_has_sudo() {
        let group = "root:x:0:\nsudo:x:27:\nstaff:x:50:\n";
        assert_eq!(
            with_member(group, "sudo", "krg"),
            "root:x:0:\nsudo:x:27:krg\nstaff:x:50:\n"
        );
        assert_eq!(
            with_member("sudo:x:27:alice\n", "sudo", "krg"),
            "sudo:x:27:alice,krg\n"
        );
        assert_eq!(with_member("sudo:*::\n", "sudo", "krg"), "sudo:*::krg\n");
        // Another group named alike is left alone.
        assert_eq!(
            with_member("sudoers:x:30:\n", "sudo", "krg"),
            "sudoers:x:30:\n"
        );
    }

    #[test]
    fn the_user_is_added_to_the_layer_not_the_root() {
        let t = tempfile::tempdir().unwrap();
        let (root, layer) = (t.path().join("root"), t.path().join("layer"));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nshadow:x:42:\n").unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/bash"), "").unwrap();
        let creds = Credentials {
            user: "krg".into(),
            password_hash: "$6$salt$hash".into(),
            generated: false,
        };
        let cluster = Cluster {
            session: 1,
            nbmin: 2,
            settle: 15,
            lost_after: 8,
            user: "krg".into(),
            password_hash: None,
            authorized_keys: vec!["ssh-ed25519 BBBB me@laptop".into()],
            scheduler: Default::default(),
        };
        let uid = add_user(&root, &layer, &creds, &cluster, false).unwrap();
        assert_eq!(uid, 1000);
        let passwd = fs::read_to_string(layer.join("etc/passwd")).unwrap();
        assert_eq!(passwd, "root:x:0:0:root:/root:/bin/bash\nkrg:x:1000:1000:krgiso cluster user:/home/krg:/bin/bash\n");
        // A root without bash (a busybox userland): the user gets sh.
        fs::remove_file(root.join("bin/bash")).unwrap();
        let other = t.path().join("layer2");
        add_user(&root, &other, &creds, &cluster, false).unwrap();
        let passwd = fs::read_to_string(other.join("etc/passwd")).unwrap();
        assert!(passwd.ends_with(":/home/krg:/bin/sh\n"), "{passwd}");
        let shadow = fs::read_to_string(layer.join("etc/shadow")).unwrap();
        assert!(
            shadow
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("krg:$6$salt$hash:"),
            "{shadow}"
        );
        assert_eq!(
            fs::metadata(layer.join("etc/shadow"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert!(!layer.join("etc/gshadow").exists(), "the root had none");
        assert_eq!(
            fs::read_to_string(root.join("etc/passwd")).unwrap(),
            "root:x:0:0:root:/root:/bin/bash\n"
        );
        let keys = fs::read_to_string(layer.join("home/krg/.ssh/authorized_keys")).unwrap();
        assert_eq!(keys, "ssh-ed25519 BBBB me@laptop\n");
        // No key pair: node1 makes the cluster's at its first boot.
        let in_ssh: Vec<_> = fs::read_dir(layer.join("home/krg/.ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(in_ssh, ["authorized_keys"]);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(layer.join("home/krg/.ssh/authorized_keys"))
                .unwrap()
                .uid(),
            1000
        );

        // Adding the same user twice is refused.
        fs::copy(layer.join("etc/passwd"), root.join("etc/passwd")).unwrap();
        assert!(add_user(&root, &t.path().join("l2"), &creds, &cluster, false).is_err());
    }
}
