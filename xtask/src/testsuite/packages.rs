//! e2e-packages: the smoke profile's packages stage for real, its
//! failures a user can cause, and a SIGKILL during apt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::cmd;

use crate::chroot;
use crate::files;
use crate::profile;
use crate::shell::StageShell;
use crate::stages::packages;

use super::smoke::{check_shell, host_state, listing, no_mounts_under, SmokeRun, Timings};

/// The packages stage for real: both roots, their package sets, a clean
/// host, a no-op rerun, a rerun from the .deb cache, and a SIGKILL midway.
/// Returns the timings it measured.
pub(crate) fn packages(project: &Path) -> Result<Timings> {
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
    if expected.contains("mirror") || expected.contains("suite") {
        ensure!(
            !build.join("roots").exists(),
            "a root was started although the mirror check failed"
        );
    }
    no_mounts_under(&build)?;
    let exe_clean = cmd!(
        sh,
        "{exe} --profile {profile} --build-dir {build} clean --all"
    );
    exe_clean.quiet().ignore_stdout().ignore_stderr().run()?;
    Ok(())
}

fn check_failures(run: &SmokeRun, s: &StageShell) -> Result<()> {
    // A package the suite does not have: mmdebstrap's apt stops at once,
    // and so does debootstrap --include (lenny's way). (node1's root comes
    // from profiles/include/node1.toml: a [node1] table in the profile
    // sets keys over it.)
    for (name, how) in [
        ("bad-package", ""),
        (
            "bad-package-debootstrap",
            "bootstrap = \"debootstrap\"\ninstall = \"include\"\n",
        ),
    ] {
        let bad_package = edited_profile(
            run,
            name,
            &[(
                "[nodes]\n",
                &format!("[node1]\n{how}packages = [\"krgiso-no-such-package\", \"dnsmasq\"]\n\n[nodes]\n"),
            )],
        )?;
        expect_failure(
            run,
            s,
            &bad_package,
            "package krgiso-no-such-package is not in bookworm amd64",
        )?;
    }
    // A mirror nobody answers on (a closed port on loopback).
    let dead_mirror = edited_profile(
        run,
        "dead-mirror",
        &[(
            "[nodes]\n",
            "[node1]\nmirror = \"http://127.0.0.1:9/debian\"\n\n[nodes]\n",
        )],
    )?;
    // Both stop before any root is started, asked of the mirror up front.
    expect_failure(
        run,
        s,
        &dead_mirror,
        "mirror http://127.0.0.1:9/debian ([node1] mirror, suite bookworm) does not answer",
    )?;
    // A misspelt suite: the mirror answers, without it.
    let bad_suite = edited_profile(
        run,
        "bad-suite",
        &[("[nodes]\n", "[node1]\nsuite = \"bookwurm\"\n\n[nodes]\n")],
    )?;
    expect_failure(run, s, &bad_suite, "has no suite `bookwurm`")
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
        let settings: Vec<_> = packages::BUILD_SETTINGS
            .iter()
            .filter(|p| root.join(p).exists())
            .collect();
        ensure!(
            settings.is_empty(),
            "build-time settings left in the {which} root: {settings:?}"
        );
    }
    check_node1_initramfs(run, s)?;
    s.note("both roots checked");
    Ok(())
}

/// node1's initramfs, made with krgiso's module hook and live-boot's hook
/// wrapped: zstd, the live-boot scripts, what a boot from a CD or stick
/// needs, and no network driver.
fn check_node1_initramfs(run: &SmokeRun, s: &StageShell) -> Result<()> {
    let root = run.root("node1");
    let images: Vec<String> = fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("initrd.img-"))
        .collect();
    ensure!(
        images.len() == 1,
        "node1's /boot holds {images:?}, not one initramfs"
    );
    let image = format!("/boot/{}", images[0]);
    let magic = fs::read(root.join(image.trim_start_matches('/')))?;
    ensure!(
        magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "node1's initramfs is not zstd-compressed (is zstd in [node1] packages?)"
    );
    let sh = s.sh();
    let listing = cmd!(sh, "chroot {root} lsinitramfs {image}").read()?;
    for needed in [
        "scripts/live",
        "/squashfs.ko",
        "/isofs.ko",
        "/overlay.ko",
        "/sr_mod.ko",
        "/usb-storage.ko",
        "/ahci.ko",
        "/vfat.ko",
    ] {
        ensure!(
            listing.lines().any(|l| l.ends_with(needed)),
            "node1's initramfs has no {needed}"
        );
    }
    let net: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("/kernel/drivers/net/"))
        .take(3)
        .collect();
    ensure!(
        net.is_empty(),
        "node1's initramfs has network drivers: {net:?}"
    );
    let hook = fs::read_to_string(root.join("usr/share/initramfs-tools/hooks/live"))?;
    ensure!(
        hook.contains("prereqs")
            && root
                .join("usr/share/initramfs-tools/live-hook.distrib")
                .is_file(),
        "live-boot's initramfs hook is not wrapped"
    );
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
        // mmdebstrap's last phase: apt and dpkg at work in the chroot.
        if text.contains("installing remaining packages inside the chroot") {
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
            "the packages run never reached mmdebstrap's install in the chroot; see {}",
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
