//! e2e-disk-full: the smoke `build` in a build dir on a small loop-mounted
//! ext4 file system.
//!
//! - Too small for the plan: `build` stops before any stage, in seconds,
//!   naming the place, each stage's need and what is free.
//! - Large enough for the plan, but filled by another writer as the iso
//!   stage starts: the iso stage stops with one line naming it, the place
//!   and the space it needs; no stamp, no image, no mount, no process.
//! - Enlarged (the file grown, the loop device and ext4 resized online):
//!   the same `build` again makes only the image, and completes.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use super::smoke::{check_shell, no_mounts_under, SmokeRun, Timings};
use super::usb::{release_leftovers, LoopDevice, Mounted};
use crate::chroot;
use crate::files;
use crate::host::{self, HostTool};
use crate::shell::StageShell;

/// Grows the file system on `loop_dev` (over `image`, mounted at `mnt`)
/// by `by` (truncate's syntax). Unmounted meanwhile: online resizing needs
/// CAP_SYS_RESOURCE, which a container may not grant.
fn grow(
    s: &StageShell,
    (image, loop_dev, mnt): (&Path, &LoopDevice, &Path),
    mounted: Mounted,
    by: &str,
) -> Result<Mounted> {
    drop(mounted);
    let sh = s.sh();
    let node = loop_dev.node_str();
    s.run(cmd!(sh, "truncate -s +{by} {image}"))?;
    s.run(cmd!(sh, "losetup -c {node}"))?;
    s.run(cmd!(sh, "e2fsck -f -p {node}"))?;
    s.run(cmd!(sh, "resize2fs {node}"))?;
    Mounted::mount(s, Path::new(node), mnt)
}

/// Bytes free to a writer under `dir`.
fn free_under(s: &StageShell, dir: &Path) -> Result<u64> {
    let sh = s.sh();
    let text = s.read(cmd!(sh, "df -B1 --output=avail {dir}"))?;
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df said: {text}"))
}

pub(crate) fn disk_full(project: &Path) -> Result<Timings> {
    // The .debs e2e-packages downloaded are copied in, so nothing is fetched again.
    let built = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-disk-full")?;
    host::ensure_tools(
        &[
            HostTool::new("mkfs.ext4", "e2fsprogs"),
            HostTool::new("resize2fs", "e2fsprogs"),
            HostTool::new("fallocate", "util-linux"),
        ],
        true,
        s.log_path(),
    )?;
    let work = project.join("build/e2e/disk");
    if work.exists() {
        release_leftovers(&s, &work)?;
    }
    files::remove_tree(&work)?;
    fs::create_dir_all(&work)?;
    let (image, mnt) = (work.join("fs.img"), work.join("mnt"));
    let sh = s.sh();
    s.run(cmd!(sh, "truncate -s 512M {image}"))?;
    s.run(cmd!(sh, "mkfs.ext4 -q -m 0 {image}"))?;
    let loop_dev = LoopDevice::attach(&s, &image, false)?;
    let mounted = Mounted::mount(&s, Path::new(loop_dev.node_str()), &mnt)?;
    let run = SmokeRun {
        build: mnt.join("build"),
        ..SmokeRun::new(project)?
    };
    let debs = built.layout().downloads.join("debs");
    let debs_copy = run.layout().downloads;
    fs::create_dir_all(&debs_copy)?;
    s.run(cmd!(sh, "cp -a {debs} {debs_copy}/"))?;
    let mut timings = Vec::new();

    s.step("512 MiB: too small for the plan, refused before any stage");
    let t = Instant::now();
    let refused = run.command(&["build"]).output()?;
    let secs = t.elapsed().as_secs_f64();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    s.note(&said);
    ensure!(
        !refused.status.success()
            && said.contains(&format!(
                "not enough disk space under {}",
                mnt.display()
            ))
            && said.contains("packages ")
            && said.contains("iso "),
        "`build` on a 512 MiB file system did not stop naming the place and the stages' needs:\n{said}"
    );
    ensure!(
        secs < 30.0 && !run.build.join("roots").exists() && !run.layout().stamps().exists(),
        "`build` refused after {secs:.1} s, or began a stage first"
    );
    timings.push(("too small: refused".to_owned(), secs));

    s.step("4 GiB, filled by another writer as the iso stage starts");
    let mounted = grow(&s, (&image, &loop_dev, &mnt), mounted, "3584M")?;
    let log_path = work.join("build.log");
    let log = fs::File::create(&log_path)?;
    let t = Instant::now();
    let mut child = run
        .command(&["build"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting `build`")?;
    let pgid = child.id() as i32;
    let kill = crate::interrupt::Cleanup::register("stop the e2e-disk-full build", move || {
        // SAFETY: the process group of the build this check started.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    });
    let node1_stamp = run.layout().stamp("node1");
    while !node1_stamp.exists() {
        ensure!(
            child.try_wait()?.is_none(),
            "`build` ended before the node1 stage was done:\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
        ensure!(
            t.elapsed() < Duration::from_secs(900),
            "the node1 stage was not done after 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let filler = mnt.join("filler");
    let leave = 8u64 << 20;
    let size = free_under(&s, &mnt)?.saturating_sub(leave).to_string();
    s.run(cmd!(sh, "fallocate -l {size} {filler}"))?;
    let status = child.wait()?;
    kill.dismiss();
    let secs = t.elapsed().as_secs_f64();
    let said = fs::read_to_string(&log_path)?;
    s.note(&said);
    let error = said
        .lines()
        .find(|l| l.starts_with("error: stage iso failed"))
        .unwrap_or_default();
    ensure!(
        !status.success()
            && error.contains(&format!("the disk is full under {}", run.build.display()))
            && error.contains("stage iso needs about"),
        "the iso stage did not stop with one line naming it, the place and its need ({status}):\n{said}"
    );
    let (iso, sum) = run.layout().image(&run.profile.iso);
    ensure!(
        !run.layout().stamp("iso").exists() && !iso.exists() && !sum.exists(),
        "a failed iso stage left a stamp or an image"
    );
    ensure!(
        !files::sibling(&iso, "partial").exists(),
        "a failed iso stage left its partial image"
    );
    no_mounts_under(&run.build)?;
    let left = chroot::processes_rooted_in(&run.build);
    ensure!(
        left.is_empty(),
        "processes left in the build dir's chroots: {left:?}"
    );
    timings.push(("build until the iso stage ran out".to_owned(), secs));

    s.step("enlarged by 1 GiB: the same `build` makes only the image");
    let mounted = grow(&s, (&image, &loop_dev, &mnt), mounted, "1G")?;
    let before = fs::read(run.layout().stamp("packages"))?;
    let t = Instant::now();
    let said = run.xtask(&s, &["build"])?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        iso.is_file() && sum.is_file() && run.layout().stamp("iso").exists(),
        "the rerun made no image"
    );
    ensure!(
        fs::read(run.layout().stamp("packages"))? == before
            && ["packages", "kernel", "node1"]
                .iter()
                .all(|stage| !said.contains(&format!("==> {stage}: done"))),
        "the rerun did more than the iso stage:\n{said}"
    );
    timings.push(("enlarged: the rerun (iso only)".to_owned(), secs));

    drop(mounted);
    drop(loop_dev);
    no_mounts_under(&work)?;
    files::remove_tree(&work)?;
    Ok(timings)
}
