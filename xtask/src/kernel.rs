//! The kernel stage: linux-2.6.20 + kerrighed-2.4.1 built inside the nodes
//! root with its own compiler (kind = "kerrighed"), or the nodes root's own
//! Debian kernel with an NFS-root initramfs (kind = "stock"); staged for TFTP
//! in `build/kernel/`.
//!
//! The kerrighed flow is the seeds' "Compile the Kerrighed kernel" section
//! (000, 001), non-interactive, with KERRIGHED.md's corrections: configure
//! prepares the kernel tree itself from /usr/src/linux-2.6.20.tar.bz2,
//! `CC=` goes to every make, and the merged config is verified.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::chroot::{Chroot, ExtraBind};
use crate::engine::{Inputs, Layout, Output, Stage, StageRun};
use crate::fetch::{self, Cache, FetchOptions};
use crate::files;
use crate::host::HostTool;
use crate::kernel_config;
use crate::modules_makefile::{self, ShellLine};
use crate::packages::{root_dir, NODES_ROOT};
use crate::pipeline::BuildContext;
use crate::profile::KernelKind;
use crate::shell::StageShell;
use crate::unpack;

pub const KERNEL: &str = "kernel";
/// The release kerrighed-2.4.x's patched 2.6.20 builds.
pub const KRG_RELEASE: &str = "2.6.20-krg";
/// Where the sources sit inside the nodes chroot (a bind mount of the work dir).
const SRC: &str = "/usr/src";
const LINUX_TARBALL: &str = "linux-2.6.20.tar.bz2";
const LINUX_DIR: &str = "linux-2.6.20";
const KRG_DIR: &str = "kerrighed-2.4.1";
/// What `make install` must leave in the nodes root (seed 001's list).
pub const KRG_INSTALLED: &[&str] = &[
    "boot/vmlinuz-2.6.20-krg",
    "lib/modules/2.6.20-krg",
    "etc/init.d/kerrighed",
    "etc/default/kerrighed",
    "usr/local/bin/krgadm",
    "usr/local/bin/krgcapset",
    "usr/local/bin/migrate",
];

pub struct Kernel(pub Arc<BuildContext>);

/// Where the kernel stage leaves the node kernel (and its initrd, config,
/// release) for node1's TFTP root.
pub fn staged_dir(layout: &Layout) -> PathBuf {
    layout.build.join("kernel")
}

impl Kernel {
    fn nodes_root(&self) -> PathBuf {
        root_dir(&self.0.layout, "nodes")
    }
    /// Scratch space for the kernel and kerrighed trees: seen as /usr/src in
    /// the chroot, so a gigabyte of objects never lands in the nodes root.
    fn work_dir(&self) -> PathBuf {
        self.0.layout.build.join("kernel-work")
    }
}

impl Stage for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }
    fn about(&self) -> &'static str {
        "build the node kernel in the nodes root and stage it for TFTP"
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn host_tools(&self) -> Vec<HostTool> {
        vec![
            HostTool::new("chroot", "coreutils"),
            HostTool::new("setarch", "util-linux"),
        ]
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        let kernel = &self.0.profile.kernel;
        inputs.value("profile [kernel]", kernel);
        if kernel.kind == KernelKind::Kerrighed {
            // The bytes the kernel is built from: file name and effective pin
            // (the profile's sha256, else sources.lock's). Mirrors may change.
            let lock = self.0.sources_lock()?;
            for name in ["linux", "kerrighed"] {
                if let Some(source) = self.0.profile.source(name) {
                    let pin = fetch::pin_of(source, &lock).unwrap_or("unpinned");
                    inputs.value(&format!("source {name}"), &(&source.file, pin));
                }
            }
            if let Some(config) = &kernel.config {
                inputs.file(&self.0.layout.project.join(config))?;
            }
        }
        inputs.output_of("packages", NODES_ROOT);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::dir(KERNEL, staged_dir(&self.0.layout))]
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        let out = run.output(KERNEL)?.to_owned();
        let release = match self.0.profile.kernel.kind {
            KernelKind::Kerrighed => self.build_kerrighed(run.shell, &out)?,
            KernelKind::Stock => self.stage_stock(run.shell, &out)?,
        };
        fs::write(out.join("release"), format!("{release}\n"))
            .context("writing the kernel release")?;
        Ok(())
    }
}

