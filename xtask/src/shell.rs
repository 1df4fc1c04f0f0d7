//! Running external commands. Every command goes through [`StageShell`]:
//! built with xshell's `cmd!` (each value one argument, never a shell
//! string), logged with its output to `build/logs/<stage>.log`, shown as a
//! spinner with the current step, stopped by Ctrl-C.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use xshell::{Cmd, Shell};

use crate::interrupt::{self, ChildGuard, Interrupted};

/// A command that exited non-zero. The full output is in `log`.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed ({status})")]
pub(crate) struct CommandFailed {
    pub(crate) command: String,
    pub(crate) status: String,
    pub(crate) log: PathBuf,
}

/// A command stopped because another branch of the same stage failed.
#[derive(Debug, thiserror::Error)]
#[error("stopped: another part of this stage failed")]
pub(crate) struct Stopped;

/// What a stage's branches ended with, as one result: Ctrl-C first, then
/// the failure that stopped the others (not their being stopped).
pub(crate) fn first_failure(results: Vec<Result<()>>) -> Result<()> {
    let mut errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    let pick = errors
        .iter()
        .position(|e| e.is::<Interrupted>())
        .or_else(|| errors.iter().position(|e| !e.is::<Stopped>()));
    match pick {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.pop().map_or(Ok(()), Err),
    }
}

/// The shell a stage runs its commands in.
pub struct StageShell {
    /// Files compiled since the last step (kbuild's `  CC` lines, libtool's).
    compiled: Arc<std::sync::atomic::AtomicUsize>,
    sh: Shell,
    log: Arc<Mutex<File>>,
    log_path: PathBuf,
    progress: Progress,
    /// Copy command output to the terminal as well (`-v`).
    tee: bool,
    /// A branch's name, in front of each of its log lines.
    branch: Option<String>,
    /// Set when a branch failed: the stage's other branches stop.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// How many of this shell's branches are alive: while one is, a
    /// command of its own is stopped with theirs (its wait looks at `stop`,
    /// as a branch's does).
    live_branches: Arc<std::sync::atomic::AtomicUsize>,
    /// A branch's count in its parent shell, taken back when it is dropped.
    parent_branches: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// When the stage began (a branch shares its stage's), and the step
    /// under way with its start: each step's time goes into the log.
    began: Instant,
    current: Mutex<Option<(String, Instant)>>,
}

impl StageShell {
    /// Opens (truncates) `log_path`: each run of a stage gets a fresh log.
    pub(crate) fn new(name: &str, log_path: &Path, tee: bool) -> Result<StageShell> {
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = File::create(log_path)
            .with_context(|| format!("creating the log {}", log_path.display()))?;
        let sh = Shell::new().context("starting a shell")?;
        Ok(StageShell {
            compiled: Arc::default(),
            sh,
            log: Arc::new(Mutex::new(file)),
            log_path: log_path.to_owned(),
            progress: Progress::new(name, tee),
            tee,
            branch: None,
            stop: Arc::default(),
            live_branches: Arc::default(),
            parent_branches: None,
            began: Instant::now(),
            current: Mutex::default(),
        })
    }

    /// A shell for work that runs beside the stage's other work, on another
    /// thread: it logs into the same log, each line marked `[name]`, and
    /// has a spinner line of its own.
    pub(crate) fn branch(&self, name: &str) -> Result<StageShell> {
        let sh = Shell::new().context("starting a shell")?;
        self.live_branches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(StageShell {
            compiled: Arc::default(),
            sh,
            log: self.log.clone(),
            log_path: self.log_path.clone(),
            progress: self.progress.branch(name),
            tee: self.tee,
            branch: Some(name.to_owned()),
            stop: self.stop.clone(),
            live_branches: Arc::default(),
            parent_branches: Some(self.live_branches.clone()),
            began: self.began,
            current: Mutex::default(),
        })
    }

