//! `cargo xtask bench`: how long the builds a user repeats take. Runs the
//! real binary on a build dir and reads each stage's time from its stamp:
//! cold `build` (fresh build dir, download cache warm), no-op `build`,
//! `iso` after an overlay file changed, `allbutkernel` after the node1
//! package list changed, and for a kerrighed profile the kernel again after
//! `clean kernel` (compiler cache warm; the cold build starts with it
//! empty). Checks on the way that a no-op runs no stage and that neither
//! `iso` nor `allbutkernel` touches the kernel.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::engine::Stamp;
use crate::files;
use crate::interrupt::Cleanup;
use crate::layout::Layout;
use crate::qemu::gain::ClusterGain;
use crate::qemu::{BenchTarget, BenchUnit, BootTime, Milestone, UnitTime};
use crate::stages;

/// What to measure, where.
pub(crate) struct Bench {
    pub(crate) exe: PathBuf,
    pub(crate) project: PathBuf,
    pub(crate) profile: PathBuf,
    /// The build dir measured.
    pub(crate) build: PathBuf,
    /// Quick: no-op and iso-after-overlay-change on the existing build only.
    pub(crate) quick: bool,
    /// The download cache to use warm (the full bench links its build
    /// dir's cache to it).
    pub(crate) cache: PathBuf,
    /// The kerrighed kind: its source tarballs are fetched too, and its
    /// kernel is rebuilt once more from a warm compiler cache.
    pub(crate) kerrighed: bool,
    /// The boot tests' reports whose times the bench puts beside its own
    /// (`build/qemu/report.json`, the UEFI test's); missing ones are skipped.
    pub(crate) boot_reports: Vec<PathBuf>,
}

/// One measured command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) command: String,
    pub(crate) seconds: f64,
    /// The stages that ran, with their own times (from their stamps).
    pub(crate) stages: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BenchReport {
    pub(crate) profile: String,
    pub(crate) cores: usize,
    pub(crate) memory_mib: u64,
    pub(crate) kernel: String,
    pub(crate) quick: bool,
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) image_bytes: Option<u64>,
    /// Each speed target, with what was measured against it.
    #[serde(default)]
    pub(crate) targets: Vec<TargetRow>,
    /// Where the boot tests' VMs spent their boot (systemd-analyze).
    #[serde(default)]
    pub(crate) boots: Vec<BootSummary>,
}

/// One target of the speed issue and what this machine measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TargetRow {
    pub(crate) what: String,
    pub(crate) target: f64,
    /// What target and measure count in: `s`, or `x bare` (multiples of
    /// the boot test's bare boot).
    #[serde(default = "seconds_unit")]
    pub(crate) unit: String,
    pub(crate) measured: Option<f64>,
    /// Where the measurement comes from.
    pub(crate) source: String,
    /// Met at or above the target (a gain), not at or below (a time).
    #[serde(default)]
    pub(crate) at_least: bool,
}

impl TargetRow {
    pub(crate) fn met(&self) -> Option<bool> {
        self.measured.map(|m| {
            if self.at_least {
                m >= self.target
            } else {
                m <= self.target
            }
        })
    }
}

fn seconds_unit() -> String {
    BenchUnit::Seconds.suffix().to_owned()
}

/// A VM's boot as its init measured it, from a boot test's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BootSummary {
    pub(crate) vm: String,
    pub(crate) firmware: String,
    pub(crate) summary: String,
    pub(crate) slowest: Vec<UnitTime>,
}

/// A boot test's `report.json`, the parts the bench reads.
#[derive(Debug, Deserialize)]
struct BootRun {
    firmware: String,
    reached: Vec<BootReached>,
    /// The cluster start's settle time (Kerrighed), 0 in older reports.
    #[serde(default)]
    settle_s: f64,
    #[serde(default)]
    boot_times: BTreeMap<String, BootTime>,
    /// What a cluster gained on a batch of jobs, when the run measured it.
    #[serde(default)]
    cluster_gain: Option<ClusterGain>,
}

