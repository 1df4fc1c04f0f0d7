//! The stage engine. A stage is a function from declared inputs to outputs
//! under the build dir. Its stamp (digest of its inputs + a summary of its
//! outputs) is written only after every output is complete and in place;
//! a stage whose stamp matches is skipped. Outputs are built in hidden
//! sibling paths and renamed into place, so an interrupted stage leaves
//! nothing that looks finished.

mod inputs;
mod lock;
mod plan;
mod space;
mod stage;
mod stamp;

use crate::bytes::sha256_hex;
pub use inputs::Inputs;
pub use plan::{Action, Plan, PlanStep, State};
pub(crate) use space::SpaceNeed;
pub use stage::{Output, OutputKind, Stage, StageRun, MIB};
pub(crate) use stamp::{OutputRecord, Stamp};

use inputs::{inputs_digest, output_key};
use lock::BuildLock;
use stamp::STAMP_FORMAT;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::chroot;
use crate::files;
use crate::host::{self, HostTool};
use crate::interrupt::{self, Interrupted};
use crate::layout::Layout;
use crate::shell::{log_tail, StageShell};

/// What an interrupted or failed run may have left beside an output: its
/// partial build and the previous version set aside while swapping.
fn remove_leftovers(output: &Output) -> Result<()> {
    files::remove_tree(&files::sibling(&output.path, "partial"))?;
    files::remove_tree(&files::sibling(&output.path, "old"))
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Rerun the selected stages even when up to date.
    pub force: bool,
    /// Command output on the terminal too.
    pub verbose: bool,
    /// Install missing host tools with apt-get (root on Debian).
    pub install_host_tools: bool,
}

/// A stage that failed. The log's last lines were printed already.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage} failed: {cause}{}\n  full log: {}", because(.causes), log.display())]
pub struct StageFailed {
    pub stage: &'static str,
    /// What went wrong, in the user's terms.
    pub cause: String,
    /// What led to it (the command that failed, …), one line each.
    pub causes: Vec<String>,
    pub log: PathBuf,
}

fn because(causes: &[String]) -> String {
    causes
        .iter()
        .map(|c| format!("\n  caused by: {c}"))
        .collect()
}

/// The stages of a pipeline, in order, over one layout.
pub struct Engine {
    pub(crate) layout: Layout,
    stages: Vec<Box<dyn Stage>>,
}

/// Inputs of a stage as they are now, with what could not be resolved.
struct Current {
    digests: BTreeMap<String, String>,
    upstream: Vec<(&'static str, &'static str)>,
    unresolved: Vec<(&'static str, &'static str)>,
}

impl Engine {
    pub fn new(layout: Layout, stages: Vec<Box<dyn Stage>>) -> Engine {
        Engine { layout, stages }
    }

    pub(crate) fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    fn stage(&self, name: &str) -> Result<&dyn Stage> {
        self.stages
            .iter()
            .find(|s| s.name() == name)
            .map(|s| s.as_ref())
            .with_context(|| {
                format!(
                    "no stage named `{name}` (stages: {})",
                    self.stage_names().join(", ")
                )
            })
    }

    fn current(&self, stage: &dyn Stage, stamps: &BTreeMap<&str, Stamp>) -> Result<Current> {
        let mut inputs = Inputs::new(&self.layout);
        inputs.value(&format!("recipe {}", stage.name()), &stage.recipe());
        stage
            .inputs(&mut inputs)
            .with_context(|| format!("reading the inputs of stage {}", stage.name()))?;
        let mut unresolved = Vec::new();
        for &(up, out) in &inputs.upstream {
            // Where the output is now (a build dir may have been moved).
            let present = self
                .stage(up)
                .ok()
                .and_then(|s| s.outputs().into_iter().find(|o| o.name == out))
                .is_some_and(|o| o.path.exists());
            let generation = stamps
                .get(up)
                .and_then(|s| s.outputs.get(out))
                .filter(|_| present)
                .map(|o| o.generation.clone());
            match generation {
                Some(g) => {
                    inputs.digests.insert(output_key(up, out), g);
                }
                None => unresolved.push((up, out)),
            }
        }
        Ok(Current {
            digests: inputs.digests,
            upstream: inputs.upstream,
            unresolved,
        })
    }

    /// Room `stage` needs to run: each output at the size its last stamp
    /// recorded (else its estimate), and its working space.
    fn space_needs(&self, stage: &dyn Stage, stamp: Option<&Stamp>) -> Vec<SpaceNeed> {
        let outputs = stage.outputs().into_iter().map(|output| SpaceNeed {
            stage: stage.name(),
            bytes: stamp
                .and_then(|s| s.outputs.get(output.name))
                .map_or(output.estimate, |record| record.bytes),
            path: output.path,
        });
        let working = stage
            .working_space()
            .into_iter()
            .map(|(path, bytes)| SpaceNeed {
                stage: stage.name(),
                path,
                bytes,
            });
        outputs.chain(working).collect()
    }

