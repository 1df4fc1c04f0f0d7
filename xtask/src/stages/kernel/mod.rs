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

pub mod makefile_shell;
pub mod patches;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::chroot::{Chroot, ExtraBind};
use crate::engine::{Inputs, Output, Stage, StageRun};
use crate::fetch::{self, Cache, FetchOptions};
use crate::files;
use crate::host::HostTool;
use crate::layout::{Root, BUILD_ROOT, NODES_ROOT, STAGED_KERNEL};
use crate::profile::{KernelKind, Toolchain, Userland};
use crate::shell::StageShell;
use crate::stages::kconfig;
use crate::stages::root_kernels::newest_kernel;
use crate::stages::userland;
use crate::stages::BuildContext;
use crate::unpack;
use makefile_shell::ShellLine;
use patches::PatchSet;

/// The release kerrighed-2.4.x's patched 2.6.20 builds.
pub const KRG_RELEASE: &str = "2.6.20-krg";
/// Where the sources sit inside the build chroot (a bind mount of the work dir).
const SRC: &str = "/usr/src";
/// Where the project's patches are seen inside the chroot (under SRC).
const PATCHES_INSIDE: &str = "/usr/src/krgiso-patches";
/// Where a build root sees the nodes root it installs into (`DESTDIR`).
const DESTDIR: &str = "/krgiso/nodes-root";
/// Where the second kerrighed tree (for the static tools) is, under the work dir.
const MUSL_TREES: &str = "musl";
/// What the installs must leave in the nodes root (seed 001's list, and
/// the Kerrighed module itself).
pub const KRG_INSTALLED: &[&str] = &[
    "boot/vmlinuz-2.6.20-krg",
    "boot/System.map-2.6.20-krg",
    "lib/modules/2.6.20-krg",
    "lib/modules/2.6.20-krg/extra/kerrighed.ko",
    "usr/local/bin/krgadm",
    "usr/local/bin/krgcapset",
    "usr/local/bin/migrate",
];
/// Kerrighed's service files for a Debian nodes root (an LSB init script:
/// a static userland boots with its own rcS instead).
pub const KRG_SERVICE_FILES: &[&str] = &["etc/init.d/kerrighed", "etc/default/kerrighed"];

pub struct Kernel(pub Arc<BuildContext>);

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
        3
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
        vec![Output::dir(
            STAGED_KERNEL.name,
            self.0.layout.staged_kernel(),
        )]
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
        let tree = self.prepare_tree(shell, &work, patches.as_ref())?;
        let build = self.enter_build_root(shell, &work, &tree, cc)?;
        build.configure(patches.as_ref())?;
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
        build.build_and_install()?;
        drop(build);

        self.stage_installed(shell, out)?;
        files::remove_tree(&work)?;
        Ok(KRG_RELEASE.to_owned())
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
        shell.step(&format!(
            "verify the sources ({}, {})",
            sources[0].file, sources[1].file
        ));
        let mut lock = cx.sources_lock()?;
        let options = FetchOptions {
            offline: cx.offline,
            sources_dir: cx.sources_dir.clone(),
            ..FetchOptions::default()
        };
        let verified = fetch::fetch(
            &sources,
            &mut lock,
            &Cache::new(&cx.layout.downloads),
            &options,
        )?;
        let (linux, krg) = (&verified[0].path, &verified[1].path);

        files::remove_tree(work)?;
        fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        shell.step(&format!("unpack {}", sources[1].file));
        let tree = unpack::unpack_named(krg, work)?;
        // Kerrighed's build links this instead of downloading an unverified copy.
        fs::copy(linux, work.join(&sources[0].file))
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
            shell,
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

/// A kerrighed tree being built in its chroot: each step announces itself
/// and runs in the tree with `CC=` from the profile.
struct KrgBuild<'s> {
    chroot: Chroot<'s>,
    shell: &'s StageShell,
    /// The tree as the chroot sees it (`/usr/src/kerrighed-2.4.4`).
    dir: String,
    /// The tree on the host.
    tree: PathBuf,
    cc_arg: String,
    /// The current toolchain: the kernel is left to krgiso's own steps and
    /// everything installs into the nodes root as DESTDIR.
    current: bool,
    ccache: bool,
    /// For a static nodes userland: the second tree (as the chroot sees
    /// it) where libkerrighed and the tools are built against musl.
    static_tools: Option<String>,
    configure_args: Vec<String>,
}

