//! The kernel stage: linux-2.6.20 + Kerrighed 2.4.x (kind = "kerrighed"),
//! or the nodes root's own Debian kernel with an NFS-root initramfs (kind =
//! "stock"); staged for TFTP in `build/kernel/`.
//!
//! The kerrighed flow is the seeds' "Compile the Kerrighed kernel" section
//! (000, 001), non-interactive, with KERRIGHED.md's corrections: configure
//! prepares the kernel tree itself from /usr/src/linux-2.6.20.tar.bz2,
//! `CC=` goes to every make, and the merged config is verified. It runs
//! with one of two toolchains:
//! - `era`: inside the nodes root (lenny), with its own gcc and make;
//! - `current`: inside a build root of current Debian, which installs into
//!   the nodes root (`DESTDIR`); configure leaves the kernel to krgiso's own
//!   steps, so the project's patches go in between kerrighed making its
//!   patched kernel tree and that tree's first make.
//!
//! A compiler cache (ccache, when the root has it) lives outside the build
//! dir, so a rebuild after `clean kernel` or a config change compiles only
//! what changed.

pub(crate) mod kept_tree;
pub(crate) mod krg;
pub mod makefile_shell;
pub(crate) mod patches;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::chroot::{Chroot, ExtraBind};
use crate::engine::{Inputs, Output, Stage, StageRun, MIB};
use crate::fetch::{self, Cache, FetchOptions};
use crate::files;
use crate::host::HostTool;
use crate::layout::{Root, BUILD_ROOT, NODES_ROOT, STAGED_KERNEL};
use crate::profile::{KernelKind, Toolchain, Userland};
use crate::shell::{CommandFailed, StageShell};
use crate::stages::initramfs;
use crate::stages::root_kernels::newest_kernel;
use crate::stages::static_builds;
use crate::stages::userland;
use crate::stages::BuildContext;
use crate::unpack;
use kept_tree::TreeKey;
use krg::{bzimage_release, KrgBuild, KRG_INSTALLED, KRG_RELEASE, KRG_SERVICE_FILES};
use makefile_shell::ShellLine;
use patches::PatchSet;

/// Where the sources sit inside the build chroot (a bind mount of the work dir).
const SRC: &str = "/usr/src";
/// Where the project's patches are seen inside the chroot (under SRC).
const PATCHES_INSIDE: &str = "/usr/src/krgiso-patches";
/// Programs kerrighed's `make kernel-src` finds first in its PATH (under
/// SRC): a `bzcat` that decompresses on every core, when the build root
/// has lbzip2.
const UNPACK_BIN: &str = "krgiso-bin";
/// That `bzcat`: kerrighed's kernel-src unpacks linux (43 MB of bzip2,
/// 6 s on one core) and its patches with `bzcat`; lbzip2 reads the same
/// format with a thread per core (2.4 s on two).
const PARALLEL_BZCAT: &str = "#!/bin/sh\n# krgiso: bzcat, on every core\nexec lbzip2 -dc \"$@\"\n";
/// Where a build root sees the nodes root it installs into (`DESTDIR`).
const DESTDIR: &str = "/krgiso/nodes-root";
/// Where the second kerrighed tree (for the static tools) is, under the work dir.
const MUSL_TREES: &str = "musl";
pub(crate) struct Kernel(pub Arc<BuildContext>);

impl Kernel {
    fn nodes_root(&self) -> PathBuf {
        self.0.layout.root(Root::Nodes)
    }
    /// Scratch space for the kerrighed tree: seen as /usr/src in the
    /// chroot, so a gigabyte of objects never lands in a root.
    fn work_dir(&self) -> PathBuf {
        self.0.layout.kernel_work()
    }
    fn toolchain(&self) -> Toolchain {
        self.0.profile.kernel.toolchain
    }
    fn is_kerrighed(&self) -> bool {
        self.0.profile.kernel.kind == KernelKind::Kerrighed
    }
    /// The nodes root is static programs: Kerrighed's tools are built for it
    /// against musl, and none of the glibc ones are installed.
    fn static_userland(&self) -> bool {
        self.0.profile.nodes.userland == Userland::Static
    }
}