    fn load_stamps(&self) -> BTreeMap<&'static str, Stamp> {
        self.stages
            .iter()
            .filter_map(|s| Some((s.name(), Stamp::load(&self.layout.stamp(s.name()))?)))
            .collect()
    }

    fn state_of(&self, stage: &dyn Stage, current: &Current, stamp: Option<&Stamp>) -> State {
        let Some(stamp) = stamp else {
            return State::Missing;
        };
        let mut reasons = Vec::new();
        for (up, out) in &current.unresolved {
            reasons.push(format!("{up}/{out} is missing"));
        }
        for (key, digest) in &current.digests {
            match stamp.inputs.get(key) {
                None => reasons.push(format!("{key} added")),
                Some(old) if old != digest => reasons.push(format!("{key} changed")),
                Some(_) => {}
            }
        }
        let unresolved: Vec<String> = current
            .unresolved
            .iter()
            .map(|&(up, out)| output_key(up, out))
            .collect();
        for key in stamp.inputs.keys() {
            if !current.digests.contains_key(key) && !unresolved.contains(key) {
                reasons.push(format!("{key} removed"));
            }
        }
        for output in stage.outputs() {
            if !output.path.exists() {
                reasons.push(format!(
                    "output {} is missing",
                    self.layout.show(&output.path)
                ));
            }
        }
        if reasons.is_empty() {
            State::Done
        } else {
            State::Stale(reasons)
        }
    }

    /// Each stage's state, in pipeline order. A stage built from an earlier
    /// stage that is now stale is reported stale too: a build would redo it.
    /// Each stage's state, with the stamp of its last successful run.
    pub fn status(&self) -> Result<Vec<(&'static str, State, Option<Stamp>)>> {
        let stamps = self.load_stamps();
        let mut out: Vec<(&'static str, State, Option<Stamp>)> = Vec::new();
        for stage in &self.stages {
            let current = self.current(stage.as_ref(), &stamps)?;
            let mut state = self.state_of(stage.as_ref(), &current, stamps.get(stage.name()));
            if state == State::Done {
                let stale_upstream: Vec<String> = out
                    .iter()
                    .filter(|(up, s, _)| {
                        *s != State::Done && current.upstream.iter().any(|(u, _)| u == up)
                    })
                    .map(|(up, s, _)| format!("{up} is {}", s.label()))
                    .collect();
                if !stale_upstream.is_empty() {
                    state = State::Stale(stale_upstream);
                }
            }
            out.push((stage.name(), state, stamps.get(stage.name()).cloned()));
        }
        Ok(out)
    }

    /// What running `selected` would do. Stages not selected are never run:
    /// their outputs are used as they are.
    pub fn plan(&self, selected: &[&str], force: bool) -> Result<Plan> {
        for name in selected {
            self.stage(name)?;
        }
        let stamps = self.load_stamps();
        let mut plan = Plan::default();
        let mut will_rebuild: BTreeSet<&str> = BTreeSet::new();
        let mut blocked: BTreeSet<&str> = BTreeSet::new();
        let mut states: BTreeMap<&str, State> = BTreeMap::new();
        for stage in &self.stages {
            let name = stage.name();
            let current = self.current(stage.as_ref(), &stamps)?;
            let state = self.state_of(stage.as_ref(), &current, stamps.get(name));
            states.insert(name, state.clone());
            if !selected.contains(&name) {
                continue;
            }
            let mut first: Vec<&str> = Vec::new();
            let mut missing: Vec<&str> = Vec::new();
            let mut waits: Vec<&str> = Vec::new();
            for &(up, out) in &current.upstream {
                let list = if will_rebuild.contains(up) {
                    &mut first
                } else if blocked.contains(up) {
                    &mut waits
                } else if current.unresolved.contains(&(up, out)) {
                    &mut missing
                } else {
                    if let Some(State::Stale(why)) = states.get(up) {
                        let warning = format!(
                            "{name} uses {up} as it was built, although {up} is stale ({}); `cargo xtask {up}` rebuilds it",
                            why.join("; ")
                        );
                        if !plan.warnings.contains(&warning) {
                            plan.warnings.push(warning);
                        }
                    }
                    continue;
                };
                if !list.contains(&up) {
                    list.push(up);
                }
            }
            let action = if !missing.is_empty() {
                let were = if missing.len() == 1 { "was" } else { "were" };
                Action::Blocked(format!(
                    "needs what {} made, which {were} never built: run `cargo xtask build` first",
                    missing.join(" and ")
                ))
            } else if !waits.is_empty() {
                Action::Blocked(format!(
                    "waits for {}, which cannot run",
                    waits.join(" and ")
                ))
            } else {
                let mut reasons = match state {
                    State::Missing => vec!["never built".to_owned()],
                    State::Stale(why) => why,
                    State::Done => Vec::new(),
                };
                if !first.is_empty() && reasons.is_empty() {
                    let verb = if first.len() == 1 { "runs" } else { "run" };
                    reasons.push(format!("{} {verb} first", first.join(" and ")));
                }
                if force && reasons.is_empty() {
                    reasons.push("--force".to_owned());
                }
                if reasons.is_empty() {
                    Action::UpToDate
                } else {
                    will_rebuild.insert(name);
                    Action::Run(reasons)
                }
            };
            if matches!(action, Action::Blocked(_)) {
                blocked.insert(name);
            }
            plan.steps.push(PlanStep {
                stage: name,
                action,
            });
        }
        Ok(plan)
    }

    /// Runs the selected stages in pipeline order, skipping those up to date.
    /// Returns the seconds each stage that ran took.
    pub fn run(&self, selected: &[&str], options: RunOptions) -> Result<Vec<(&'static str, f64)>> {
        let plan = self.plan(selected, options.force)?;
        if let Some(why) = plan.blocked() {
            bail!("{why}");
        }
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        let to_run: Vec<&dyn Stage> = plan
            .will_run()
            .map(|n| self.stage(n))
            .collect::<Result<_>>()?;
        if to_run.is_empty() {
            eprintln!("everything is up to date: {}", selected.join(", "));
            return Ok(Vec::new());
        }
        // Preflight, root and host tools first, for every stage: fail before any work.
        for stage in &to_run {
            stage.preflight()?;
        }
        for stage in &to_run {
            if stage.needs_root() {
                host::ensure_root(stage.name())?;
            }
        }
        let tools: Vec<HostTool> = to_run.iter().flat_map(|s| s.host_tools()).collect();
        host::ensure_tools(&tools, options.install_host_tools, &self.layout.log("host"))?;
        for stage in &to_run {
            stage.network_checks()?;
        }
        for stage in &to_run {
            stage.fetch()?;
        }

        let _lock = BuildLock::acquire(&self.layout)?;
        self.release_stale()?;
        // The stamps as they are now; each stage that runs replaces its own.
        let mut stamps = self.load_stamps();
        // Room for every stage that will run, before the first one starts.
        let needs: Vec<SpaceNeed> = to_run
            .iter()
            .flat_map(|stage| self.space_needs(*stage, stamps.get(stage.name())))
            .collect();
        space::check(&needs)?;
        let mut timings = Vec::new();
        for step in &plan.steps {
            if !matches!(step.action, Action::Run(_)) {
                // Up to date when planned, and nothing it uses runs before it.
                continue;
            }
            let stage = self.stage(step.stage)?;
            // Decide again now: an earlier stage may have kept its outputs.
            let current = self.current(stage, &stamps)?;
            let state = self.state_of(stage, &current, stamps.get(stage.name()));
            if state == State::Done && !options.force {
                eprintln!("==> {}: up to date after all", stage.name());
                continue;
            }
            if !current.unresolved.is_empty() {
                let (up, out) = current.unresolved[0];
                bail!("{} needs {up}/{out}, which is missing", stage.name());
            }
            let stamp = self.run_stage(stage, current, stamps.get(stage.name()), options)?;
            timings.push((stage.name(), stamp.seconds));
            stamps.insert(stage.name(), stamp);
        }
        Ok(timings)
    }

    fn run_stage(
        &self,
        stage: &dyn Stage,
        current: Current,
        old: Option<&Stamp>,
        options: RunOptions,
    ) -> Result<Stamp> {
        interrupt::check()?;
        let name = stage.name();
        let started = Instant::now();
        let outputs = stage.outputs();
        let mut slots = BTreeMap::new();
        for output in &outputs {
            remove_leftovers(output)?;
            let partial = files::sibling(&output.path, "partial");
            let parent = output.path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            if output.kind == OutputKind::Dir {
                fs::create_dir(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
            }
            slots.insert(output.name, (partial, output.path.clone()));
        }
        let shell = StageShell::new(name, &self.layout.log(name), options.verbose)?;
        shell.note(&format!("stage {name}: {}", stage.about()));
        let mut run = StageRun {
            shell: &shell,
            outputs: slots,
            kept: BTreeSet::new(),
            inputs: &current.digests,
            previous_inputs: old.map(|s| &s.inputs),
        };
        let result = stage.run(&mut run).and_then(|()| Ok(interrupt::check()?));
        let StageRun {
            outputs: slots,
            kept,
            ..
        } = run;
        shell.finish();
        if let Err(err) = result {
            for (partial, _) in slots.values() {
                if let Err(e) = files::remove_tree(partial) {
                    eprintln!("warning: could not remove the partial output: {e:#}");
                }
            }
            if err.is::<Interrupted>() {
                return Err(err);
            }
            let log = shell.log_path().to_owned();
            let shown = self.layout.show(&log);
            let tail = log_tail(&log, 200);
            eprintln!("--- last lines of {shown} ---");
            for line in &tail[tail.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
            eprintln!("--- end of {shown} ---");
            shell.note(&format!("error: {err:#}"));
            if space::ran_out(&err, &tail) {
                // The partial outputs are gone: what is free now is what
                // the stage had, and the message says what it needs.
                let needs = self.space_needs(stage, old);
                return Err(StageFailed {
                    stage: name,
                    cause: space::ran_out_message(name, &needs),
                    causes: Vec::new(),
                    log,
                }
                .into());
            }
            return Err(StageFailed {
                stage: name,
                cause: err.to_string(),
                causes: err.chain().skip(1).map(|c| c.to_string()).collect(),
                log,
            }
            .into());
        }

        // Complete: move outputs into place, then write the stamp.
        let stamp_path = self.layout.stamp(name);
        files::remove_tree(&stamp_path)?;
        let digest = inputs_digest(&current.digests);
        let mut records = BTreeMap::new();
        for output in &outputs {
            let (partial, dest) = &slots[output.name];
            let generation = if kept.contains(output.name) {
                files::remove_tree(partial)?;
                match old.and_then(|s| s.outputs.get(output.name)) {
                    Some(record) => record.generation.clone(),
                    None => new_generation(&digest, output.name),
                }
            } else {
                if fs::symlink_metadata(partial).is_err() {
                    bail!(
                        "stage {name} finished without producing its output `{}`",
                        output.name
                    );
                }
                files::replace_with(partial, dest)?;
                new_generation(&digest, output.name)
            };
            let (bytes, count) = files::tree_size(dest);
            records.insert(
                output.name.to_owned(),
                OutputRecord {
                    path: dest.clone(),
                    generation,
                    bytes,
                    files: count,
                },
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        let stamp = Stamp {
            format: STAMP_FORMAT,
            stage: name.to_owned(),
            digest,
            inputs: current.digests,
            outputs: records,
            finished_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            seconds,
        };
        let json = serde_json::to_vec_pretty(&stamp).context("encoding the stamp")?;
        files::write_atomic(&stamp_path, &json)?;
        eprintln!("==> {name}: done in {seconds:.1}s");
        Ok(stamp)
    }

    /// A run killed with SIGKILL leaves processes in its chroots and mounts
    /// under the build dir: release them before anything else happens there.
    fn release_stale(&self) -> Result<()> {
        if !self.layout.build.exists() {
            return Ok(());
        }
        for line in chroot::release_stale(&self.layout.build, &chroot::SystemMounts)? {
            eprintln!("==> left by an earlier run: {line}");
        }
        Ok(())
    }

    /// Removes a stage's outputs and stamp. Stages that use its outputs become stale.
    pub fn clean(&self, name: &str) -> Result<()> {
        let stage = self.stage(name)?;
        let _lock = BuildLock::acquire(&self.layout)?;
        self.release_stale()?;
        self.remove_stage(stage)
    }

    /// Removes every stage's outputs and the build dir. The download cache stays.
    pub fn clean_all(&self) -> Result<()> {
        let _lock = BuildLock::acquire(&self.layout)?;
        self.release_stale()?;
        for stage in &self.stages {
            self.remove_stage(stage.as_ref())?;
        }
        files::remove_tree(&self.layout.build)
    }

    /// A stage's stamp, outputs (with their leftovers) and log. The caller
    /// holds the build lock.
    fn remove_stage(&self, stage: &dyn Stage) -> Result<()> {
        files::remove_tree(&self.layout.stamp(stage.name()))?;
        for output in stage.outputs() {
            remove_leftovers(&output)?;
            files::remove_tree(&output.path)?;
        }
        files::remove_tree(&self.layout.log(stage.name()))
    }
}

fn new_generation(digest: &str, output: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    sha256_hex(format!("{digest} {output} {nanos} {}", std::process::id()).as_bytes())[..16]
        .to_owned()
}