#[derive(Debug, Deserialize)]
struct BootReached {
    vm: String,
    milestone: Milestone,
    since_power_on: f64,
    /// As a multiple of the run's bare boot, when it had one.
    #[serde(default)]
    times_bare: Option<f64>,
}

impl BootRun {
    /// When `vm` reached `milestone`, since its power-on; for `None`, the
    /// last of the nodes (every VM but node1).
    fn reached(&self, vm: Option<&str>, milestone: Milestone, unit: BenchUnit) -> Option<f64> {
        self.reached
            .iter()
            .filter(|r| r.milestone == milestone)
            .filter(|r| vm.map_or(r.vm != "node1", |vm| r.vm == vm))
            .filter_map(|r| match unit {
                BenchUnit::Seconds => Some(r.since_power_on),
                BenchUnit::TimesBare => r.times_bare,
                BenchUnit::SecondsLessSettle => Some(r.since_power_on - self.settle_s),
            })
            .reduce(f64::max)
    }
}

/// How a target row marks its unit: nothing for seconds, `x` for
/// multiples of a bare boot.
fn unit_mark(unit: &str) -> &'static str {
    if unit == BenchUnit::TimesBare.suffix() || unit == TIMES_FASTER {
        "x"
    } else {
        ""
    }
}

/// The unit of a gain: how many times faster.
const TIMES_FASTER: &str = "x faster";

/// The cluster's gain target: a CPU-bound batch spread over 2 nodes, as
/// many times faster as this, than kept on 1 (qemu/gain.rs).
const CLUSTER_GAIN: (&str, f64) = ("a CPU-bound batch, 2 nodes vs 1 (same run)", 1.6);

/// The full bench's last scenario for a Kerrighed profile.
const KERNEL_AGAIN: &str = "kernel after `clean kernel` (kept tree)";

/// A target row's source when only a full bench measures it.
pub(crate) const FULL_BENCH_ONLY: &str = "full bench only";

/// A target row's source when the profile measured is not a Kerrighed one.
pub(crate) const KERRIGHED_ONLY: &str = "Kerrighed profiles only";

/// The targets (2-core machine, TCG) and what the scenarios and the boot
/// tests measured.
fn targets(
    scenarios: &[Scenario],
    boots: &[(PathBuf, BootRun)],
    kerrighed: bool,
) -> Vec<TargetRow> {
    let scenario = |name: &str| scenarios.iter().find(|s| s.name == name).map(|s| s.seconds);
    let boot = |firmware: &str| boots.iter().find(|(_, b)| b.firmware == firmware);
    let from_boot = |b: &BenchTarget, milestone: Milestone| {
        boot(b.firmware).map_or((None, "no boot test report".to_owned()), |(path, run)| {
            (
                run.reached(b.vm, milestone, b.unit),
                path.display().to_string(),
            )
        })
    };
    let stage_of = |name: &str, stage: &str| {
        scenarios
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.stages.get(stage).copied())
    };
    let iso = (
        "iso after an overlay change",
        5.0,
        scenario("iso after an overlay change"),
    );
    // A Kerrighed image's targets are its own (issue 32): its kernel is
    // most of a cold build.
    let builds = if kerrighed {
        vec![
            (
                "cold build (download cache warm)",
                150.0,
                scenario("cold build"),
            ),
            (
                "  its kernel stage, empty compiler cache",
                75.0,
                stage_of("cold build", "kernel"),
            ),
            (
                "  its packages stage",
                60.0,
                stage_of("cold build", "packages"),
            ),
            (
                "kernel stage after clean kernel",
                25.0,
                stage_of(KERNEL_AGAIN, "kernel"),
            ),
            iso,
        ]
    } else {
        vec![
            (
                "cold build (download cache warm)",
                60.0,
                scenario("cold build"),
            ),
            iso,
        ]
    };
    let mut rows = Vec::new();
    for (what, target, measured) in builds {
        let source = if measured.is_some() {
            "this bench"
        } else {
            FULL_BENCH_ONLY
        };
        rows.push(TargetRow {
            what: what.into(),
            target,
            unit: seconds_unit(),
            measured,
            source: source.into(),
            at_least: false,
        });
    }
    let benched = Milestone::ALL
        .iter()
        .flat_map(|&m| m.spec().bench.iter().map(move |b| (m, b)));
    for (milestone, b) in benched {
        let (measured, source) = if b.kerrighed_only && !kerrighed {
            (None, KERRIGHED_ONLY.to_owned())
        } else {
            from_boot(b, milestone)
        };
        rows.push(TargetRow {
            what: b.what.into(),
            target: b.seconds,
            unit: b.unit.suffix().to_owned(),
            measured,
            source,
            at_least: false,
        });
    }
    let (what, target) = CLUSTER_GAIN;
    let gain = boots
        .iter()
        .find_map(|(path, run)| Some((path, run.cluster_gain.as_ref()?)))
        .filter(|(_, gain)| gain.nodes == 2);
    let (measured, source) = match gain {
        _ if !kerrighed => (None, KERRIGHED_ONLY.to_owned()),
        Some((path, gain)) => (Some(gain.ratio()), path.display().to_string()),
        None => (
            None,
            "no boot report with a 2-node cluster's gain (e2e-boot-krg-proxy)".to_owned(),
        ),
    };
    rows.push(TargetRow {
        what: what.into(),
        target,
        unit: TIMES_FASTER.to_owned(),
        measured,
        source,
        at_least: true,
    });
    rows
}

