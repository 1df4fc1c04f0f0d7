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
use crate::stages;

/// What to measure, where.
pub struct Bench {
    pub exe: PathBuf,
    pub project: PathBuf,
    pub profile: PathBuf,
    /// The build dir measured.
    pub build: PathBuf,
    /// Quick: no-op and iso-after-overlay-change on the existing build only.
    pub quick: bool,
    /// The download cache to use warm (the full bench links its build
    /// dir's cache to it).
    pub cache: PathBuf,
    /// The kerrighed kind: its source tarballs are fetched too, and its
    /// kernel is rebuilt once more from a warm compiler cache.
    pub kerrighed: bool,
}

/// One measured command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub command: String,
    pub seconds: f64,
    /// The stages that ran, with their own times (from their stamps).
    pub stages: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub profile: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
    pub quick: bool,
    pub scenarios: Vec<Scenario>,
    pub image_bytes: Option<u64>,
}

/// A file the overlay change adds to node1's layer (removed at the end).
const TOUCHED: &str = "overlay/node1/etc/krgiso/bench-touched";

impl Bench {
    pub fn run(&self) -> Result<BenchReport> {
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
                let warm = self.measure(
                    "kernel after `clean kernel` (compiler cache warm)",
                    &self.profile,
                    &["kernel"],
                )?;
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
        let report = BenchReport {
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
        // The cold build compiles the kernel from nothing.
        files::remove_tree(&self.layout().compiler_cache)?;
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
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .with_context(|| format!("parsing {}", self.profile.display()))?;
        let packages = doc["node1"]["packages"]
            .as_array_mut()
            .context("the profile has no [node1] packages list")?;
        let extra = ["less", "file", "bc"]
            .into_iter()
            .find(|p| !packages.iter().any(|v| v.as_str() == Some(p)))
            .context("the [node1] packages already have every package the bench adds")?;
        packages.push(extra);
        let path = self.report_dir().join("profile-node1-changed.toml");
        fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        fs::write(&path, doc.to_string())?;
        // The kernel sources' pins live beside the profile.
        let lock = crate::fetch::SourcesLock::beside(&self.profile);
        if lock.exists() {
            fs::copy(&lock, crate::fetch::SourcesLock::beside(&path))?;
        }
        Ok(path)
    }
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
pub fn render_table(report: &BenchReport) -> String {
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
            crate::fetch::human_bytes(bytes)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
