//! The stage engine. A stage is a function from declared inputs to outputs
//! under the build dir. Its stamp (digest of its inputs + a summary of its
//! outputs) is written only after every output is complete and in place;
//! a stage whose stamp matches is skipped. Outputs are built in hidden
//! sibling paths and renamed into place, so an interrupted stage leaves
//! nothing that looks finished.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chroot;
use crate::files;
use crate::host::{self, HostTool};
use crate::interrupt::{self, Interrupted};
use crate::layout::{Layout, Product};
use crate::shell::{log_tail, StageShell};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Dir,
    File,
}

/// Something a stage produces, by name (`nodes-root`) and place.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: &'static str,
    pub path: PathBuf,
    pub kind: OutputKind,
}

impl Output {
    pub fn dir(name: &'static str, path: PathBuf) -> Output {
        Output {
            name,
            path,
            kind: OutputKind::Dir,
        }
    }
    pub fn file(name: &'static str, path: PathBuf) -> Output {
        Output {
            name,
            path,
            kind: OutputKind::File,
        }
    }
}

/// One step of the pipeline.
pub trait Stage {
    /// The user's word for it: `packages`, `kernel`, `node1`, `iso`.
    fn name(&self) -> &'static str;
    /// One line: what it does.
    fn about(&self) -> &'static str;
    /// Bump when the stage's own code changes what it produces.
    fn recipe(&self) -> u32 {
        1
    }
    fn needs_root(&self) -> bool {
        false
    }
    /// Checks that need no tools and no root (a conflicting option, say),
    /// run before anything else so a run that cannot work stops at once.
    fn preflight(&self) -> Result<()> {
        Ok(())
    }
    /// Host programs the stage runs (checked, and installed on Debian, before it starts).
    fn host_tools(&self) -> Vec<HostTool> {
        Vec::new()
    }
    /// Declares what the stage reads. Called for every status and plan: keep it cheap.
    fn inputs(&self, inputs: &mut Inputs) -> Result<()>;
    fn outputs(&self) -> Vec<Output>;
    /// Produces every output at `run.output(name)` (or keeps the previous one).
    fn run(&self, run: &mut StageRun) -> Result<()>;
}

/// What a stage reads, each with a digest. Keys name the input the way a
/// user would look for it: `profile [nodes]`, `file overlay/node1/etc/motd`.
pub struct Inputs<'a> {
    layout: &'a Layout,
    digests: BTreeMap<String, String>,
    upstream: Vec<(&'static str, &'static str)>,
}