impl Kernel {
    fn build_kerrighed(&self, shell: &StageShell, out: &Path) -> Result<String> {
        let cx = &self.0;
        let spec = &cx.profile.kernel;
        let cc = spec.cc.as_deref().context("kernel.cc is not set")?;
        let fragment_path = cx
            .layout
            .project
            .join(spec.config.as_deref().context("kernel.config is not set")?);
        let fragment = fs::read_to_string(&fragment_path).with_context(|| {
            format!(
                "reading the kernel config fragment {}",
                fragment_path.display()
            )
        })?;

        shell.step("verify the sources (linux-2.6.20, kerrighed-2.4.1)");
        let sources: Vec<_> = ["linux", "kerrighed"]
            .iter()
            .map(|n| {
                cx.profile
                    .source(n)
                    .cloned()
                    .with_context(|| format!("no [[sources]] entry named {n}"))
            })
            .collect::<Result<_>>()?;
        let mut lock = cx.sources_lock()?;
        let options = FetchOptions {
            offline: cx.offline,
            ..FetchOptions::default()
        };
        let verified = fetch::fetch(
            &sources,
            &mut lock,
            &Cache::new(&cx.layout.downloads),
            &options,
        )?;
        let (linux, krg) = (&verified[0].path, &verified[1].path);

        let work = self.work_dir();
        files::remove_tree(&work)?;
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        shell.step("unpack linux-2.6.20 and kerrighed-2.4.1");
        unpack::unpack(linux, &work.join(LINUX_DIR))?;
        unpack::unpack(krg, &work.join(KRG_DIR))?;
        // Kerrighed's build links this instead of downloading an unverified copy.
        fs::copy(linux, work.join(LINUX_TARBALL))
            .context("placing the verified linux tarball in /usr/src")?;
        for line in modules_makefile::use_bash(&work.join(KRG_DIR))? {
            shell.note(&line.describe());
            if matches!(line, ShellLine::PatternNotFound { .. }) {
                eprintln!("{}", line.describe());
            }
        }

        let bind = ExtraBind {
            host: work.clone(),
            inside: SRC.into(),
        };
        let chroot = Chroot::enter(&self.nodes_root(), &cx.profile.nodes.arch, &[bind], shell)?;
        require_compiler(&chroot, cc)?;
        let krg_dir = format!("{SRC}/{KRG_DIR}");
        let cc_arg = format!("CC={cc}");
        let jobs = format!(
            "-j{}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );

        shell.step("configure kerrighed");
        let with_kernel = format!("--with-kernel={SRC}/{LINUX_DIR}");
        let mut configure = vec![
            "./configure",
            &with_kernel,
            "--with-kernel-config=oldconfig",
            &cc_arg,
        ];
        configure.extend(spec.configure_args.iter().map(String::as_str));
        shell.run(chroot.cmd_in(&krg_dir, &configure, true))?;

        shell.step("kernel config: defconfig, then the fragment, then oldconfig");
        shell.run(chroot.cmd_in(
            &krg_dir,
            &["make", "-C", "kernel", "defconfig", &cc_arg],
            false,
        ))?;
        let config_path = work.join(KRG_DIR).join("kernel/.config");
        let defconfig = fs::read_to_string(&config_path)
            .with_context(|| format!("make defconfig left no {}", config_path.display()))?;
        fs::write(&config_path, kernel_config::merge(&defconfig, &fragment))
            .context("writing the merged .config")?;
        shell.run(chroot.cmd_in(
            &krg_dir,
            &["make", "-C", "kernel", "oldconfig", &cc_arg],
            true,
        ))?;
        let resolved = fs::read_to_string(&config_path).context("reading the resolved .config")?;
        let dropped = kernel_config::dropped(&fragment, &resolved);
        if !dropped.is_empty() {
            // The work dir stays after a failure: the config can be read there.
            bail!(
                "the kernel config dropped what {} asks for (unmet dependencies): {}; the resolved config is {}",
                fragment_path.display(),
                dropped.join(", "),
                config_path.display()
            );
        }
        fs::write(out.join(format!("config-{KRG_RELEASE}")), &resolved)
            .context("keeping the resolved config")?;
        shell.step(&format!(
            "kernel config verified: {}",
            cx.layout
                .show(&staged_dir(&cx.layout).join(format!("config-{KRG_RELEASE}")))
        ));

        for (what, args) in [
            (
                "build the kernel (make kernel)",
                vec!["make", &jobs, "kernel", &cc_arg],
            ),
            ("build kerrighed (make)", vec!["make", &jobs, &cc_arg]),
            (
                "install the kernel (make kernel-install)",
                vec!["make", "kernel-install", &cc_arg],
            ),
            (
                "install kerrighed (make install)",
                vec!["make", "install", &cc_arg],
            ),
        ] {
            shell.step(what);
            shell.run(chroot.cmd_in(&krg_dir, &args, false))?;
        }
        shell.step("ldconfig");
        chroot.run(&["ldconfig"])?;
        drop(chroot);

        let root = self.nodes_root();
        let missing: Vec<&str> = KRG_INSTALLED
            .iter()
            .copied()
            .filter(|p| !root.join(p).exists())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the kerrighed install left out of the nodes root: {}",
                missing.join(", ")
            );
        }
        fs::copy(
            root.join(format!("boot/vmlinuz-{KRG_RELEASE}")),
            out.join(format!("vmlinuz-{KRG_RELEASE}")),
        )
        .context("staging the kernel for TFTP")?;
        files::remove_tree(&work)?;
        Ok(KRG_RELEASE.to_owned())
    }

    /// The nodes root's own kernel, and an initramfs that mounts its root
    /// over NFS (initramfs-tools with BOOT=nfs, network drivers included).
    fn stage_stock(&self, shell: &StageShell, out: &Path) -> Result<String> {
        let root = self.nodes_root();
        let release = newest_kernel(&root, "nodes")?;
        shell.step(&format!("initramfs for an NFS root ({release})"));
        let conf = root.join("tmp/krgiso-initramfs");
        files::remove_tree(&conf)?;
        files::copy_tree(&root.join("etc/initramfs-tools"), &conf)?;
        let conf_file = conf.join("initramfs.conf");
        let text = fs::read_to_string(&conf_file).unwrap_or_default();
        fs::write(
            &conf_file,
            set_shell_vars(&text, &[("BOOT", "nfs"), ("MODULES", "netboot")]),
        )
        .context("writing the NFS initramfs settings")?;

        let chroot = Chroot::enter(&root, &self.0.profile.nodes.arch, &[], shell)?;
        let initrd_inside = "/tmp/krgiso-initrd.img";
        chroot
            .run(&[
                "mkinitramfs",
                "-d",
                "/tmp/krgiso-initramfs",
                "-o",
                initrd_inside,
                &release,
            ])
            .context("mkinitramfs failed: is initramfs-tools in [nodes] packages?")?;
        let listing = chroot.read(&["lsinitramfs", initrd_inside])?;
        drop(chroot);
        if !listing
            .lines()
            .any(|l| l.trim_end_matches('/').ends_with("scripts/nfs"))
        {
            bail!("the initramfs for {release} has no NFS boot script (scripts/nfs): it cannot mount an NFS root");
        }
        let initrd = root.join(initrd_inside.trim_start_matches('/'));
        fs::rename(&initrd, out.join(format!("initrd.img-{release}")))
            .context("staging the initramfs")?;
        fs::copy(
            root.join(format!("boot/vmlinuz-{release}")),
            out.join(format!("vmlinuz-{release}")),
        )
        .context("staging the kernel for TFTP")?;
        files::remove_tree(&conf)?;
        Ok(release)
    }
}

