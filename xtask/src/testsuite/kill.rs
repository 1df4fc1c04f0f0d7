//! e2e-kill: the smoke `build` killed with SIGKILL at any point of any
//! stage, as a power cut would: the build runs in a PID namespace of its
//! own, and killing it kills every process in it at once (the commands
//! each stage runs are in process groups of their own, out of reach of a
//! signal to the build's group).
//!
//! For each stage, at points drawn from a seed the test prints (a point is
//! a moment of the stage: a share of how long the reference build's stage
//! took, from its stamp, so that a long command is killed in its middle
//! as often as anywhere else): the run is killed that long after the stage
//! began, then `build` runs again. After the kill a stage has a stamp if
//! and only if it said it was done; after the rerun every stage has one,
//! no mount and no process is left under the build dir. At the end the
//! build equals the uninterrupted one: the same packages at the same
//! versions in both roots, the same rendered files, byte for byte, the
//! same paths with the same types and modes in the image and its squashfs
//! images. (Sizes and hashes of the roots' files are not compared: two
//! builds differ in each build's own cluster key, password and
//! timestamps.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::cmd;

use super::image::extract;
use super::smoke::{check_shell, no_mounts_under, SmokeRun, Timings};
use crate::chroot;
use crate::engine::Stamp;
use crate::files;
use crate::host::{self, HostTool};
use crate::seeded::{seed_from_env, Seeded};
use crate::shell::StageShell;

const STAGES: [&str; 4] = ["packages", "kernel", "node1", "iso"];

/// A share of a stage's time, in 5%..80%: after it has begun, before a
/// run a little quicker than the reference could have finished it.
fn share(rng: &mut Seeded) -> f64 {
    0.05 + (rng.next() % 7500) as f64 / 10_000.0
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

/// `build` in a PID namespace, killed `after` the moment `stage` began (its
/// log appeared). Returns the stage that was running (the first without a
/// stamp) and how long the run lasted; None when the build finished, well,
/// before the point came (the stage was quicker this time).
fn build_killed_at(
    run: &SmokeRun,
    s: &StageShell,
    stage: &str,
    after: Duration,
) -> Result<Option<(String, f64)>> {
    let log = run.layout().log(stage);
    let _ = fs::remove_file(&log);
    let out = run.build.with_file_name("kill-run.log");
    // One open file for both streams: two would each write at their own
    // offset, over each other's lines.
    let said = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let stamps_before = stamps_now(run);
    let t = Instant::now();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child=SIGKILL"])
        .arg(&run.exe)
        .args(["--profile", "smoke", "--build-dir"])
        .arg(&run.build)
        .arg("build")
        .stdin(Stdio::null())
        .stdout(said.try_clone()?)
        .stderr(said)
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
    let mut began = None;
    loop {
        if began.is_none() && log.exists() {
            began = Some(Instant::now());
        }
        if began.is_some_and(|b| b.elapsed() >= after) {
            break;
        }
        if let Some(status) = child.try_wait()? {
            if status.success() && began.is_some() {
                s.note(&format!(
                    "`build` finished {:.1} s into the {stage} stage, before the kill point",
                    began.map_or(0.0, |b| b.elapsed().as_secs_f64())
                ));
                return Ok(None);
            }
            bail!(
                "`build` ended before {:.1} s into the {stage} stage:\n{}",
                after.as_secs_f64(),
                fs::read_to_string(&out).unwrap_or_default()
            );
        }
        ensure!(
            t.elapsed() < Duration::from_secs(900),
            "the {stage} stage did not begin, or last {:.1} s, in 15 minutes",
            after.as_secs_f64()
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
        "killed {:.1} s into the {stage} stage, {secs:.1} s after the start: {running} was running, {} mounts left",
        after.as_secs_f64(),
        files::mounts_under(&run.build)?.len()
    ));
    stamps_only_when_done(
        run,
        &stamps_before,
        &fs::read_to_string(&out).unwrap_or_default(),
    )?;
    Ok(Some((running, secs)))
}

/// Each stage's stamp as it is, byte for byte (None: no stamp).
fn stamps_now(run: &SmokeRun) -> StampBytes {
    STAGES
        .iter()
        .map(|st| (*st, fs::read(run.layout().stamp(st)).ok()))
        .collect()
}

type StampBytes = BTreeMap<&'static str, Option<Vec<u8>>>;

/// After a kill, a stage has a new stamp if and only if it said it was
/// done: never a stamp for work cut short, never a finished stage without
/// one. A stamp from before the run may stay while its stage is redone
/// (the engine removes it only once the stage's work is done). The
/// engine writes the stamp just before it says so: a kill between the two
/// leaves a new stamp unsaid, accepted only if every output it records is
/// in place.
fn stamps_only_when_done(run: &SmokeRun, before: &StampBytes, said: &str) -> Result<()> {
    for (stage, now) in stamps_now(run) {
        let done = said.contains(&format!("==> {stage}: done in"));
        let was = before.get(stage).and_then(Option::as_ref);
        let new = now.is_some() && now.as_ref() != was;
        if done {
            ensure!(
                new,
                "the {stage} stage said it was done, yet after the kill it has {}",
                if now.is_some() {
                    "only the stamp from before the run"
                } else {
                    "no stamp"
                }
            );
        } else if let Some(bytes) = now.filter(|_| new) {
            let stamp: Stamp = serde_json::from_slice(&bytes)
                .with_context(|| format!("after the kill the {stage} stage has a new stamp it never announced, and it does not parse"))?;
            for (name, record) in &stamp.outputs {
                ensure!(
                    fs::symlink_metadata(&record.path).is_ok(),
                    "after the kill the {stage} stage has a new stamp, yet it never said it was done and its output `{name}` ({}) is missing",
                    record.path.display()
                );
            }
        }
    }
    Ok(())
}

/// The packages dpkg has installed in a root, each with its version.
fn installed(root: &Path) -> Result<BTreeSet<String>> {
    let status = fs::read_to_string(root.join("var/lib/dpkg/status"))
        .with_context(|| format!("reading the dpkg status of {}", root.display()))?;
    Ok(status
        .split("\n\n")
        .filter(|stanza| stanza.contains("\nStatus: install ok installed"))
        .filter_map(|stanza| {
            let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name));
            Some(format!("{} {}", field("Package: ")?, field("Version: ")?))
        })
        .collect())
}

