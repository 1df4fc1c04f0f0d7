//! End-to-end checks that `cargo xtask test` runs after `cargo test`: the
//! real stages, as root, against a real Debian mirror, driven through the
//! xtask binary the way a user runs it. Each check returns an error naming
//! what it saw.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use xshell::cmd;

use crate::chroot;
use crate::files;
use crate::host;
use crate::layout::Layout;
use crate::profile::{self, Profile};
use crate::shell::StageShell;
use crate::stages::{self, BuildContext};

/// What an end-to-end check measured: (what, seconds).
pub type Timings = Vec<(String, f64)>;

/// The smoke profile, in its own build dir under the project's `build/`.
pub struct SmokeRun {
    pub project: PathBuf,
    pub build: PathBuf,
    pub exe: PathBuf,
    pub profile: Profile,
}

impl SmokeRun {
    pub fn new(project: &Path) -> Result<SmokeRun> {
        let path = profile::resolve("smoke", project)?;
        Ok(SmokeRun {
            project: project.to_owned(),
            build: project.join("build/e2e/build"),
            exe: xtask_binary()?,
            profile: Profile::load(&path)?,
        })
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout::new(&self.project, Some(&self.build))
    }

    fn root(&self, which: &str) -> PathBuf {
        self.build.join("roots").join(which)
    }

    /// `xtask --profile smoke --build-dir B ARGS`, its output streamed to the
    /// terminal and the log; returns what it printed.
    pub(crate) fn xtask(&self, s: &StageShell, args: &[&str]) -> Result<String> {
        let exe = &self.exe;
        let build = &self.build;
        let sh = s.sh();
        s.run_collect(cmd!(
            sh,
            "{exe} --profile smoke --build-dir {build} {args...}"
        ))
        .with_context(|| format!("`xtask {}` failed", args.join(" ")))
    }

    /// `xtask --profile smoke --build-dir B ARGS`, to start by hand.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(["--profile", "smoke", "--build-dir"])
            .arg(&self.build)
            .args(args);
        c
    }

    /// The release of the kernel the kernel stage staged.
    pub(crate) fn release(&self) -> Result<String> {
        let path = self.layout().staged_kernel().join("release");
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// The host tools the packages stage needs, installed before the host's
    /// state is recorded (installing them is the test's doing, not the stage's).
    fn install_host_tools(&self, s: &StageShell) -> Result<()> {
        let cx = std::sync::Arc::new(BuildContext {
            profile: self.profile.clone(),
            profile_path: profile::resolve("smoke", &self.project)?,
            layout: self.layout(),
            offline: false,
            sources_dir: None,
        });
        let tools: Vec<_> = stages::stages(&cx)
            .iter()
            .flat_map(|st| st.host_tools())
            .collect();
        host::ensure_tools(&tools, true, s.log_path())
    }
}

/// The xtask binary to drive. `cargo test` (an earlier part of the suite)
/// rebuilds it in place, so the running one may show as "(deleted)": the
/// file now at that path is the fresh build of the same tree.
pub(crate) fn xtask_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let shown = exe.to_string_lossy();
    Ok(match shown.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// The shell an end-to-end check runs in: its output on the terminal and
/// in `build/logs/<name>.log`.
pub(crate) fn check_shell(project: &Path, name: &str) -> Result<StageShell> {
    StageShell::new(
        name,
        &project.join("build/logs").join(format!("{name}.log")),
        true,
    )
}

/// What the host looks like: every file under /etc with its content hash,
/// and the installed package list.
fn host_state(s: &StageShell) -> Result<(BTreeMap<PathBuf, String>, String)> {
    let mut etc = BTreeMap::new();
    let mut stack = vec![PathBuf::from("/etc")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let digest = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!(
                    "-> {}",
                    fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                )
            } else {
                crate::fetch::sha256_of(&path).unwrap_or_else(|_| "unreadable".to_owned())
            };
            etc.insert(path, digest);
        }
    }
    let sh = s.sh();
    let packages = cmd!(sh, "dpkg-query -W")
        .read()
        .context("listing host packages")?;
    Ok((etc, packages))
}

/// Files in a directory tree with their modification times.
fn listing(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = meta.modified() {
                out.insert(e.path(), m);
            }
        }
    }
    out
}

pub(crate) fn no_mounts_under(dir: &Path) -> Result<()> {
    let mounts = files::mounts_under(dir)?;
    ensure!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:?}",
        dir.display()
    );
    Ok(())
}