/// Reads the boot reports that exist; one that cannot be read is said,
/// not taken for a missing one.
fn boot_runs(paths: &[PathBuf]) -> Vec<(PathBuf, BootRun)> {
    paths
        .iter()
        .filter_map(|p| {
            let bytes = fs::read(p).ok()?;
            match serde_json::from_slice(&bytes) {
                Ok(run) => Some((p.clone(), run)),
                Err(e) => {
                    eprintln!(
                        "warning: bench: cannot read the boot report {}: {e}",
                        p.display()
                    );
                    None
                }
            }
        })
        .collect()
}

/// A file the overlay change adds to node1's layer (removed at the end).
const TOUCHED: &str = "overlay/node1/etc/krgiso/bench-touched";

impl Bench {
    pub(crate) fn run(&self) -> Result<BenchReport> {
        let mut scenarios = Vec::new();
        if !self.quick {
            self.fresh_build_dir()?;
            scenarios.push(self.measure("cold build", &self.profile, &["build"])?);
        } else if !self.layout().stamp("iso").exists() {
            bail!(
                "the quick bench measures an existing build, and {} has none: run `cargo xtask build` first",
                self.build.display()
            );
        } else {
            // Whatever is stale is brought up to date first, unmeasured.
            self.measure("settle (not measured)", &self.profile, &["build"])?;
        }
        let noop = self.measure("no-op build", &self.profile, &["build"])?;
        ensure!(
            noop.stages.is_empty(),
            "a no-op build ran stages: {:?}",
            noop.stages.keys()
        );
        scenarios.push(noop);

        let kernel = self.kernel_outputs()?;
        let touched = self.project.join(TOUCHED);
        let _untouch = {
            let path = touched.clone();
            Cleanup::register(format!("remove {}", touched.display()), move || {
                let _ = fs::remove_file(&path);
            })
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        fs::write(&touched, format!("krgiso bench {now}\n"))
            .with_context(|| format!("writing {}", touched.display()))?;
        let iso = self.measure("iso after an overlay change", &self.profile, &["iso"])?;
        ensure!(
            iso.stages.contains_key("iso"),
            "`iso` after an overlay change did not rebuild the image: ran {:?}",
            iso.stages.keys()
        );
        for stage in ["packages", "kernel"] {
            ensure!(
                !iso.stages.contains_key(stage),
                "`iso` ran the {stage} stage"
            );
        }
        ensure!(
            self.kernel_outputs()? == kernel,
            "`iso` touched the kernel's outputs"
        );
        scenarios.push(iso);

        if !self.quick {
            let edited = self.profile_with_one_more_node1_package()?;
            let abk = self.measure(
                "allbutkernel after a node1 package change",
                &edited,
                &["allbutkernel"],
            )?;
            ensure!(
                !abk.stages.contains_key("kernel"),
                "`allbutkernel` ran the kernel stage"
            );
            ensure!(
                self.kernel_outputs()? == kernel,
                "`allbutkernel` touched the kernel's outputs"
            );
            scenarios.push(abk);
            if self.kerrighed {
                self.measure(
                    "clean kernel (not measured)",
                    &self.profile,
                    &["clean", "kernel"],
                )?;
                let warm = self.measure(KERNEL_AGAIN, &self.profile, &["kernel"])?;
                ensure!(
                    warm.stages.contains_key("kernel"),
                    "`kernel` after `clean kernel` did not rebuild the kernel"
                );
                scenarios.push(warm);
            }
        }
        let image = self.build.join("out");
        let image_bytes = fs::read_dir(&image)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "iso"))
            .and_then(|e| e.metadata().ok())
            .map(|m| m.len());
        let boots = boot_runs(&self.boot_reports);
        let report = BenchReport {
            targets: targets(&scenarios, &boots, self.kerrighed),
            boots: boots
                .iter()
                .flat_map(|(_, run)| {
                    run.boot_times.iter().map(|(vm, b)| BootSummary {
                        vm: vm.clone(),
                        firmware: run.firmware.clone(),
                        summary: b.summary.clone(),
                        slowest: b.slowest.iter().take(5).cloned().collect(),
                    })
                })
                .collect(),
            profile: self.profile.display().to_string(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: memory_mib(),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            quick: self.quick,
            scenarios,
            image_bytes,
        };
        let dir = self.report_dir();
        fs::create_dir_all(&dir)?;
        let name = if self.quick { "quick" } else { "bench" };
        let json = serde_json::to_string_pretty(&report)?;
        files::write_atomic(&dir.join(format!("{name}.json")), json.as_bytes())?;
        print!("{}", render_table(&report));
        println!("written to {}", dir.join(format!("{name}.json")).display());
        Ok(report)
    }