/// The entries a squashfs image of the ISO holds, or the ISO's own: each
/// path with its type and mode, and in a squashfs its owner and a link's
/// target (`-rw-r----- root/shadow /etc/gshadow`).
pub(super) fn contents(
    s: &StageShell,
    image: &Path,
    tmp: &Path,
    name: Option<&str>,
) -> Result<BTreeSet<String>> {
    let sh = s.sh();
    let entries = match name {
        // lsdl: `-r--r--r--    1 0        0           2048 Dec  3 10:00 '/isolinux'`
        None => cmd!(sh, "xorriso -indev {image} -find / -exec lsdl")
            .quiet()
            .ignore_stderr()
            .read()?
            .lines()
            .filter_map(|l| {
                let mode = l.split_whitespace().next()?;
                let path = l.split_once(" '")?.1.trim_end_matches('\'');
                Some(format!("{mode} {path}"))
            })
            .collect(),
        // -lls: `drwxr-xr-x root/root  55 2026-12-03 10:00 squashfs-root/etc`
        Some(name) => {
            let file = extract(s, image, tmp, name)?;
            let listing = cmd!(sh, "unsquashfs -lls -n {file}").quiet().read();
            files::remove_tree(tmp)?;
            listing?
                .lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    let (mode, owner) = (words.next()?, words.next()?);
                    // A symlink's target is part of what it is.
                    let path = l.split_once(" squashfs-root")?.1;
                    Some(format!("{mode} {owner} {path}"))
                })
                .collect()
        }
    };
    ensure!(
        !BTreeSet::is_empty(&entries),
        "no entries read from {}{}",
        image.display(),
        name.map(|n| format!(" ({n})")).unwrap_or_default()
    );
    Ok(entries)
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
        let read =
            |p: &Path| fs::read(p).with_context(|| format!("the build made no {}", p.display()));
        ensure!(
            read(&a)? == read(&b)?,
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
    ensure!(rendered > 5, "only {rendered} rendered files compared");
    s.note(&format!(
        "same as the uninterrupted build: both roots' packages and versions, {rendered} rendered files, the paths, types and modes of the image and its squashfs images"
    ));
    Ok(())
}

