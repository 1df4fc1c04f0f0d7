//! What the end-to-end parts share: the smoke profile in its own build
//! dir, driven through the xtask binary the way a user runs it, and the
//! checks every part makes (no mount left, the host left alone). Each
//! check returns an error naming what it saw.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use crate::files;
use crate::host;
use crate::layout::Layout;
use crate::profile::{self, Profile};
use crate::shell::StageShell;
use crate::stages::{self, BuildContext};

/// What an end-to-end check measured: (what, seconds).
pub(crate) type Timings = Vec<(String, f64)>;

/// The smoke profile, in its own build dir under the project's `build/`.
pub(crate) struct SmokeRun {
    pub(crate) project: PathBuf,
    pub(crate) build: PathBuf,
    pub(crate) exe: PathBuf,
    pub(crate) profile: Profile,
}

impl SmokeRun {
    pub(crate) fn new(project: &Path) -> Result<SmokeRun> {
        let path = profile::resolve("smoke", project)?;
        Ok(SmokeRun {
            project: project.to_owned(),
            build: project.join("build/e2e/build"),
            exe: xtask_binary()?,
            profile: Profile::load(&path)?,
        })
    }

    /// The smoke build `e2e-packages` left, which the later parts reuse.
    pub(crate) fn built(project: &Path) -> Result<SmokeRun> {
        let run = SmokeRun::new(project)?;
        let stamp = run.layout().stamp("packages");
        ensure!(
            stamp.is_file(),
            "this part reuses the smoke build e2e-packages leaves in {}, and there is none: run `cargo xtask test --only e2e-packages` first",
            run.build.display()
        );
        Ok(run)
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout::new(&self.project, Some(&self.build))
    }

    pub(super) fn root(&self, which: &str) -> PathBuf {
        self.build.join("roots").join(which)
    }

    /// `xtask --profile smoke --build-dir B ARGS`, its output streamed to the
    /// terminal and the log; returns what it printed.
    pub(crate) fn xtask(&self, s: &StageShell, args: &[&str]) -> Result<String> {
        let exe = &self.exe;
        let build = &self.build;
        let sh = s.sh();
        s.run_collect(cmd!(
            sh,
            "{exe} --profile smoke --build-dir {build} {args...}"
        ))
        .with_context(|| format!("`xtask {}` failed", args.join(" ")))
    }

    /// `xtask --profile smoke --build-dir B ARGS`, to start by hand.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(["--profile", "smoke", "--build-dir"])
            .arg(&self.build)
            .args(args);
        c
    }

    /// The release of the kernel the kernel stage staged.
    pub(crate) fn release(&self) -> Result<String> {
        let path = self.layout().staged_kernel().join("release");
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// The host tools the packages stage needs, installed before the host's
    /// state is recorded (installing them is the test's doing, not the stage's).
    pub(super) fn install_host_tools(&self, s: &StageShell) -> Result<()> {
        let cx = std::sync::Arc::new(BuildContext {
            profile: self.profile.clone(),
            profile_path: profile::resolve("smoke", &self.project)?,
            layout: self.layout(),
            offline: false,
            sources_dir: None,
        });
        let tools: Vec<_> = stages::stages(&cx)
            .iter()
            .flat_map(|st| st.host_tools())
            .collect();
        host::ensure_tools(&tools, true, s.log_path())
    }
}

/// The xtask binary to drive. `cargo test` (an earlier part of the suite)
/// rebuilds it in place, so the running one may show as "(deleted)": the
/// file now at that path is the fresh build of the same tree.
pub(crate) fn xtask_binary() -> Result<PathBuf> {
    host::this_program().context("finding the xtask binary")
}

/// The shell an end-to-end check runs in: its output on the terminal and
/// in `build/logs/<name>.log`.
pub(crate) fn check_shell(project: &Path, name: &str) -> Result<StageShell> {
    StageShell::new(
        name,
        &project.join("build/logs").join(format!("{name}.log")),
        true,
    )
}

/// What the host looks like: every file under /etc with its content hash,
/// and the installed package list.
pub(super) fn host_state(s: &StageShell) -> Result<(BTreeMap<PathBuf, String>, String)> {
    let mut etc = BTreeMap::new();
    let mut stack = vec![PathBuf::from("/etc")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let digest = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!(
                    "-> {}",
                    fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                )
            } else {
                crate::bytes::sha256_of(&path).unwrap_or_else(|_| "unreadable".to_owned())
            };
            etc.insert(path, digest);
        }
    }
    let sh = s.sh();
    let packages = cmd!(sh, "dpkg-query -W")
        .read()
        .context("listing host packages")?;
    Ok((etc, packages))
}

/// Files in a directory tree with their modification times.
pub(super) fn listing(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = meta.modified() {
                out.insert(e.path(), m);
            }
        }
    }
    out
}

pub(crate) fn no_mounts_under(dir: &Path) -> Result<()> {
    let mounts = files::mounts_under(dir)?;
    ensure!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:?}",
        dir.display()
    );
    Ok(())
}