    /// Where the JSON goes: build/bench/ (the full bench's build dir is
    /// build/bench/build, so its parent).
    fn report_dir(&self) -> PathBuf {
        if self.quick {
            self.build.join("bench")
        } else {
            self.build
                .parent()
                .map_or_else(|| self.build.join("bench"), Path::to_owned)
        }
    }

    /// The layout of the build dir measured.
    fn layout(&self) -> Layout {
        Layout::new(&self.project, Some(&self.build))
    }

    /// An empty build dir whose download cache is the main one, warm:
    /// downloads measure the mirror, not krgiso.
    fn fresh_build_dir(&self) -> Result<()> {
        // The cache the stages look for beside this build dir.
        let linked = self.layout().downloads;
        if fs::symlink_metadata(&linked).is_err() {
            fs::create_dir_all(&self.cache)?;
            fs::create_dir_all(self.build.parent().unwrap_or(Path::new(".")))?;
            std::os::unix::fs::symlink(&self.cache, &linked).with_context(|| {
                format!("linking {} to {}", linked.display(), self.cache.display())
            })?;
        }
        let debs = self.cache.join("debs");
        let warm = fs::read_dir(&debs).is_ok_and(|mut d| d.next().is_some());
        files::remove_tree(&self.build)?;
        if !warm {
            println!(
                "==> bench: the download cache {} is cold: filling it first (not measured)",
                self.cache.display()
            );
            self.measure("warm-up", &self.profile, &["packages"])?;
            if self.kerrighed {
                self.measure("warm-up", &self.profile, &["fetch"])?;
            }
            files::remove_tree(&self.build)?;
        }
        // The cold build compiles the kernel and the static userland from
        // nothing (the build dir, with the kept kernel tree, is new).
        files::remove_tree(&self.layout().compiler_cache)?;
        files::remove_tree(&self.layout().static_builds)?;
        fs::create_dir_all(&self.build)?;
        Ok(())
    }

