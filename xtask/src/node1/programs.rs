//! node1's in-image programs (`overlay/node1/usr/local/lib/krgiso`), tried
//! on fixtures as the test's user: `nodes-root lay` on a tree the nodes
//! control, `cap-logs` on the run directory. (What needs mounts or
//! namespaces is tried on node1 itself: the boot test, e2e-node1-netns.)

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;
    use std::process::Command;

    /// Runs node1's program `name` with `args`, on the settings `env` (lines
    /// of cluster.env), the run directory `t/run` and the variables `vars`. The program sources
    /// node1.sh from its place in the image: the overlay's copy is given
    /// by path.
    fn run_program(t: &Path, name: &str, args: &[&str], env: &str, vars: &[(&str, &str)]) {
        fs::create_dir_all(t.join("run")).unwrap();
        fs::write(t.join("cluster.env"), format!("CLUSTER_IFACE=auto\n{env}")).unwrap();
        let program = crate::project_root()
            .join("overlay/node1/usr/local/lib/krgiso")
            .join(name);
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". <(sed 's|/usr/local/lib/krgiso/node1.sh|{}|' {})",
                program.with_file_name("node1.sh").display(),
                program.display()
            ))
            .arg(name)
            .args(args)
            .env("KRGISO_ENV", t.join("cluster.env"))
            .env("KRGISO_RUN", t.join("run"))
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `nodes-root lay` on the nodes' tree at `t/export`, from the layer at
    /// `t/layer`.
    fn lay(t: &Path) {
        let env = format!(
            "CLUSTER_USER=krg\nEXPORT_DIR={}\nNODES_LAYER={}\n",
            t.join("export").display(),
            t.join("layer").display()
        );
        run_program(t, "nodes-root", &["lay"], &env, &[]);
    }

    /// Links a node planted where the layer has a directory or a file are
    /// replaced, not followed: nothing outside the tree is written.
    #[test]
    fn a_link_planted_by_a_node_does_not_redirect_the_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let (layer, export, outside) = (t.join("layer"), t.join("export"), t.join("outside"));
        for (path, text) in [
            ("home/krg/.ssh/authorized_keys", "ssh-ed25519 AAAA me\n"),
            ("usr/local/sbin/krgiso-node-report", "#!/bin/sh\n"),
            ("etc/kerrighed_nodes", "session=1\nnbmin=2\n"),
        ] {
            fs::create_dir_all(layer.join(path).parent().unwrap()).unwrap();
            fs::write(layer.join(path), text).unwrap();
        }
        fs::create_dir_all(outside.join("home")).unwrap();
        fs::write(outside.join("victim"), "precious\n").unwrap();
        fs::create_dir_all(export.join("usr/local/sbin")).unwrap();
        fs::create_dir_all(export.join("etc")).unwrap();
        // A directory the layer has, made a link to one of node1's.
        symlink(outside.join("home"), export.join("home")).unwrap();
        // Files the layer has, made links to node1's files.
        symlink(
            outside.join("victim"),
            export.join("usr/local/sbin/krgiso-node-report"),
        )
        .unwrap();
        symlink(outside.join("victim"), export.join("etc/kerrighed_nodes")).unwrap();
        // What the nodes made elsewhere stays as it is.
        fs::write(export.join("etc/motd"), "mine\n").unwrap();

        lay(t);

        assert_eq!(
            fs::read_to_string(outside.join("victim")).unwrap(),
            "precious\n"
        );
        assert_eq!(fs::read_dir(outside.join("home")).unwrap().count(), 0);
        let home = fs::symlink_metadata(export.join("home")).unwrap();
        assert!(home.is_dir(), "the planted link is still there: {home:?}");
        for path in [
            "home/krg/.ssh/authorized_keys",
            "usr/local/sbin/krgiso-node-report",
            "etc/kerrighed_nodes",
        ] {
            let meta = fs::symlink_metadata(export.join(path)).unwrap();
            assert!(meta.is_file(), "{path} is not a file of its own: {meta:?}");
            assert_eq!(
                fs::read(export.join(path)).unwrap(),
                fs::read(layer.join(path)).unwrap(),
                "{path}"
            );
        }
        assert_eq!(
            fs::read_to_string(export.join("etc/motd")).unwrap(),
            "mine\n"
        );
    }

    /// A log past the cap keeps its last part, from a line's start; a log
    /// under it, and a link named like a log, are left alone.
    #[test]
    fn cap_logs_keeps_the_end_of_a_long_log() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let run = t.join("run");
        fs::create_dir_all(&run).unwrap();
        let long: String = (0..40_000)
            .map(|i| format!("dnsmasq-dhcp: line {i}\n"))
            .collect();
        assert!(long.len() > 900 * 1024);
        fs::write(run.join("dnsmasq.log"), &long).unwrap();
        fs::write(run.join("httpd.log"), "short\n").unwrap();
        fs::write(t.join("elsewhere"), &long).unwrap();
        symlink(t.join("elsewhere"), run.join("linked.log")).unwrap();
        let caps = [
            ("KRGISO_LOG_LIMIT_KIB", "512"),
            ("KRGISO_LOG_KEEP_KIB", "256"),
        ];
        run_program(t, "cap-logs", &[], "", &caps);
        let kept = fs::read_to_string(run.join("dnsmasq.log")).unwrap();
        assert!(
            kept.len() <= 256 * 1024 && kept.len() > 200 * 1024,
            "{}",
            kept.len()
        );
        assert!(kept.starts_with("dnsmasq-dhcp: line "), "{:?}", &kept[..40]);
        assert!(kept.ends_with("dnsmasq-dhcp: line 39999\n"));
        assert!(long.ends_with(&kept));
        assert_eq!(
            fs::read_to_string(run.join("httpd.log")).unwrap(),
            "short\n"
        );
        assert_eq!(fs::read_to_string(t.join("elsewhere")).unwrap(), long);
    }
}
