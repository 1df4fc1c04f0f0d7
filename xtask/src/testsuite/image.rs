//! End-to-end checks of the finished image, from the real smoke build: the
//! build completes, the ISO is what a USB stick needs (El Torito for BIOS and
//! UEFI, an MBR, the root images, kernel and initrd), its sha256 file is
//! right, an interrupted `iso` keeps the previous image, and it boots in
//! QEMU: BIOS with PXE nodes, and UEFI (OVMF) to node1's status line.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use super::smoke::{check_shell, no_mounts_under, SmokeRun, Timings};
use crate::bytes::sha256_of;
use crate::engine::Stamp;
use crate::qemu::{BootTest, QemuFirmware, Report};

/// `cargo xtask build` of the smoke profile, then the image's contents.
pub(crate) fn build_and_image(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-build")?;
    let t = Instant::now();
    run.xtask(&s, &["build"])?;
    let mut timings = vec![(
        "build (what earlier parts left)".to_owned(),
        t.elapsed().as_secs_f64(),
    )];
    let layout = run.layout();
    for stage in crate::stages::BUILD {
        let path = layout.stamp(stage);
        let stamp = Stamp::load(&path)
            .with_context(|| format!("no stamp {} after the build", path.display()))?;
        timings.push((format!("  {stage} stage, last run"), stamp.seconds));
    }

    let image = run.layout().out.join(&run.profile.iso.output);
    let sh = s.sh();
    let report = cmd!(
        sh,
        "xorriso -indev {image} -pvd_info -report_el_torito plain -report_system_area plain"
    )
    .ignore_stderr()
    .read()
    .context("xorriso could not read the image")?;
    let line_with = |words: &[&str]| {
        report
            .lines()
            .any(|l| words.iter().all(|w| l.split_whitespace().any(|x| x == *w)))
    };
    ensure!(
        line_with(&["El", "Torito", "boot", "img", "BIOS", "y"]),
        "no bootable El Torito entry for BIOS:\n{report}"
    );
    ensure!(
        line_with(&["El", "Torito", "boot", "img", "UEFI", "y"]),
        "no bootable El Torito entry for UEFI:\n{report}"
    );
    ensure!(
        line_with(&["MBR", "partition", "1", "0x80"]),
        "no bootable MBR partition (a dd'ed stick would not boot):\n{report}"
    );
    ensure!(
        line_with(&["MBR", "partition", "2", "0xef"]),
        "no EFI system partition in the MBR:\n{report}"
    );
    ensure!(
        report.contains(&format!("Volume Id    : {}\n", run.profile.iso.volume)),
        "the volume id is not the profile's {}:\n{report}",
        run.profile.iso.volume
    );
    let listing = cmd!(sh, "xorriso -indev {image} -find / -type f -exec lsdl --")
        .ignore_stderr()
        .read()?;
    for (path, at_least) in [
        ("/live/filesystem.squashfs", 100 << 20),
        ("/live/layers.squashfs", 1 << 10),
        ("/live/filesystem.module", 10),
        ("/live/vmlinuz", 1 << 20),
        ("/live/initrd.img", 1 << 20),
        ("/isolinux/isolinux.bin", 1 << 10),
        ("/boot/efiboot.img", 1 << 20),
    ] {
        let size = listing
            .lines()
            .find(|l| l.ends_with(&format!("'{path}'")))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("the image has no {path}"))?;
        ensure!(size >= at_least, "{path} is only {size} bytes");
    }
    check_live_root(&run, &s, &image)?;

    let sum_file =
        fs::read_to_string(image.with_file_name(format!("{}.sha256", run.profile.iso.output)))?;
    let sum = sha256_of(&image)?;
    ensure!(
        sum_file == format!("{sum}  {}\n", run.profile.iso.output),
        "the .sha256 file does not match the image (image has {sum}):\n{sum_file}"
    );
    let size = fs::metadata(&image)?.len();
    timings.push((format!("  ISO size (MiB): {}", size >> 20), 0.0));
    timings.push(interrupted_iso_keeps_the_image(&run, &s, &image, &sum)?);
    Ok(timings)
}

