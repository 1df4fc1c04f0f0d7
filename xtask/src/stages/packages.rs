//! The packages stage: debootstrap the node1 root and the nodes root (and,
//! for a kernel built with a current toolchain, the build root), each from
//! its profile section, and install each one's package set. The host is
//! never modified: everything happens inside the roots, and every mount is
//! undone.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::chroot::{self, Chroot, ExtraBind, SystemMounts};
use crate::engine::{Inputs, Output, Stage, StageRun, MIB};
use crate::fetch;
use crate::files;
use crate::host::HostTool;
use crate::interrupt::Interrupted;
use crate::layout::Root;
use crate::profile::{Bootstrap, InstallMethod, RootSpec, Userland, Variant};
use crate::shell::{self, StageShell, Stopped};
use crate::stages::initramfs;
use crate::stages::root_kernels::installed_kernels;
use crate::stages::userland;
use crate::stages::BuildContext;

/// The input that says what krgiso changes in the static userland's
/// sources: a change rebuilds that root alone.
const STATIC_SOURCE_FIXES: &str = "static userland: source fixes";

pub(crate) struct Packages(pub Arc<BuildContext>);

/// One root to build: which output, which profile section.
struct RootJob<'a> {
    root: Root,
    output: &'static str,
    /// Its name in messages (its directory under `roots/`).
    dir: &'static str,
    section: &'static str,
    spec: &'a RootSpec,
    /// Make the initramfs of its kernels here (node1's live-boot one); the
    /// nodes' comes from the kernel stage.
    initramfs: bool,
    /// Its partial output already holds a copy of another root's
    /// bootstrap (see [`same_bootstrap`]).
    bootstrapped: bool,
}

impl Packages {
    fn jobs(&self) -> Vec<RootJob<'_>> {
        self.0
            .profile
            .roots()
            .into_iter()
            .map(|(section, spec)| {
                let root = Root::of_section(section);
                RootJob {
                    root,
                    output: root.product().name,
                    dir: root.name(),
                    section,
                    spec,
                    initramfs: root == Root::Node1,
                    bootstrapped: false,
                }
            })
            .collect()
    }

    /// The directory [`Self::deb_cache`] keeps a root's .debs in.
    fn deb_cache_dir(&self, job: &RootJob) -> PathBuf {
        let suite = format!("{}-{}", job.spec.suite, job.spec.arch);
        self.0
            .layout
            .downloads
            .join("debs")
            .join(format!("{suite}-{}", job.dir))
    }

    /// Where a root's .debs are kept between builds: used by debootstrap
    /// (`--cache-dir`) and apt (bind-mounted as /var/cache/apt/archives).
    /// One per root: the roots are built at the same time, and two apts
    /// cannot share one archives directory (its lock).
    fn deb_cache(&self, job: &RootJob) -> Result<PathBuf> {
        let debs = self.0.layout.downloads.join("debs");
        let suite = format!("{}-{}", job.spec.suite, job.spec.arch);
        let cache = self.deb_cache_dir(job);
        if !cache.exists() {
            // A cache from before there was one per root: start from it.
            fs::create_dir_all(&cache)
                .with_context(|| format!("creating the .deb cache {}", cache.display()))?;
            for e in fs::read_dir(debs.join(&suite))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.path().extension().is_some_and(|x| x == "deb") {
                    let _ = fs::hard_link(e.path(), cache.join(e.file_name()));
                }
            }
        }
        fs::create_dir_all(cache.join("partial"))
            .with_context(|| format!("creating the .deb cache {}", cache.display()))?;
        Ok(cache)
    }

    /// Builds the roots of one chain in order (a static nodes root is
    /// compiled in the build root, so it follows it); `Some(dir)` is a root
    /// to build into `dir`, `None` one kept as it was.
    fn build_chain(&self, shell: &StageShell, chain: &[(RootJob, Option<PathBuf>)]) -> Result<()> {
        let result = self.build_roots(shell, chain);
        if let Err(e) = &result {
            if !e.is::<Stopped>() {
                shell.stop_branches();
            }
            release_partials(
                shell,
                chain.iter().filter_map(|(_, partial)| partial.as_deref()),
            );
        }
        result
    }

    /// Debootstraps `job`'s root into `from` and copies it to `to`, for
    /// `other`, a root with the same bootstrap.
    fn shared_bootstrap(
        &self,
        shell: &StageShell,
        (job, from): (&RootJob, &Path),
        (other, to): (&RootJob, &Path),
    ) -> Result<()> {
        let result = self.deb_cache(job).and_then(|cache| {
            bootstrap(shell, job, from, &cache)?;
            shell.step(&format!(
                "copy the {} root's bootstrap: the {} root starts from the same one",
                job.dir, other.dir
            ));
            let sh = shell.sh();
            let (from_dir, to_dir) = (from.join("."), to.to_owned());
            shell.run(cmd!(sh, "cp -a {from_dir} {to_dir}"))
        });
        if result.is_err() {
            release_partials(shell, [from, to].into_iter());
        }
        result
    }

    fn build_roots(&self, shell: &StageShell, chain: &[(RootJob, Option<PathBuf>)]) -> Result<()> {
        let mut compiler_root = None;
        for (job, partial) in chain {
            let dir = match partial {
                None => self.0.layout.root(job.root),
                Some(dir) if job.spec.userland == Userland::Static => {
                    let compiler = compiler_root
                        .as_deref()
                        .context("internal: a static userland before the build root")?;
                    let cc = self.0.profile.kernel.build_root_cc();
                    userland::build(shell, &self.0.layout, job.spec, compiler, cc, dir)?;
                    dir.clone()
                }
                Some(dir) => {
                    let cache = self.deb_cache(job)?;
                    match job.spec.bootstrap {
                        Bootstrap::Mmdebstrap => mmdebstrap(shell, job, dir, &cache)?,
                        Bootstrap::Debootstrap if !job.bootstrapped => {
                            bootstrap(shell, job, dir, &cache)?
                        }
                        Bootstrap::Debootstrap => {}
                    }
                    provision(shell, job, dir, &cache)?;
                    dir.clone()
                }
            };
            if job.root == Root::Build {
                compiler_root = Some(dir);
            }
        }
        Ok(())
    }
}

