//! The in-image `nodes-root` program, tried on fixtures: what it does to a
//! tree the nodes control. (Its other work needs mounts: the boot test
//! and `e2e-security` see it on node1 itself.)

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;
    use std::process::Command;

    /// `nodes-root lay` on the nodes' tree at `t/export`, from the layer at
    /// `t/layer`.
    fn lay(t: &Path) {
        fs::create_dir_all(t.join("run")).unwrap();
        fs::write(
            t.join("cluster.env"),
            format!(
                "CLUSTER_USER=krg\nCLUSTER_IFACE=auto\nEXPORT_DIR={}\nNODES_LAYER={}\n",
                t.join("export").display(),
                t.join("layer").display()
            ),
        )
        .unwrap();
        let program = crate::project_root().join("overlay/node1/usr/local/lib/krgiso/nodes-root");
        // Run as the test's user: the program sources node1.sh from its
        // place in the image, so the overlay's copy is given by path.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". <(sed 's|/usr/local/lib/krgiso/node1.sh|{}|' {})",
                program.with_file_name("node1.sh").display(),
                program.display()
            ))
            .arg("nodes-root")
            .arg("lay")
            .env("KRGISO_ENV", t.join("cluster.env"))
            .env("KRGISO_RUN", t.join("run"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nodes-root lay: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
}