/// The live system's two squashfs images, read out of the ISO, stacked in
/// that order by live-boot: the roots (node1's with the nodes root inside;
/// no kernels in /boot, they boot from outside the roots; no man pages, the
/// profile leaves docs out) and the layers (node1's, and the nodes' at
/// NODES_LAYER, which node1 lays over the nodes root at boot).
fn check_live_root(run: &SmokeRun, s: &crate::shell::StageShell, image: &Path) -> Result<()> {
    let sh = s.sh();
    let tmp = run.build.join("e2e-live");
    crate::files::remove_tree(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let read = |name: &str| -> Result<String> {
        let file = extract(s, image, &tmp, name)?;
        if name.ends_with(".squashfs") {
            Ok(cmd!(sh, "unsquashfs -l {file}").quiet().read()?)
        } else {
            Ok(fs::read_to_string(&file)?)
        }
    };
    let (roots, layers, module) = (
        read("filesystem.squashfs"),
        read("layers.squashfs"),
        read("filesystem.module"),
    );
    crate::files::remove_tree(&tmp)?;
    let (roots, layers, module) = (roots?, layers?, module?);
    ensure!(
        module.split_whitespace().collect::<Vec<_>>() == ["filesystem.squashfs", "layers.squashfs"],
        "live/filesystem.module does not stack the layers over the roots: {module:?}"
    );
    let has = |listing: &str, path: &str| {
        listing
            .lines()
            .any(|l| l == format!("squashfs-root/{path}"))
    };
    let nodes = crate::layout::NODES_TREE;
    ensure!(
        has(&roots, &format!("{nodes}/etc/debian_version")),
        "the roots' image has no nodes root at /{nodes}"
    );
    let layer = crate::layout::NODES_LAYER;
    for path in [
        "usr/local/sbin/krgiso-node1".to_owned(),
        format!("{layer}/usr/local/sbin/krgiso-node-report"),
        format!("{layer}/etc/fstab"),
    ] {
        ensure!(has(&layers, &path), "the layers' image has no /{path}");
    }
    // Owners as the node1 stage made them: the cluster user's ssh key is
    // its own (ssh refuses a key it cannot read, dropbear a foreign home).
    let user = &run.profile.cluster.user;
    let owners = read_owners(s, image, &tmp, "layers.squashfs")?;
    for path in [
        format!("home/{user}/.ssh"),
        format!("{layer}/home/{user}/.ssh/authorized_keys"),
    ] {
        let owner = owners
            .lines()
            .find(|l| l.ends_with(&format!("squashfs-root/{path}")))
            .and_then(|l| l.split_whitespace().nth(1))
            .with_context(|| format!("the layers' image has no /{path}"))?;
        ensure!(
            !owner.starts_with("0/"),
            "/{path} in the layers' image is owned by root ({owner}), not by {user}"
        );
    }
    let unwanted: Vec<&str> = roots
        .lines()
        .chain(layers.lines())
        .filter(|l| l.contains("/boot/vmlinuz-") || l.contains("/usr/share/man/man"))
        .take(5)
        .collect();
    ensure!(
        unwanted.is_empty(),
        "the live system has what it leaves out: {unwanted:?}"
    );
    Ok(())
}

/// `unsquashfs -lln` of one of the ISO's squashfs images: modes and
/// numeric owners.
fn read_owners(
    s: &crate::shell::StageShell,
    image: &Path,
    tmp: &Path,
    name: &str,
) -> Result<String> {
    let sh = s.sh();
    let file = extract(s, image, tmp, name)?;
    let listing = cmd!(sh, "unsquashfs -lln {file}").quiet().read();
    crate::files::remove_tree(tmp)?;
    Ok(listing?)
}

/// A file of the ISO's live/ directory, extracted into `tmp`.
pub(super) fn extract(
    s: &crate::shell::StageShell,
    image: &Path,
    tmp: &Path,
    name: &str,
) -> Result<PathBuf> {
    let sh = s.sh();
    fs::create_dir_all(tmp)?;
    let file = tmp.join(name);
    let inside = format!("/live/{name}");
    cmd!(
        sh,
        "xorriso -osirrox on -indev {image} -extract {inside} {file}"
    )
    .quiet()
    .ignore_stderr()
    .run()?;
    Ok(file)
}

/// Ctrl-C while `iso` squashes the roots: the previous image and its stamp
/// stay as they were, nothing stays mounted, no partial file is left.
fn interrupted_iso_keeps_the_image(
    run: &SmokeRun,
    s: &crate::shell::StageShell,
    image: &Path,
    sum: &str,
) -> Result<(String, f64)> {
    let t = Instant::now();
    let stamp = run.layout().stamp("iso");
    let stamp_before = fs::read(&stamp)?;
    let log = run.layout().log("iso");
    s.step("interrupt `xtask iso --force` while it squashes the roots");
    // The roots' squashfs is kept while they are unchanged: make `iso` squash them.
    crate::files::remove_tree(&run.layout().iso_roots())?;
    let mut child = run
        .command(&["--force", "iso"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("mksquashfs") {
            break;
        }
        ensure!(
            child.try_wait()?.is_none(),
            "`xtask iso` ended before it squashed anything"
        );
        ensure!(
            Instant::now() < deadline,
            "`xtask iso` never reached mksquashfs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    interrupt(child, "iso")?;
    ensure!(
        sha256_of(image)? == sum,
        "the interrupted run changed the previous image"
    );
    ensure!(
        fs::read(&stamp)? == stamp_before,
        "the interrupted run rewrote the iso stamp"
    );
    let out_dir = image.parent().context("image has no directory")?;
    let leftovers: Vec<String> = fs::read_dir(out_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    ensure!(
        leftovers.is_empty(),
        "partial files left in {}: {leftovers:?}",
        out_dir.display()
    );
    no_mounts_under(&run.build)?;
    Ok((
        "interrupted iso keeps the image".to_owned(),
        t.elapsed().as_secs_f64(),
    ))
}

/// Ctrl-C to a running `xtask COMMAND`, as in a terminal: it must exit 130.
/// Returns what it said on stderr.
fn interrupt(child: std::process::Child, command: &str) -> Result<String> {
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(130),
        "an interrupted `xtask {command}` exited with {}, not 130:\n{said}",
        out.status
    );
    Ok(said)
}

/// The BIOS boot test, on a LAN with its own DHCP server: node1 only
/// proxies, two nodes boot through it with the LAN's addresses, one in
/// BIOS mode and one in UEFI mode (iPXE's EFI build from node1's proxy
/// offer), and a host of that LAN that did not PXE-boot is refused the
/// nodes' root.
pub(crate) fn boot_bios(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let layout = run.layout();
    let log = layout.log("qemu");
    let report = BootTest::for_build(&run.profile, &layout, 2, QemuFirmware::Bios)?
        .with_uefi_nodes(1, &log)?
        .with_screenshot(&log)?
        .on_a_foreign_lan(&log)?
        .run()?;
    Ok(milestone_timings(&report))
}

/// The UEFI boot test, the way a user boots a modern machine: the image
/// written to a "USB stick" (a file) by `usb --data`, booted under OVMF
/// from an emulated USB stick; node1 must put the nodes' root on the stick's
/// KRGISO-DATA partition, and a node must boot from it, in UEFI mode too
/// (iPXE's EFI build from node1's own DHCP offer).
pub(crate) fn boot_uefi_stick(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-boot-uefi")?;
    let stick = run.build.join("usb-stick.img");
    let _ = fs::remove_file(&stick);
    let t = Instant::now();
    // A sparse 2 GiB stick: the image, then KRGISO-DATA in the rest.
    fs::File::create(&stick)?.set_len(2 << 30)?;
    let path = stick.to_string_lossy();
    run.xtask(&s, &["usb", "--allow-file", "--yes", "--data", &path])?;
    let mut timings = vec![(
        "usb --data to a 2 GiB stick file".to_owned(),
        t.elapsed().as_secs_f64(),
    )];
    let mut test = BootTest::for_build(&run.profile, &run.layout(), 1, QemuFirmware::Uefi)?
        .with_uefi_nodes(1, &run.layout().log("qemu"))?;
    test.dir = run.layout().qemu_uefi();
    test.stick = Some(stick.clone());
    test.reboot = true;
    let report = test.run();
    let _ = fs::remove_file(&stick);
    let report = report?;
    ensure!(
        report.node1_status.contains("nodes=disk:"),
        "node1 booted from a stick with KRGISO-DATA but did not put the nodes' root there: {}",
        report.node1_status
    );
    timings.extend(milestone_timings(&report));
    Ok(timings)
}

pub(crate) fn milestone_timings(report: &Report) -> Timings {
    report
        .reached
        .iter()
        .filter(|r| r.milestone.spec().timed)
        .map(|r| {
            (
                format!("{}: {} (from power-on)", r.vm, r.label),
                r.since_power_on,
            )
        })
        .collect()
}

/// `qemu --accel kvm`, interrupted once node1's kernel is up: KVM either
/// worked or was replaced by TCG with one warning (on this project's
/// machines it fails with an internal error), Ctrl-C exits 130 and no QEMU
/// is left running.
pub(crate) fn boot_interrupted(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let t = Instant::now();
    let mut child = run
        .command(&["qemu", "--nodes", "0", "--accel", "kvm"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("  | {line}");
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !said.iter().any(|l: &String| l.contains("node1: kernel up")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!(
                    "node1's kernel did not come up under `qemu --accel kvm`:\n{}",
                    said.join("\n")
                );
            }
        }
    }
    let stderr = interrupt(child, "qemu")?;
    let fell_back = said.iter().any(|l| l.contains("power on again (TCG)"));
    ensure!(
        said.iter().any(|l| l.contains("node1: power on (KVM)")),
        "`--accel kvm` did not try KVM:\n{}",
        said.join("\n")
    );
    ensure!(
        fell_back == stderr.contains("KVM does not work here"),
        "falling back to TCG and warning about it must go together:\n{}\n{stderr}",
        said.join("\n")
    );
    let qemu_dir = run.build.join("qemu");
    let qemu_dir = qemu_dir.to_string_lossy();
    let survivors: Vec<String> = fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("qemu-system") && c.contains(&*qemu_dir))
        .collect();
    ensure!(
        survivors.is_empty(),
        "QEMU still running after Ctrl-C: {survivors:?}"
    );
    let kvm = if fell_back {
        "KVM failed, TCG"
    } else {
        "KVM worked"
    };
    let mut timings = vec![(
        format!("qemu --accel kvm to kernel up, then Ctrl-C ({kvm})"),
        t.elapsed().as_secs_f64(),
    )];
    timings.push(restart_in_the_report(&run)?);
    Ok(timings)
}

/// `qemu --nodes 0 --accel kvm` to its end: a node1 powered on again
/// under TCG after KVM failed is in report.json (`powered_on_again`), and
/// one that was not is not, so a run that needed it is never read as a
/// clean one.
fn restart_in_the_report(run: &SmokeRun) -> Result<(String, f64)> {
    let s = check_shell(&run.project, "e2e-boot-interrupt")?;
    let t = Instant::now();
    let said = run.xtask(&s, &["qemu", "--nodes", "0", "--accel", "kvm"])?;
    let path = run.layout().qemu().join("report.json");
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    let again = report["powered_on_again"]
        .as_array()
        .with_context(|| format!("{} has no powered_on_again list", path.display()))?;
    let fell_back = said.contains("power on again (TCG)");
    let recorded = again
        .iter()
        .filter(|p| {
            p["vm"] == "node1"
                && p["why"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("KVM failed"))
        })
        .count();
    ensure!(
        recorded == usize::from(fell_back) && again.len() == recorded,
        "node1 {} powered on again under TCG, yet {} records {again:?}",
        if fell_back { "was" } else { "was not" },
        path.display()
    );
    let what = if fell_back {
        "KVM failed: the restart in report.json"
    } else {
        "KVM worked: no restart in report.json"
    };
    Ok((
        format!("qemu --nodes 0 --accel kvm to the end ({what})"),
        t.elapsed().as_secs_f64(),
    ))
}

/// `cargo xtask bench --quick` on the smoke build the earlier parts made:
/// a no-op build runs no stage, `iso` after an overlay change reruns node1
/// and iso only and leaves the kernel's outputs alone (the bench fails
/// otherwise). Timings are reported, not asserted: the machine is noisy.
pub(crate) fn bench_quick(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-bench-quick")?;
    run.xtask(&s, &["bench", "--quick"])?;
    let path = run.build.join("bench/quick.json");
    let report: crate::bench::BenchReport = serde_json::from_slice(&fs::read(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    // The boot rows come from the reports e2e-boot-bios and e2e-boot-uefi
    // left in this build dir: a part that runs `qemu` after them would
    // replace one.
    let unmeasured: Vec<&str> = report
        .targets
        .iter()
        .filter(|t| {
            t.measured.is_none()
                && t.source != crate::bench::FULL_BENCH_ONLY
                && t.source != crate::bench::KERRIGHED_ONLY
        })
        .map(|t| t.what.as_str())
        .collect();
    ensure!(
        unmeasured.is_empty(),
        "`bench --quick` measured nothing for: {} (the boot tests e2e-boot-bios and \
         e2e-boot-uefi write the reports it reads: {})",
        unmeasured.join("; "),
        run.layout()
            .boot_reports()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(report
        .scenarios
        .iter()
        .map(|sc| (sc.name.clone(), sc.seconds))
        .collect())
}