impl<'a> Inputs<'a> {
    fn new(layout: &'a Layout) -> Inputs<'a> {
        Inputs {
            layout,
            digests: BTreeMap::new(),
            upstream: Vec::new(),
        }
    }

    /// A value, typically a profile section: `inputs.value("profile [nodes]", &p.nodes)`.
    pub fn value(&mut self, key: &str, value: &impl Serialize) {
        let bytes = serde_json::to_vec(value).unwrap_or_else(|e| e.to_string().into_bytes());
        self.digests.insert(key.to_owned(), sha256_hex(&bytes));
    }

    /// A file's content and mode. A missing file is an input too ("missing").
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let key = format!("file {}", self.layout.show(path));
        let digest = match fs::symlink_metadata(path) {
            Ok(meta) => entry_digest(path, &meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".to_owned(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        self.digests.insert(key, digest);
        Ok(())
    }

    /// Every file, symlink and directory under `dir`, one input each, so a
    /// change names the file that changed.
    pub fn tree(&mut self, dir: &Path) -> Result<()> {
        let shown = self.layout.show(dir);
        if !dir.exists() {
            self.digests
                .insert(format!("tree {shown}"), "missing".to_owned());
            return Ok(());
        }
        self.digests
            .insert(format!("tree {shown}"), "present".to_owned());
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", d.display()))?;
                let path = entry.path();
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let kind = if meta.is_dir() { "dir" } else { "file" };
                let key = format!("{kind} {}", self.layout.show(&path));
                self.digests.insert(key, entry_digest(&path, &meta)?);
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// An output of an earlier stage. The digest is that output's generation:
    /// it changes each time the earlier stage rebuilds it.
    pub fn output_of(&mut self, product: Product) {
        self.upstream.push((product.stage, product.name));
    }
}

fn entry_digest(path: &Path, meta: &fs::Metadata) -> Result<String> {
    let mode = meta.permissions().mode() & 0o7777;
    let mut h = Sha256::new();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        h.update(b"symlink\0");
        h.update(target.as_os_str().as_encoded_bytes());
    } else if meta.is_dir() {
        h.update(format!("dir {mode:o}").as_bytes());
    } else {
        h.update(format!("file {mode:o}\0").as_bytes());
        hash_reader(&mut h, path)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Feeds a file's bytes into a hasher, a block at a time.
pub fn hash_reader(h: &mut Sha256, path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Written after a stage completed: what it was built from and what it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    pub format: u32,
    pub stage: String,
    pub digest: String,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub finished_unix: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub path: PathBuf,
    /// Changes each time the output is rebuilt; later stages depend on it.
    pub generation: String,
    pub bytes: u64,
    pub files: u64,
}

const STAMP_FORMAT: u32 = 1;

impl Stamp {
    pub fn load(path: &Path) -> Option<Stamp> {
        let text = fs::read(path).ok()?;
        serde_json::from_slice::<Stamp>(&text)
            .ok()
            .filter(|s| s.format == STAMP_FORMAT)
    }
}

/// What an interrupted or failed run may have left beside an output: its
/// partial build and the previous version set aside while swapping.
fn remove_leftovers(output: &Output) -> Result<()> {
    files::remove_tree(&files::sibling(&output.path, "partial"))?;
    files::remove_tree(&files::sibling(&output.path, "old"))
}

/// The input key under which a stage records an earlier stage's output.
fn output_key(stage: &str, output: &str) -> String {
    format!("output {stage}/{output}")
}

fn inputs_digest(inputs: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in inputs {
        h.update(k.as_bytes());
        h.update(b"\0");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// A stage's state as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Done,
    /// Built, but not from what it would be built from now.
    Stale(Vec<String>),
    /// Never built (or its stamp was removed).
    Missing,
}

impl State {
    pub fn label(&self) -> &'static str {
        match self {
            State::Done => "done",
            State::Stale(_) => "stale",
            State::Missing => "missing",
        }
    }
}

/// What a command would do with one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Vec<String>),
    UpToDate,
    /// Cannot run: an input was never built. The text says what to run.
    Blocked(String),
}

#[derive(Debug, Clone)]
pub struct PlanStep {
    pub stage: &'static str,
    pub action: Action,
}

/// What a command would do, stage by stage, and what it would use as-is.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    /// Earlier stages used as they are although they are stale.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The first stage that cannot run, and why, as one sentence.
    pub fn blocked(&self) -> Option<String> {
        self.steps.iter().find_map(|s| match &s.action {
            Action::Blocked(why) => Some(format!("{} {why}", s.stage)),
            _ => None,
        })
    }

    pub fn will_run(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps
            .iter()
            .filter(|s| matches!(s.action, Action::Run(_)))
            .map(|s| s.stage)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for step in &self.steps {
            let (what, why) = match &step.action {
                Action::Run(reasons) => ("run", reasons.join("; ")),
                Action::UpToDate => ("skip", "up to date".to_owned()),
                Action::Blocked(why) => ("blocked", why.clone()),
            };
            let _ = writeln!(s, "  {:<9} {:<8} {}", step.stage, what, why);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        s
    }
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

/// The handle a running stage gets: where to put outputs, how to run commands.
pub struct StageRun<'a> {
    pub shell: &'a StageShell,
    pub layout: &'a Layout,
    outputs: BTreeMap<&'static str, (PathBuf, PathBuf)>,
    kept: BTreeSet<&'static str>,
    inputs: &'a BTreeMap<String, String>,
    previous_inputs: Option<&'a BTreeMap<String, String>>,
}

impl StageRun<'_> {
    /// Where to build output `name`. Renamed into place when the stage succeeds.
    pub fn output(&self, name: &str) -> Result<&Path> {
        self.outputs
            .get(name)
            .map(|(partial, _)| partial.as_path())
            .with_context(|| format!("internal: the stage declares no output `{name}`"))
    }

    /// The output as the previous successful run left it, if any.
    pub fn previous(&self, name: &str) -> Option<&Path> {
        let (_, dest) = self.outputs.get(name)?;
        dest.exists().then_some(dest.as_path())
    }

    /// Leave output `name` as the previous run made it (it did not need rebuilding).
    pub fn keep(&mut self, name: &'static str) -> Result<()> {
        if self.previous(name).is_none() {
            bail!("internal: cannot keep `{name}`: there is no previous one");
        }
        self.kept.insert(name);
        Ok(())
    }

    pub fn step(&self, what: &str) {
        self.shell.step(what);
    }

    /// Whether these inputs (keys as declared, e.g. `profile [nodes]`) and
    /// the stage's recipe are what they were when the previous run
    /// succeeded: an output made only from them can be kept.
    pub fn unchanged(&self, keys: &[&str]) -> bool {
        let Some(prev) = self.previous_inputs else {
            return false;
        };
        let recipe = self.inputs.keys().find(|k| k.starts_with("recipe "));
        keys.iter()
            .copied()
            .chain(recipe.map(String::as_str))
            .all(|k| self.inputs.get(k).is_some_and(|v| prev.get(k) == Some(v)))
    }
}

/// The stages of a pipeline, in order, over one layout.
pub struct Engine {
    pub layout: Layout,
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

    pub fn stage_names(&self) -> Vec<&'static str> {
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

        let _lock = BuildLock::acquire(&self.layout.build)?;
        self.release_stale()?;
        // The stamps as they are now; each stage that runs replaces its own.
        let mut stamps = self.load_stamps();
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
            layout: &self.layout,
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
            eprintln!("--- last lines of {shown} ---");
            for line in log_tail(&log, 30) {
                eprintln!("{line}");
            }
            eprintln!("--- end of {shown} ---");
            shell.note(&format!("error: {err:#}"));
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
        let _lock = BuildLock::acquire(&self.layout.build)?;
        self.release_stale()?;
        self.remove_stage(stage)
    }

    /// Removes every stage's outputs and the build dir. The download cache stays.
    pub fn clean_all(&self) -> Result<()> {
        let _lock = BuildLock::acquire(&self.layout.build)?;
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

/// One krgiso at a time per build dir: `build/.lock`, held with flock(2).
struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    fn acquire(build: &Path) -> Result<BuildLock> {
        use std::os::fd::AsRawFd;
        fs::create_dir_all(build)
            .with_context(|| format!("creating the build dir {}", build.display()))?;
        let path = build.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A lock let go a moment ago can still be held for a few
        // milliseconds by a child forked meanwhile (it holds a copy of the
        // descriptor until it execs): give that time to pass. A run that
        // really holds the lock holds it far longer.
        let deadline = Instant::now() + Duration::from_secs(2);
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if Instant::now() > deadline {
                bail!(
                    "another krgiso run is using the build dir {}: wait for it to finish (or stop it)",
                    build.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(BuildLock { _file: file })
    }
}
