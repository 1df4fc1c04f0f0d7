//! The Kerrighed kernel and cluster for real, built the way the README
//! says: `cargo xtask build` with the default profile (kerrighed-2.4.4) in
//! the default build dir, and no flag but the pre-download directory where
//! kernel.org and GitHub are out of reach (CI). `e2e-kernel-krg`: a build
//! whose sources cannot be had stops before any stage; then the real
//! build, its outputs checked, a patch that does not apply refused by
//! name, and the kernel rebuilt after `clean kernel` from a warm compiler
//! cache. `e2e-boot-krg`: its image booted with two PXE nodes that form a
//! Kerrighed cluster and pass the single-system-image proof.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use super::smoke::{check_shell, no_mounts_under, xtask_binary, Timings};
use crate::engine::Stamp;
use crate::fetch::SOURCES_DIR_ENV;
use crate::layout::Layout;
use crate::profile::{self, Profile};
use crate::qemu::{BootTest, Milestone, QemuFirmware};
use crate::shell::StageShell;
use crate::stages::kconfig::{self, Setting};
use crate::stages::kernel::krg::{self, KRG_RELEASE};
use crate::testsuite::image::milestone_timings;

const PROFILE: &str = profile::DEFAULT;

struct KrgRun {
    project: PathBuf,
    /// The pre-download directory, when the environment names one; else
    /// the build fetches from the profile's URLs, as a user's does.
    sources: Option<PathBuf>,
    exe: PathBuf,
    profile: Profile,
}

impl KrgRun {
    /// The default build dir, as `cargo xtask build` uses it.
    fn layout(&self) -> Layout {
        Layout::new(&self.project, None)
    }

    /// `xtask ARGS` in the project, as the README types it (the
    /// pre-download directory, if any, in the environment), streamed to the
    /// log; returns whether it succeeded and what it printed.
    fn xtask(&self, s: &StageShell, args: &[&str]) -> Result<(bool, String)> {
        let exe = &self.exe;
        let sh = s.sh();
        sh.change_dir(&self.project);
        let command = match &self.sources {
            Some(dir) => cmd!(sh, "{exe} {args...}").env(SOURCES_DIR_ENV, dir),
            None => cmd!(sh, "{exe} {args...}").env_remove(SOURCES_DIR_ENV),
        };
        s.try_collect(command)
    }

    fn must(&self, s: &StageShell, args: &[&str]) -> Result<String> {
        let (ok, said) = self.xtask(s, args)?;
        ensure!(ok, "`cargo xtask {}` failed:\n{said}", args.join(" "));
        Ok(said)
    }

    fn stage_seconds(&self, stage: &str) -> Result<f64> {
        let path = self.layout().stamp(stage);
        Ok(Stamp::load(&path)
            .with_context(|| format!("no stamp {}", path.display()))?
            .seconds)
    }
}

impl KrgRun {
    fn new(project: &Path) -> Result<KrgRun> {
        let sources = std::env::var_os(SOURCES_DIR_ENV)
            .map(std::path::absolute)
            .transpose()?;
        Ok(KrgRun {
            project: project.to_owned(),
            sources,
            exe: xtask_binary()?,
            profile: Profile::load(&profile::resolve(PROFILE, project)?)?,
        })
    }
}