    /// Runs the binary; the stages that ran are those whose stamp changed.
    fn measure(&self, name: &str, profile: &Path, args: &[&str]) -> Result<Scenario> {
        println!("==> bench: {name}: cargo xtask {}", args.join(" "));
        let before = self.stamps();
        let t = Instant::now();
        let status = Command::new(&self.exe)
            .arg("--profile")
            .arg(profile)
            .arg("--build-dir")
            .arg(&self.build)
            .args(args)
            .status()
            .with_context(|| format!("running {}", self.exe.display()))?;
        let seconds = t.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "`cargo xtask {}` failed during the bench ({status})",
                args.join(" ")
            );
        }
        let stages = self
            .stamps()
            .into_iter()
            .filter(|(stage, stamp)| {
                before.get(stage).is_none_or(|old| {
                    old.finished_unix != stamp.finished_unix || old.digest != stamp.digest
                })
            })
            .map(|(stage, stamp)| (stage, stamp.seconds))
            .collect();
        Ok(Scenario {
            name: name.to_owned(),
            command: format!("cargo xtask {}", args.join(" ")),
            seconds,
            stages,
        })
    }

    fn stamps(&self) -> BTreeMap<String, Stamp> {
        let layout = self.layout();
        stages::BUILD
            .iter()
            .filter_map(|s| Some((s.to_string(), Stamp::load(&layout.stamp(s))?)))
            .collect()
    }

    /// The kernel stage's output files with their modification times.
    fn kernel_outputs(&self) -> Result<BTreeMap<PathBuf, SystemTime>> {
        let dir = self.layout().staged_kernel();
        let mut out = BTreeMap::new();
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            out.insert(e.path(), e.metadata()?.modified()?);
        }
        ensure!(
            !out.is_empty(),
            "{} is empty: no kernel built",
            dir.display()
        );
        Ok(out)
    }

    /// A copy of the profile whose [node1] packages list has one more
    /// (small, in every Debian release) package, beside the build dir.
    fn profile_with_one_more_node1_package(&self) -> Result<PathBuf> {
        let text = fs::read_to_string(&self.profile)?;
        let node1 = crate::profile::Profile::load(&self.profile)
            .with_context(|| format!("loading {}", self.profile.display()))?
            .node1;
        let edited = with_one_more_node1_package(&text, &node1.packages)
            .with_context(|| format!("editing {}", self.profile.display()))?;
        let path = self.report_dir().join("profile-node1-changed.toml");
        fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        fs::write(&path, edited)?;
        // The kernel sources' pins live beside the profile.
        let lock = crate::fetch::SourcesLock::beside(&self.profile);
        if lock.exists() {
            fs::copy(&lock, crate::fetch::SourcesLock::beside(&path))?;
        }
        Ok(path)
    }
}

/// `profile` (its text) with one more package in [node1]: in its own
/// list, or, where [node1] comes from an included file (`node1`, as in
/// every shipped profile), in a [node1] `packages` of the profile's own
/// that sets the included list (`included`) over it, plus the one.
fn with_one_more_node1_package(profile: &str, included: &[String]) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = profile.parse().context("parsing the profile")?;
    let node1 = doc
        .entry("node1")
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .context("[node1] is not a table")?;
    if node1.get("packages").is_none() {
        let list: toml_edit::Array = included.iter().map(String::as_str).collect();
        node1.insert("packages", toml_edit::value(list));
    }
    let packages = node1
        .get_mut("packages")
        .and_then(|p| p.as_array_mut())
        .context("[node1] packages is not a list")?;
    let extra = ["less", "file", "bc"]
        .into_iter()
        .find(|p| !packages.iter().any(|v| v.as_str() == Some(p)))
        .context("the [node1] packages already have every package the bench adds")?;
    packages.push(extra);
    Ok(doc.to_string())
}