fn input_key(section: &str) -> String {
    format!("profile [{section}]")
}

impl Stage for Packages {
    fn name(&self) -> &'static str {
        "packages"
    }
    fn about(&self) -> &'static str {
        "mmdebstrap (or debootstrap) the node1 and nodes roots with their package sets"
    }
    fn recipe(&self) -> u32 {
        // 3: one initramfs per root (INITRD=No during apt).
        // 4: node1's initramfs without network, graphics and sound modules.
        // 5: node1's initramfs by mkinitramfs with krgiso's module hook;
        //    live-boot's hook wrapped; one bootstrap for two alike roots.
        // 6: mmdebstrap; busybox without the applets a node has no use for.
        6
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn preflight(&self) -> Result<()> {
        for job in self.jobs() {
            if self.0.offline && !job.spec.mirror.starts_with("file://") {
                bail!(
                    "--offline, but the {} root needs its mirror {} ([{}] mirror): run without --offline, or point the mirror at a file:// copy",
                    job.dir,
                    job.spec.mirror,
                    job.section
                );
            }
        }
        Ok(())
    }
    /// Every root's mirror has its suite: a dead mirror or a misspelt suite
    /// stops the build in seconds, before a root is started.
    fn network_checks(&self) -> Result<()> {
        if self.0.offline {
            return Ok(());
        }
        let mut asked = Vec::new();
        for job in self.jobs() {
            let (mirror, suite) = (&job.spec.mirror, &job.spec.suite);
            if asked.contains(&(mirror, suite)) {
                continue;
            }
            asked.push((mirror, suite));
            if let Err(why) = fetch::check_mirror(mirror, suite, MIRROR_TIMEOUT) {
                bail!(
                    "the {} root's mirror {mirror} ([{}] mirror, suite {suite}) {why}: check the network, the mirror's address and [{}] suite; nothing was built",
                    job.dir,
                    job.section,
                    job.section
                );
            }
        }
        Ok(())
    }
    fn host_tools(&self) -> Vec<HostTool> {
        let mut tools = Vec::new();
        for job in self.jobs() {
            let how = job.spec.bootstrap.as_str();
            let needed = job.spec.userland == Userland::Debian;
            if needed && !tools.iter().any(|t: &HostTool| t.program == how) {
                tools.push(HostTool::new(how, how));
            }
        }
        tools.extend([
            HostTool::new("gpgv", "gpgv"),
            HostTool::new("setarch", "util-linux"),
            HostTool::new("chroot", "coreutils"),
            HostTool::new("dpkg-query", "dpkg"),
        ]);
        for job in self.jobs() {
            if let Some(keyring) = job.spec.keyring.as_ref().and_then(|k| k.to_str()) {
                tools.push(HostTool::new(keyring, keyring_package(keyring)));
            }
        }
        tools
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        for job in self.jobs() {
            inputs.value(&input_key(job.section), job.spec);
            if job.spec.userland == Userland::Static {
                inputs.value(STATIC_SOURCE_FIXES, &userland::INIT_SIGCHLD_FIX);
            }
        }
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        let layout = &self.0.layout;
        self.jobs()
            .iter()
            .map(|job| {
                // Measured: a debootstrapped root with the smoke profile's
                // packages is 610-660 MiB; a static one a few MiB.
                let estimate = match job.spec.userland {
                    Userland::Static => 32 * MIB,
                    _ => 700 * MIB,
                };
                Output::dir(job.output, layout.root(job.root)).estimate(estimate)
            })
            .collect()
    }
    fn working_space(&self) -> Vec<(PathBuf, u64)> {
        // A root's .debs on a first build (about 125 MiB for the smoke
        // roots; more with more packages); a static root is compiled in
        // its own work dir.
        let layout = &self.0.layout;
        self.jobs()
            .iter()
            .filter_map(|job| match job.spec.userland {
                Userland::Static => Some((layout.userland_work(), 256 * MIB)),
                _ => {
                    let cache = self.deb_cache_dir(job);
                    (!cache.exists()).then_some((cache, 300 * MIB))
                }
            })
            .collect()
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        // Which roots are kept and which are built, into their partial output.
        let mut chains: [Vec<(RootJob, Option<PathBuf>)>; 2] = [Vec::new(), Vec::new()];
        for job in self.jobs() {
            // A static root is compiled in the build root: it follows it.
            let mut keys = vec![input_key(job.section)];
            if job.spec.userland == Userland::Static {
                keys.push(input_key("buildroot"));
                keys.push(STATIC_SOURCE_FIXES.to_owned());
            }
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let partial = if run.previous(job.output).is_some() && run.unchanged(&keys) {
                run.step(&format!("the {} root is unchanged: kept", job.dir));
                run.keep(job.output)?;
                None
            } else {
                Some(run.output(job.output)?.to_owned())
            };
            let chain = usize::from(job.root != Root::Node1);
            chains[chain].push((job, partial));
        }
        // node1's root beside the others (the build root, then the nodes'):
        // two roots at once keep both cores busy (1.5x one at a time).
        let branches = [run.shell.branch("node1")?, run.shell.branch("nodes")?];
        // Except their bootstrap when it is the same: one debootstrap and a
        // copy (2-4 s) take 18-26 s, two at once 24-29 s.
        if let ([(first, Some(from)), ..], [(second, Some(to)), ..]) =
            (chains[0].as_slice(), chains[1].as_slice())
        {
            if same_bootstrap(first.spec, second.spec) {
                self.shared_bootstrap(&branches[0], (first, from), (second, to))?;
                chains[0][0].0.bootstrapped = true;
                chains[1][0].0.bootstrapped = true;
            }
        }
        let [node1, nodes] = std::thread::scope(|scope| {
            let [first, second] = branches;
            let [a, b] = &chains;
            let node1 = scope.spawn(move || self.build_chain(&first, a));
            let nodes = self.build_chain(&second, b);
            // Its last step ends now, not when node1's does.
            drop(second);
            [
                node1
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the node1 root's builder panicked"))),
                nodes,
            ]
        });
        shell::first_failure(vec![node1, nodes])
    }
}