pub(crate) fn kernel_krg(project: &Path) -> Result<Timings> {
    let run = KrgRun::new(project)?;
    let s = check_shell(project, "e2e-kernel-krg")?;
    let mut timings = Vec::new();

    s.step("sources out of reach: the build stops before any stage, naming what to do");
    timings.push((
        "build with its sources out of reach (fails)".to_owned(),
        sources_out_of_reach(&run, &s)?,
    ));

    match &run.sources {
        Some(dir) => {
            s.step(&format!(
                "fetch --offline: the sources from the pre-download directory {} only",
                dir.display()
            ));
            run.must(&s, &["--offline", "fetch"])?;
        }
        None => {
            s.step("fetch: the sources from the profile's URLs (no pre-download directory)");
            let (ok, said) = run.xtask(&s, &["fetch"])?;
            ensure!(
                ok,
                "the Kerrighed sources could not be had. Give this machine access to kernel.org and GitHub, \
or put linux-2.6.20.tar.bz2 and kerrighed-2.4.4.tar.gz in a directory and name it with \
{SOURCES_DIR_ENV}=DIR (or `cargo xtask test --sources-dir DIR`):\n{said}"
            );
        }
    }

    s.step("cargo xtask build: three roots, the Kerrighed kernel, node1, the image");
    let t = Instant::now();
    let said = run.must(&s, &["build"])?;
    timings.push((
        "build (cold, what was not built)".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    for stage in crate::stages::BUILD {
        timings.push((format!("  {stage} stage"), run.stage_seconds(stage)?));
    }
    let (image, _) = run.layout().image(&run.profile.iso);
    ensure!(
        said.contains("cargo xtask usb /dev/sdX") && said.contains("cargo xtask qemu --nodes 2"),
        "the build did not end with the next steps (usb, qemu):\n{}",
        tail(&said)
    );
    ensure!(image.is_file(), "the build made no {}", image.display());
    let cold_kernel = run.stage_seconds("kernel")?;
    // A build dir from an earlier run may have made its kept tree again:
    // then that is no cold build to compare with.
    let cold_was_fresh = !kept_tree_used(&run)?;
    no_mounts_under(&run.layout().build)?;

    s.step("the staged kernel, its config and what it installed");
    check_outputs(&run)?;

    s.step("a patch that no longer applies stops the kernel stage, naming it and its hunk");
    broken_patch(&run, &s)?;

    s.step("clean kernel, then kernel again: a fresh tree (the broken patch's run took the kept one), the compiler cache warm");
    run.must(&s, &["clean", "kernel"])?;
    let (warm, reuse) = timed_kernel(&run, &s, &["kernel"])?;
    timings.push(("kernel, cold compiler cache".to_owned(), cold_kernel));
    timings.push((
        format!("kernel after clean kernel, fresh tree ({reuse})"),
        warm,
    ));
    ensure!(
        !kept_tree_used(&run)?,
        "the kernel stage went on with a tree the broken patch's run had prepared"
    );
    ensure!(
        !cold_was_fresh || warm <= 0.6 * cold_kernel,
        "a kernel rebuild with a warm compiler cache took {warm:.0} s, not a fraction of the first build's {cold_kernel:.0} s ({reuse})"
    );
    check_outputs(&run)?;

    s.step("clean kernel, then kernel again: the kept tree, made again incrementally");
    run.must(&s, &["clean", "kernel"])?;
    let (kept, reuse) = timed_kernel(&run, &s, &["kernel"])?;
    timings.push((
        format!("kernel after clean kernel, kept tree ({reuse})"),
        kept,
    ));
    ensure!(
        kept_tree_used(&run)?,
        "the kernel stage did not go on with its kept tree"
    );
    // kbuild recompiled nothing it had compiled (kerrighed's modules are
    // made again by their install, from the compiler cache).
    let compiled = compilations(&reuse)?;
    ensure!(
        compiled < 200,
        "making the kept tree again compiled {compiled} files ({reuse}): kbuild takes its objects for stale"
    );
    ensure!(
        kept <= 0.4 * warm,
        "making the kept tree again took {kept:.0} s, not a small part of the {warm:.0} s a fresh tree took with the compiler cache warm ({reuse})"
    );
    check_outputs(&run)?;

    s.step("a fragment change: the kept tree made again, the changed symbol's files only");
    let edited = fragment_change(&run, &s, "CONFIG_IKCONFIG")?;
    timings.push(edited);
    run.must(&s, &["kernel"])?;
    check_outputs(&run)?;

    s.step(
        "clean packages, packages again: busybox and dropbear are the kept builds, not compiled",
    );
    run.must(&s, &["clean", "packages"])?;
    let t = Instant::now();
    run.must(&s, &["packages"])?;
    timings.push((
        "packages after clean packages (static builds kept)".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    let log = fs::read_to_string(run.layout().log("packages"))?;
    for package in &run.profile.nodes.packages {
        ensure!(
            log.lines()
                .any(|l| l.contains(&format!("==> {package}: the kept build of "))),
            "the packages stage did not take {package}'s kept build from {}",
            run.layout().static_builds.display()
        );
        ensure!(
            !log.lines()
                .any(|l| l.contains(&format!("==> {package}: build"))),
            "the packages stage compiled {package} again although its build was kept"
        );
    }
    // The kernel stage installs into the new nodes root from its kept tree.
    run.must(&s, &["kernel"])?;
    ensure!(
        kept_tree_used(&run)?,
        "the kernel stage did not go on with its kept tree after packages"
    );
    check_outputs(&run)?;
    no_mounts_under(&run.layout().build)?;
    Ok(timings)
}

/// The kernel stage run by `cargo xtask ARGS`, timed: its seconds, and
/// what its compiler cache reused.
fn timed_kernel(run: &KrgRun, s: &StageShell, args: &[&str]) -> Result<(f64, String)> {
    let t = Instant::now();
    run.must(s, args)?;
    Ok((t.elapsed().as_secs_f64(), compiler_cache_said(run)?))
}

/// What the last kernel stage's log says its compiler cache reused.
fn compiler_cache_said(run: &KrgRun) -> Result<String> {
    let log = fs::read_to_string(run.layout().log("kernel"))?;
    Ok(log
        .lines()
        .rev()
        .find_map(|l| l.split("==> compiler cache: ").nth(1))
        .context("the kernel log does not say what the compiler cache reused")?
        .to_owned())
}

/// The compilations in a compiler cache phrase (`3 of 8 compilations ...`).
fn compilations(said: &str) -> Result<u64> {
    said.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no count of compilations in {said:?}"))
}

/// Whether the last kernel stage went on with its kept tree.
fn kept_tree_used(run: &KrgRun) -> Result<bool> {
    let log = fs::read_to_string(run.layout().log("kernel"))?;
    Ok(log.lines().any(|l| l.starts_with("==> the kept tree ")))
}

/// The kernel stage with a profile whose fragment also turns `symbol` off:
/// the kept tree is made again, the staged config has the symbol off, and
/// few files are compiled. Returns its timing row.
fn fragment_change(run: &KrgRun, s: &StageShell, symbol: &str) -> Result<(String, f64)> {
    let base = run.layout().build.join("e2e/krg-fragment-change");
    crate::files::remove_tree(&base)?;
    fs::create_dir_all(&base)?;
    let original = "kernel-configs/krg-2.6.20.config";
    let fragment = base.join("krg-2.6.20.config");
    let text = fs::read_to_string(project_file(run, original))?;
    fs::write(&fragment, format!("{text}\n# {symbol} is not set\n"))?;
    let profile_text = fs::read_to_string(profile::resolve(PROFILE, &run.project)?)?;
    let edited = profile_text.replacen(
        &format!("config = \"{original}\""),
        &format!("config = \"{}\"", fragment.display()),
        1,
    );
    ensure!(
        edited != profile_text,
        "the profile has no config = \"{original}\" line"
    );
    let profile = base.join("fragment-change.toml");
    fs::write(&profile, edited)?;
    let profile = profile.display().to_string();
    let (secs, reuse) = timed_kernel(run, s, &["--profile", &profile, "kernel"])?;
    ensure!(
        kept_tree_used(run)?,
        "a fragment change did not go on with the kept tree"
    );
    let staged = fs::read_to_string(
        run.layout()
            .staged_kernel()
            .join(format!("config-{KRG_RELEASE}")),
    )?;
    ensure!(
        staged
            .lines()
            .any(|l| l == format!("# {symbol} is not set")),
        "the staged config still has {symbol} after the fragment turned it off"
    );
    let compiled = compilations(&reuse)?;
    ensure!(
        compiled < 300,
        "turning {symbol} off compiled {compiled} files ({reuse}): more than what it touches"
    );
    crate::files::remove_tree(&base)?;
    Ok((
        format!("kernel after a fragment change, kept tree ({reuse})"),
        secs,
    ))
}

/// How many of Kerrighed's 12 test programs e2e-boot-krg runs (`all`, or
/// a number; 6 without it), and the seed that picks them.
const PROGRAMS_ENV: &str = "KRGISO_TEST_PROGRAMS";
const PROGRAMS_SEED_ENV: &str = "KRGISO_TEST_PROGRAMS_SEED";
const PROGRAMS_SAMPLED: usize = 6;

/// The sample of test programs e2e-boot-krg runs: None for all of them.
fn test_program_sample() -> Result<Option<(u64, usize)>> {
    let count = match std::env::var(PROGRAMS_ENV) {
        Ok(text) if text == "all" => return Ok(None),
        Ok(text) => text
            .parse::<usize>()
            .with_context(|| format!("{PROGRAMS_ENV}={text} is neither `all` nor a number"))?,
        Err(_) => PROGRAMS_SAMPLED,
    };
    Ok(Some((
        crate::seeded::seed_from_env(PROGRAMS_SEED_ENV)?,
        count,
    )))
}

/// A boot test part's start: the default image brought up to date (what
/// was stale built), timed.
fn image_up_to_date(project: &Path, part: &str) -> Result<(KrgRun, StageShell, Timings)> {
    let run = KrgRun::new(project)?;
    let s = check_shell(project, part)?;
    s.step("bring the kerrighed-2.4.4 image up to date");
    let t = Instant::now();
    run.must(&s, &["build"])?;
    let timings = vec![(
        "build (what was stale)".to_owned(),
        t.elapsed().as_secs_f64(),
    )];
    Ok((run, s, timings))
}

/// The Kerrighed cluster in QEMU (`e2e-boot-krg`): the image brought up to
/// date, then `qemu --nodes 3 --late-node --lose-node`: three i386 nodes PXE-boot
/// 2.6.20-krg from node1, run the static userland, start the cluster with
/// all three once no new node has come for the settle time, and pass the
/// single-system-image proof (krgadm nodes, one process space, migration
/// away and back, cluster-wide /proc/cpuinfo, load balancing); a fourth,
/// powered on once the cluster runs, is left out and says so; then a
/// member's QEMU is killed, and the others see it lost, reset, and form
/// the cluster again without it (`--lose-node`).
pub(crate) fn boot_krg(project: &Path) -> Result<Timings> {
    let (run, s, mut timings) = image_up_to_date(project, "e2e-boot-krg")?;
    s.step("qemu --nodes 4 --uefi-nodes 1 --late-node --lose-node: a UEFI node turned away, the Kerrighed cluster of the other three, the single-system-image proof, a node left out, a member lost and the cluster formed again");
    let layout = run.layout();
    let mut test = BootTest::for_build(&run.profile, &layout, 4, QemuFirmware::Bios)?;
    if let Some((seed, count)) = test_program_sample()? {
        let replay = format!(
            "e2e-boot-krg: {count} of Kerrighed's test programs, picked by seed {seed} (replay: {PROGRAMS_SEED_ENV}={seed} {PROGRAMS_ENV}={count} cargo xtask test --only e2e-boot-krg; all of them: {PROGRAMS_ENV}=all)"
        );
        println!("{replay}");
        s.note(&replay);
        test = test.with_a_sample_of_test_programs(seed, count);
    }
    let report = test
        .with_uefi_nodes(1, &layout.log("qemu"))?
        .with_a_late_node()?
        .with_a_lost_node()?
        .with_screenshot(&layout.log("qemu"))?
        .run()?;
    // node5 is the UEFI node, node6 the late one.
    ensure!(
        report
            .reached
            .iter()
            .any(|r| r.vm == "node5" && r.milestone == Milestone::NeedsBios)
            && !report
                .reached
                .iter()
                .any(|r| r.vm == "node5" && r.milestone == Milestone::NodeKernelUp),
        "node5, the UEFI node, was not turned away before any kernel"
    );
    for node in ["node2", "node3", "node4", "node6"] {
        let up = report
            .reached
            .iter()
            .find(|r| r.vm == node && r.milestone == Milestone::NodeKernelUp)
            .with_context(|| format!("{node} has no kernel-up milestone"))?;
        ensure!(
            up.detail.contains(KRG_RELEASE),
            "{node} booted {}, not {KRG_RELEASE}",
            up.detail
        );
    }
    for proof in [
        Milestone::KrgNodes,
        Milestone::OneProcessSpace,
        Milestone::MigratedAway,
        Milestone::MigratedBack,
        Milestone::ClusterCpus,
        Milestone::LoadBalanced,
        Milestone::CheckpointRestart,
        Milestone::TestPrograms,
        Milestone::LeftOut,
        Milestone::MemberLost,
        Milestone::FormedAgain,
        Milestone::TakenBack,
    ] {
        ensure!(
            report.reached.iter().any(|r| r.milestone == proof),
            "the boot test passed without the milestone {proof:?}"
        );
    }
    timings.extend(milestone_timings(&report));
    Ok(timings)
}

/// The Kerrighed image on a LAN with a DHCP server of its own
/// (`e2e-boot-krg-proxy`): `qemu --nodes 4 --foreign-dhcp --id-clash`.
/// node1 only proxies; two nodes boot through its proxy offer with the
/// LAN's addresses and form the cluster with the ids those addresses give
/// (the single-system-image proof on it); the two others get an address
/// whose id is node2's and node1's: node1 names each clash, on its status
/// page and on the node's console, and they stay out. On that two-node
/// cluster, the cluster's gain is measured for `bench` (qemu/gain.rs).
pub(crate) fn boot_krg_proxy(project: &Path) -> Result<Timings> {
    let (run, s, mut timings) = image_up_to_date(project, "e2e-boot-krg-proxy")?;
    s.step("qemu --nodes 4 --foreign-dhcp --id-clash --cluster-gain: node1 proxies on a LAN with its own DHCP server; two nodes form the cluster with the LAN's ids, two are told their id clashes; a batch of jobs on one node, then on both");
    let layout = run.layout();
    let log = layout.log("qemu");
    let report = BootTest::for_build(&run.profile, &layout, 4, QemuFirmware::Bios)?
        .on_a_foreign_lan(&log)?
        .with_id_clashes()?
        .with_the_ssi_proof_only()
        .with_cluster_gain()?
        .with_screenshot(&log)?
        .run()?;
    ensure!(
        report.node1_status.contains(" dhcp=proxy "),
        "node1 did not only proxy: {}",
        report.node1_status
    );
    let reached = |vm: &str, m: Milestone| {
        report
            .reached
            .iter()
            .find(|r| r.vm == vm && r.milestone == m)
            .map(|r| r.detail.as_str())
    };
    // The LAN's addresses: node2 192.168.77.122, node3 .123.
    let listing = reached("node2", Milestone::KrgNodes).unwrap_or_default();
    ensure!(
        ["122:online", "123:online"]
            .iter()
            .all(|id| listing.split_whitespace().any(|w| w == *id)),
        "the cluster did not form with the ids of the LAN's addresses (122, 123): krgadm nodes said {listing:?}"
    );
    for (node, holder) in [
        ("node4", "is already 192.168.77.122's"),
        ("node5", "is node1's own (192.168.77.100)"),
    ] {
        let said = reached(node, Milestone::IdClash)
            .with_context(|| format!("{node} was not told its id clashes"))?;
        ensure!(said.contains(holder), "{node} was told {said:?}");
        ensure!(
            reached(node, Milestone::ClusterUp).is_none(),
            "{node}, whose id clashes, is in the cluster"
        );
    }
    let gain = report
        .cluster_gain
        .as_ref()
        .context("the run measured no cluster gain")?;
    timings.push((
        format!(
            "batch of {} jobs kept on one node (then {:.2}x faster on 2)",
            gain.jobs,
            gain.ratio()
        ),
        gain.one_node_s,
    ));
    timings.push((
        format!("batch of {} jobs over 2 nodes", gain.jobs),
        gain.cluster_s,
    ));
    timings.extend(milestone_timings(&report));
    Ok(timings)
}

/// What the kernel stage of kerrighed-2.4.4 must leave: the real
/// 2.6.20-krg bzImage built by the build root's gcc, every fragment symbol
/// in its config, its System.map, and kerrighed.ko, the scheduler modules,
/// the static userland (busybox, dropbear, Kerrighed's tools) in the nodes
/// root.
fn check_outputs(run: &KrgRun) -> Result<()> {
    let layout = run.layout();
    let staged = layout.staged_kernel();
    let version = krg::bzimage_release(&staged.join(format!("vmlinuz-{KRG_RELEASE}")))?;
    ensure!(
        version.starts_with(&format!("{KRG_RELEASE} ")),
        "the staged kernel says {version:?}, not {KRG_RELEASE}"
    );

    let fragment = fs::read_to_string(project_file(run, "kernel-configs/krg-2.6.20.config"))?;
    let config = kconfig::parse(&fs::read_to_string(
        staged.join(format!("config-{KRG_RELEASE}")),
    )?);
    let mut wrong = Vec::new();
    for (symbol, wanted) in kconfig::parse(&fragment) {
        let got = config.get(&symbol);
        let ok = match &wanted {
            Setting::NotSet => matches!(got, None | Some(Setting::NotSet)),
            value => got == Some(value),
        };
        if !ok {
            wrong.push(format!("{symbol} ({got:?})"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "the staged config lacks: {}",
        wrong.join(", ")
    );

    let map = fs::read_to_string(staged.join(format!("System.map-{KRG_RELEASE}")))?;
    for symbol in ["start_kernel", "send_kerrighed_signal"] {
        ensure!(
            map.lines().any(|l| l.ends_with(&format!(" {symbol}"))),
            "the staged System.map has no {symbol}"
        );
    }

    let nodes = layout.build.join("roots/nodes");
    let extra = nodes.join(format!("lib/modules/{KRG_RELEASE}/extra"));
    let mut modules: Vec<String> = fs::read_dir(&extra)
        .with_context(|| format!("reading {}", extra.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ko"))
        .collect();
    modules.sort();
    ensure!(
        modules.iter().any(|m| m == "kerrighed.ko") && modules.len() >= 8,
        "the nodes root has {modules:?} in {}: kerrighed.ko and the 7 scheduler modules expected",
        extra.display()
    );
    let ko = fs::read(extra.join("kerrighed.ko"))?;
    ensure!(
        contains(&ko, format!("vermagic={KRG_RELEASE} ").as_bytes()),
        "kerrighed.ko was not built for {KRG_RELEASE}"
    );
    // Its .comment names the compiler: the build root's, not an era gcc.
    let gcc = gcc_major(&ko).context("kerrighed.ko does not say which gcc built it")?;
    ensure!(
        gcc >= 11,
        "kerrighed.ko was built by gcc {gcc}, not the build root's current gcc"
    );
    // The static userland: busybox, dropbear and Kerrighed's tools, i386
    // programs that need no dynamic loader (glibc would refuse 2.6.20).
    for program in [
        "bin/busybox",
        "usr/sbin/dropbearmulti",
        "usr/local/bin/krgadm",
        "usr/local/bin/krgcapset",
        "usr/local/bin/migrate",
    ] {
        let bytes = fs::read(nodes.join(program))
            .with_context(|| format!("{program} is not in the nodes root"))?;
        ensure!(is_elf_i386(&bytes), "{program} is not an i386 program");
    }
    let dynamic = crate::stages::userland::dynamic_programs(&nodes)?;
    ensure!(
        dynamic.is_empty(),
        "programs in the static nodes root need a dynamic loader: {dynamic:?}"
    );
    for link in ["sbin/init", "bin/sh", "sbin/getty", "usr/sbin/dropbear"] {
        ensure!(
            fs::symlink_metadata(nodes.join(link)).is_ok(),
            "{link} is not in the nodes root"
        );
    }
    Ok(())
}

/// A copy of the profile whose patches are the shipped ones plus one that
/// cannot apply: the kernel stage must stop before building, naming the
/// patch, its file and hunk, and leave the last good stamp as it was.
fn broken_patch(run: &KrgRun, s: &StageShell) -> Result<()> {
    let base = run.layout().build.join("e2e/krg-broken-patch");
    crate::files::remove_tree(&base)?;
    let patches = base.join("kernel-patches");
    crate::files::copy_tree(&project_file(run, "kernel-patches"), &patches)?;
    fs::write(
        patches.join("99-broken.patch"),
        "Answers: nothing: the test's patch whose context is not in the tree.\n\n\
         --- a/_kernel/Makefile\n+++ b/_kernel/Makefile\n@@ -1,4 +1,4 @@\n\
         -VERSION = 3\n+VERSION = 4\n PATCHLEVEL = 6\n SUBLEVEL = 20\n EXTRAVERSION =\n",
    )?;
    let text = fs::read_to_string(profile::resolve(PROFILE, &run.project)?)?;
    let profile = base.join("broken-patch.toml");
    let edited = text.replacen(
        "patches = \"kernel-patches\"",
        &format!("patches = \"{}\"", patches.display()),
        1,
    );
    ensure!(
        edited != text,
        "the profile has no patches = \"kernel-patches\" line"
    );
    fs::write(&profile, edited)?;
    let stamp = run.layout().stamp("kernel");
    let before = fs::read(&stamp)?;
    let t = Instant::now();
    let profile = profile.display().to_string();
    let (ok, said) = run.xtask(s, &["--profile", &profile, "kernel"])?;
    ensure!(
        !ok,
        "the kernel stage went on with a patch that does not apply:\n{said}"
    );
    ensure!(
        said.contains("99-broken.patch no longer applies")
            && said.contains("_kernel/Makefile: hunk #1 failed"),
        "the failure does not name the patch, the file and the hunk:\n{said}"
    );
    ensure!(
        t.elapsed().as_secs() < 120,
        "the broken patch was found only after {:.0} s",
        t.elapsed().as_secs_f64()
    );
    ensure!(
        fs::read(&stamp)? == before,
        "the failed kernel stage changed its stamp"
    );
    no_mounts_under(&run.layout().build)?;
    crate::files::remove_tree(&base)
}

/// The default profile with every source URL refused on 127.0.0.1, no
/// pre-download directory and an empty download cache: `build` must stop
/// within 30 s, before any stage starts, saying both ways to give it the
/// sources. Returns how long it took.
fn sources_out_of_reach(run: &KrgRun, s: &StageShell) -> Result<f64> {
    let base = run.layout().build.join("e2e/krg-unreachable");
    crate::files::remove_tree(&base)?;
    fs::create_dir_all(&base)?;
    let text = fs::read_to_string(profile::resolve(PROFILE, &run.project)?)?;
    let profile = base.join("unreachable.toml");
    fs::write(
        &profile,
        crate::testsuite::http::with_sources_refused(&text)?,
    )?;
    let build = base.join("build");
    let exe = &run.exe;
    let sh = s.sh();
    let t = Instant::now();
    let (ok, said) = s.try_collect(
        cmd!(sh, "{exe} --profile {profile} --build-dir {build} build").env_remove(SOURCES_DIR_ENV),
    )?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        !ok,
        "a build whose sources cannot be had succeeded:\n{said}"
    );
    ensure!(
        secs < 30.0,
        "a build whose sources cannot be had took {secs:.0} s to fail (30 s at most)"
    );
    let downloads = base.join("downloads").display().to_string();
    for what in [
        "no stage was started",
        "--sources-dir DIR",
        SOURCES_DIR_ENV,
        downloads.as_str(),
        "[[sources]] entry named `linux`",
    ] {
        ensure!(
            said.contains(what),
            "the failure does not say {what:?}:\n{}",
            tail(&said)
        );
    }
    ensure!(
        !build.join("stamps").exists() && !build.join("roots").exists(),
        "a stage ran before the sources were had"
    );
    no_mounts_under(&build)?;
    crate::files::remove_tree(&base)?;
    Ok(secs)
}

/// The last lines of what a command printed.
fn tail(said: &str) -> String {
    let lines: Vec<&str> = said.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn project_file(run: &KrgRun, path: &str) -> PathBuf {
    run.project.join(path)
}

/// The major version in an ELF object's `GCC: (Debian 12.2.0-14) 12.2.0`
/// comment.
fn gcc_major(object: &[u8]) -> Option<u32> {
    let at = object.windows(5).position(|w| w == b"GCC: ")?;
    let comment = &object[at..];
    let end = comment
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(comment.len());
    let text = String::from_utf8_lossy(&comment[..end]);
    // The version follows the vendor in parentheses.
    let (_, after) = text.split_once(") ")?;
    let version = after.split_whitespace().next()?;
    version.split('.').next()?.parse().ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An ELF file for 32-bit x86: class ELFCLASS32, machine EM_386.
fn is_elf_i386(bytes: &[u8]) -> bool {
    bytes.len() > 20
        && bytes.starts_with(b"\x7fELF")
        && bytes[4] == 1
        && bytes[18] == 3
        && bytes[19] == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_i386_program_is_told_from_others() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1; // 32-bit
        elf[18] = 3; // EM_386
        assert!(is_elf_i386(&elf));
        elf[4] = 2;
        elf[18] = 62; // an x86_64 program
        assert!(!is_elf_i386(&elf));
        assert!(!is_elf_i386(b"#!/bin/sh\necho krgadm\n"));
    }

    #[test]
    fn the_gcc_that_built_an_object_is_read_from_its_comment() {
        let object = b"\x7fELF...\0GCC: (Debian 12.2.0-14+deb12u1) 12.2.0\0.symtab";
        assert_eq!(gcc_major(object), Some(12));
        // lenny's gcc-4.1
        assert_eq!(
            gcc_major(b"\0GCC: (GNU) 4.1.3 20080704 (prerelease) (Debian 4.1.2-25)\0"),
            Some(4)
        );
        assert_eq!(gcc_major(b"no comment"), None);
    }
}
