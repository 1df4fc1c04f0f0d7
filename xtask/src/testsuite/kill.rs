//! e2e-kill: the smoke `build` killed with SIGKILL at any point of any
//! stage, as a power cut would: the build runs in a PID namespace of its
//! own, and killing it kills every process in it at once (the commands
//! each stage runs are in process groups of their own, out of reach of a
//! signal to the build's group).
//!
//! For each stage, at points drawn from a seed the test prints (a point is
//! a line of that stage's log in the reference build, `e2e-build`'s): the
//! run is killed once the stage's log has that many lines, then `build`
//! runs again. After the kill the stage that was running has no stamp;
//! after the rerun every stage has one, no mount and no process is left
//! under the build dir. At the end the build equals the uninterrupted one:
//! the same packages in both roots, the same rendered files, the same
//! contents in the image and its squashfs images.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::cmd;

use super::image::extract;
use super::smoke::{check_shell, no_mounts_under, SmokeRun, Timings};
use crate::chroot;
use crate::files;
use crate::host::{self, HostTool};
use crate::shell::StageShell;

const STAGES: [&str; 4] = ["packages", "kernel", "node1", "iso"];

/// SplitMix64: kill points that a seed reproduces.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A line in 1..=`lines`·9/10: late enough that the stage has begun,
    /// early enough that it has not finished.
    fn line_of(&mut self, lines: usize) -> usize {
        let span = (lines * 9 / 10).max(1);
        1 + (self.next() % span as u64) as usize
    }
}

fn line_count(path: &Path) -> usize {
    fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// The PID namespace of process `pid`'s children, as /proc names it.
fn child_namespace(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid_for_children")).ok()
}

/// Processes in PID namespace `ns` (as /proc names it).
fn processes_in(ns: &Path) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|n| n == ns))
        .collect()
}