/// Releases what a command stopped halfway (debootstrap) may have left
/// mounted in these partial roots, before the engine removes them.
fn release_partials<'a>(shell: &StageShell, dirs: impl Iterator<Item = &'a Path>) {
    for dir in dirs {
        if let Err(e) = chroot::release_stale(dir, &SystemMounts) {
            shell.note(&format!("warning: {e:#}"));
        }
    }
}

/// The Debian package a keyring file comes from, for the install hint.
fn keyring_package(path: &str) -> &'static str {
    if path.contains("ubuntu-archive") {
        "ubuntu-archive-keyring"
    } else if path.contains("debian-archive") {
        "debian-archive-keyring"
    } else {
        "the package that ships it"
    }
}

/// A root's debootstrap options, suite and mirror (its .deb cache aside).
fn debootstrap_args(spec: &RootSpec) -> Vec<String> {
    let mut args = vec![
        format!("--arch={}", spec.arch),
        format!("--components={}", spec.components.join(",")),
    ];
    if let Some(variant) = spec.variant {
        args.push(format!("--variant={}", variant.as_str()));
    }
    if let Some(keyring) = &spec.keyring {
        args.push(format!("--keyring={}", keyring.display()));
    } else if spec.allow_unsigned {
        args.push("--no-check-gpg".to_owned());
    }
    if includes_packages(spec) {
        args.push(format!("--include={}", spec.packages.join(",")));
    }
    args.push(spec.suite.clone());
    args.push(spec.mirror.clone());
    args
}