fn memory_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// One table: each scenario, then its stages with their share of it.
pub(crate) fn render_table(report: &BenchReport) -> String {
    let mut out = format!(
        "\nbench: {} cores, {} MiB, Linux {}{}\n{:<46} {:>9} {:>7}\n",
        report.cores,
        report.memory_mib,
        report.kernel,
        if report.quick { " (quick)" } else { "" },
        "scenario / stage",
        "seconds",
        "share"
    );
    for s in &report.scenarios {
        out.push_str(&format!("{:<46} {:>9.1} {:>7}\n", s.name, s.seconds, ""));
        for (stage, secs) in &s.stages {
            let share = if s.seconds > 0.0 {
                format!("{:.0}%", 100.0 * secs / s.seconds)
            } else {
                String::new()
            };
            out.push_str(&format!("  {stage:<44} {secs:>9.1} {share:>7}\n"));
        }
    }
    if let Some(bytes) = report.image_bytes {
        out.push_str(&format!(
            "{:<46} {:>9}\n",
            "image size",
            crate::bytes::human_bytes(bytes)
        ));
    }
    if !report.targets.is_empty() {
        out.push_str(&format!(
            "\n{:<46} {:>9} {:>7}  {}\n",
            "target", "measured", "target", "met"
        ));
        for t in &report.targets {
            let (measured, met) = match (t.measured, t.met()) {
                (Some(m), Some(met)) => (
                    format!("{m:.1}{}", unit_mark(&t.unit)),
                    if met { "yes" } else { "NO" },
                ),
                _ => ("-".to_owned(), "-"),
            };
            out.push_str(&format!(
                "{:<46} {measured:>9} {:>7}  {met} ({})\n",
                t.what,
                format!(
                    "{}{}{}",
                    if t.at_least { ">=" } else { "" },
                    t.target,
                    unit_mark(&t.unit)
                ),
                t.source
            ));
        }
    }
    for b in &report.boots {
        out.push_str(&format!(
            "\nboot of {} ({}): {}\n  slowest: {}\n",
            b.vm,
            b.firmware,
            b.summary,
            UnitTime::list(&b.slowest)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped profile takes [node1] from `include = ["node1"]`: the
    /// bench's package change must land in the merged node1 root all the
    /// same, and change nothing else.
    #[test]
    fn one_more_node1_package_lands_where_node1_comes_from() {
        use crate::profile::Profile;
        let t = tempfile::tempdir().unwrap();
        for name in ["kerrighed-2.4.4", "smoke"] {
            let path = crate::project_root().join(format!("profiles/{name}.toml"));
            let before = Profile::load(&path).unwrap();
            let text = fs::read_to_string(&path).unwrap();
            assert!(!text.contains("[node1]"), "{name} sets [node1] itself now");
            let edited = with_one_more_node1_package(&text, &before.node1.packages).unwrap();
            let copy = t.path().join(format!("{name}.toml"));
            fs::write(&copy, &edited).unwrap();
            let after = Profile::load(&copy).unwrap();
            let mut want = before.node1.packages.clone();
            want.push("less".to_owned());
            assert_eq!(after.node1.packages, want, "{name}");
            assert_eq!(after.nodes.packages, before.nodes.packages, "{name}");
            assert_eq!(after.node1.suite, before.node1.suite, "{name}");
        }
        // A profile with its own list: one more in it, the rest kept.
        let own = "[node1]\npackages = [\"dnsmasq\", \"less\"]\n";
        let edited = with_one_more_node1_package(own, &[]).unwrap();
        assert_eq!(
            edited,
            "[node1]\npackages = [\"dnsmasq\", \"less\", \"file\"]\n"
        );
    }

    #[test]
    fn the_table_gives_each_stage_its_share_of_its_scenario() {
        let report = BenchReport {
            profile: "smoke".into(),
            cores: 2,
            memory_mib: 24000,
            kernel: "6.1".into(),
            quick: false,
            scenarios: vec![
                Scenario {
                    name: "cold build".into(),
                    command: "cargo xtask build".into(),
                    seconds: 200.0,
                    stages: [("packages".to_owned(), 150.0), ("iso".to_owned(), 40.0)]
                        .into_iter()
                        .collect(),
                },
                Scenario {
                    name: "no-op build".into(),
                    command: "cargo xtask build".into(),
                    seconds: 0.2,
                    stages: BTreeMap::new(),
                },
            ],
            image_bytes: Some(300 << 20),
            targets: Vec::new(),
            boots: Vec::new(),
        };
        let table = render_table(&report);
        let row = |start: &str| {
            table
                .lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("no {start} row in\n{table}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("packages"), ["packages", "150.0", "75%"]);
        assert_eq!(row("iso"), ["iso", "40.0", "20%"]);
        assert_eq!(row("no-op"), ["no-op", "build", "0.2"]);
        assert!(table.contains("2 cores, 24000 MiB"), "{table}");
        assert!(table.contains("300.0 MiB"), "{table}");
    }

    /// A report as the boot test writes it, read back by the bench: the
    /// targets take node1's status line and the last node's login prompt.
    #[test]
    fn boot_targets_come_from_the_boot_tests_report() {
        use crate::qemu::{Reached, Report};
        // The run's bare boot took 19.25 s.
        let reached = |vm: &str, milestone, since_power_on: f64| Reached {
            vm: vm.into(),
            milestone,
            label: "",
            since_power_on,
            since_start: 0.0,
            detail: String::new(),
            times_bare: Some(since_power_on / 19.25),
        };
        let report = Report {
            firmware: "Bios".into(),
            accel: "tcg".into(),
            nodes: 2,
            reached: vec![
                reached("node1", Milestone::KernelUp, 11.0),
                reached("node1", Milestone::Ready, 38.5),
                reached("node2", Milestone::MultiUser, 58.0),
                reached("node3", Milestone::MultiUser, 61.5),
                reached("node2", Milestone::ClusterUp, 23.0),
                reached("node3", Milestone::ClusterUp, 24.5),
            ],
            node1_status: String::new(),
            leases: BTreeMap::new(),
            seconds: 120.0,
            boot_times: BTreeMap::new(),
            powered_on_again: Vec::new(),
            reference: Some(crate::qemu::ReferenceBoot {
                seconds: 19.25,
                kernel: "Linux version 6.1.0-50-amd64".into(),
            }),
            settle_s: 15.0,
            cluster_gain: Some(ClusterGain {
                nodes: 2,
                jobs: 8,
                work: 300_000,
                one_node_s: 48.0,
                cluster_s: 32.0,
                spread: BTreeMap::from([("node121".into(), 4), ("node122".into(), 4)]),
            }),
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("report.json");
        fs::write(&path, serde_json::to_vec(&report).unwrap()).unwrap();
        let boots = boot_runs(&[path, tmp.path().join("missing.json")]);
        assert_eq!(boots.len(), 1);
        let scenarios = [Scenario {
            name: "iso after an overlay change".into(),
            command: "cargo xtask iso".into(),
            seconds: 4.2,
            stages: BTreeMap::new(),
        }];
        let rows = targets(&scenarios, &boots, true);
        let row = |what: &str| rows.iter().find(|r| r.what.starts_with(what)).unwrap();
        assert_eq!(
            row("node1 power-on to status line, BIOS").measured,
            Some(38.5)
        );
        assert_eq!(row("node1 power-on to status line, UEFI").measured, None);
        // 38.5 s is twice the bare boot: the target (2x) is met.
        let ratio = row("node1 status line as a multiple of a bare boot");
        assert_eq!((ratio.measured, ratio.target), (Some(2.0), 2.0));
        assert_eq!(ratio.unit, "x bare");
        // The last node's cluster up, less the 15 s the start waits.
        let up = row("Kerrighed node power-on to cluster up");
        assert_eq!((up.measured, up.target), (Some(9.5), 10.0));
        // A smoke bench has no Kerrighed cluster to measure: said, not missed.
        let smoke = targets(&scenarios, &boots, false);
        let up = smoke
            .iter()
            .find(|r| r.what.starts_with("Kerrighed node"))
            .unwrap();
        assert_eq!((up.measured, up.source.as_str()), (None, KERRIGHED_ONLY));

        // A Kerrighed bench's build rows: its own targets, its stages' times.
        let scenario = |name: &str, seconds: f64, stages: &[(&str, f64)]| Scenario {
            name: name.into(),
            command: String::new(),
            seconds,
            stages: stages.iter().map(|(s, t)| (s.to_string(), *t)).collect(),
        };
        let full = [
            scenario(
                "cold build",
                290.0,
                &[("packages", 129.0), ("kernel", 151.0), ("iso", 6.0)],
            ),
            scenario(KERNEL_AGAIN, 12.5, &[("kernel", 12.1)]),
        ];
        let krg = targets(&full, &boots, true);
        let krg_row = |what: &str| krg.iter().find(|r| r.what == what).unwrap();
        let cold = krg_row("cold build (download cache warm)");
        assert_eq!((cold.measured, cold.target), (Some(290.0), 150.0));
        let kernel = krg_row("  its kernel stage, empty compiler cache");
        assert_eq!((kernel.measured, kernel.met()), (Some(151.0), Some(false)));
        let again = krg_row("kernel stage after clean kernel");
        assert_eq!((again.measured, again.met()), (Some(12.1), Some(true)));
        assert_eq!(krg_row("  its packages stage").measured, Some(129.0));
        // The smoke image keeps round two's 60 s, and has no kernel rows.
        let smoke_cold = targets(&full, &boots, false);
        assert!(smoke_cold.iter().all(|r| !r.what.contains("kernel stage")));
        assert_eq!(
            smoke_cold
                .iter()
                .find(|r| r.what.starts_with("cold build"))
                .map(|r| r.target),
            Some(60.0)
        );

        // The cluster's gain: 48 s kept on one node, 32 s over two, is
        // 1.5x, short of the 1.6x a gain must reach (at least, not at most).
        let gain = row("a CPU-bound batch, 2 nodes vs 1");
        assert_eq!((gain.measured, gain.target), (Some(1.5), 1.6));
        assert!(gain.at_least);
        assert_eq!(gain.met(), Some(false));
        let table = render_table(&BenchReport {
            profile: "kerrighed-2.4.4".into(),
            cores: 2,
            memory_mib: 24_000,
            kernel: "6.1".into(),
            quick: true,
            scenarios: Vec::new(),
            image_bytes: None,
            targets: vec![gain.clone()],
            boots: Vec::new(),
        });
        assert!(table.contains("1.5x  >=1.6x  NO"), "{table}");
        // A smoke bench has no cluster to measure it on.
        let smoke_gain = smoke
            .iter()
            .find(|r| r.what.starts_with("a CPU-bound batch"))
            .unwrap();
        assert_eq!(smoke_gain.source, KERRIGHED_ONLY);

        // The UEFI target is node1's second boot from its stick.
        let uefi = Report {
            firmware: "Uefi".into(),
            reached: vec![
                reached("node1", Milestone::Ready, 57.0),
                reached("node1-again", Milestone::Ready, 55.1),
                reached("node2-again", Milestone::MultiUser, 39.0),
            ],
            ..report.clone()
        };
        let uefi_path = tmp.path().join("uefi.json");
        fs::write(&uefi_path, serde_json::to_vec(&uefi).unwrap()).unwrap();
        let both = boot_runs(&[tmp.path().join("report.json"), uefi_path]);
        let rows_both = targets(&scenarios, &both, true);
        let uefi_row = rows_both
            .iter()
            .find(|r| r.what.starts_with("node1 power-on to status line, UEFI"))
            .unwrap();
        assert_eq!(uefi_row.measured, Some(55.1));
        assert_eq!(row("PXE node").measured, Some(61.5));
        assert_eq!(row("iso after").measured, Some(4.2));
        assert_eq!(row("cold build").measured, None);
        let table = render_table(&BenchReport {
            profile: "smoke".into(),
            cores: 2,
            memory_mib: 1,
            kernel: String::new(),
            quick: true,
            scenarios: scenarios.to_vec(),
            image_bytes: None,
            targets: rows,
            boots: Vec::new(),
        });
        let line = |start: &str| {
            table
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap()
                .to_owned()
        };
        assert!(
            line("PXE node").contains("61.5") && line("PXE node").contains(" NO "),
            "{table}"
        );
        assert!(
            line("node1 power-on to status line, BIOS").contains(" yes "),
            "{table}"
        );
    }
}