/// `build` in a PID namespace, killed once `stage`'s log has `line` lines.
/// Returns the stage that was running (the first without a stamp) and how
/// long the run lasted.
fn build_killed_at(
    run: &SmokeRun,
    s: &StageShell,
    stage: &str,
    line: usize,
) -> Result<(String, f64)> {
    let log = run.layout().log(stage);
    let _ = fs::remove_file(&log);
    let out = run.build.with_file_name("kill-run.log");
    let t = Instant::now();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child=SIGKILL"])
        .arg(&run.exe)
        .args(["--profile", "smoke", "--build-dir"])
        .arg(&run.build)
        .arg("build")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&out)?)
        .spawn()
        .context("starting `build` in a PID namespace (unshare)")?;
    // Until unshare has made it, its children's namespace is ours.
    let ours = fs::read_link("/proc/self/ns/pid").context("reading /proc/self/ns/pid")?;
    let ns = loop {
        if let Some(ns) = child_namespace(child.id()).filter(|ns| *ns != ours) {
            break ns;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "unshare made no PID namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    loop {
        if line_count(&log) >= line {
            break;
        }
        if child.try_wait()?.is_some() {
            bail!(
                "`build` ended before line {line} of the {stage} log:\n{}",
                fs::read_to_string(&out).unwrap_or_default()
            );
        }
        ensure!(
            t.elapsed() < Duration::from_secs(900),
            "the {stage} log did not reach line {line} in 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // unshare's child, the namespace's init, gets SIGKILL when unshare
    // dies; with it goes every process in the namespace.
    child.kill().context("sending SIGKILL")?;
    child.wait()?;
    let secs = t.elapsed().as_secs_f64();
    let gone = Instant::now();
    while !processes_in(&ns).is_empty() {
        ensure!(
            gone.elapsed() < Duration::from_secs(30),
            "processes of the killed build still run: {:?}",
            processes_in(&ns)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = STAGES
        .iter()
        .find(|st| !run.layout().stamp(st).exists())
        .map_or("none (all done)", |st| st)
        .to_owned();
    s.note(&format!(
        "killed at line {line} of the {stage} log after {secs:.1} s: {running} was running, {} mounts left",
        files::mounts_under(&run.build)?.len()
    ));
    Ok((running, secs))
}

/// The packages dpkg has installed in a root.
fn installed(root: &Path) -> Result<BTreeSet<String>> {
    let status = fs::read_to_string(root.join("var/lib/dpkg/status"))
        .with_context(|| format!("reading the dpkg status of {}", root.display()))?;
    Ok(status
        .split("\n\n")
        .filter(|stanza| stanza.contains("\nStatus: install ok installed"))
        .filter_map(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Package: ")))
        .map(str::to_owned)
        .collect())
}

/// The paths a squashfs image of the ISO holds, or the ISO's own.
fn contents(
    s: &StageShell,
    image: &Path,
    tmp: &Path,
    name: Option<&str>,
) -> Result<BTreeSet<String>> {
    let sh = s.sh();
    let listing = match name {
        None => cmd!(sh, "xorriso -indev {image} -find /")
            .quiet()
            .ignore_stderr()
            .read()?,
        Some(name) => {
            let file = extract(s, image, tmp, name)?;
            let listing = cmd!(sh, "unsquashfs -l {file}").quiet().read();
            files::remove_tree(tmp)?;
            listing?
        }
    };
    Ok(listing.lines().map(str::to_owned).collect())
}

/// The killed-and-resumed build equals the uninterrupted one.
fn same_as(reference: &SmokeRun, run: &SmokeRun, s: &StageShell) -> Result<()> {
    for root in ["node1", "nodes"] {
        let (want, got) = (
            installed(&reference.root(root))?,
            installed(&run.root(root))?,
        );
        ensure!(
            want == got,
            "the {root} root's packages differ from the uninterrupted build's: missing {:?}, extra {:?}",
            want.difference(&got).collect::<Vec<_>>(),
            got.difference(&want).collect::<Vec<_>>()
        );
    }
    // The rendered files: those the golden files stand for.
    let golden = run.project.join("xtask/src/node1/golden/smoke");
    let mut rendered = 0;
    for file in files::walk(&golden).into_iter().filter(|p| p.is_file()) {
        let rel = file.strip_prefix(&golden)?;
        let (a, b) = (
            reference.build.join("node1").join(rel),
            run.build.join("node1").join(rel),
        );
        ensure!(
            fs::read(&a).ok() == fs::read(&b).ok(),
            "the rendered {} differs from the uninterrupted build's",
            rel.display()
        );
        rendered += 1;
    }
    let (iso_a, _) = reference.layout().image(&reference.profile.iso);
    let (iso_b, _) = run.layout().image(&run.profile.iso);
    let tmp = run.build.with_file_name("kill-contents");
    for name in [None, Some("filesystem.squashfs"), Some("layers.squashfs")] {
        let (want, got) = (
            contents(s, &iso_a, &tmp, name)?,
            contents(s, &iso_b, &tmp, name)?,
        );
        ensure!(
            want == got,
            "{} differs from the uninterrupted build's: missing {:?}, extra {:?}",
            name.unwrap_or("the image's file list"),
            want.difference(&got).take(10).collect::<Vec<_>>(),
            got.difference(&want).take(10).collect::<Vec<_>>()
        );
    }
    s.note(&format!(
        "same as the uninterrupted build: both roots' packages, {rendered} rendered files, the image's and its squashfs images' contents"
    ));
    Ok(())
}

pub fn kill_matrix(project: &Path) -> Result<Timings> {
    let reference = SmokeRun::built(project)?;
    let (iso, _) = reference.layout().image(&reference.profile.iso);
    ensure!(
        iso.is_file(),
        "e2e-kill compares with the image e2e-build leaves at {}: run `cargo xtask test --only e2e-build` first",
        iso.display()
    );
    let s = check_shell(project, "e2e-kill")?;
    host::ensure_tools(
        &[
            HostTool::new("unshare", "util-linux"),
            HostTool::new("xorriso", "xorriso"),
            HostTool::new("unsquashfs", "squashfs-tools"),
        ],
        true,
        s.log_path(),
    )?;
    let seed = match std::env::var("KRGISO_KILL_SEED") {
        Ok(text) => text
            .parse::<u64>()
            .with_context(|| format!("KRGISO_KILL_SEED={text} is not a number"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let points: usize = std::env::var("KRGISO_KILL_POINTS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let replay = format!(
        "e2e-kill: seed {seed}, {points} point(s) per stage (replay: KRGISO_KILL_SEED={seed} KRGISO_KILL_POINTS={points} cargo xtask test --only e2e-kill)"
    );
    println!("{replay}");
    s.note(&replay);
    let run = SmokeRun {
        build: project.join("build/e2e/kill"),
        ..SmokeRun::new(project)?
    };
    chroot::release_stale(&run.build, &chroot::SystemMounts)?;
    files::remove_tree(&run.build)?;

    let mut rng = Seeded(seed);
    let mut timings = Vec::new();
    for stage in STAGES {
        let lines = line_count(&reference.layout().log(stage));
        for _ in 0..points {
            let line = rng.line_of(lines);
            s.step(&format!(
                "{stage}: killed at line {line} of {lines}, then `build` again"
            ));
            if run.layout().stamp(stage).exists() {
                run.xtask(&s, &["clean", stage])?;
            }
            // The iso stage keeps the roots' squashfs while the roots are
            // unchanged: without it, it does all its work again.
            if stage == "iso" {
                files::remove_tree(&run.layout().iso_roots())?;
            }
            let (running, secs) = build_killed_at(&run, &s, stage, line)?;
            if running == stage {
                ensure!(
                    !run.layout().stamp(stage).exists(),
                    "the killed {stage} stage left a stamp"
                );
            }
            let t = Instant::now();
            run.xtask(&s, &["build"])?;
            let rerun = t.elapsed().as_secs_f64();
            ensure!(
                STAGES.iter().all(|st| run.layout().stamp(st).exists()),
                "`build` after the kill did not stamp every stage"
            );
            no_mounts_under(&run.build)?;
            let left = chroot::processes_rooted_in(&run.build);
            ensure!(left.is_empty(), "processes left in the build dir: {left:?}");
            timings.push((
                format!(
                    "{stage} line {line}/{lines} ({running} running, killed at {secs:.1} s): rerun"
                ),
                rerun,
            ));
        }
    }
    s.step("the resumed build equals the uninterrupted one");
    same_as(&reference, &run, &s)?;
    files::remove_tree(&run.build)?;
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_points_and_they_stay_in_the_stage() {
        let (mut a, mut b) = (Seeded(42), Seeded(42));
        let pa: Vec<usize> = (0..50).map(|_| a.line_of(100)).collect();
        let pb: Vec<usize> = (0..50).map(|_| b.line_of(100)).collect();
        assert_eq!(pa, pb);
        assert!(pa.iter().all(|&l| (1..=90).contains(&l)), "{pa:?}");
        assert!(pa.iter().collect::<BTreeSet<_>>().len() > 20, "{pa:?}");
        assert_eq!(Seeded(7).line_of(0), 1);
    }
}