impl KrgBuild<'_> {
    fn make(&self, what: &str, args: &[&str], answer_defaults: bool) -> Result<()> {
        self.make_in(&self.dir, what, args, answer_defaults)
    }

    fn make_in(&self, dir: &str, what: &str, args: &[&str], answer_defaults: bool) -> Result<()> {
        self.shell.step(what);
        self.shell
            .run(self.chroot.cmd_in(dir, args, answer_defaults))
    }

    /// libkerrighed and the tools again, static against musl, in the second
    /// tree (which uses the first one's patched kernel headers), installed
    /// into the nodes root (KERRIGHED.md, "A two-node cluster").
    fn build_static_tools(&self, tree: &str, destdir: &str) -> Result<()> {
        userland::kernel_headers(&self.chroot)?;
        // libkerrighed includes the patched kernel's headers from here.
        self.chroot.run(&[
            "ln",
            "-sfn",
            &format!("{}/_kernel", self.dir),
            &format!("{tree}/_kernel"),
        ])?;
        // 2.6.20's linux/types.h clashes with musl's own types without this.
        let cflags = format!("{} -D__KERNEL_STRICT_NAMES", userland::musl_cflags());
        let cc = format!("CC={}", userland::MUSL_CC);
        self.make_in(
            tree,
            "configure libkerrighed and the tools for musl, static",
            &[
                "./configure",
                "--disable-kernel",
                "--disable-python",
                "--disable-service",
                "--disable-shared",
                "--enable-static",
                &cc,
                &format!("CFLAGS={cflags}"),
            ],
            false,
        )?;
        // CFLAGS again on make's command line: configure's -Werror goes
        // (musl's 64-bit time_t printed with %ld); -all-static: libtool
        // drops a plain -static.
        let make_flags = format!("CFLAGS={cflags} -Wall");
        let jobs = userland::jobs();
        for dir in ["libs", "tools"] {
            self.make_in(
                tree,
                &format!("build {dir} static against musl"),
                &["make", &jobs, "-C", dir, &make_flags, "LDFLAGS=-all-static"],
                false,
            )?;
        }
        self.make_in(
            tree,
            "install the static tools",
            &["make", "-C", "tools", "install", destdir],
            false,
        )
    }

    /// configure, kerrighed's patched kernel tree and its build dir, with the
    /// project's patches applied to that tree before its first make.
    fn configure(&self, patches: Option<&PatchSet>) -> Result<()> {
        let cc = self.cc_arg.as_str();
        let extra = self.configure_args.iter().map(String::as_str);
        let apply = || -> Result<()> {
            match patches {
                Some(set) => set
                    .apply(&self.chroot, self.shell, &self.dir, PATCHES_INSIDE)
                    .map(drop),
                None => Ok(()),
            }
        };
        if self.current {
            // configure would prepare (and first make) the kernel tree
            // itself, with make 4.3 before the patches are in: here its
            // kernel steps are krgiso's.
            let configure: Vec<&str> = ["./configure", "--disable-kernel", cc]
                .into_iter()
                .chain(extra)
                .collect();
            self.make(
                "configure kerrighed (the kernel by krgiso's steps)",
                &configure,
                false,
            )?;
            self.make(
                "make kernel-src: the kernel tree with kerrighed's patches",
                &["make", "kernel-src", cc],
                false,
            )?;
            apply()?;
            self.make(
                "make kernel-prepare: the kernel's build dir",
                &["make", "kernel-prepare", cc],
                false,
            )
        } else {
            let configure: Vec<&str> = ["./configure", "--with-kernel-config=oldconfig", cc]
                .into_iter()
                .chain(extra)
                .collect();
            self.make("configure kerrighed", &configure, true)?;
            apply()
        }
    }

    /// defconfig, the fragment merged over it, oldconfig with every default
    /// taken; every `=y` of the fragment must survive. Returns the config.
    fn kernel_config(&self, fragment: &str, fragment_path: &Path) -> Result<String> {
        let cc = self.cc_arg.as_str();
        self.make(
            "kernel config: defconfig, then the fragment, then oldconfig",
            &["make", "-C", "kernel", "defconfig", cc],
            false,
        )?;
        let config_path = self.tree.join("kernel/.config");
        let defconfig = fs::read_to_string(&config_path)
            .with_context(|| format!("make defconfig left no {}", config_path.display()))?;
        fs::write(&config_path, kconfig::merge(&defconfig, fragment))
            .context("writing the merged .config")?;
        self.shell.run(self.chroot.cmd_in(
            &self.dir,
            &["make", "-C", "kernel", "oldconfig", cc],
            true,
        ))?;
        let resolved = fs::read_to_string(&config_path).context("reading the resolved .config")?;
        let dropped = kconfig::dropped(fragment, &resolved);
        if !dropped.is_empty() {
            // The work dir stays after a failure: the config can be read there.
            bail!(
                "the kernel config dropped what {} asks for (unmet dependencies): {}; the resolved config is {}",
                fragment_path.display(),
                dropped.join(", "),
                config_path.display()
            );
        }
        Ok(resolved)
    }

    /// The kernel on every core, then kerrighed.ko, the scheduler modules,
    /// the libraries and the tools; then both installs.
    fn build_and_install(&self) -> Result<()> {
        let cc = self.cc_arg.as_str();
        let jobs = userland::jobs();
        self.make(
            "build the kernel (make kernel)",
            &["make", &jobs, "kernel", cc],
            false,
        )?;
        if self.static_tools.is_some() {
            // The glibc libraries and tools would not run on the nodes:
            // only the modules here, the tools come from the musl tree.
            self.make(
                "build kerrighed.ko and the scheduler modules (make -C modules)",
                &["make", &jobs, "-C", "modules", cc],
                false,
            )?;
        } else {
            self.make(
                "build kerrighed.ko, the scheduler modules, libkerrighed and the tools (make)",
                &["make", &jobs, cc],
                false,
            )?;
        }
        let destdir = format!("DESTDIR={DESTDIR}");
        let installs: &[(&str, &[&str])] = if self.static_tools.is_some() {
            // The kernel and the modules only: the glibc libraries, tools
            // and LSB service files would not run on a static userland.
            &[
                (
                    "install the kernel (make kernel-install)",
                    &["kernel-install"],
                ),
                (
                    "install kerrighed.ko and the scheduler modules (make -C modules install)",
                    &["-C", "modules", "install"],
                ),
            ]
        } else {
            &[
                (
                    "install the kernel (make kernel-install)",
                    &["kernel-install"],
                ),
                ("install kerrighed (make install)", &["install"]),
            ]
        };
        for (what, target) in installs {
            let mut args = vec!["make"];
            args.extend_from_slice(target);
            args.push(cc);
            if self.current {
                args.push(&destdir);
            }
            self.make(what, &args, false)?;
        }
        if let Some(tree) = &self.static_tools {
            self.build_static_tools(tree, &destdir)?;
        }
        if self.ccache {
            let stats = self
                .chroot
                .read(&["ccache", "--print-stats"])
                .unwrap_or_default();
            self.shell
                .step(&format!("compiler cache: {}", CacheStats::parse(&stats)));
        }
        Ok(())
    }
}