/// The profile's compiler must be inside the nodes root, never the host's.
fn require_compiler(chroot: &Chroot, cc: &str) -> Result<()> {
    match chroot.read(&["sh", "-c", "command -v \"$1\"", "sh", cc]) {
        Ok(path) if !path.is_empty() => Ok(()),
        _ => bail!(
            "kernel.cc = \"{cc}\" is not installed in the nodes root: add it to [nodes] packages"
        ),
    }
}

/// The kernels a root has (in /boot with their modules), oldest first by
/// version.
pub fn installed_kernels(root: &Path) -> Vec<String> {
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
pub fn newest_kernel(root: &Path, section: &str) -> Result<String> {
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

/// Shell-variable config text (`KEY=value` lines) with these keys set.
fn set_shell_vars(text: &str, vars: &[(&str, &str)]) -> String {
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

    #[test]
    fn initramfs_settings_are_set_in_place_or_added() {
        let conf = "# comment\nMODULES=most\n#BOOT=local\nBUSYBOX=auto\n";
        assert_eq!(
            set_shell_vars(conf, &[("BOOT", "nfs"), ("MODULES", "netboot")]),
            "# comment\nMODULES=netboot\n#BOOT=local\nBUSYBOX=auto\nBOOT=nfs\n"
        );
    }

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