/// The packages stage for real: both roots, their package sets, a clean
/// host, a no-op rerun, a rerun from the .deb cache, and a SIGKILL midway.
/// Returns the timings it measured.
pub fn packages(project: &Path) -> Result<Timings> {
    let run = SmokeRun::new(project)?;
    let s = check_shell(project, "e2e-packages")?;
    let mut timings = Vec::new();
    run.install_host_tools(&s)?;
    s.step("start from an empty build dir (the .deb cache stays)");
    run.xtask(&s, &["clean", "--all"])?;

    let before = host_state(&s)?;
    s.step("packages, cold roots");
    let t = Instant::now();
    run.xtask(&s, &["packages"])?;
    timings.push((
        "packages (cold roots)".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    check_roots(&run, &s)?;
    no_mounts_under(&run.build)?;
    let after = host_state(&s)?;
    if before.1 != after.1 {
        bail!("the host's package list changed during the packages stage");
    }
    let changed: Vec<_> = before
        .0
        .iter()
        .filter(|(p, d)| after.0.get(*p) != Some(d))
        .map(|(p, _)| p.clone())
        .chain(
            after
                .0
                .keys()
                .filter(|p| !before.0.contains_key(*p))
                .cloned(),
        )
        .collect();
    ensure!(
        changed.is_empty(),
        "the packages stage changed the host's /etc: {changed:?}"
    );

    s.step("packages again: a no-op");
    let stamp = run.layout().stamp("packages");
    let stamp_before = fs::metadata(&stamp)?.modified()?;
    let t = Instant::now();
    let said = run.xtask(&s, &["packages"])?;
    let noop = t.elapsed().as_secs_f64();
    timings.push(("packages (no-op)".to_owned(), noop));
    ensure!(
        said.contains("everything is up to date"),
        "the second run did not say it was up to date:\n{said}"
    );
    ensure!(
        fs::metadata(&stamp)?.modified()? == stamp_before,
        "the no-op run rewrote the stamp"
    );

    s.step("clean packages, then packages from the .deb cache");
    let cache = run.layout().downloads.join("debs");
    let debs_before = listing(&cache);
    run.xtask(&s, &["clean", "packages"])?;
    let t = Instant::now();
    run.xtask(&s, &["packages"])?;
    timings.push((
        "packages (after clean, .deb cache warm)".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    let debs_after = listing(&cache);
    let refetched: Vec<_> = debs_before
        .iter()
        .filter(|(p, m)| debs_after.get(*p) != Some(m))
        .map(|(p, _)| p.display().to_string())
        .collect();
    ensure!(
        refetched.is_empty(),
        "these .debs were fetched again although cached: {refetched:?}"
    );
    let new: Vec<_> = debs_after
        .keys()
        .filter(|p| !debs_before.contains_key(*p))
        .collect();
    ensure!(
        new.is_empty(),
        "new .debs appeared for the same package sets: {new:?}"
    );
    check_roots(&run, &s)?;

    s.step("failures a user can cause: one clear message, no stamp, no mount");
    let t = Instant::now();
    check_failures(&run, &s)?;
    timings.push((
        "packages failures (bad package, dead mirror)".to_owned(),
        t.elapsed().as_secs_f64(),
    ));

    s.step("SIGKILL during apt, then packages again");
    kill_during_apt(&run, &s)?;
    let t = Instant::now();
    let said = run.xtask(&s, &["packages"])?;
    timings.push((
        "packages (after SIGKILL)".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    ensure!(
        said.contains("left by an earlier run"),
        "the rerun did not report releasing the killed run's leftovers:\n{said}"
    );
    check_roots(&run, &s)?;
    no_mounts_under(&run.build)?;
    Ok(timings)
}

/// A smoke profile with edits (each `from` must occur; its first
/// occurrence becomes `to`), written beside the e2e build dir.
fn edited_profile(run: &SmokeRun, name: &str, edits: &[(&str, &str)]) -> Result<PathBuf> {
    let mut text = fs::read_to_string(profile::resolve("smoke", &run.project)?)?;
    for (from, to) in edits {
        ensure!(
            text.contains(from),
            "the smoke profile has no `{from}` to edit"
        );
        text = text.replacen(from, to, 1);
    }
    let path = run
        .build
        .with_file_name("profiles")
        .join(format!("{name}.toml"));
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, text)?;
    Ok(path)
}

/// Runs `packages` with a broken profile in a throw-away build dir; it must
/// fail with `expected` in its last error line, leaving no stamp and no mount.
fn expect_failure(run: &SmokeRun, s: &StageShell, profile: &Path, expected: &str) -> Result<()> {
    let build = run.build.with_file_name("failing");
    let (exe, sh) = (&run.exe, s.sh());
    let out = cmd!(sh, "{exe} --profile {profile} --build-dir {build} packages")
        .ignore_status()
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    s.note(&stderr);
    ensure!(
        !out.status.success(),
        "packages with {} succeeded",
        profile.display()
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    ensure!(
        error.contains(expected),
        "expected an error saying `{expected}`, got:\n{stderr}"
    );
    ensure!(
        !build.join("stamps/packages.json").exists(),
        "a failed packages run wrote a stamp"
    );
    no_mounts_under(&build)?;
    let exe_clean = cmd!(
        sh,
        "{exe} --profile {profile} --build-dir {build} clean --all"
    );
    exe_clean.quiet().ignore_stdout().ignore_stderr().run()?;
    Ok(())
}

fn check_failures(run: &SmokeRun, s: &StageShell) -> Result<()> {
    // A package the suite does not have: debootstrap --include stops at once.
    let bad_package = edited_profile(
        run,
        "bad-package",
        &[
            ("[node1]\n", "[node1]\ninstall = \"include\"\n"),
            (
                "packages = [\n",
                "packages = [\n    \"krgiso-no-such-package\",\n",
            ),
        ],
    )?;
    expect_failure(
        run,
        s,
        &bad_package,
        "package krgiso-no-such-package is not in bookworm amd64",
    )?;
    // A mirror nobody answers on (a closed port on loopback).
    let dead_mirror = edited_profile(
        run,
        "dead-mirror",
        &[(
            "mirror = \"http://deb.debian.org/debian\"",
            "mirror = \"http://127.0.0.1:9/debian\"",
        )],
    )?;
    expect_failure(
        run,
        s,
        &dead_mirror,
        "cannot reach the mirror http://127.0.0.1:9/debian",
    )
}

/// Both roots exist, hold the profile's packages, and carry none of the
/// build's leftovers.
fn check_roots(run: &SmokeRun, s: &StageShell) -> Result<()> {
    let sh = s.sh();
    for (which, spec) in [("node1", &run.profile.node1), ("nodes", &run.profile.nodes)] {
        let root = run.root(which);
        ensure!(
            root.join("etc/debian_version").is_file(),
            "{} is not a Debian root",
            root.display()
        );
        let admindir = format!("--admindir={}", root.join("var/lib/dpkg").display());
        let format = "--showformat=${Package} ${Status}\n";
        let installed = cmd!(sh, "dpkg-query {admindir} -W {format}").read()?;
        for pkg in &spec.packages {
            ensure!(
                installed
                    .lines()
                    .any(|l| l == format!("{pkg} install ok installed")),
                "{pkg} is not installed in the {which} root"
            );
        }
        let keys: Vec<_> = fs::read_dir(root.join("etc/ssh"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
            .map(|e| e.path())
            .collect();
        ensure!(
            keys.is_empty(),
            "ssh host keys baked into the {which} root: {keys:?}"
        );
        let lists = fs::read_dir(root.join("var/lib/apt/lists"))?
            .flatten()
            .filter(|e| e.path().is_file())
            .count();
        ensure!(lists == 0, "apt lists left in the {which} root");
        let debs = listing(&root.join("var/cache/apt")).len();
        ensure!(debs == 0, ".debs or caches left in the {which} root");
        ensure!(
            fs::read_to_string(root.join("etc/machine-id"))
                .unwrap_or_default()
                .is_empty(),
            "the {which} root has a machine-id"
        );
        ensure!(
            !root.join("usr/sbin/policy-rc.d").exists(),
            "policy-rc.d left in the {which} root"
        );
    }
    s.note("both roots checked");
    Ok(())
}

/// Starts `packages` from clean, kills it with SIGKILL once apt is
/// installing, and checks it really left mounts behind (the case to handle).
fn kill_during_apt(run: &SmokeRun, s: &StageShell) -> Result<()> {
    run.xtask(s, &["clean", "packages"])?;
    let log = run.layout().log("packages");
    let mut child = run
        .command(&["packages"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting xtask packages")?;
    let started = Instant::now();
    let in_apt = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("apt-get install -y") {
            break true;
        }
        if child.try_wait()?.is_some() || started.elapsed() > Duration::from_secs(600) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !in_apt {
        let _ = child.kill();
        bail!(
            "the packages run never reached apt-get install; see {}",
            log.display()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    child.kill().context("sending SIGKILL")?;
    child.wait()?;
    let stale = files::mounts_under(&run.build)?;
    let orphans = chroot::processes_rooted_in(&run.build);
    s.note(&format!(
        "after SIGKILL: {} mounts and {} processes left",
        stale.len(),
        orphans.len()
    ));
    ensure!(
        !stale.is_empty(),
        "SIGKILL during apt left no mounts: the test did not hit the case it is for"
    );
    Ok(())
}

/// The stand-in kerrighed tree: configure and Makefiles that record every
/// call, and the stand-in toolchain (make, gcc-4.1) for the nodes root.
mod standin {
    pub const CONFIGURE: &str = include_str!("standin/configure");
    pub const MAKEFILE: &str = include_str!("standin/Makefile");
    pub const KERNEL_MAKEFILE: &str = include_str!("standin/kernel-Makefile");
    pub const MODULES_MAKEFILE_IN: &str = include_str!("standin/modules-Makefile.in");
    pub const MAKE: &str = include_str!("standin/make");
}

/// A .tar.gz or .tar.bz2 (by `name`) of `entries` (path, content, mode).
fn tarball(name: &str, entries: &[(&str, &str, u32)]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for (path, content, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(path)?;
        h.set_size(content.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_230_000_000);
        h.set_cksum();
        b.append(&h, content.as_bytes())?;
    }
    let raw = b.into_inner()?;
    Ok(if name.ends_with(".bz2") {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&raw)?;
        e.finish()?
    } else {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw)?;
        e.finish()?
    })
}

/// The smoke profile with the kerrighed kernel, its sources served by `server`.
fn standin_profile(
    run: &SmokeRun,
    server: &crate::testsuite::http::TestServer,
    pins: (&str, &str),
    fragment: &Path,
) -> Result<String> {
    let smoke = fs::read_to_string(profile::resolve("smoke", &run.project)?)?;
    let (kernel_at, network_at) = (
        smoke
            .find("[kernel]")
            .context("no [kernel] in smoke.toml")?,
        smoke
            .find("[network]")
            .context("no [network] in smoke.toml")?,
    );
    Ok(format!(
        "{}[kernel]\nkind = \"kerrighed\"\nconfig = \"{}\"\ncc = \"gcc-4.1\"\n\n\
         [[sources]]\nname = \"linux\"\nfile = \"linux-2.6.20.tar.bz2\"\nsha256 = \"{}\"\nurls = [\"{}\"]\n\n\
         [[sources]]\nname = \"kerrighed\"\nfile = \"kerrighed-2.4.1.tar.gz\"\nsha256 = \"{}\"\nurls = [\"{}\"]\n\n{}",
        &smoke[..kernel_at],
        fragment.display(),
        pins.0,
        server.url("/linux-2.6.20.tar.bz2"),
        pins.1,
        server.url("/kerrighed-2.4.1.tar.gz"),
        &smoke[network_at..]
    ))
}

/// The kerrighed kind of the kernel stage, for real, with a stand-in
/// kerrighed tree and toolchain: in a copy of the smoke build (its nodes
/// root is the chroot), sources from a server on 127.0.0.1. Checks the exact
/// order and arguments of every step, that each ran inside the chroot, that a
/// failure at make leaves no stamp and a rerun completes, that a dropped
/// config symbol is named, and where the outputs land.
pub fn kernel_standin(project: &Path) -> Result<Timings> {
    let run = SmokeRun::new(project)?;
    let s = check_shell(project, "e2e-kernel")?;
    let mut timings = Vec::new();
    let base = project.join("build/e2e/krg");
    let build = base.join("build");
    files::remove_tree(&base)?;
    fs::create_dir_all(&build)?;

    s.step("copy the smoke build's roots (the nodes root is the chroot)");
    let sh = s.sh();
    let (roots, stamp) = (
        run.build.join("roots"),
        run.build.join("stamps/packages.json"),
    );
    ensure!(
        stamp.exists(),
        "{} is missing: the packages check runs first",
        stamp.display()
    );
    s.run(cmd!(sh, "cp -a {roots} {build}"))?;
    fs::create_dir_all(build.join("stamps"))?;
    fs::copy(&stamp, build.join("stamps/packages.json"))?;
    let root = build.join("roots/nodes");
    fs::write(
        root.join("etc/krgiso-standin-chroot"),
        "the stand-in records `inside` when it sees this\n",
    )?;
    for (tool, body) in [("make", standin::MAKE), ("gcc-4.1", "#!/bin/sh\nexit 0\n")] {
        let path = root.join("usr/local/bin").join(tool);
        fs::create_dir_all(path.parent().unwrap_or(&root))?;
        fs::write(&path, body)?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }

    let linux = tarball(
        "linux-2.6.20.tar.bz2",
        &[(
            "linux-2.6.20/Makefile",
            "VERSION = 2\nPATCHLEVEL = 6\nSUBLEVEL = 20\n",
            0o644,
        )],
    )?;
    // The tree's directory is not the file's name: the stage must take it
    // from the tarball.
    let top = "kerrighed-standin-2.4.1";
    let krg = tarball(
        "kerrighed-2.4.1.tar.gz",
        &[
            (&format!("{top}/configure"), standin::CONFIGURE, 0o755),
            (&format!("{top}/Makefile"), standin::MAKEFILE, 0o644),
            (
                &format!("{top}/kernel/Makefile"),
                standin::KERNEL_MAKEFILE,
                0o644,
            ),
            (
                &format!("{top}/modules/Makefile.in"),
                standin::MODULES_MAKEFILE_IN,
                0o644,
            ),
        ],
    )?;
    let server = crate::testsuite::http::TestServer::start()?;
    server.route(
        "/linux-2.6.20.tar.bz2",
        crate::testsuite::http::Route::file(&linux),
    );
    server.route(
        "/kerrighed-2.4.1.tar.gz",
        crate::testsuite::http::Route::file(&krg),
    );
    let pins = (
        crate::engine::sha256_hex(&linux),
        crate::engine::sha256_hex(&krg),
    );
    let fragment = project.join("kernel-configs/krg-2.6.20.config");
    let profile_path = base.join("profiles/standin.toml");
    fs::create_dir_all(profile_path.parent().unwrap_or(&base))?;
    fs::write(
        &profile_path,
        standin_profile(&run, &server, (&pins.0, &pins.1), &fragment)?,
    )?;

    let exe = &run.exe;
    let kernel = |s: &StageShell, profile: &Path| -> Result<(bool, String)> {
        let sh = s.sh();
        let out = cmd!(sh, "{exe} --profile {profile} --build-dir {build} kernel")
            .ignore_status()
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        s.note(&text);
        Ok((out.status.success(), text))
    };
    let record = root.join("krg-standin.log");
    let stamp = build.join("stamps/kernel.json");

    s.step("a failure injected at make: no stamp, no mount");
    fs::write(root.join("krg-fail-make"), "")?;
    let (ok, said) = kernel(&s, &profile_path)?;
    ensure!(
        !ok,
        "the kernel stage succeeded although make failed:\n{said}"
    );
    ensure!(
        said.contains("failing as the test asked"),
        "the failing make's output was not shown:\n{said}"
    );
    ensure!(!stamp.exists(), "a failed kernel stage wrote a stamp");
    no_mounts_under(&build)?;

    s.step("the rerun completes");
    fs::remove_file(root.join("krg-fail-make"))?;
    fs::remove_file(&record)?;
    let t = Instant::now();
    let (ok, said) = kernel(&s, &profile_path)?;
    timings.push((
        "kernel, kerrighed kind with stand-ins".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    ensure!(ok, "the kernel stage failed:\n{said}");
    ensure!(stamp.exists(), "no kernel stamp after success");
    no_mounts_under(&build)?;

    let jobs = format!(
        "-j{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let src = format!("/usr/src/{top}");
    let expected = [
        format!("configure --with-kernel-config=oldconfig CC=gcc-4.1 | cwd={src} | inside | tarball=yes | modules-shell=/bin/bash"),
        format!("make -C kernel defconfig CC=gcc-4.1 | cwd={src}/kernel | inside | CC=gcc-4.1"),
        format!("make -C kernel oldconfig CC=gcc-4.1 | cwd={src}/kernel | inside | CC=gcc-4.1"),
        "oldconfig fed=yes".to_owned(),
        format!("make {jobs} kernel CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
        format!("make {jobs} CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
        format!("make kernel-install CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
        format!("make install CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
    ];
    let seen = fs::read_to_string(&record)?;
    let seen: Vec<&str> = seen.lines().collect();
    ensure!(
        seen == expected,
        "the steps ran as:\n{}\nexpected:\n{}",
        seen.join("\n"),
        expected.join("\n")
    );

    for path in crate::stages::kernel::krg::KRG_INSTALLED
        .iter()
        .chain(crate::stages::kernel::krg::KRG_SERVICE_FILES)
    {
        ensure!(root.join(path).exists(), "{path} is not in the nodes root");
    }
    let staged = build.join("kernel");
    let version = crate::stages::kernel::krg::bzimage_release(&staged.join("vmlinuz-2.6.20-krg"))?;
    ensure!(
        version == "2.6.20-krg (stand-in built with gcc-4.1) #1",
        "the staged kernel is not the one built: {version:?}"
    );
    ensure!(
        fs::read_to_string(staged.join("System.map-2.6.20-krg"))? == "stand-in System.map\n",
        "the staged System.map is not the one built"
    );
    ensure!(
        fs::read_to_string(staged.join("release"))?.trim() == "2.6.20-krg",
        "wrong release file"
    );
    let config = fs::read_to_string(staged.join("config-2.6.20-krg"))?;
    for line in [
        "CONFIG_KERRIGHED=y",
        "CONFIG_PREEMPT_NONE=y",
        "# CONFIG_KEYS is not set",
        "CONFIG_NFS_FS=y",
    ] {
        ensure!(
            config.lines().any(|l| l == line),
            "the staged config lacks `{line}`"
        );
    }
    ensure!(
        !build.join("kernel-work").exists(),
        "the kernel work dir was left after success"
    );

    s.step("a fragment whose symbol oldconfig drops is refused, naming it");
    let bad_fragment = base.join("no-preempt-none.config");
    let text = fs::read_to_string(&fragment)?;
    fs::write(&bad_fragment, text.replace("CONFIG_PREEMPT_NONE=y\n", ""))?;
    let bad_profile = base.join("profiles/no-preempt-none.toml");
    fs::write(
        &bad_profile,
        standin_profile(&run, &server, (&pins.0, &pins.1), &bad_fragment)?,
    )?;
    let (ok, said) = kernel(&s, &bad_profile)?;
    ensure!(!ok, "a kernel config missing CONFIG_KERRIGHED was accepted");
    ensure!(
        said.contains("CONFIG_KERRIGHED is absent"),
        "the dropped symbol was not named:\n{said}"
    );
    no_mounts_under(&build)?;
    Ok(timings)
}

/// The stock kind of the kernel stage, for real, in the smoke build: the
/// nodes root's kernel and an initramfs that carries the NFS boot script.
pub fn kernel_stock(project: &Path) -> Result<Timings> {
    let run = SmokeRun::new(project)?;
    let s = check_shell(project, "e2e-kernel-stock")?;
    let t = Instant::now();
    run.xtask(&s, &["kernel"])?;
    let secs = t.elapsed().as_secs_f64();
    let staged = run.build.join("kernel");
    let release = fs::read_to_string(staged.join("release"))?
        .trim()
        .to_owned();
    let initrd = staged.join(format!("initrd.img-{release}"));
    ensure!(
        staged.join(format!("vmlinuz-{release}")).is_file(),
        "no staged vmlinuz-{release}"
    );
    ensure!(initrd.is_file(), "no staged initrd.img-{release}");
    let sh = s.sh();
    let root = run.root("nodes");
    let inside = format!(
        "/tmp/{}",
        initrd
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("initrd")
    );
    fs::copy(&initrd, root.join(inside.trim_start_matches('/')))?;
    let listing = cmd!(sh, "chroot {root} lsinitramfs {inside}").read();
    let _ = fs::remove_file(root.join(inside.trim_start_matches('/')));
    let listing = listing?;
    ensure!(
        listing.lines().any(|l| l.ends_with("scripts/nfs")),
        "the staged initramfs has no scripts/nfs"
    );
    ensure!(
        listing.lines().any(|l| l.contains("/e1000")),
        "the staged initramfs has no network drivers (e1000)"
    );
    no_mounts_under(&run.build)?;
    Ok(vec![("kernel, stock kind".to_owned(), secs)])
}

/// An i386 root on this x86_64 host, as the kerrighed profile's lenny root
/// is: debootstrapped (minbase, current Debian, since lenny's archive is not
/// reachable everywhere) and entered the way the stages do. Commands in it
/// must see an i686 machine (`setarch i686`), or the kernel's and
/// kerrighed's configure would pick x86_64.
pub fn i386_chroot(project: &Path) -> Result<Timings> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("this check is for x86_64 hosts (the build machine the seeds describe)");
    }
    let s = check_shell(project, "e2e-i386")?;
    let base = project.join("build/e2e/i386");
    let root = base.join("root");
    let cache = project.join("build/e2e/downloads/debs/bookworm-i386");
    fs::create_dir_all(&cache)?;
    let t = Instant::now();
    if !root.join("etc/debian_version").exists() {
        files::remove_tree(&root)?;
        fs::create_dir_all(&root)?;
        s.step("debootstrap a minimal bookworm i386 root");
        let sh = s.sh();
        let cache_arg = format!("--cache-dir={}", cache.display());
        s.run(cmd!(sh, "debootstrap --arch=i386 --variant=minbase {cache_arg} bookworm {root} http://deb.debian.org/debian"))?;
    }
    let bootstrap = t.elapsed().as_secs_f64();
    s.step("enter it as the stages do");
    let chroot = chroot::Chroot::enter(&root, "i386", &[], &s)?;
    let machine = chroot.read(&["uname", "-m"])?;
    let dpkg_arch = chroot.read(&["dpkg", "--print-architecture"])?;
    let in_dir = s.read(chroot.cmd_in("/tmp", &["uname", "-m"], false))?;
    drop(chroot);
    no_mounts_under(&base)?;
    ensure!(
        machine == "i686",
        "uname -m in the i386 chroot says {machine:?}, not i686: setarch is not applied"
    );
    ensure!(
        in_dir == "i686",
        "uname -m via cmd_in says {in_dir:?}, not i686"
    );
    ensure!(
        dpkg_arch == "i386",
        "dpkg in the i386 root says {dpkg_arch:?}"
    );
    Ok(vec![(
        "debootstrap i386 minbase (or reuse)".to_owned(),
        bootstrap,
    )])
}

/// The node1 stage for real on the smoke build: what its layers hold, and
/// that the roots under them are left as they were.
pub fn node1_layers(project: &Path) -> Result<Timings> {
    let run = SmokeRun::new(project)?;
    let s = check_shell(project, "e2e-node1")?;
    let passwd_before = fs::read(run.root("node1").join("etc/passwd"))?;
    let t = Instant::now();
    run.xtask(&s, &["node1"])?;
    let secs = t.elapsed().as_secs_f64();
    let (n1, nd) = (run.build.join("node1/node1"), run.build.join("node1/nodes"));
    let release = run.release()?;
    let tftp = crate::layout::tftp_dir(&n1);
    for name in [
        "pxelinux.0".to_owned(),
        "ldlinux.c32".to_owned(),
        "pxelinux.cfg/default".to_owned(),
        format!("vmlinuz-{release}"),
        format!("initrd.img-{release}"),
    ] {
        ensure!(tftp.join(&name).is_file(), "the TFTP root lacks {name}");
    }
    let pxe = fs::read_to_string(tftp.join("pxelinux.cfg/default"))?;
    ensure!(
        pxe.contains(&format!("KERNEL vmlinuz-{release}")),
        "pxelinux.cfg/default names another kernel:\n{pxe}"
    );
    for (layer, file) in [
        (&n1, "etc/exports"),
        (&n1, "etc/krgiso/dnsmasq-full.conf"),
        (&nd, "etc/kerrighed_nodes"),
        (&nd, "etc/fstab"),
    ] {
        ensure!(
            layer.join(file).is_file(),
            "{} lacks {file}",
            layer.display()
        );
    }
    let user = &run.profile.cluster.user;
    for layer in [&n1, &nd] {
        let passwd = fs::read_to_string(layer.join("etc/passwd"))?;
        ensure!(
            passwd.lines().any(|l| l.starts_with(&format!("{user}:x:"))),
            "{user} missing from {}",
            layer.display()
        );
        let shadow = fs::read_to_string(layer.join("etc/shadow"))?;
        let hash = shadow
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(1));
        ensure!(
            hash.is_some_and(|h| h.starts_with("$6$")),
            "{user} has no password hash in {}",
            layer.display()
        );
    }
    let creds = run.build.join("credentials");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&creds)?.permissions()) & 0o777;
    ensure!(
        mode == 0o600,
        "build/credentials has mode {mode:o}, not 600"
    );
    ensure!(
        fs::read(run.root("node1").join("etc/passwd"))? == passwd_before,
        "the node1 stage changed the node1 root"
    );
    ensure!(
        fs::read_link(n1.join("etc/systemd/system/dnsmasq.service"))? == Path::new("/dev/null"),
        "Debian's dnsmasq.service is not masked"
    );
    Ok(vec![("node1".to_owned(), secs)])
}

/// Network namespaces this check makes, and deletes (with every process
/// left in them) however it ends. Loopback-only: no address outside them
/// is ever contacted.
struct Netns {
    names: Vec<String>,
    pid_files: Vec<PathBuf>,
}

impl Netns {
    fn add(&mut self, s: &StageShell, name: &str) -> Result<()> {
        let sh = s.sh();
        let _ = cmd!(sh, "ip netns del {name}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        s.run(cmd!(sh, "ip netns add {name}"))?;
        self.names.push(name.to_owned());
        s.run(cmd!(sh, "ip netns exec {name} ip link set lo up"))
    }

    /// A veth pair: `a` in namespace `na`, `b` in `nb`, both up.
    fn link(&self, s: &StageShell, (na, a): (&str, &str), (nb, b): (&str, &str)) -> Result<()> {
        let sh = s.sh();
        s.run(cmd!(
            sh,
            "ip link add {a} netns {na} type veth peer name {b} netns {nb}"
        ))?;
        s.run(cmd!(sh, "ip -n {na} link set {a} up"))?;
        s.run(cmd!(sh, "ip -n {nb} link set {b} up"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid_file in &self.pid_files {
            if let Some(pid) = fs::read_to_string(pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: a daemon this check started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A DHCP client on `iface` in namespace `ns`: the lease it got, if any.
fn client_lease(
    s: &StageShell,
    ns: &str,
    iface: &str,
    script: &Path,
    tries: &str,
) -> Result<Option<String>> {
    let sh = s.sh();
    let lease = script.with_extension("lease");
    let _ = fs::remove_file(&lease);
    let got = cmd!(
        sh,
        "ip netns exec {ns} udhcpc -i {iface} -n -q -t {tries} -T 1 -s {script}"
    )
    .ignore_status()
    .quiet()
    .ignore_stdout()
    .ignore_stderr()
    .output()?;
    s.note(&format!("udhcpc on {ns}/{iface}: {}", got.status));
    Ok(fs::read_to_string(&lease)
        .ok()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty()))
}

/// node1's boot-time service for real, in network namespaces: the node1
/// root (its layer stacked over it with overlayfs, writes going to a
/// scratch dir) chrooted in a namespace joined to a client by a bridge.
/// Full DHCP: the client gets a lease in the range and fetches pxelinux.0
/// and the kernel by TFTP; node1's other link gets no lease. Then with a
/// foreign DHCP server on the link first: node1 comes up in proxy mode and
/// hands out no lease. (This host's kernel has no nfsd: the NFS export is
/// checked by the QEMU boot test, where node1 runs its own kernel.)
pub fn node1_netns(project: &Path) -> Result<Timings> {
    let run = SmokeRun::new(project)?;
    let s = check_shell(project, "e2e-netns")?;
    host::ensure_tools(
        &[
            host::HostTool::new("udhcpc", "udhcpc"),
            host::HostTool::new("dnsmasq", "dnsmasq-base"),
            host::HostTool::new("curl", "curl"),
        ],
        true,
        s.log_path(),
    )?;
    let t = Instant::now();
    let layer = run.build.join("node1/node1");
    ensure!(
        layer.join("usr/local/sbin/krgiso-node1").exists(),
        "run the node1 stage first (e2e-node1)"
    );
    let work = project.join("build/e2e/netns");
    chroot::release_stale(&work, &chroot::SystemMounts)?;
    files::remove_tree(&work)?;
    let merged = work.join("node1");
    for dir in ["upper", "ovl-work", "node1"] {
        fs::create_dir_all(work.join(dir))?;
    }
    let sh = s.sh();
    let lower = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        layer.display(),
        run.root("node1").display(),
        work.join("upper").display(),
        work.join("ovl-work").display()
    );
    s.run(cmd!(sh, "mount -t overlay krgiso-e2e -o {lower} {merged}"))?;
    let merged_for_cleanup = merged.clone();
    let _overlay =
        crate::interrupt::Cleanup::register("unmount the e2e node1 overlay", move || {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&merged_for_cleanup)
                .status();
        });
    let mounts =
        chroot::ChrootMounts::set_up(&merged, &[], std::sync::Arc::new(chroot::SystemMounts))?;

    let (n1, sw, cl, other, foreign) = (
        "krgiso-e2e-n1",
        "krgiso-e2e-sw",
        "krgiso-e2e-cl",
        "krgiso-e2e-ot",
        "krgiso-e2e-fg",
    );
    let mut ns = Netns {
        names: Vec::new(),
        pid_files: Vec::new(),
    };
    for name in [n1, sw, cl, other, foreign] {
        ns.add(&s, name)?;
    }
    s.run(cmd!(sh, "ip -n {sw} link add br0 type bridge"))?;
    s.run(cmd!(sh, "ip -n {sw} link set br0 up"))?;
    for (peer, iface, port) in [
        (n1, "eth-cl", "p-n1"),
        (cl, "eth0", "p-cl"),
        (foreign, "eth0", "p-fg"),
    ] {
        ns.link(&s, (peer, iface), (sw, port))?;
        s.run(cmd!(sh, "ip -n {sw} link set {port} master br0"))?;
    }
    ns.link(&s, (n1, "eth-ot"), (other, "eth0"))?;
    s.run(cmd!(sh, "ip -n {n1} addr add 192.0.2.1/24 dev eth-ot"))?;
    ns.pid_files.push(merged.join("run/krgiso/dnsmasq.pid"));

    let client_script = work.join("client.sh");
    fs::write(
        &client_script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) echo \"$ip\" > {} ;; esac\nexit 0\n",
            client_script.with_extension("lease").display()
        ),
    )?;
    fs::set_permissions(
        &client_script,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let start_node1 = |s: &StageShell| -> Result<String> {
        let sh = s.sh();
        let out = cmd!(sh, "ip netns exec {n1} chroot {merged} env KRGISO_NFS=no KRGISO_CLUSTER_IFACE=eth-cl /usr/local/sbin/krgiso-node1 start")
            .ignore_status()
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        s.note(&text);
        ensure!(out.status.success(), "krgiso-node1 start failed:\n{text}");
        Ok(fs::read_to_string(merged.join("run/krgiso/status")).unwrap_or_default())
    };

    s.step("full DHCP: no other server on the cluster link");
    let status = start_node1(&s)?;
    ensure!(
        status.contains("iface=eth-cl")
            && status.contains("dhcp=full")
            && status.contains("tftp=ok"),
        "status: {status}"
    );
    let lease = client_lease(&s, cl, "eth0", &client_script, "5")?
        .context("the client got no lease from node1")?;
    let ip: std::net::Ipv4Addr = lease
        .parse()
        .with_context(|| format!("a lease that is not an address: {lease}"))?;
    ensure!(
        run.profile.network.dhcp_range.contains(ip),
        "the lease {ip} is outside the profile's range"
    );
    s.run(cmd!(sh, "ip -n {cl} addr add {lease}/24 dev eth0"))?;
    let release = run.release()?;
    for name in [
        "pxelinux.0".to_owned(),
        "ldlinux.c32".to_owned(),
        format!("vmlinuz-{release}"),
    ] {
        let fetched = work.join(format!("tftp-{name}"));
        let url = format!("tftp://{}/{name}", run.profile.network.address.addr);
        s.run(cmd!(
            sh,
            "ip netns exec {cl} curl -sS --max-time 60 -o {fetched} {url}"
        ))?;
        ensure!(
            fs::read(&fetched)? == fs::read(crate::layout::tftp_dir(&layer).join(&name))?,
            "{name} fetched by TFTP differs from the one in the TFTP root"
        );
    }
    let stray = client_lease(&s, other, "eth0", &client_script, "2")?;
    ensure!(
        stray.is_none(),
        "node1 gave a lease on a link that is not the cluster link: {stray:?}"
    );
    s.run(cmd!(
        sh,
        "ip netns exec {n1} chroot {merged} /usr/local/sbin/krgiso-node1 stop"
    ))?;
    let _ = fs::remove_file(merged.join("run/krgiso/dnsmasq.leases"));

    s.step("proxy DHCP: another server answers on the cluster link first");
    s.run(cmd!(
        sh,
        "ip -n {foreign} addr add 192.168.77.1/24 dev eth0"
    ))?;
    let (fleases, fpid) = (work.join("foreign.leases"), work.join("foreign.pid"));
    ns.pid_files.push(fpid.clone());
    s.run(cmd!(sh, "ip netns exec {foreign} dnsmasq --conf-file=/dev/null --port=0 --interface=eth0 --bind-interfaces --dhcp-range=192.168.77.50,192.168.77.60,255.255.255.0,1h --dhcp-leasefile={fleases} --pid-file={fpid}"))?;
    let status = start_node1(&s)?;
    ensure!(
        status.contains("dhcp=proxy"),
        "node1 did not choose proxy DHCP with another server on the link: {status}"
    );
    let _ = cmd!(sh, "ip -n {cl} addr flush dev eth0").quiet().run();
    let lease = client_lease(&s, cl, "eth0", &client_script, "5")?
        .context("the client got no lease at all")?;
    ensure!(
        lease.starts_with("192.168.77."),
        "the client's lease {lease} did not come from the other server"
    );
    let handed = fs::read_to_string(merged.join("run/krgiso/dnsmasq.leases")).unwrap_or_default();
    ensure!(
        handed.trim().is_empty(),
        "node1 handed out leases in proxy mode: {handed}"
    );
    let pxe = fs::read_to_string(crate::layout::tftp_dir(&merged).join("pxelinux.cfg/default"))?;
    ensure!(
        pxe.contains("nfsroot=192.168.77."),
        "in proxy mode the nodes are not sent to node1's address on that subnet:\n{pxe}"
    );
    s.run(cmd!(
        sh,
        "ip netns exec {n1} chroot {merged} /usr/local/sbin/krgiso-node1 stop"
    ))?;

    drop(ns);
    drop(mounts);
    s.run(cmd!(sh, "umount {merged}"))?;
    _overlay.dismiss();
    no_mounts_under(&work)?;
    Ok(vec![(
        "node1 boot service in namespaces (full, proxy)".to_owned(),
        t.elapsed().as_secs_f64(),
    )])
}