/// The release a bzImage says it is (its `kernel_version` string, as
/// `file` shows it: "2.6.20-krg (root@host) #1 SMP ..."), read from the
/// setup header (boot protocol 2.00 and later).
pub fn bzimage_release(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let not_bzimage = || anyhow::anyhow!("{} is not a bzImage (no setup header)", path.display());
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]) as usize)
    };
    if bytes.get(0x202..0x206) != Some(b"HdrS") || u16_at(0x206).is_none_or(|v| v < 0x200) {
        return Err(not_bzimage());
    }
    let at = u16_at(0x20e).ok_or_else(not_bzimage)? + 0x200;
    let text = bytes.get(at..).ok_or_else(not_bzimage)?;
    let end = text
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(text.len().min(256));
    Ok(String::from_utf8_lossy(&text[..end]).trim().to_owned())
}

/// What ccache says it did, in one phrase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl CacheStats {
    /// From `ccache --print-stats` (tab-separated `key value` lines).
    pub fn parse(text: &str) -> CacheStats {
        let mut stats = CacheStats::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "direct_cache_hit" | "preprocessed_cache_hit" => stats.hits += value,
                "cache_miss" => stats.misses += value,
                _ => {}
            }
        }
        stats
    }
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.hits + self.misses;
        let share = (100 * self.hits).checked_div(total).unwrap_or(0);
        write!(f, "{} of {total} compilations reused ({share}%)", self.hits)
    }
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
    fn a_bzimage_says_its_release_in_its_setup_header() {
        let t = tempfile::tempdir().unwrap();
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x0205u16.to_le_bytes());
        image[0x20e..0x210].copy_from_slice(&0x0123u16.to_le_bytes());
        let version = b"2.6.20-krg (root@vm) (gcc version 12.2.0) #1 SMP\0rest";
        image[0x323..0x323 + version.len()].copy_from_slice(version);
        let path = t.path().join("bzImage");
        fs::write(&path, &image).unwrap();
        assert_eq!(
            bzimage_release(&path).unwrap(),
            "2.6.20-krg (root@vm) (gcc version 12.2.0) #1 SMP"
        );
        // Not a bzImage: no magic, or a protocol older than 2.00.
        image[0x202] = b'X';
        fs::write(&path, &image).unwrap();
        assert!(bzimage_release(&path)
            .unwrap_err()
            .to_string()
            .contains("not a bzImage"));
        image[0x202] = b'H';
        image[0x206..0x208].copy_from_slice(&0x0105u16.to_le_bytes());
        fs::write(&path, &image).unwrap();
        assert!(bzimage_release(&path).is_err());
        fs::write(&path, b"short").unwrap();
        assert!(bzimage_release(&path).is_err());
    }

    #[test]
    fn compiler_cache_statistics_count_both_kinds_of_hit() {
        // `ccache --print-stats` (ccache 4.8), abridged.
        let text = "stats_updated_timestamp\t1764480000\n\
                    direct_cache_hit\t900\n\
                    preprocessed_cache_hit\t100\n\
                    cache_miss\t250\n\
                    files_in_cache\t2500\n";
        let stats = CacheStats::parse(text);
        assert_eq!(
            stats,
            CacheStats {
                hits: 1000,
                misses: 250
            }
        );
        assert_eq!(stats.to_string(), "1000 of 1250 compilations reused (80%)");
        assert_eq!(
            CacheStats::parse("").to_string(),
            "0 of 0 compilations reused (0%)"
        );
    }
}
