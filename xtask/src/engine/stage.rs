//! What a stage is to the engine: its declarations (name, inputs,
//! outputs, host tools) and the run it is handed (its shell, where to put
//! each output, what changed since its last run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::HostTool;
use crate::shell::StageShell;

use super::Inputs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Dir,
    File,
}

/// Something a stage produces, by name (`nodes-root`) and place.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: &'static str,
    pub(crate) path: PathBuf,
    pub kind: OutputKind,
    /// Its size on a first build, for the disk-space check (later builds
    /// use the size the last stamp recorded).
    pub(crate) estimate: u64,
}

impl Output {
    pub fn dir(name: &'static str, path: PathBuf) -> Output {
        Output {
            name,
            path,
            kind: OutputKind::Dir,
            estimate: 0,
        }
    }
    pub(crate) fn file(name: &'static str, path: PathBuf) -> Output {
        Output {
            name,
            path,
            kind: OutputKind::File,
            estimate: 0,
        }
    }
    /// About `bytes` on a first build.
    pub(crate) fn estimate(mut self, bytes: u64) -> Output {
        self.estimate = bytes;
        self
    }
}

/// Mebibytes, for estimates.
pub const MIB: u64 = 1 << 20;

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
    /// Checks that ask the network (a mirror answers), run after every
    /// stage's preflight, root and host tools, before any stage starts.
    fn network_checks(&self) -> Result<()> {
        Ok(())
    }
    /// Gets what the stage downloads (source tarballs) into the download
    /// cache, verified, after every stage's network checks and before any
    /// stage starts: a source that cannot be had stops the build in
    /// seconds, not after the stages before this one have run.
    fn fetch(&self) -> Result<()> {
        Ok(())
    }
    /// Host programs the stage runs (checked, and installed on Debian, before it starts).
    fn host_tools(&self) -> Vec<HostTool> {
        Vec::new()
    }
    /// Declares what the stage reads. Called for every status and plan: keep it cheap.
    fn inputs(&self, inputs: &mut Inputs) -> Result<()>;
    fn outputs(&self) -> Vec<Output>;
    /// Room it needs while it runs besides its outputs (downloads, sources,
    /// staging): where, and about how many bytes. Checked with the outputs
    /// before any stage starts.
    fn working_space(&self) -> Vec<(PathBuf, u64)> {
        Vec::new()
    }
    /// Produces every output at `run.output(name)` (or keeps the previous one).
    fn run(&self, run: &mut StageRun) -> Result<()>;
}

/// The handle a running stage gets: where to put outputs, how to run commands.
pub struct StageRun<'a> {
    pub shell: &'a StageShell,
    pub(super) outputs: BTreeMap<&'static str, (PathBuf, PathBuf)>,
    pub(super) kept: BTreeSet<&'static str>,
    pub(super) inputs: &'a BTreeMap<String, String>,
    pub(super) previous_inputs: Option<&'a BTreeMap<String, String>>,
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
    pub(crate) fn previous(&self, name: &str) -> Option<&Path> {
        let (_, dest) = self.outputs.get(name)?;
        dest.exists().then_some(dest.as_path())
    }

    /// Leave output `name` as the previous run made it (it did not need rebuilding).
    pub(crate) fn keep(&mut self, name: &'static str) -> Result<()> {
        if self.previous(name).is_none() {
            bail!("internal: cannot keep `{name}`: there is no previous one");
        }
        self.kept.insert(name);
        Ok(())
    }

    pub fn step(&self, what: &str) {
        self.shell.step(what);
    }

    /// One digest of some of this run's inputs and the recipe: what a
    /// cache the stage keeps between runs was made from.
    pub(crate) fn digest_of(&self, keys: &[&str]) -> String {
        let chosen = self
            .with_recipe(keys)
            .map(|k| {
                let v = self.inputs.get(k).cloned().unwrap_or_default();
                (k.to_owned(), v)
            })
            .collect();
        super::inputs::inputs_digest(&chosen)
    }

    /// Whether these inputs (keys as declared, e.g. `profile [nodes]`) and
    /// the stage's recipe are what they were when the previous run
    /// succeeded: an output made only from them can be kept.
    pub(crate) fn unchanged(&self, keys: &[&str]) -> bool {
        let Some(prev) = self.previous_inputs else {
            return false;
        };
        self.with_recipe(keys)
            .all(|k| self.inputs.get(k).is_some_and(|v| prev.get(k) == Some(v)))
    }

    /// These keys and the recipe's.
    fn with_recipe<'k>(&'k self, keys: &'k [&'k str]) -> impl Iterator<Item = &'k str> {
        let recipe = self.inputs.keys().find(|k| k.starts_with("recipe "));
        keys.iter().copied().chain(recipe.map(String::as_str))
    }
}
