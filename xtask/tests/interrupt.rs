//! Ctrl-C during a stage, for real: this binary runs itself as a child that
//! starts a stage whose command sleeps, then sends the child SIGINT. The
//! command must stop, the stage's cleanups run, no stamp be written, and
//! the exit code be 130.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Result;
use xshell::cmd;
use xtask::engine::{Engine, Inputs, Output, RunOptions, Stage, StageRun};
use xtask::interrupt::{self, Cleanup, Interrupted};
use xtask::layout::Layout;

const CHILD_ENV: &str = "KRGISO_INTERRUPT_TEST_DIR";

struct Sleeper {
    dir: PathBuf,
}

impl Stage for Sleeper {
    fn name(&self) -> &'static str {
        "sleeper"
    }
    fn about(&self) -> &'static str {
        "sleeps in a command until interrupted"
    }
    fn inputs(&self, _: &mut Inputs) -> Result<()> {
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::dir("out", self.dir.join("build/out-dir"))]
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        let marker = self.dir.join("cleanup-ran");
        let _unmount = Cleanup::register("test: pretend unmount", move || {
            let _ = fs::write(&marker, "yes");
        });
        fs::write(run.output("out")?.join("half"), "x")?;
        let sh = run.shell.sh();
        let pidfile = self.dir.join("sleep.pid");
        let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
        run.shell.run(cmd!(sh, "sh -c {script}"))?;
        Ok(())
    }
}

fn child(dir: &Path) -> ExitCode {
    interrupt::install();
    let layout = Layout::new(dir, Some(&dir.join("build")));
    let engine = Engine::new(
        layout,
        vec![Box::new(Sleeper {
            dir: dir.to_owned(),
        })],
    );
    match engine.run(&["sleeper"], RunOptions::default()) {
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => ExitCode::from(interrupt::EXIT_CODE),
        Err(e) => {
            eprintln!("child: unexpected error: {e:#}");
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::from(0),
    }
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn parent() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path();
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(CHILD_ENV, dir)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pidfile = dir.join("sleep.pid");
    wait_for(
        "the stage's command to start",
        Duration::from_secs(20),
        || fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n')),
    )?;
    let sleep_pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let sent = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut status = None;
    wait_for("the child to exit", Duration::from_secs(15), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    })?;
    let status = status.unwrap();
    let took = sent.elapsed();

    let mut problems = Vec::new();
    if status.code() != Some(130) {
        problems.push(format!("exit status {status}, expected 130"));
    }
    if took > Duration::from_secs(10) {
        problems.push(format!(
            "took {took:?} to stop: the command was not interrupted"
        ));
    }
    if Path::new(&format!("/proc/{sleep_pid}")).exists() {
        problems.push(format!(
            "the stage's command (pid {sleep_pid}) is still running"
        ));
        unsafe { libc::kill(sleep_pid, libc::SIGKILL) };
    }
    if fs::read_to_string(dir.join("cleanup-ran")).ok().as_deref() != Some("yes") {
        problems.push("the stage's cleanup did not run".into());
    }
    if dir.join("build/stamps/sleeper.json").exists() {
        problems.push("a stamp was written".into());
    }
    for leftover in ["build/out-dir", "build/.out-dir.partial"] {
        if dir.join(leftover).exists() {
            problems.push(format!("{leftover} was left behind"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn main() -> ExitCode {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&dir));
    }
    let name = "ctrl_c_stops_the_command_runs_cleanups_and_writes_no_stamp";
    match parent() {
        Ok(()) => {
            println!("test {name} ... ok\n\n1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("test {name} ... FAILED: {why}\n\n0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}
