//! The node1 stage: the overlays and the config files rendered from the
//! profile (dnsmasq, exports, boot.ipxe, kerrighed_nodes, network), and
//! the boot-time service that brings up DHCP + TFTP + NFS by itself.

use std::sync::Arc;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::engine::{Inputs, Output, Stage, StageRun, MIB};
use crate::files;
use crate::host::HostTool;
use crate::layout::{tftp_dir, Root, LAYERS, NODE1_ROOT, NODES_ROOT, NODES_TREE, STAGED_KERNEL};
use crate::node1::{accounts, render};
use crate::profile::{KernelKind, Userland};
use crate::stages::BuildContext;

/// Kerrighed's checkpoint directory (its tools' `CHKPT_DIR`), in the
/// nodes' root.
const CHECKPOINT_DIR: &str = "var/chkpt";

pub(crate) struct Node1(pub Arc<BuildContext>);

impl Stage for Node1 {
    fn name(&self) -> &'static str {
        "node1"
    }
    fn about(&self) -> &'static str {
        "apply the overlays and render node1's PXE, DHCP and NFS configuration"
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn recipe(&self) -> u32 {
        // 2: the nodes boot iPXE and fetch their kernel over HTTP.
        // 3: node1 is named node1; the cluster user may sudo there.
        // 4: Kerrighed's /var/chkpt in the nodes' root; no nbmin for
        //    static nodes (the settle window starts the cluster).
        // 5: UEFI nodes get iPXE's EFI build (snponly.efi); the boot
        //    script names the initramfs on the kernel's command line.
        // 6: Kerrighed: a UEFI node is told it needs BIOS/CSM, and
        //    fetches needs-bios.txt so that the status page names it.
        // 7: cluster.env says how nodes get their ids (NODE_IDS), where
        //    node1 names id clashes (ID_CLASHES) and NEEDS_BIOS.
        7
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        inputs.value("profile [network]", &self.0.profile.network);
        inputs.value("profile [cluster]", &self.0.profile.cluster);
        // Rendered into node1's files: where the status page answers.
        inputs.value("profile [status]", &self.0.profile.status);
        inputs.value("profile kernel.kind", &self.0.profile.kernel.kind);
        inputs.tree(&self.0.layout.project.join("overlay"))?;
        inputs.output_of(NODE1_ROOT);
        inputs.output_of(NODES_ROOT);
        inputs.output_of(STAGED_KERNEL);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        // Rendered files, the TFTP root's kernel and initramfs: 26-33 MiB.
        vec![Output::dir(LAYERS.name, self.0.layout.layers()).estimate(64 * MIB)]
    }
    fn host_tools(&self) -> Vec<HostTool> {
        vec![HostTool::new("openssl", "openssl")]
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        let cx = &self.0;
        let out = run.output(LAYERS.name)?.to_owned();
        let (node1, nodes) = (out.join(Root::Node1.name()), out.join(Root::Nodes.name()));
        let overlay = cx.layout.project.join("overlay");
        let mut overlays = vec![
            ("common", &node1),
            ("common", &nodes),
            ("node1", &node1),
            ("nodes", &nodes),
        ];
        // busybox init, its boot script and login shells' profile.
        if cx.profile.nodes.userland == Userland::Static {
            overlays.push(("nodes-static", &nodes));
        }
        let mut names: Vec<String> = overlays
            .iter()
            .map(|(o, _)| format!("overlay/{o}"))
            .collect();
        names.dedup();
        run.step(&format!("apply {}", names.join(", ")));
        for (from, to) in overlays {
            files::copy_tree(&overlay.join(from), to)?;
        }

        // Where the iso stage puts the nodes root inside the live system.
        fs::create_dir_all(node1.join(NODES_TREE))?;

        run.step("render the configuration of node1 and the nodes");
        let kernel = cx.layout.staged_kernel();
        let release = fs::read_to_string(kernel.join("release"))
            .context("the kernel stage left no release file: run `cargo xtask kernel`")?;
        let boot = render::BootFiles::for_release(cx.profile.kernel.kind, release.trim());
        let cluster = &cx.profile.cluster;
        for (layer, files) in [
            (&node1, render::node1_files(&cx.profile, &boot)),
            (&nodes, render::nodes_files(&cx.profile)),
        ] {
            for (path, text) in files {
                write_file(&layer.join(path), text.as_bytes())?;
            }
        }

        if cx.profile.kernel.kind == KernelKind::Kerrighed {
            // Where Kerrighed's `checkpoint` writes and `restart` reads, on
            // the shared root: any user's, like /tmp (each application's
            // directory is its owner's).
            let chkpt = nodes.join(CHECKPOINT_DIR);
            fs::create_dir_all(&chkpt).with_context(|| format!("creating {}", chkpt.display()))?;
            fs::set_permissions(&chkpt, fs::Permissions::from_mode(0o1777))?;
        }

        run.step("the boot files: iPXE and the node kernel");
        let tftp = tftp_dir(&node1);
        fs::create_dir_all(&tftp).with_context(|| format!("creating {}", tftp.display()))?;
        let root = cx.layout.root(Root::Node1);
        // iPXE for BIOS and for UEFI firmware (the node kernel decides
        // whether a UEFI node can run it: the boot script says).
        for name in [render::BOOT_LOADER, render::EFI_BOOT_LOADER] {
            let loader = root.join("usr/lib/ipxe").join(name);
            if !loader.exists() {
                bail!(
                    "{} is not in the node1 root: add ipxe to [node1] packages",
                    loader.display()
                );
            }
            fs::copy(&loader, tftp.join(name)).with_context(|| format!("copying {name}"))?;
        }
        // node1 serves them to the nodes with busybox's httpd.
        if !root.join("bin/busybox").exists() && !root.join("usr/bin/busybox").exists() {
            bail!("busybox is not in the node1 root (its httpd serves the nodes' kernel): add busybox to [node1] packages");
        }
        for name in std::iter::once(&boot.kernel).chain(boot.initrd.as_ref()) {
            fs::copy(kernel.join(name), tftp.join(name))
                .with_context(|| format!("copying {name} from the kernel stage"))?;
        }
        if boot.kind == KernelKind::Kerrighed {
            // What the boot script fetches on a UEFI node, which cannot
            // run the Kerrighed kernel.
            write_file(
                &tftp.join(render::NEEDS_BIOS),
                render::needs_bios_text().as_bytes(),
            )?;
        }

        run.step(&format!("the cluster user `{}`", cluster.user));
        let creds = accounts::Credentials::for_build(cluster, &cx.layout, run.shell)?;
        // On node1, the cluster head, the user may use sudo; not on the nodes.
        accounts::add_user(&root, &node1, &creds, cluster, true)?;
        accounts::add_user(&cx.layout.root(Root::Nodes), &nodes, &creds, cluster, false)?;
        if creds.generated {
            // The password itself is never printed or logged: a build's
            // output ends up in CI logs and bug reports.
            let said = format!(
                "no password or key in the profile: `{}` logs in with the password kept in {} (mode 0600: `sudo cat` it)",
                creds.user,
                cx.layout.credentials().display()
            );
            run.shell.note(&said);
            eprintln!("==> node1: {said}");
        }
        Ok(())
    }
}

/// A rendered file, mode 0644.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = fs::remove_file(path);
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", path.display()))
}