fn includes_packages(spec: &RootSpec) -> bool {
    spec.install == InstallMethod::Include && !spec.packages.is_empty()
}

/// Two roots debootstrap alike: one bootstrap can serve both. (An
/// mmdebstrap run makes a root with its own packages: none to share.)
fn same_bootstrap(a: &RootSpec, b: &RootSpec) -> bool {
    [a, b]
        .iter()
        .all(|s| s.userland == Userland::Debian && s.bootstrap == Bootstrap::Debootstrap)
        && debootstrap_args(a) == debootstrap_args(b)
}

/// Where mmdebstrap's hooks find the root's .deb cache (an environment
/// variable: no path is quoted into a hook's shell text).
const DEB_CACHE_VAR: &str = "KRGISO_DEB_CACHE";

/// A root's mmdebstrap options, suite, target and mirror. The root's .deb
/// cache is its apt archives for the run (bind-mounted by the setup hook,
/// released by the customize hook; a failed run's mount is released with
/// the partial root), and nothing is removed from it.
fn mmdebstrap_args(spec: &RootSpec, dir: &Path) -> Vec<String> {
    let archives = "\"$1/var/cache/apt/archives\"";
    let mut args = vec![
        "--mode=root".to_owned(),
        format!(
            "--variant={}",
            spec.variant.map_or("debootstrap", Variant::as_str)
        ),
        format!("--architectures={}", spec.arch),
        format!("--components={}", spec.components.join(",")),
        "--aptopt=Acquire::Languages \"none\"".to_owned(),
        // No fsync per file while building: the root is thrown away if the build dies.
        "--dpkgopt=force-unsafe-io".to_owned(),
        "--skip=essential/unlink".to_owned(),
        "--skip=download/empty".to_owned(),
        format!("--setup-hook=mkdir -p {archives} && mount --bind \"${DEB_CACHE_VAR}\" {archives}"),
        format!("--customize-hook=umount {archives}"),
    ];
    if let Some(keyring) = &spec.keyring {
        args.push(format!("--keyring={}", keyring.display()));
    }
    if !spec.packages.is_empty() {
        args.push(format!("--include={}", spec.packages.join(",")));
    }
    args.push(spec.suite.clone());
    args.push(dir.display().to_string());
    args.push(spec.mirror.clone());
    args
}

/// The root and its packages in one mmdebstrap run: apt resolves them
/// (Recommends left out, as below), with the same INITRD=No.
fn mmdebstrap(shell: &StageShell, job: &RootJob, dir: &Path, cache: &Path) -> Result<()> {
    let spec = job.spec;
    let sh = shell.sh();
    let args = mmdebstrap_args(spec, dir);
    shell.step(&format!(
        "mmdebstrap the {} root: {} {} with {} packages from {}",
        job.dir,
        spec.suite,
        spec.arch,
        spec.packages.len(),
        spec.mirror
    ));
    let cmd = cmd!(sh, "mmdebstrap {args...}")
        .env(DEB_CACHE_VAR, cache)
        .env("INITRD", "No");
    run_explained(shell, cmd, job)
}

fn bootstrap(shell: &StageShell, job: &RootJob, dir: &Path, cache: &Path) -> Result<()> {
    let spec = job.spec;
    let (suite, arch, mirror) = (&spec.suite, &spec.arch, &spec.mirror);
    let sh = shell.sh();
    let mut args = debootstrap_args(spec);
    let target = args.len() - 1;
    args.insert(target, dir.display().to_string());
    args.insert(0, format!("--cache-dir={}", cache.display()));
    let what = if includes_packages(spec) {
        format!(" with {} packages", spec.packages.len())
    } else {
        String::new()
    };
    shell.step(&format!(
        "bootstrap the {} root: {suite} {arch}{what} from {mirror}",
        job.dir
    ));
    run_explained(shell, cmd!(sh, "debootstrap {args...}"), job)
}