impl Stage for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }
    fn about(&self) -> &'static str {
        "build the node kernel and stage it for TFTP"
    }
    fn recipe(&self) -> u32 {
        // 2: System.map staged; kerrighed.ko checked; toolchains.
        // 3: a static nodes userland gets static tools, no glibc ones.
        // 4: the stock kind's NFS initramfs without local file systems.
        // 5: Kerrighed's test programs (tests/apps) in a static nodes root.
        5
    }
    fn needs_root(&self) -> bool {
        true
    }
    /// A Kerrighed kernel is built from pinned sources only: a source
    /// without a pin would stop this stage after the roots were built
    /// (minutes), so a build says so before anything runs.
    fn preflight(&self) -> Result<()> {
        if !self.is_kerrighed() {
            return Ok(());
        }
        let lock = self.0.sources_lock()?;
        let mut unpinned = Vec::new();
        for name in ["linux", "kerrighed"] {
            let source = self.0.profile.source(name).with_context(|| {
                format!(
                    "the kerrighed kernel needs a [[sources]] entry named {name} in the profile"
                )
            })?;
            if fetch::pin_of(source, &lock).is_none() {
                unpinned.push(source.file.as_str());
            }
        }
        if !unpinned.is_empty() {
            bail!(
                "{} {} no sha256 pin, neither in the profile nor in {}; nothing was built. \
Run `cargo xtask fetch` first: it downloads, shows the sha256, size and URL, and stops. Compare that sha256 \
with a copy you trust; only if it matches, pin it (`sha256 = \"...\"` in its [[sources]] entry, or \
`cargo xtask fetch --lock-new`, which pins the bytes shown)",
                unpinned.join(" and "),
                if unpinned.len() == 1 { "has" } else { "have" },
                lock.path.display()
            );
        }
        Ok(())
    }
    /// The Kerrighed sources, before the roots are built (minutes) and not
    /// only when this stage starts.
    fn fetch(&self) -> Result<()> {
        if self.is_kerrighed() {
            self.verified_sources()
                .context("the kernel stage's sources could not be had, so no stage was started")?;
        }
        Ok(())
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
        if self.is_kerrighed() {
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
            if let Some(patches) = &kernel.patches {
                inputs.tree(&self.0.layout.project.join(patches))?;
            }
            if self.toolchain() == Toolchain::Current {
                inputs.output_of(BUILD_ROOT);
            }
        }
        inputs.output_of(NODES_ROOT);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        // A kernel, its modules for a stock one, and an initramfs: 26-33 MiB.
        vec![Output::dir(STAGED_KERNEL.name, self.0.layout.staged_kernel()).estimate(64 * MIB)]
    }
    fn working_space(&self) -> Vec<(PathBuf, u64)> {
        if self.is_kerrighed() {
            // The unpacked linux and kerrighed trees and their objects.
            vec![(self.work_dir(), 1536 * MIB)]
        } else {
            Vec::new()
        }
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        let out = run.output(STAGED_KERNEL.name)?.to_owned();
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
    /// linux and kerrighed, in that order, in the download cache and
    /// verified against their pins just now (fetched if they are not).
    fn verified_sources(&self) -> Result<Vec<fetch::Verified>> {
        let cx = &self.0;
        let sources: Vec<_> = ["linux", "kerrighed"]
            .iter()
            .map(|n| {
                cx.profile
                    .source(n)
                    .cloned()
                    .with_context(|| format!("no [[sources]] entry named {n}"))
            })
            .collect::<Result<_>>()?;
        let options = FetchOptions {
            offline: cx.offline,
            sources_dir: cx.sources_dir.clone(),
            ..FetchOptions::default()
        };
        fetch::fetch(
            &sources,
            &mut cx.sources_lock()?,
            &Cache::new(&cx.layout.downloads),
            &options,
        )
    }

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
        let patches = spec
            .patches
            .as_ref()
            .map(|dir| PatchSet::load(&cx.layout.project.join(dir)))
            .transpose()?;

        let work = self.work_dir();
        let key = self.tree_key(patches.as_ref())?;
        let kept = kept_tree::take(&work, &key)?;
        let tree = match &kept {
            Some(tree) => {
                shell.step(&format!(
                    "the kept tree {} (same sources, patches and compilers): made again incrementally",
                    cx.layout.show(tree)
                ));
                tree.clone()
            }
            None => self.prepare_tree(shell, &work, patches.as_ref())?,
        };
        let build = self.enter_build_root(shell, &work, &tree, cc)?;
        if kept.is_none() {
            build.configure(patches.as_ref())?;
        }
        // From here on the tree is one make can go on from, unless the run
        // is stopped in the middle of a command.
        let made = (|| -> Result<()> {
            let resolved = build.kernel_config(&fragment, &fragment_path)?;
            fs::write(out.join(format!("config-{KRG_RELEASE}")), &resolved)
                .context("keeping the resolved config")?;
            shell.step(&format!(
                "kernel config verified: {}",
                cx.layout.show(
                    &cx.layout
                        .staged_kernel()
                        .join(format!("config-{KRG_RELEASE}"))
                )
            ));
            build.build_and_install()
        })();
        drop(build);
        match &made {
            Ok(()) => kept_tree::keep(&work, &key, &tree)?,
            Err(e) if e.downcast_ref::<CommandFailed>().is_some() => {
                kept_tree::keep(&work, &key, &tree)?
            }
            Err(_) => {}
        }
        made?;

        self.stage_installed(shell, out)?;
        Ok(KRG_RELEASE.to_owned())
    }

    /// What the kerrighed tree is prepared from (see [`kept_tree`]): the
    /// sources' pins, each patch, the compilers' root, kerrighed's
    /// configure and the tools' kind. The config fragment is not in it:
    /// kbuild makes a changed config again incrementally.
    fn tree_key(&self, patches: Option<&PatchSet>) -> Result<TreeKey> {
        let cx = &self.0;
        let spec = &cx.profile.kernel;
        let lock = cx.sources_lock()?;
        let mut parts = vec![("kernel stage recipe", self.recipe().to_string())];
        for name in ["linux", "kerrighed"] {
            if let Some(source) = cx.profile.source(name) {
                let pin = fetch::pin_of(source, &lock).unwrap_or("unpinned");
                parts.push((name, format!("{} {pin}", source.file)));
            }
        }
        for file in patches.iter().flat_map(|set| &set.files) {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            parts.push((
                "patch",
                format!("{name} {}", crate::bytes::sha256_of(file)?),
            ));
        }
        let root = match self.toolchain() {
            Toolchain::Current => cx.layout.root(Root::Build),
            Toolchain::Era => self.nodes_root(),
        };
        parts.push((
            "compilers (the root's packages)",
            static_builds::packages_of(&root)?,
        ));
        parts.push((
            "toolchain",
            format!("{:?} cc={:?}", self.toolchain(), spec.cc),
        ));
        parts.push(("configure", spec.configure_args.join(" ")));
        parts.push(("static tools", self.static_userland().to_string()));
        Ok(TreeKey::new(&parts))
    }

    /// The verified sources in a fresh work dir: the kerrighed tree (named
    /// as its tarball names it), the linux tarball beside it for kerrighed's
    /// build to link, the modules Makefile's SHELL line fixed, and the
    /// project's patches where the chroot sees them. Returns the tree.
    fn prepare_tree(
        &self,
        shell: &StageShell,
        work: &Path,
        patches: Option<&PatchSet>,
    ) -> Result<PathBuf> {
        shell.step("verify the sources (linux, kerrighed)");
        let verified = self.verified_sources()?;
        let (linux, krg) = (&verified[0].path, &verified[1].path);
        let file_name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();

        files::remove_tree(work)?;
        fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        shell.step(&format!("unpack {}", file_name(krg).display()));
        let tree = unpack::unpack_named(krg, work)?;
        // Kerrighed's build links this instead of downloading an unverified copy.
        fs::copy(linux, work.join(file_name(linux)))
            .context("placing the verified linux tarball in /usr/src")?;
        if self.static_userland() {
            // A second copy, where the libraries and tools are configured
            // for musl (the first one's configure is for the kernel's gcc).
            unpack::unpack_named(krg, &work.join(MUSL_TREES))?;
        }
        for line in makefile_shell::use_bash(&tree)? {
            shell.note(&line.describe());
            if matches!(line, ShellLine::PatternNotFound { .. }) {
                eprintln!("{}", line.describe());
            }
        }
        if self.toolchain() == Toolchain::Current
            && self
                .0
                .layout
                .root(Root::Build)
                .join("usr/bin/lbzip2")
                .is_file()
        {
            let bin = work.join(UNPACK_BIN);
            fs::create_dir_all(&bin)?;
            let bzcat = bin.join("bzcat");
            fs::write(&bzcat, PARALLEL_BZCAT)
                .and_then(|()| fs::set_permissions(&bzcat, fs::Permissions::from_mode(0o755)))
                .with_context(|| format!("writing {}", bzcat.display()))?;
        }
        if let Some(set) = patches {
            let copy = work.join("krgiso-patches");
            fs::create_dir_all(&copy)?;
            for file in &set.files {
                if let Some(name) = file.file_name() {
                    fs::copy(file, copy.join(name))
                        .with_context(|| format!("copying {}", file.display()))?;
                }
            }
        }
        Ok(tree)
    }

    /// The chroot the tree is built in: the nodes root itself (era), or the
    /// build root with the nodes root as its DESTDIR (current); the work
    /// dir as /usr/src, and the compiler cache when the root has ccache.
    fn enter_build_root<'s>(
        &self,
        shell: &'s StageShell,
        work: &Path,
        tree: &Path,
        cc: &str,
    ) -> Result<KrgBuild<'s>> {
        let cx = &self.0;
        let current = self.toolchain() == Toolchain::Current;
        let mut binds = vec![ExtraBind {
            host: work.to_owned(),
            inside: SRC.into(),
        }];
        let (root, name, section) = if current {
            binds.push(ExtraBind {
                host: self.nodes_root(),
                inside: DESTDIR.into(),
            });
            (cx.layout.root(Root::Build), "build root", "buildroot")
        } else {
            (self.nodes_root(), "nodes root", "nodes")
        };
        let ccache = userland::compiler_cache(&root, &cx.layout, &mut binds)?;
        // The profile holds [buildroot] arch to [nodes] arch.
        let mut chroot = Chroot::enter(&root, &cx.profile.nodes.arch, &binds, shell)?;
        if ccache {
            userland::use_compiler_cache(&mut chroot);
            // Zeroed per build, so the stage can say how much it reused.
            chroot.run(&["ccache", "--zero-stats"])?;
        }
        if let (Some(cc), true) = (cx.profile.kernel.build_root_cc(), self.static_userland()) {
            userland::musl_runs(&mut chroot, cc);
        }
        match chroot.read(&["sh", "-c", "command -v \"$1\"", "sh", cc]) {
            Ok(path) if !path.is_empty() => {}
            _ => bail!(
                "kernel.cc = \"{cc}\" is not installed in the {name}: add it to [{section}] packages"
            ),
        }
        let tree_name = tree
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the kerrighed tree has no name")?;
        Ok(KrgBuild {
            chroot,
            dir: format!("{SRC}/{tree_name}"),
            tree: tree.to_owned(),
            cc_arg: format!("CC={cc}"),
            current,
            ccache,
            static_tools: self
                .static_userland()
                .then(|| format!("{SRC}/{MUSL_TREES}/{tree_name}")),
            configure_args: cx.profile.kernel.configure_args.clone(),
        })
    }

    /// What `make install` left in the nodes root: checked, the kernel's
    /// own version string read, and the kernel and System.map staged.
    fn stage_installed(&self, shell: &StageShell, out: &Path) -> Result<()> {
        let root = self.nodes_root();
        if root.join("etc/ld.so.conf").exists() {
            shell.step("ldconfig in the nodes root");
            let nodes = Chroot::enter(&root, &self.0.profile.nodes.arch, &[], shell)?;
            nodes.run(&["ldconfig"])?;
        }
        let services: &[&str] = if self.static_userland() {
            &[]
        } else {
            KRG_SERVICE_FILES
        };
        let missing: Vec<&str> = KRG_INSTALLED
            .iter()
            .chain(services)
            .copied()
            .filter(|p| !root.join(p).exists())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the kerrighed install left out of the nodes root: {}",
                missing.join(", ")
            );
        }
        if self.static_userland() {
            userland::require_static(&root)?;
        }
        let vmlinuz = root.join(format!("boot/vmlinuz-{KRG_RELEASE}"));
        let built = bzimage_release(&vmlinuz)?;
        if built.split_whitespace().next() != Some(KRG_RELEASE) {
            bail!(
                "{} says it is Linux {built}, not {KRG_RELEASE}: the kernel tree is not the one kerrighed patched",
                vmlinuz.display()
            );
        }
        for name in [
            format!("vmlinuz-{KRG_RELEASE}"),
            format!("System.map-{KRG_RELEASE}"),
        ] {
            fs::copy(root.join("boot").join(&name), out.join(&name))
                .with_context(|| format!("staging {name} for TFTP"))?;
        }
        Ok(())
    }

    /// The nodes root's own kernel, and an initramfs that mounts its root
    /// over NFS (initramfs-tools with BOOT=nfs, network drivers included).
    fn stage_stock(&self, shell: &StageShell, out: &Path) -> Result<String> {
        let root = self.nodes_root();
        let release = newest_kernel(&root, "nodes")?;
        shell.step(&format!("initramfs for an NFS root ({release})"));
        let conf =
            initramfs::ConfDir::write(&root, &[("BOOT", "nfs")], &initramfs::NFS_NODE_MODULES)?;
        let chroot = Chroot::enter(&root, &self.0.profile.nodes.arch, &[], shell)?;
        let initrd_inside = "/tmp/krgiso-initrd.img";
        chroot
            .run(&conf.mkinitramfs(initrd_inside, &release))
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
        drop(conf);
        Ok(release)
    }
}
