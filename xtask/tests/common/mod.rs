//! Shared by the integration tests: a throw-away copy of the project, and
//! stand-in stages that keep the real stages' inputs and outputs but fake
//! their work.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use xtask::testsuite::http;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use xshell::cmd;
use xtask::engine::{Engine, Inputs, Output, OutputKind, Stage, StageRun};
use xtask::layout::Layout;
use xtask::profile::Profile;
use xtask::stages;

/// A temporary krgiso project: profiles/, overlay/, kernel-configs/ copied
/// from the real one, and a build dir beside them.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let real = xtask::project_root();
        for sub in ["profiles", "overlay", "kernel-configs"] {
            copy_tree(&real.join(sub), &dir.path().join("project").join(sub));
        }
        // The 2.4.1 profile's kerrighed tarball is pinned in sources.lock,
        // as `fetch --lock-new` leaves it; without a pin the kernel stage's
        // preflight stops every build.
        fs::write(
            dir.path().join("project/profiles/sources.lock"),
            format!(
                "[sha256]\n\"kerrighed-2.4.1.tar.gz\" = \"{}\"\n",
                "cd".repeat(32)
            ),
        )
        .unwrap();
        let motd = dir.path().join("project/overlay/node1/etc/motd");
        fs::create_dir_all(motd.parent().unwrap()).unwrap();
        fs::write(&motd, "welcome to node1\n").unwrap();
        Sandbox { dir }
    }

    pub fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.project(), Some(&self.dir.path().join("build")))
    }

    pub fn profile_path(&self, name: &str) -> PathBuf {
        self.project().join("profiles").join(format!("{name}.toml"))
    }

    pub fn profile(&self, name: &str) -> Profile {
        Profile::load(&self.profile_path(name)).unwrap()
    }

    /// Edits a profile file in place: replace `from` by `to` (which must occur).
    pub fn edit_profile(&self, name: &str, from: &str, to: &str) {
        let path = self.profile_path(name);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from} not in {}", path.display());
        fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// The real pipeline's stages over this sandbox, with stand-in work.
    pub fn engine(&self, profile: &str, record: &Record) -> Engine {
        self.engine_with(profile, record, false)
    }

    pub fn engine_with(&self, profile: &str, record: &Record, offline: bool) -> Engine {
        let layout = self.layout();
        let cx = Arc::new(stages::BuildContext {
            profile: self.profile(profile),
            profile_path: self.profile_path(profile),
            layout: layout.clone(),
            offline,
            sources_dir: None,
        });
        let stages = stages::stages(&cx)
            .into_iter()
            .map(|real| {
                Box::new(StandIn {
                    real,
                    record: record.clone(),
                }) as Box<dyn Stage>
            })
            .collect();
        Engine::new(layout, stages)
    }
}

pub fn copy_tree(from: &Path, to: &Path) {
    xtask::files::copy_tree(from, to).unwrap();
}

/// What the stand-ins did, and what they should do next.
#[derive(Clone, Default)]
pub struct Record {
    inner: Arc<Mutex<RecordInner>>,
}

#[derive(Default)]
struct RecordInner {
    runs: Vec<String>,
    fail: Option<String>,
    /// What the failing command prints (else "half of STAGE done").
    fail_saying: Option<String>,
    /// How many times each stage's inputs were read (hashed).
    inputs_read: std::collections::BTreeMap<String, usize>,
}

impl Record {
    /// Stages run so far, in order.
    pub fn runs(&self) -> Vec<String> {
        self.inner.lock().unwrap().runs.clone()
    }
    pub fn clear(&self) {
        let mut r = self.inner.lock().unwrap();
        r.runs.clear();
        r.inputs_read.clear();
    }
    /// How many times each stage's inputs were read since the last clear.
    pub fn inputs_read(&self) -> Vec<(String, usize)> {
        let r = self.inner.lock().unwrap();
        r.inputs_read.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
    /// Make `stage` fail halfway through its next runs (None: stop failing).
    pub fn fail(&self, stage: Option<&str>) {
        let mut r = self.inner.lock().unwrap();
        r.fail = stage.map(str::to_owned);
        r.fail_saying = None;
    }
    /// Make `stage` fail halfway, its failing command printing `line`.
    pub fn fail_saying(&self, stage: &str, line: &str) {
        let mut r = self.inner.lock().unwrap();
        r.fail = Some(stage.to_owned());
        r.fail_saying = Some(line.to_owned());
    }
}

/// A real stage's declarations with fake work: each output gets a file
/// saying which run made it. A failing run writes half its output, then
/// runs a command that fails, the way a real stage would.
pub struct StandIn {
    real: Box<dyn Stage>,
    record: Record,
}

impl Stage for StandIn {
    fn name(&self) -> &'static str {
        self.real.name()
    }
    fn about(&self) -> &'static str {
        self.real.about()
    }
    fn preflight(&self) -> Result<()> {
        self.real.preflight()
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        *self
            .record
            .inner
            .lock()
            .unwrap()
            .inputs_read
            .entry(self.name().to_owned())
            .or_default() += 1;
        self.real.inputs(inputs)
    }
    fn outputs(&self) -> Vec<Output> {
        self.real.outputs()
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        let name = self.name();
        let (nth, fail, saying) = {
            let mut r = self.record.inner.lock().unwrap();
            r.runs.push(name.to_owned());
            let saying = r
                .fail_saying
                .clone()
                .unwrap_or_else(|| format!("half of {name} done"));
            (r.runs.len(), r.fail.as_deref() == Some(name), saying)
        };
        run.step("stand-in work");
        for output in self.outputs() {
            let path = run.output(output.name)?;
            let made_by = format!("{name} run #{nth}\n");
            match output.kind {
                OutputKind::Dir => fs::write(path.join("made-by"), &made_by)?,
                OutputKind::File => fs::write(path, &made_by)?,
            }
            if fail {
                let sh = run.shell.sh();
                let script = format!("echo \"{saying}\"; exit 7");
                run.shell.run(cmd!(sh, "sh -c {script}"))?;
                bail!("unreachable: the command above fails");
            }
        }
        Ok(())
    }
}

/// Every path under `dir` with its size and modification time.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            out.push((e.path(), m.len(), m.modified().unwrap()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}