/// A bootstrapped root's packages, checked, and the root made ready to ship.
fn provision(shell: &StageShell, job: &RootJob, dir: &Path, cache: &Path) -> Result<()> {
    let spec = job.spec;
    let with_apt = spec.bootstrap == Bootstrap::Debootstrap && spec.install == InstallMethod::Apt;
    if with_apt && !spec.packages.is_empty() {
        install_with_apt(shell, job, dir, cache)?;
    }
    if job.initramfs && dir.join("usr/sbin/update-initramfs").exists() {
        make_initramfs(shell, job, dir)?;
    }

    shell.step(&format!("check the {} root's package set", job.dir));
    check_installed(shell, dir, &spec.packages)?;
    shell.step(&format!(
        "clean the {} root (apt lists, logs, machine-id, ssh host keys)",
        job.dir
    ));
    finish_root(dir)
}

/// How long a mirror has to answer the check before a build.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Build-time settings, removed when the root is finished.
const APT_BUILD_CONF: &str = "etc/apt/apt.conf.d/90krgiso-build";
const DPKG_BUILD_CONF: &str = "etc/dpkg/dpkg.cfg.d/90krgiso-build";
/// Every build-time setting a root can have: krgiso's (debootstrap and
/// apt), and what mmdebstrap leaves of its `--aptopt` and `--dpkgopt`
/// (dpkg's `force-unsafe-io` would stay in the image).
pub(crate) const BUILD_SETTINGS: &[&str] = &[
    APT_BUILD_CONF,
    DPKG_BUILD_CONF,
    "etc/apt/apt.conf.d/99mmdebstrap",
    "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
];