    /// Stops the stage's other branches: a command of theirs that is
    /// running is terminated, and the next one does not start ([`Stopped`]).
    pub(crate) fn stop_branches(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn has_live_branches(&self) -> bool {
        self.live_branches.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The xshell `Shell` to build commands with: `cmd!(s.sh(), "tool {arg}")`.
    pub fn sh(&self) -> &Shell {
        &self.sh
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Announces the next step: one line on the terminal and in the log.
    pub(crate) fn step(&self, what: &str) {
        self.end_step();
        self.write_log(&format!("==> {what}"));
        if let Ok(mut current) = self.current.lock() {
            *current = Some((what.to_owned(), Instant::now()));
        }
        self.compiled.store(0, std::sync::atomic::Ordering::Relaxed);
        self.progress.step(what);
    }

    /// The step under way is over: its time, and when it ended from the
    /// stage's start, go into the log (`<== 12.3s ... what`), so a log
    /// says where a stage's time went (`grep '^<==' build/logs/*.log`).
    fn end_step(&self) {
        let ended = self.current.lock().ok().and_then(|mut c| c.take());
        if let Some((what, started)) = ended {
            self.write_log(&format!(
                "<== {:.1}s (ended at {:.1}s): {what}",
                started.elapsed().as_secs_f64(),
                self.began.elapsed().as_secs_f64()
            ));
        }
    }

    /// The last `n` lines this shell wrote into the log: a branch's own
    /// (without its mark), not the other branches'.
    pub(crate) fn own_log_tail(&self, n: usize) -> Vec<String> {
        let mark = self.mark();
        let mut own: Vec<String> = log_tail(&self.log_path, usize::MAX)
            .into_iter()
            .filter_map(|l| l.strip_prefix(mark.as_str()).map(str::to_owned))
            .filter(|l| !l.starts_with("<== "))
            .collect();
        own.drain(..own.len().saturating_sub(n));
        own
    }

    /// A line for the log only.
    pub(crate) fn note(&self, line: &str) {
        self.write_log(line);
    }

    /// Runs a command to completion; its output goes to the log.
    pub fn run(&self, cmd: Cmd<'_>) -> Result<()> {
        self.exec(cmd, None, None, true).map(drop)
    }

    /// Runs a command and returns its standard output (stderr goes to the log).
    pub(crate) fn read(&self, cmd: Cmd<'_>) -> Result<String> {
        let mut out = Vec::new();
        self.exec(cmd, Some(&mut out), None, true)?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
    }

    /// Runs a command like [`run`](Self::run) (output streamed to the log and,
    /// with tee, the terminal) and also returns all it printed.
    pub(crate) fn run_collect(&self, cmd: Cmd<'_>) -> Result<String> {
        let seen = Arc::new(Mutex::new(String::new()));
        self.exec(cmd, None, Some(&seen), true)?;
        let text = seen.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(text)
    }

    /// Runs a command whose failure is an answer, not an error (a
    /// `patch --dry-run`, say): whether it succeeded, and all it printed.
    /// Only what stops everything (Ctrl-C, a command that cannot start)
    /// is an error.
    pub(crate) fn try_collect(&self, cmd: Cmd<'_>) -> Result<(bool, String)> {
        let seen = Arc::new(Mutex::new(String::new()));
        let ok = self.exec(cmd, None, Some(&seen), false)?;
        let text = seen.lock().map(|s| s.clone()).unwrap_or_default();
        Ok((ok, text))
    }

    fn exec(
        &self,
        cmd: Cmd<'_>,
        capture: Option<&mut Vec<u8>>,
        collect: Option<&Arc<Mutex<String>>>,
        fail_on_error: bool,
    ) -> Result<bool> {
        interrupt::check()?;
        if self.stopped() {
            return Err(Stopped.into());
        }
        let line = cmd.to_string();
        self.write_log(&format!("$ {line}"));
        let mut command: Command = cmd.into();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: Ctrl-C handling signals the whole group.
            .process_group(0);
        // A run killed with SIGKILL takes its command with it: a host-side
        // program (mmdebstrap, debootstrap) left running would go on
        // writing into, and unmounting under, the partial root that the
        // next run releases and makes again. What it ran inside a chroot is
        // released by that next run (chroot::release_stale).
        // SAFETY: prctl and getppid are async-signal-safe, and nothing else
        // runs between fork and exec.
        unsafe {
            let parent = libc::getpid();
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the prctl: nothing would signal.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let _running = ChildGuard::new(child.id());
        let stderr = child.stderr.take().map(|e| self.pump(e, collect.cloned()));
        let mut stdout = child.stdout.take();
        let stdout_pump = match capture {
            Some(buf) => {
                if let Some(s) = stdout.as_mut() {
                    s.read_to_end(buf).context("reading command output")?;
                }
                None
            }
            None => stdout.map(|o| self.pump(o, collect.cloned())),
        };
        let status = self.wait(&mut child)?;
        for pump in [stdout_pump, stderr].into_iter().flatten() {
            let _ = pump.join();
        }
        self.write_log(&format!(
            "[{} after {:.1}s]",
            describe(status),
            started.elapsed().as_secs_f64()
        ));
        if interrupt::is_interrupted() {
            return Err(Interrupted.into());
        }
        if !status.success() && self.stopped() {
            return Err(Stopped.into());
        }
        if !status.success() && fail_on_error {
            return Err(CommandFailed {
                command: line,
                status: describe(status),
                log: self.log_path.clone(),
            }
            .into());
        }
        Ok(status.success())
    }

    /// Waits for a command; when the stage's branches are told to stop,
    /// terminates its process group (killed after 5 s).
    fn wait(&self, child: &mut std::process::Child) -> Result<ExitStatus> {
        if self.branch.is_none() && !self.has_live_branches() {
            return child.wait().context("waiting for a command");
        }
        let mut stopping: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait().context("waiting for a command")? {
                if stopping.is_some() {
                    // What is left of the group would hold the output pipes.
                    // SAFETY: kill(2) on the command's own process group.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                }
                return Ok(status);
            }
            if self.stopped() {
                let pgid = child.id() as i32;
                let signal = match stopping {
                    None => libc::SIGTERM,
                    Some(t) if t.elapsed() > Duration::from_secs(5) => libc::SIGKILL,
                    Some(_) => 0,
                };
                if signal != 0 {
                    // SAFETY: kill(2) with a negative pid signals the
                    // command's own process group.
                    unsafe { libc::kill(-pgid, signal) };
                }
                stopping.get_or_insert_with(Instant::now);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies a child's output stream into the log, line by line.
    fn pump(
        &self,
        stream: impl Read + Send + 'static,
        collect: Option<Arc<Mutex<String>>>,
    ) -> std::thread::JoinHandle<()> {
        let log = self.log.clone();
        let mark = self.mark();
        let bar = self.progress.bar.clone();
        let tee = self.tee;
        let compiled = self.compiled.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{mark}{text}");
                }
                if let Some(Ok(mut all)) = collect.as_ref().map(|c| c.lock()) {
                    all.push_str(text);
                    all.push('\n');
                }
                let count = if is_compile_line(text) {
                    compiled.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                } else {
                    compiled.load(std::sync::atomic::Ordering::Relaxed)
                };
                if tee {
                    eprintln!("{mark}{text}");
                } else if let Some(bar) = &bar {
                    match count {
                        0 => bar.set_message(last_words(text, 70)),
                        n => bar
                            .set_message(format!("{n} files compiled │ {}", last_words(text, 50))),
                    }
                }
                buf.clear();
            }
        })
    }

    fn write_log(&self, line: &str) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{}{line}", self.mark());
        }
    }

    /// What a branch's log lines start with.
    fn mark(&self) -> String {
        self.branch
            .as_ref()
            .map_or_else(String::new, |b| format!("[{b}] "))
    }

    /// Stops the spinner and times the last step; call when the stage is over.
    pub(crate) fn finish(&self) {
        self.end_step();
        self.progress.finish();
    }
}

impl Drop for StageShell {
    fn drop(&mut self) {
        self.end_step();
        self.progress.finish();
        if let Some(count) = &self.parent_branches {
            count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A line saying a file is being compiled: kbuild's `  CC      init/main.o`
/// or libtool's `libtool: compile: ...`.
fn is_compile_line(line: &str) -> bool {
    line.strip_prefix("  CC")
        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with("[M]"))
        || line.starts_with("libtool: compile:")
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exit status 0".to_owned(),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The tail of a line, at most `max` characters, for the spinner.
fn last_words(line: &str, max: usize) -> String {
    let line = line.trim();
    let count = line.chars().count();
    if count <= max {
        line.to_owned()
    } else {
        let tail: String = line.chars().skip(count - max + 1).collect();
        format!("…{tail}")
    }
}

/// The spinner of a running stage: `⠋ packages 0:42 bootstrap node1 root │ last output line`.
/// On a terminal only; elsewhere (CI, a pipe) each step is printed as a line.
pub(crate) struct Progress {
    name: String,
    bar: Option<ProgressBar>,
    /// Holds the spinner lines of the stage and its branches together.
    lines: Option<MultiProgress>,
}

impl Progress {
    pub(crate) fn new(name: &str, plain: bool) -> Progress {
        let lines = (!plain && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Progress::on(name, lines)
    }

    fn on(name: &str, lines: Option<MultiProgress>) -> Progress {
        let bar = lines.as_ref().map(|lines| {
            let bar = lines.add(ProgressBar::new_spinner());
            let style = ProgressStyle::with_template(
                "{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg:.dim}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            name: name.to_owned(),
            bar,
            lines,
        }
    }

    /// A spinner line of its own for a branch, `stage[branch]`.
    fn branch(&self, branch: &str) -> Progress {
        Progress::on(&format!("{}[{branch}]", self.name), self.lines.clone())
    }

    pub(crate) fn step(&self, what: &str) {
        let line = format!("==> {}: {what}", self.name);
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.set_prefix(format!("{}: {what}", self.name));
                bar.set_message("");
            }
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A byte-count bar (`prefix [====>   ] bytes/total rate ETA`) on stderr
/// when it is a terminal; None elsewhere (the caller prints lines instead).
/// Without a `total`, a spinner in the same layout.
pub(crate) fn byte_bar(total: Option<u64>, prefix: String) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        let template = "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(prefix);
        bar
    })
}

/// The last `n` lines of a log, for the report of a failed stage.
pub(crate) fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(text) = fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xshell::cmd;

    fn shell(dir: &Path) -> StageShell {
        StageShell::new("t", &dir.join("logs/t.log"), false).unwrap()
    }

    #[test]
    fn command_line_output_and_status_go_to_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        s.step("say hello");
        s.run(cmd!(s.sh(), "sh -c 'echo to-out; echo to-err >&2'"))
            .unwrap();
        let text = fs::read_to_string(s.log_path()).unwrap();
        assert!(text.contains("==> say hello"), "{text}");
        assert!(
            text.contains("$ sh -c \"echo to-out; echo to-err >&2\""),
            "{text}"
        );
        assert!(
            text.contains("to-out\n") && text.contains("to-err\n"),
            "{text}"
        );
        assert!(text.contains("[exit status 0 after"), "{text}");
        // A step's time is logged when the next one starts, or the stage ends.
        assert!(!text.contains("<== "), "{text}");
        s.run(cmd!(s.sh(), "sleep 0.3")).unwrap();
        s.step("say bye");
        s.finish();
        let text = fs::read_to_string(s.log_path()).unwrap();
        let times: Vec<(f64, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("<== "))
            .map(|l| {
                let (took, what) = l.split_once("s (ended at ").unwrap();
                (took.parse().unwrap(), what.split_once("): ").unwrap().1)
            })
            .collect();
        assert_eq!(times.len(), 2, "{text}");
        assert_eq!((times[0].1, times[1].1), ("say hello", "say bye"));
        assert!(times[0].0 >= 0.3 && times[1].0 < 0.3, "{times:?}");
    }

    /// Two branches on two threads at once: one log, every line of each
    /// marked with its branch, each command's output whole.
    #[test]
    fn branches_log_into_the_stage_log_each_line_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        let branches = [s.branch("a").unwrap(), s.branch("b").unwrap()];
        std::thread::scope(|scope| {
            for b in branches {
                scope.spawn(move || {
                    b.step("count");
                    b.run(cmd!(
                        b.sh(),
                        "sh -c 'for i in 1 2 3 4 5; do echo line$i; done'"
                    ))
                    .unwrap();
                    b.finish();
                });
            }
        });
        let text = fs::read_to_string(s.log_path()).unwrap();
        for b in ["a", "b"] {
            assert!(text.contains(&format!("[{b}] ==> count")), "{text}");
            for i in 1..=5 {
                assert!(text.contains(&format!("[{b}] line{i}\n")), "{text}");
            }
        }
        assert!(
            text.lines()
                .all(|l| l.starts_with("[a] ") || l.starts_with("[b] ")),
            "{text}"
        );
        // What explains a branch's failure is read from its own lines.
        let own = s.branch("a").unwrap().own_log_tail(3);
        assert_eq!(own.len(), 3, "{own:?}");
        assert!(own[0] == "line4" && own[1] == "line5", "{own:?}");
        assert!(own[2].starts_with("[exit status 0"), "{own:?}");
    }

    /// A branch that fails stops its sibling's running command, and the
    /// sibling says it was stopped, not that its command failed.
    #[test]
    fn a_failing_branch_stops_the_other_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        let (slow, failing) = (s.branch("slow").unwrap(), s.branch("failing").unwrap());
        let started = Instant::now();
        let slow_result = std::thread::scope(|scope| {
            let slow = scope.spawn(move || slow.run(cmd!(slow.sh(), "sleep 30")));
            std::thread::sleep(Duration::from_millis(300));
            assert!(failing.run(cmd!(failing.sh(), "false")).is_err());
            failing.stop_branches();
            slow.join().unwrap()
        });
        let err = slow_result.unwrap_err();
        assert!(err.is::<Stopped>(), "{err:#}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // Nothing more starts on that stage's branches.
        let after = s.branch("late").unwrap();
        assert!(after
            .run(cmd!(after.sh(), "true"))
            .unwrap_err()
            .is::<Stopped>());
    }

    /// While a branch of it lives, the stage's own running command is
    /// stopped with the branches; once they are gone, its commands are
    /// waited for, not polled (a poll costs up to 50 ms a command).
    #[test]
    fn the_stage_polls_its_own_commands_only_while_a_branch_lives() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        let started = Instant::now();
        let own = std::thread::scope(|scope| {
            let failing = s.branch("failing").unwrap();
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                failing.stop_branches();
            });
            s.run(cmd!(s.sh(), "sleep 30"))
        });
        assert!(own.unwrap_err().is::<Stopped>());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );

        let s = shell(tmp.path());
        drop(s.branch("done").unwrap());
        let started = Instant::now();
        for _ in 0..20 {
            s.run(cmd!(s.sh(), "true")).unwrap();
        }
        // Polled, the 20 would take at least a second; waited for, about
        // 80 ms here.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn of_the_branches_results_ctrl_c_wins_then_the_failure_that_stopped_the_rest() {
        let failed = || Err(anyhow::anyhow!("make failed"));
        let stopped = || Err(Stopped.into());
        let interrupted = || Err(Interrupted.into());
        assert!(first_failure(vec![Ok(()), Ok(())]).is_ok());
        assert!(first_failure(vec![]).is_ok());
        let err = first_failure(vec![stopped(), failed(), Ok(())]).unwrap_err();
        assert_eq!(err.to_string(), "make failed");
        let err = first_failure(vec![failed(), interrupted(), stopped()]).unwrap_err();
        assert!(err.is::<Interrupted>());
        let err = first_failure(vec![Ok(()), stopped()]).unwrap_err();
        assert!(err.is::<Stopped>());
    }

    #[test]
    fn each_value_is_one_argument_and_read_returns_stdout() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        let word = "two words; rm -rf /";
        let out = s.read(cmd!(s.sh(), "printf %s| {word} x")).unwrap();
        assert_eq!(out, "two words; rm -rf /|x|");
    }

    #[test]
    fn failure_names_the_command_status_and_log() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        let err = s
            .run(cmd!(s.sh(), "sh -c 'echo the-reason; exit 3'"))
            .unwrap_err();
        let failed = err
            .downcast_ref::<CommandFailed>()
            .expect("a CommandFailed");
        assert_eq!(failed.status, "exit status 3");
        assert_eq!(failed.log, s.log_path());
        assert!(err.to_string().contains("exit 3"), "{err}");
        let tail = log_tail(s.log_path(), 2);
        assert_eq!(tail[0], "the-reason");
        assert!(tail[1].starts_with("[exit status 3"), "{tail:?}");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shell(tmp.path());
        let err = s.run(cmd!(s.sh(), "krgiso-no-such-tool --x")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot start `krgiso-no-such-tool --x`"),
            "{err:#}"
        );
    }

    #[test]
    fn compile_lines_are_counted() {
        assert!(is_compile_line("  CC      init/main.o"));
        assert!(is_compile_line("  CC [M]  drivers/net/e1000/e1000_main.o"));
        assert!(is_compile_line("libtool: compile:  gcc-4.1 -c krgadm.c"));
        assert!(!is_compile_line("  CHK     include/linux/version.h"));
        assert!(!is_compile_line("  LD      vmlinux"));
    }

    #[test]
    fn last_words_keeps_the_end() {
        assert_eq!(last_words("  short  ", 10), "short");
        assert_eq!(last_words("abcdefghij", 5), "…ghij");
    }
}