pub(crate) fn kill_matrix(project: &Path) -> Result<Timings> {
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
    let seed = seed_from_env("KRGISO_KILL_SEED")?;
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
        for _ in 0..points {
            let share = share(&mut rng);
            // How long the stage takes, as the reference build did it.
            // (The stamps this run leaves are no measure: a rerun may
            // have redone only part of a stage.)
            let took = |build: &SmokeRun| {
                Stamp::load(&build.layout().stamp(stage))
                    .map(|stamp| stamp.seconds)
                    .with_context(|| format!("no {stage} stamp in {}", build.build.display()))
            };
            let mut took_here = took(&reference)?;
            // A stage quicker than the reference's can finish before its
            // point (CI, stop 33: 5.2 s against 8.3 s): the same share is
            // taken again of the time the whole stage took just now,
            // twice at most.
            let mut tries = 0;
            let (running, secs, after) = loop {
                let after = Duration::from_secs_f64(took_here * share);
                s.step(&format!(
                    "{stage}: killed {:.1} s in ({:.0}% of its {took_here:.1} s), then `build` again",
                    after.as_secs_f64(),
                    share * 100.0
                ));
                if run.layout().stamp(stage).exists() {
                    run.xtask(&s, &["clean", stage])?;
                }
                // The iso stage keeps the roots' squashfs while the roots
                // are unchanged: without it, it does all its work again.
                if stage == "iso" {
                    files::remove_tree(&run.layout().iso_roots())?;
                }
                match build_killed_at(&run, &s, stage, after)? {
                    Some((running, secs)) => break (running, secs, after),
                    None if tries < 2 => {
                        tries += 1;
                        took_here = took(&run)?;
                    }
                    None => bail!(
                        "three times the {stage} stage finished before {:.0}% of the time it took before: the kill never fell",
                        share * 100.0
                    ),
                }
            };
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
                    "{stage} at {:.0}% = {:.1} s ({running} running, killed at {secs:.1} s): rerun",
                    share * 100.0,
                    after.as_secs_f64()
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
    fn a_seed_gives_the_same_points_and_they_spread_over_the_stage() {
        let (mut a, mut b) = (Seeded(42), Seeded(42));
        let pa: Vec<f64> = (0..200).map(|_| share(&mut a)).collect();
        let pb: Vec<f64> = (0..200).map(|_| share(&mut b)).collect();
        assert_eq!(pa, pb);
        assert!(pa.iter().all(|&s| (0.05..0.80).contains(&s)), "{pa:?}");
        // Every tenth of the range is hit: the middle of a long command
        // as often as its start.
        for tenth in 0..7 {
            let low = 0.05 + tenth as f64 * 0.1;
            assert!(
                pa.iter().any(|&s| s >= low && s < low + 0.1),
                "{low}: {pa:?}"
            );
        }
    }

    #[test]
    fn a_stamp_without_done_or_done_without_a_stamp_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = SmokeRun {
            project: tmp.path().to_owned(),
            build: tmp.path().join("build"),
            exe: PathBuf::from("/bin/true"),
            profile: crate::profile::Profile::load(
                &crate::project_root().join("profiles/smoke.toml"),
            )
            .unwrap(),
        };
        let stamp = run.layout().stamp("kernel");
        fs::create_dir_all(stamp.parent().unwrap()).unwrap();
        let output = tmp.path().join("vmlinuz");
        let stamp_of = |seconds: f64| {
            serde_json::json!({
                "format": 1, "stage": "kernel", "digest": "d", "inputs": {},
                "outputs": {"vmlinuz": {"path": output, "generation": "g", "bytes": 1, "files": 1}},
                "finished_unix": 1, "seconds": seconds,
            })
            .to_string()
        };
        let none = stamps_now(&run);
        let cut = "==> kernel: make the initramfs\n";
        let done = "==> kernel: make the initramfs\n==> kernel: done in 3.2s\n";
        // Cut short: no stamp, fine.
        assert!(stamps_only_when_done(&run, &none, cut).is_ok());
        // Done without a stamp: refused.
        assert!(stamps_only_when_done(&run, &none, done).is_err());
        // A new stamp, unsaid, whose output is missing: work cut short.
        fs::write(&stamp, stamp_of(3.2)).unwrap();
        assert!(stamps_only_when_done(&run, &none, cut).is_err());
        // The same with its output in place: the kill fell between the
        // stamp and the line that announces it.
        fs::write(&output, "k").unwrap();
        assert!(stamps_only_when_done(&run, &none, cut).is_ok());
        assert!(stamps_only_when_done(&run, &none, done).is_ok());
        // The stamp from before the run, kept while the stage is redone
        // (the CI failure of stop 33): fine unless the stage said done.
        let old = stamps_now(&run);
        fs::remove_file(&output).unwrap();
        assert!(stamps_only_when_done(&run, &old, cut).is_ok());
        assert!(stamps_only_when_done(&run, &old, done).is_err());
        // Said done with a new stamp: fine.
        fs::write(&stamp, stamp_of(4.0)).unwrap();
        fs::write(&output, "k").unwrap();
        assert!(stamps_only_when_done(&run, &old, done).is_ok());
    }
}