fn install_with_apt(shell: &StageShell, job: &RootJob, dir: &Path, cache: &Path) -> Result<()> {
    fs::write(
        dir.join(APT_BUILD_CONF),
        "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\nAcquire::Languages \"none\";\nDpkg::Use-Pty \"false\";\n",
    )
    .context("writing the build apt settings")?;
    // No fsync per file while building: the root is thrown away if the build dies.
    fs::write(dir.join(DPKG_BUILD_CONF), "force-unsafe-io\n")
        .context("writing the build dpkg settings")?;

    let archives = ExtraBind {
        host: cache.to_owned(),
        inside: "/var/cache/apt/archives".into(),
    };
    let chroot = Chroot::enter(dir, &job.spec.arch, &[archives], shell)?;
    shell.step(&format!("update the {} root's package lists", job.dir));
    run_explained(shell, chroot.cmd(&["apt-get", "update"]), job)?;
    let count = job.spec.packages.len();
    shell.step(&format!("install {count} packages in the {} root", job.dir));
    let mut args = vec![
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    args.extend(job.spec.packages.iter().map(String::as_str));
    // Kernel and trigger hooks would each make an initramfs as packages
    // land (twice per root, seen in the logs); INITRD=No stops the kernel's
    // hook, so there is no image for the trigger to update either. The one
    // initramfs a root needs is made once, below (node1's live-boot one)
    // or by the kernel stage (the nodes' NFS-root one).
    run_explained(shell, chroot.cmd(&args).env("INITRD", "No"), job)
}

/// node1's live-boot initramfs, made once its packages are in: mkinitramfs
/// with a private configuration (MODULES=list plus a hook that picks
/// node1's modules quickly), into /boot as update-initramfs would.
fn make_initramfs(shell: &StageShell, job: &RootJob, dir: &Path) -> Result<()> {
    let chroot = Chroot::enter(dir, &job.spec.arch, &[], shell)?;
    if initramfs::live_hook_needs_wrapper(dir) {
        run_explained(shell, chroot.cmd(&initramfs::divert_live_hook()), job)?;
        let hook = dir.join(initramfs::LIVE_HOOK.trim_start_matches('/'));
        files::write_atomic(&hook, initramfs::live_hook_wrapper().as_bytes())?;
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", hook.display()))?;
    }
    let conf = initramfs::ConfDir::write(dir, &[], &initramfs::NODE1_MODULES)?;
    for version in installed_kernels(dir) {
        shell.step(&format!("make the {} initramfs for {version}", job.section));
        let output = format!("/boot/initrd.img-{version}");
        run_explained(shell, chroot.cmd(&conf.mkinitramfs(&output, &version)), job)?;
    }
    Ok(())
}

/// Every requested package is installed: asked of the root's own dpkg
/// database, from the host (no chroot needed).
fn check_installed(shell: &StageShell, dir: &Path, packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let sh = shell.sh();
    let admindir = format!("--admindir={}", dir.join("var/lib/dpkg").display());
    let names: Vec<&str> = packages
        .iter()
        .map(|p| p.split(['=', '/']).next().unwrap_or(p))
        .collect();
    let format = "--showformat=${Package}\t${Status}\n";
    let listing = shell.read(cmd!(sh, "dpkg-query {admindir} -W {format}"))?;
    let installed: HashSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|&(_, status)| status == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect();
    if !missing.is_empty() {
        bail!("not installed in {}: {}", dir.display(), missing.join(", "));
    }
    shell.note(&format!("all {} packages installed", names.len()));
    Ok(())
}

/// What a finished root must not carry: the build's apt lists, .debs, logs,
/// machine-id, ssh host keys, and the build host's resolv.conf.
pub(crate) fn finish_root(dir: &Path) -> Result<()> {
    for path in BUILD_SETTINGS {
        let _ = fs::remove_file(dir.join(path));
    }
    for sub in ["var/lib/apt/lists", "var/cache/apt", "var/log"] {
        remove_files_under(&dir.join(sub))?;
    }
    for sub in ["tmp", "var/tmp"] {
        empty_dir(&dir.join(sub))?;
    }
    let machine_id = dir.join("etc/machine-id");
    if machine_id.exists() {
        // Empty, not absent: systemd makes a new one at first boot.
        fs::write(&machine_id, "").context("emptying etc/machine-id")?;
    }
    let dbus_id = dir.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok_and(|m| m.is_file()) {
        fs::remove_file(&dbus_id).context("removing var/lib/dbus/machine-id")?;
    }
    if let Ok(entries) = fs::read_dir(dir.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    // debootstrap copied the build host's; the image's own come at boot.
    fs::write(dir.join("etc/resolv.conf"), "").context("emptying etc/resolv.conf")?;
    fs::write(dir.join("etc/hostname"), "krgiso\n").context("writing etc/hostname")?;
    Ok(())
}

/// Removes every file (and symlink) under `dir`, keeping the directories:
/// packages expect /var/log/apt, /var/lib/apt/lists/partial to exist.
fn remove_files_under(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            remove_files_under(&path)?;
        } else {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn empty_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        files::remove_tree(&e.path())?;
    }
    Ok(())
}

/// Runs a debootstrap or apt command; when it fails, reads the end of the
/// log and puts what went wrong in the user's terms on top of the error.
fn run_explained(shell: &StageShell, cmd: xshell::Cmd<'_>, job: &RootJob) -> Result<()> {
    shell.run(cmd).map_err(|err| {
        if err.is::<Interrupted>() || err.is::<Stopped>() {
            return err;
        }
        // This root's lines only: the other root's build writes into the
        // same log at the same time.
        let tail = shell.own_log_tail(80).join("\n");
        match explain(&tail, job.section, job.spec) {
            Some(why) => err.context(why),
            None => err,
        }
    })
}

/// Known failures of debootstrap and apt, said in one line each.
fn explain(log: &str, section: &str, spec: &RootSpec) -> Option<String> {
    let (suite, arch, mirror) = (&spec.suite, &spec.arch, &spec.mirror);
    let after = |marker: &str| -> Option<String> {
        let line = log.lines().rev().find(|l| l.contains(marker))?;
        let rest = &line[line.find(marker)? + marker.len()..];
        Some(rest.trim().trim_matches(['\'', '"']).to_owned())
    };
    if log.contains("No space left on device") {
        return Some(format!(
            "the disk is full while building the {} root: free some space where the build dir is, then rerun",
            Root::of_section(section).name()
        ));
    }
    if log.contains("No such script") {
        return Some(format!(
            "debootstrap does not know the suite `{suite}` ([{section}] suite): check its name, or install a newer debootstrap"
        ));
    }
    for marker in ["Couldn't find these debs:", "Unable to locate package"] {
        if let Some(pkgs) = after(marker) {
            return Some(format!(
                "package {pkgs} is not in {suite} {arch} on {mirror}: fix [{section}] packages"
            ));
        }
    }
    if let Some(rest) = after("E: Package") {
        let name = rest
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches(['\'', '"']);
        return Some(format!(
            "package {name} has no installation candidate in {suite} {arch} on {mirror}: fix [{section}] packages"
        ));
    }
    let keyring = spec
        .keyring
        .as_ref()
        .map(|k| k.display().to_string())
        .unwrap_or_else(|| format!("{}'s default", spec.bootstrap.as_str()));
    for marker in [
        "Release signed by unknown key",
        "Invalid Release signature",
        "NO_PUBKEY",
        "EXPKEYSIG",
        "signature could not be verified",
    ] {
        if log.contains(marker) {
            return Some(format!(
                "the {suite} Release file could not be verified with the keyring {keyring}: set [{section}] keyring to one that holds its key"
            ));
        }
    }
    let release_failed = log.contains("Failed getting release file")
        || log.contains("Failed getting release signature file");
    if release_failed && log.contains("404") {
        return Some(format!(
            "the mirror {mirror} has no suite `{suite}` ([{section}] suite and mirror)"
        ));
    }
    let unreachable = [
        "Temporary failure resolving",
        "Could not resolve",
        "Connection refused",
        "Network is unreachable",
        "Could not connect",
        "Connection timed out",
        "Failed to fetch",
    ];
    if release_failed || unreachable.iter().any(|m| log.contains(m)) {
        return Some(format!(
            "cannot reach the mirror {mirror} for the {} root ([{section}] mirror): check the URL and the network",
            Root::of_section(section).name()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RootSpec {
        let p = crate::profile::Profile::load(&crate::project_root().join("profiles/smoke.toml"))
            .unwrap();
        p.node1
    }

    /// One debootstrap serves two roots only when debootstrap would make
    /// the same root for both.
    #[test]
    fn roots_share_a_bootstrap_only_when_debootstrap_makes_the_same() {
        let load = |name: &str| {
            crate::profile::Profile::load(
                &crate::project_root().join(format!("profiles/{name}.toml")),
            )
            .unwrap()
        };
        let mut smoke = load("smoke");
        assert_ne!(smoke.node1.packages, smoke.nodes.packages);
        // mmdebstrap (the default) makes each root with its own packages.
        assert!(!same_bootstrap(&smoke.node1, &smoke.nodes));
        smoke.node1.bootstrap = Bootstrap::Debootstrap;
        smoke.nodes.bootstrap = Bootstrap::Debootstrap;
        assert!(same_bootstrap(&smoke.node1, &smoke.nodes));
        let mut other = smoke.nodes.clone();
        other.bootstrap = Bootstrap::Mmdebstrap;
        assert!(!same_bootstrap(&smoke.node1, &other));
        let mut other = smoke.nodes.clone();
        other.arch = "i386".into();
        assert!(!same_bootstrap(&smoke.node1, &other));
        let mut other = smoke.nodes.clone();
        other.mirror = "http://127.0.0.1:9/debian".into();
        assert!(!same_bootstrap(&smoke.node1, &other));
        let mut other = smoke.nodes.clone();
        other.variant = None;
        assert!(!same_bootstrap(&smoke.node1, &other));
        // Packages installed by debootstrap itself are part of the bootstrap.
        let (mut a, mut b) = (smoke.node1.clone(), smoke.nodes.clone());
        a.install = InstallMethod::Include;
        b.install = InstallMethod::Include;
        assert!(!same_bootstrap(&a, &b));
        // A static userland is compiled, not bootstrapped.
        let krg = load("kerrighed-2.4.4");
        assert!(!same_bootstrap(&krg.node1, &krg.nodes));
        let mut static_copy = krg.node1.clone();
        static_copy.userland = Userland::Static;
        assert!(!same_bootstrap(&krg.node1, &static_copy));
    }

    /// mmdebstrap's hooks bind the root's .deb cache by an environment
    /// variable (a path is never quoted into their shell text), keep every
    /// .deb in it, and release the mount before mmdebstrap's own cleanup.
    #[test]
    fn mmdebstrap_keeps_the_deb_cache_and_quotes_no_path() {
        let mut spec = spec();
        spec.keyring = Some("/k/r.gpg".into());
        let args = mmdebstrap_args(&spec, Path::new("/b/it's here"));
        let n = args.len();
        assert_eq!(
            args[n - 3..],
            ["bookworm", "/b/it's here", "http://deb.debian.org/debian"]
        );
        assert!(args.contains(&"--variant=minbase".to_owned()));
        assert!(args.contains(&"--architectures=amd64".to_owned()));
        assert!(args.contains(&"--keyring=/k/r.gpg".to_owned()));
        let include = format!("--include={}", spec.packages.join(","));
        assert!(args.contains(&include), "{args:?}");
        for kept in ["--skip=essential/unlink", "--skip=download/empty"] {
            assert!(args.contains(&kept.to_owned()), "{kept} missing");
        }
        let hooks: Vec<&String> = args.iter().filter(|a| a.contains("-hook=")).collect();
        assert_eq!(hooks.len(), 2);
        assert!(
            hooks[0].starts_with("--setup-hook=")
                && hooks[0].contains("mount --bind \"$KRGISO_DEB_CACHE\"")
        );
        assert!(hooks[1].starts_with("--customize-hook=umount "));
        assert!(hooks.iter().all(|h| !h.contains("/b/")));
        // No variant: mmdebstrap's own default, which is debootstrap's.
        spec.variant = None;
        spec.packages.clear();
        let args = mmdebstrap_args(&spec, Path::new("/r"));
        assert!(args.contains(&"--variant=debootstrap".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--include")));
    }

    #[test]
    fn known_failures_are_explained_in_the_users_terms() {
        let s = spec();
        let cases = [
            ("I: Retrieving InRelease\nE: Failed getting release file http://deb.debian.org/debian/dists/bookwurm/Release\n(404 Not Found)", "has no suite `bookworm`"),
            ("W: Failure trying to run: chroot\nE: Couldn't find these debs: nfs-kernal-server", "package nfs-kernal-server is not in bookworm amd64"),
            ("E: Unable to locate package dnsmask", "package dnsmask is not in bookworm amd64"),
            ("E: Package 'foo' has no installation candidate", "package foo has no installation candidate"),
            ("tar: ./usr/lib/x: Cannot write: No space left on device", "the disk is full"),
            ("E: No such script: /usr/share/debootstrap/scripts/bookwurm", "does not know the suite"),
            ("W: Cannot check Release signature; keyring file not available\nE: Release signed by unknown key (key id 0E4EDE2C7F3E1FC0)", "could not be verified"),
            ("I: Retrieving InRelease\nE: Failed getting release file http://10.0.0.1/debian/dists/bookworm/Release", "cannot reach the mirror"),
            ("Err:1 http://x bookworm InRelease\n  Temporary failure resolving 'x'", "cannot reach the mirror"),
        ];
        for (log, expected) in cases {
            let got = explain(log, "node1", &s).unwrap_or_default();
            assert!(got.contains(expected), "{log:?} -> {got:?}");
        }
        assert_eq!(
            explain(
                "dpkg: error processing package x (--configure)",
                "node1",
                &s
            ),
            None
        );
    }

    #[test]
    fn a_finished_root_has_no_build_leftovers_but_keeps_its_directories() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for (path, body) in [
            (
                "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
                "x",
            ),
            ("var/cache/apt/pkgcache.bin", "x"),
            ("var/cache/apt/archives/dnsmasq_2.89_all.deb", "x"),
            ("var/log/apt/history.log", "x"),
            ("var/log/dpkg.log", "x"),
            ("etc/machine-id", "0123456789abcdef\n"),
            ("etc/ssh/ssh_host_ed25519_key", "secret"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "public"),
            ("etc/ssh/sshd_config", "keep me"),
            ("etc/resolv.conf", "nameserver 10.0.2.3\n"),
            ("tmp/junk/file", "x"),
            (BUILD_SETTINGS[0], "x"),
            (BUILD_SETTINGS[1], "x"),
            (BUILD_SETTINGS[2], "Acquire::Languages \"none\";"),
            (BUILD_SETTINGS[3], "force-unsafe-io"),
        ] {
            let p = r.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        fs::create_dir_all(r.join("var/lib/apt/lists/partial")).unwrap();
        finish_root(r).unwrap();
        assert!(r.join("var/lib/apt/lists/partial").is_dir());
        assert!(r.join("var/log/apt").is_dir());
        for gone in [
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/dnsmasq_2.89_all.deb",
            "var/log/apt/history.log",
            "var/log/dpkg.log",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "tmp/junk",
            BUILD_SETTINGS[0],
            BUILD_SETTINGS[1],
            BUILD_SETTINGS[2],
            BUILD_SETTINGS[3],
        ] {
            assert!(!r.join(gone).exists(), "{gone} left");
        }
        assert_eq!(fs::read_to_string(r.join("etc/machine-id")).unwrap(), "");
        assert_eq!(fs::read_to_string(r.join("etc/resolv.conf")).unwrap(), "");
        assert_eq!(
            fs::read_to_string(r.join("etc/ssh/sshd_config")).unwrap(),
            "keep me"
        );
    }
}
