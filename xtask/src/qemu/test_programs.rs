//! Kerrighed's own test programs (`tests/apps` in the tarball, built static
//! into the nodes root by the kernel stage), run on the cluster the way
//! Kerrighed's test suite uses them (`tests/ktp/cr`): each is started on
//! node A under `krgcr-run`, with a loop count, in a wrapper that keeps its
//! PID and exit status on the shared root. While it runs, the test
//!
//! - migrates it to another node and back, reading where it runs from its
//!   `/proc/PID/stat` (Kerrighed puts `node × NR_CPUS + cpu` in the
//!   processor field); a program that Kerrighed 2.4.4 cannot migrate must
//!   be refused with the words [`REFUSED`], as docs/kerrighed-tests.md says;
//! - sends it a signal, or writes its shared memory, from the other node;
//! - checkpoints it, kills its application, and `restart`s it from node B
//!   (the programs Kerrighed's own suite checkpoints).
//!
//! Then each must end as the program says it ends: exit 0 and its last
//! lines (`-- End of bi (PID-TID) with N loops --` per process or thread),
//! the file, the signal or the message it was given. One program runs at a
//! time: a loaded node is slow to answer, and Kerrighed's scheduler would
//! move them about.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::ssi::with_can_migrate;
use super::timing::{within, CHECKS, MIGRATION_LANDS, PROGRAM_ENDS, PROGRAM_STARTS};
use super::{Milestone, Run};
use crate::seeded::Seeded;
use crate::stages::kernel::krg::KRG_TESTS_DIR;

/// What `migrate` says when Kerrighed 2.4.4 cannot move a process
/// (`migration_implemented()`, modules/epm/migration.c, answers EPERM).
pub(crate) const REFUSED: &str = "Operation not permitted";

/// How many loops of 10⁸ additions each program runs: long enough, at
/// under a second a loop under TCG, to be moved and restarted before its
/// end.
const LOOPS: u32 = 15;

/// Where the programs keep their PID, output and exit status, in the
/// cluster user's home (shared root).
const WORK: &str = ".krgiso-tests";

/// How Kerrighed 2.4.4 takes `migrate` of the running program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Migration {
    /// It moves away and back.
    Moves,
    /// Refused ([`REFUSED`]): a process that shares its memory (threads,
    /// libkrgcb's callback thread), its file table or its fs_struct.
    Refused,
}

/// What the program is given while it runs, and how its end is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `-- End of bi ... with N loops --` from this many processes/threads.
    Ends(usize),
    /// `-q`, this many processes: they all run, then all end by
    /// themselves, the first with exit 0. Their output is not read: two
    /// processes flushing into one stdout lost one's lines, with one of
    /// them moved (two nodes' NFS clients) or both restarted (seen in QEMU).
    Quiet(usize),
    /// `bi`: it says `-- Enter bi --`, loops, and exits 0.
    Enters,
    /// `bi-file`: it exits 0, and `/tmp/monfichier`, on the node it
    /// started on, holds loop numbers, rising (Kerrighed 2.4.4 writes
    /// there only the lines made on that node).
    File,
    /// `bi-signal`: SIGUSR1 sent from the other node while it runs there;
    /// it says `receive signal 10`.
    Signal,
    /// `ipcshm-tool -r`: reads a System V shared memory segment made on A;
    /// the other node writes it while the reader runs there, and the
    /// reader prints what it read: the first message, then the second.
    SharedMemory,
}

/// One of Kerrighed's test programs and what the boot test does with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TestProgram {
    pub(crate) name: &'static str,
    pub(crate) exercises: &'static str,
    pub(crate) migration: Migration,
    /// Checkpointed, killed and restarted (as tests/ktp/cr does with it).
    pub(crate) restart: bool,
    pub(crate) outcome: Outcome,
    /// It registers C/R callbacks (libkrgcb): `checkpoint` and `restart`
    /// signal the application's root to run them, so the program itself
    /// is the root, started by krgcr-run with no wrapper to keep its exit
    /// status, as Kerrighed's cr_callbacks01 starts it. Its end is read
    /// from its output and its session gone.
    pub(crate) callbacks: bool,
}

/// A process that `migrate` took (exit 0) and that never reached the node
/// it was sent to: still mid-move, or gone.
#[derive(Debug)]
pub(crate) struct LostMoving {
    pid: u32,
    said: String,
}

impl std::fmt::Display for LostMoving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.said)
    }
}

impl std::error::Error for LostMoving {}

/// Whether Kerrighed lost the process as it moved, somewhere in `error`.
fn lost_moving(error: &anyhow::Error) -> Option<&LostMoving> {
    error.chain().find_map(|e| e.downcast_ref::<LostMoving>())
}

/// Whether a console line is Kerrighed's scheduler asking `pid` to move:
/// `send_kerrighed_signal: 5 (events/0) -> 8620159 (bi-double)`, the
/// sender being a kernel work queue (`events/N`), where mosix_load_balancer
/// runs; `migrate` itself is named `(migrate)`, or `(krgrpc)` when it
/// came from another node.
pub(crate) fn scheduler_signalled(line: &str, pid: u32) -> bool {
    let Some(rest) = line.split("send_kerrighed_signal: ").nth(1) else {
        return false;
    };
    let Some((from, to)) = rest.split_once(" -> ") else {
        return false;
    };
    let sender = from.split_once(' ').map_or("", |(_, name)| name);
    sender.starts_with("(events/") && to.split_whitespace().next() == Some(pid.to_string().as_str())
}

impl TestProgram {
    const fn with_callbacks(self) -> TestProgram {
        TestProgram {
            callbacks: true,
            ..self
        }
    }
}

const fn program(
    name: &'static str,
    exercises: &'static str,
    migration: Migration,
    restart: bool,
    outcome: Outcome,
) -> TestProgram {
    TestProgram {
        name,
        exercises,
        migration,
        restart,
        outcome,
        callbacks: false,
    }
}

/// Every program in tests/apps, in the order the test runs them.
pub(crate) const TEST_PROGRAMS: [TestProgram; 12] = {
    use Migration::{Moves, Refused};
    use Outcome::{Ends, Enters, File, Quiet, SharedMemory, Signal};
    [
        program("bi", "a CPU-bound loop", Moves, false, Enters),
        program(
            "bi-cr",
            "the loop, its output buffered",
            Moves,
            true,
            Ends(1),
        ),
        program(
            "bi-cr-static",
            "bi-cr linked -static",
            Moves,
            false,
            Ends(1),
        ),
        program("bi-double", "two processes (fork)", Moves, false, Quiet(2)),
        program(
            "bi-file",
            "a file open on the starting node's /tmp",
            Moves,
            false,
            File,
        ),
        program(
            "bi-signal",
            "a signal handler, signalled from another node",
            Moves,
            false,
            Signal,
        ),
        program(
            "bi-clone-semundo",
            "two processes sharing SysV semaphore undo (CLONE_SYSVSEM)",
            Moves,
            false,
            Quiet(2),
        ),
        program(
            "ipcshm-tool",
            "SysV shared memory, written from another node",
            Moves,
            false,
            SharedMemory,
        ),
        program(
            "bi-thread",
            "three threads (pthreads)",
            Refused,
            true,
            Ends(3),
        ),
        program(
            "bi-clone-files",
            "two processes sharing a file table (CLONE_FILES)",
            Refused,
            true,
            Quiet(2),
        ),
        program(
            "bi-clone-fs",
            "two processes sharing cwd and root (CLONE_FS)",
            Refused,
            true,
            Quiet(2),
        ),
        program(
            "bi-server-socket",
            "a listening TCP socket, closed and reopened by C/R callbacks (libkrgcb's thread)",
            Refused,
            true,
            Ends(1),
        )
        .with_callbacks(),
    ]
};

/// The node a process runs on, from the processor field (the 39th) of its
/// `/proc/PID/stat`: Kerrighed's `node × NR_CPUS + cpu`.
pub(super) fn node_of(stat: &str, nr_cpus: u32) -> Option<u32> {
    let line = stat.lines().rev().find(|l| l.contains(") "))?;
    // After the command's closing parenthesis: field 3 onwards.
    let rest = &line[line.rfind(") ")? + 2..];
    let processor: u32 = rest.split_whitespace().nth(39 - 3)?.parse().ok()?;
    Some(processor / nr_cpus.max(1))
}

/// A file's lines as read over a node's console, without the kernel's own
/// messages that come between (Kerrighed's as it moves a process).
fn program_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("send_kerrighed_signal:"))
        .collect()
}

/// Where a program's output goes: the shared root. Not a node's /tmp: a
/// program moved away and back lost the output it wrote there at its
/// exit (bi-cr-static, seen in QEMU).
fn output(p: &TestProgram, work: &str) -> String {
    format!("{work}/{}.out", p.name)
}

/// Waits (up to 20 s) until session `sid` has no process left, saying
/// `gone` if so.
fn session_gone(sid: u32) -> String {
    format!("i=0; while [ -n \"$(pgrep -s {sid})\" ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done; [ -n \"$(pgrep -s {sid})\" ] || echo gone")
}

/// The last line that is a number, among kernel messages on a console.
fn last_number(text: &str) -> Option<u32> {
    text.lines().rev().find_map(|l| l.trim().parse().ok())
}

/// What is wrong with a program's output, given its outcome (None: it
/// ended as it should). `file`: bi-file's /tmp/monfichier.
/// `exit`: what its wrapper wrote, None for a program that has none
/// ([`TestProgram::callbacks`]).
pub(super) fn wrong_end(
    p: &TestProgram,
    out: &str,
    exit: Option<&str>,
    file: &str,
) -> Option<String> {
    if let Some(exit) = exit {
        let exit = program_lines(exit)
            .into_iter()
            .rev()
            .find(|l| l.starts_with("exit "));
        if exit != Some("exit 0") {
            return Some(format!("it ended with {exit:?}, not exit 0"));
        }
    }
    let out = program_lines(out);
    let ends: Vec<u32> = out
        .iter()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("-- End of bi (")?;
            rest.split(" with ")
                .nth(1)?
                .strip_suffix(" loops --")?
                .parse()
                .ok()
        })
        .collect();
    let ended = |n: usize| ends.len() == n && ends.iter().all(|&l| l >= LOOPS);
    match p.outcome {
        Outcome::Ends(n) if !ended(n) => Some(format!(
            "{n} \"-- End of bi ... with {LOOPS} loops --\" expected, it said {ends:?}"
        )),
        Outcome::Quiet(_) => None,
        Outcome::Enters if !out.contains(&"-- Enter bi --") => Some("no \"-- Enter bi --\"".into()),
        Outcome::File => {
            // Kerrighed 2.4.4 writes the lines made on the first node only,
            // each after the last one made there (docs/kerrighed-tests.md):
            // what reached the file must be loop numbers, each greater
            // than the one before.
            let got = program_lines(file);
            let numbers: Vec<Option<u32>> = got.iter().map(|l| l.parse().ok()).collect();
            let rising = !numbers.is_empty()
                && numbers.iter().all(|n| n.is_some_and(|n| n < LOOPS))
                && numbers.windows(2).all(|w| w[0] < w[1]);
            (!rising).then(|| {
                format!("/tmp/monfichier holds {got:?}, not loop numbers 0..{LOOPS}, rising")
            })
        }
        Outcome::Signal if !out.contains(&"receive signal 10") || !ended(1) => {
            Some("no \"receive signal 10\" and one \"-- End of bi\" line".into())
        }
        Outcome::SharedMemory => {
            let read: Vec<&str> = out.into_iter().filter(|l| !l.is_empty()).collect();
            let first = read.iter().take_while(|l| **l == SHM_FIRST).count();
            let second = read[first..].iter().filter(|l| **l == SHM_SECOND).count();
            (first == 0 || second == 0 || first + second != read.len())
                .then(|| format!("it read {read:?}: not {SHM_FIRST:?} then {SHM_SECOND:?}"))
        }
        _ => None,
    }
}

/// The shared memory's two messages, written on A then on B.
const SHM_FIRST: &str = "written-on-A";
const SHM_SECOND: &str = "written-on-B";
/// How many times a program lost mid-move is run again, each loss with
/// Kerrighed's scheduler seen moving it too (docs/kerrighed-tests.md): a
/// user starts the job again; two such losses in a row were seen in one
/// run (bi-clone-semundo), so one run again was not enough.
const RUNS_AGAIN: usize = 2;

impl Run<'_> {
    /// Every program in [`TEST_PROGRAMS`], or the test's seeded sample of
    /// them, on nodes A and B (vms 1 and 2, logged in), `nr_cpus` being
    /// the node kernel's NR_CPUS.
    pub(super) fn prove_test_programs(&mut self, id_a: u8, id_b: u8, nr_cpus: u32) -> Result<()> {
        let (a, b) = (1, 2);
        let home = format!("/home/{}", self.test.login.0);
        let work = format!("{home}/{WORK}");
        let until = within(CHECKS, self.deadline);
        self.on(a, &format!("rm -rf {work}; mkdir {work}"), until)?;
        let programs: Vec<&TestProgram> = match self.test.test_program_sample {
            Some((seed, count)) => Seeded(seed)
                .pick(TEST_PROGRAMS.len(), count)
                .into_iter()
                .map(|i| &TEST_PROGRAMS[i])
                .collect(),
            None => TEST_PROGRAMS.iter().collect(),
        };
        let started = Instant::now();
        let mut took = Vec::new();
        let mut run_again = Vec::new();
        for p in programs.iter().copied() {
            let t = Instant::now();
            let mut from = self.console_positions();
            let mut ran = self.run_test_program(p, &work, (a, id_a), (b, id_b), nr_cpus);
            let mut runs = 1;
            while let Some(lost) = ran.as_ref().err().and_then(lost_moving) {
                let said = lost.to_string();
                let Some(node) = self.scheduler_moving(lost.pid, &from) else {
                    ran =
                        ran.context("no node's console showed Kerrighed's scheduler moving it too");
                    break;
                };
                if runs > RUNS_AGAIN {
                    ran = ran.with_context(|| {
                        format!(
                            "lost as it moved in each of its {runs} runs, its scheduler moving it too each time"
                        )
                    });
                    break;
                }
                self.say(
                    &self.name(b),
                    &format!(
                        "Kerrighed lost {} as it moved, its scheduler on {node} moving it too (docs/kerrighed-tests.md): {said}; running it again",
                        p.name
                    ),
                );
                self.clear_test_program(p, &work, a)?;
                run_again.push(format!(
                    "{} (its scheduler on {node} moving it too): {said}",
                    p.name
                ));
                from = self.console_positions();
                ran = self.run_test_program(p, &work, (a, id_a), (b, id_b), nr_cpus);
                runs += 1;
            }
            ran.with_context(|| format!("Kerrighed's test program {} ({})", p.name, p.exercises))?;
            took.push(t.elapsed().as_secs_f64());
        }
        self.on(a, &format!("rm -rf {work}"), within(CHECKS, self.deadline))?;
        let count = |f: fn(&TestProgram) -> bool| programs.iter().filter(|p| f(p)).count();
        let sample = match self.test.test_program_sample {
            Some((seed, _)) => format!(
                " of {} (picked by seed {seed}: {})",
                TEST_PROGRAMS.len(),
                programs
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        self.record(
            b,
            Milestone::TestPrograms,
            format!(
                "{} programs{sample} ended as they should: {} migrated away and back, {} refused as documented, {} checkpointed and restarted ({:.0} s, {:.0}-{:.0} s each)",
                programs.len(),
                count(|p| p.migration == Migration::Moves),
                count(|p| p.migration == Migration::Refused),
                count(|p| p.restart),
                started.elapsed().as_secs_f64(),
                took.iter().copied().fold(f64::INFINITY, f64::min),
                took.iter().copied().fold(0.0, f64::max),
            ) + &if run_again.is_empty() {
                String::new()
            } else {
                format!("; run again after Kerrighed lost it moving (docs/kerrighed-tests.md): {}", run_again.join("; "))
            },
        );
        Ok(())
    }

    /// One program: started on A, put through what the table says while
    /// it runs, then its end read and checked.
    fn run_test_program(
        &self,
        p: &TestProgram,
        work: &str,
        a: (usize, u8),
        b: (usize, u8),
        nr_cpus: u32,
    ) -> Result<()> {
        let until = within(CHECKS, self.deadline);
        let files = format!("{work}/{}", p.name);
        let said = self.put_through(p, &files, a, b, nr_cpus, until)?;
        let sid = last_number(&self.on(a.0, &format!("cat {files}.sid"), until)?)
            .context("no session id from krgcr-run")?;
        let ends = within(PROGRAM_ENDS, until);
        let exit = if p.callbacks {
            // No wrapper: it has ended once its session is gone.
            while !self
                .on(a.0, &session_gone(sid), until)?
                .lines()
                .any(|l| l.trim() == "gone")
            {
                if Instant::now() > ends {
                    bail!("it never ended: its session {sid} still has processes ({said})");
                }
            }
            None
        } else {
            let exit = self
                .wait_file(b.0, &format!("{files}.exit"), ends)
                .with_context(|| format!("it never ended ({said})"))?;
            // The wrapper waited for the program's first process: its
            // others (a fork, a clone) may still be writing.
            let gone = self.on(a.0, &session_gone(sid), until)?;
            if !gone.lines().any(|l| l.trim() == "gone") {
                bail!("{said}: the wrapper saw it end, but its session {sid} still has processes 20 s later");
            }
            Some(exit)
        };
        let out = self.on(
            a.0,
            &format!("cat {out}; rm -f {out}", out = output(p, work)),
            until,
        )?;
        let file = match p.outcome {
            Outcome::File => self.on(a.0, "cat /tmp/monfichier; rm -f /tmp/monfichier", until)?,
            _ => String::new(),
        };
        if let Some(wrong) = wrong_end(p, &out, exit.as_deref(), &file) {
            bail!("{said}: {wrong}; its output:\n{out}");
        }
        Ok(())
    }

    /// Starts `p` on A and does with it what the table says, while it
    /// runs; returns what happened, in a phrase.
    fn put_through(
        &self,
        p: &TestProgram,
        files: &str,
        (a, id_a): (usize, u8),
        (b, id_b): (usize, u8),
        nr_cpus: u32,
        until: Instant,
    ) -> Result<String> {
        let program = format!("{KRG_TESTS_DIR}/{}", p.name);
        let out = output(p, files.rsplit_once('/').map_or("", |(dir, _)| dir));
        let args = match p.outcome {
            Outcome::SharedMemory => format!("-r{LOOPS} {files}.key"),
            Outcome::Quiet(_) => format!("-q -l {LOOPS}"),
            _ => format!("-l {LOOPS}"),
        };
        let before = match p.outcome {
            Outcome::File => "rm -f /tmp/monfichier; ".to_owned(),
            Outcome::SharedMemory => {
                format!("touch {files}.key && {program} -c{SHM_FIRST} {files}.key >/dev/null && ")
            }
            _ => String::new(),
        };
        // The wrapper (the application's root) keeps the program's PID
        // and exit status; -b: krgcr-run returns once it runs (once its
        // child has written the session id and exec'd).
        let start = if p.callbacks {
            format!("krgcr-run -b -q -o {files}.sid -- {program} {args} </dev/null >{out} 2>&1 && cat {files}.sid > {files}.pid")
        } else {
            format!("krgcr-run -b -q -o {files}.sid -- sh -c '\"$0\" \"$@\" & echo $! > {files}.pid; wait $!; echo \"exit $?\" > {files}.exit' {program} {args} </dev/null >{out} 2>&1")
        };
        self.on(a, &format!("{before}{}", with_can_migrate(&start)), until)?;
        // Kernel messages may come first (the scheduler moving another).
        let said = self.wait_file(a, &format!("{files}.pid"), until)?;
        let pid = last_number(&said).with_context(|| format!("no PID in {files}.pid: {said:?}"))?;
        let stat = format!("cat /proc/{pid}/stat");
        // $! is the wrapper's child before its exec: wait for the program
        // itself (its name, at most 15 characters, in its stat), then a
        // second for its threads or clones (made before its first loop).
        let comm = format!("({}) ", &p.name[..p.name.len().min(15)]);
        let execed = within(PROGRAM_STARTS, until);
        loop {
            let text = self.on(a, &stat, until)?;
            if text.contains(&comm) {
                break;
            }
            if Instant::now() > execed {
                bail!("pid {pid} never became {}: {text:?}", p.name);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_secs(1));
        let started = self.on(a, &stat, until)?;
        let here = node_of(&started, nr_cpus)
            .with_context(|| format!("no node in /proc/{pid}/stat: {started:?}"))?;
        let mut said = vec![format!("pid {pid} started on node{here}")];
        if let Outcome::Quiet(n) = p.outcome {
            let sid = last_number(&self.on(a, &format!("cat {files}.sid"), until)?)
                .context("no session id from krgcr-run")?;
            // Its own processes (the wrapper is an sh).
            let listed = self.on(
                a,
                &format!("pgrep -s {sid} {}", &p.name[..p.name.len().min(15)]),
                until,
            )?;
            let running = listed
                .lines()
                .filter(|l| l.trim().parse::<u32>().is_ok())
                .count();
            if running != n {
                bail!(
                    "{n} processes of {} expected in its session {sid}, pgrep found {listed:?}",
                    p.name
                );
            }
            said.push(format!("{n} processes"));
        }
        let away = if here == u32::from(id_b) { id_a } else { id_b };
        let migrate = |to: u32| -> Result<(String, Option<u32>)> {
            let text = self.on(
                b,
                &format!("migrate {pid} {to}; echo \"migrate exit $?\"; {stat}"),
                until,
            )?;
            // `migrate` returns once Kerrighed has the request; the process
            // moves at its next return to user space: read until then.
            let mut node = node_of(&text, nr_cpus);
            let mut last = String::new();
            let lands = within(MIGRATION_LANDS, until);
            while text.contains("migrate exit 0") && node != Some(to) && Instant::now() < lands {
                std::thread::sleep(Duration::from_millis(500));
                last = self.on(b, &stat, until)?;
                node = node_of(&last, nr_cpus);
            }
            // What it said, and where the process was last seen.
            let text = format!("{text}\nlast seen: {last}");
            if text.contains("migrate exit 0") && node != Some(to) {
                return Err(LostMoving {
                    pid,
                    said: format!(
                        "`migrate {pid} {to}` took it, and {} s later it was not there: {text:?}",
                        MIGRATION_LANDS.as_secs()
                    ),
                }
                .into());
            }
            Ok((text, node))
        };
        match p.migration {
            Migration::Moves => {
                let (text, node) = migrate(away.into())?;
                if !text.contains("migrate exit 0") || node != Some(away.into()) {
                    bail!("`migrate {pid} {away}` did not move it there: {text:?}");
                }
                match p.outcome {
                    Outcome::Signal => {
                        self.on(b, &format!("kill -USR1 {pid}"), until)?;
                    }
                    Outcome::SharedMemory => {
                        self.on(b, &format!("{program} -w{SHM_SECOND} {files}.key"), until)?;
                    }
                    _ => {}
                }
                let (text, node) = migrate(here)?;
                if !text.contains("migrate exit 0") || node != Some(here) {
                    bail!("`migrate {pid} {here}` did not bring it back: {text:?}");
                }
                said.push(format!("migrated to node{away} and back"));
            }
            Migration::Refused => {
                let (text, node) = migrate(away.into())?;
                if !text.contains(REFUSED) || node != Some(here) {
                    bail!(
                        "`migrate {pid} {away}` was to be refused ({REFUSED:?}, as Kerrighed 2.4.4 refuses it and docs/kerrighed-tests.md says): {text:?}"
                    );
                }
                said.push(format!("migrate refused ({REFUSED})"));
            }
        }
        if p.restart {
            said.push(self.checkpoint_kill_restart(pid, files, a, b, until)?);
        }
        if p.outcome == Outcome::SharedMemory {
            // The segment goes once the reader has ended (-d: IPC_RMID).
            self.on(a, &format!("{program} -d {files}.key >/dev/null"), until)?;
        }
        Ok(said.join(", "))
    }

    /// What is left of a run Kerrighed lost `p` in: its application
    /// killed, its files removed.
    fn clear_test_program(&self, p: &TestProgram, work: &str, a: usize) -> Result<()> {
        let until = within(CHECKS, self.deadline);
        let files = format!("{work}/{}", p.name);
        if let Some(sid) = last_number(&self.on(a, &format!("cat {files}.sid"), until)?) {
            self.on(a, &format!("kill -9 -{sid}; {}", session_gone(sid)), until)?;
        }
        self.on(a, &format!("rm -f {files}.* {}", output(p, work)), until)?;
        Ok(())
    }

    /// Where each VM's console is: what a program's run printed comes after.
    fn console_positions(&self) -> Vec<usize> {
        self.vms.iter().map(|t| t.vm.console.position()).collect()
    }

    /// The first VM whose console, since `from`, shows Kerrighed's own
    /// scheduler asking `pid` to move ([`scheduler_signalled`]).
    fn scheduler_moving(&self, pid: u32, from: &[usize]) -> Option<String> {
        let needle = format!(" -> {pid} (");
        self.vms
            .iter()
            .zip(from)
            .enumerate()
            .find_map(|(vm, (t, &at))| {
                let mut at = at;
                while let Some(found) = t.vm.console.find(at, &needle) {
                    if scheduler_signalled(&found.line, pid) {
                        return Some(self.name(vm));
                    }
                    at = found.end;
                }
                None
            })
    }

    /// The program's application (its wrapper's session) checkpointed on
    /// A through the program's PID (whose C/R callbacks run), killed, and
    /// restarted from B.
    fn checkpoint_kill_restart(
        &self,
        pid: u32,
        files: &str,
        a: usize,
        b: usize,
        until: Instant,
    ) -> Result<String> {
        let sid = last_number(&self.on(a, &format!("cat {files}.sid"), until)?)
            .context("no session id from krgcr-run")?;
        let taken = self.checkpoint(a, pid, until)?;
        let gone = self.on(a, &format!("kill -9 -{sid}; {}", session_gone(sid)), until)?;
        if !gone.lines().any(|l| l.trim() == "gone") {
            bail!("its application (session {sid}) outlived kill -9: {gone:?}");
        }
        // The wrapper may have seen its program killed before it was
        // itself, and written "exit 137": the exit that counts is the
        // restarted wrapper's.
        self.on(a, &format!("rm -f {files}.exit"), until)?;
        self.restart_app(b, &taken, until)?;
        self.on(b, &format!("rm -rf /var/chkpt/{}", taken.app_id), until)?;
        Ok(format!(
            "checkpointed (v{}), killed, restarted",
            taken.version
        ))
    }

    /// `path`'s text once it exists and is not empty, read on `vm` (the
    /// node waits, a second at a time, for up to 20 s a round).
    fn wait_file(&self, vm: usize, path: &str, until: Instant) -> Result<String> {
        loop {
            let text = self.on(
                vm,
                &format!("i=0; while [ ! -s {path} ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done; cat {path} 2>/dev/null"),
                until,
            )?;
            if program_lines(&text).iter().any(|l| !l.is_empty()) {
                return Ok(text);
            }
            if Instant::now() > until {
                bail!("{path} was never written");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/PID/stat of bi-cr, read in QEMU on node 131 and after
    /// `migrate` to 132 (NR_CPUS 32): its processor field says where.
    #[test]
    fn the_node_is_read_from_the_processor_field() {
        let stat = |psr: u32| {
            format!("8619420 (bi-cr) R 1 8619420 8619420 0 -1 4194304 33 0 0 0 120 0 0 0 25 0 1 0 6789 1388544 34 4294967295 134512640 134567716 3220040208 3220039600 134514036 0 0 0 0 0 0 0 17 {psr}")
        };
        assert_eq!(node_of(&stat(4192), 32), Some(131));
        assert_eq!(node_of(&stat(4224), 32), Some(132));
        // Among console noise, and a command with a space in its name.
        let noisy = format!(
            "send_kerrighed_signal: 1 (migrate) -> 8619420 (bi-cr)\n{}\n",
            stat(4225).replace("(bi-cr)", "(a b) c)")
        );
        assert_eq!(node_of(&noisy, 32), Some(132));
        assert_eq!(
            node_of("cut: /proc/1/stat: No such file or directory", 32),
            None
        );
    }

    fn by_name(name: &str) -> TestProgram {
        TEST_PROGRAMS
            .into_iter()
            .find(|p| p.name == name)
            .expect("a test program")
    }

    fn loops(pid: &str, n: u32) -> String {
        let mut out = format!("-- Enter bi ({pid}) --\n");
        for i in 0..n {
            out += &format!("({pid}) {i}\n");
        }
        out + &format!("-- End of bi ({pid}) with {n} loops --\n")
    }

    #[test]
    fn a_program_must_end_with_its_own_last_lines() {
        let bi_cr = by_name("bi-cr");
        assert_eq!(
            wrong_end(&bi_cr, &loops("5-5", LOOPS), Some("exit 0\n"), ""),
            None
        );
        // Killed half-way, or never restarted: no end line.
        let cut: String = loops("5-5", LOOPS)
            .lines()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(wrong_end(&bi_cr, &cut, Some("exit 0"), "").is_some());
        assert!(wrong_end(&bi_cr, &loops("5-5", LOOPS), Some("exit 137"), "").is_some());
        // Three threads, three ends; two would mean one was lost.
        let bi_thread = by_name("bi-thread");
        let three = [
            loops("7-8", LOOPS),
            loops("7-9", LOOPS + 1),
            loops("7-10", LOOPS),
        ]
        .concat();
        assert_eq!(wrong_end(&bi_thread, &three, Some("exit 0"), ""), None);
        let two = [loops("7-8", LOOPS), loops("7-9", LOOPS)].concat();
        assert!(wrong_end(&bi_thread, &two, Some("exit 0"), "").is_some());
    }

    #[test]
    fn bi_file_must_have_written_its_loops_in_order() {
        let bi_file = by_name("bi-file");
        let check = |file: &str| wrong_end(&bi_file, "-- Enter bi --\n", Some("exit 0"), file);
        let all: String = (0..LOOPS).map(|i| format!("{i}\n")).collect();
        assert_eq!(check(&all), None);
        // What Kerrighed 2.4.4 did, in QEMU: the lines made on the other
        // node are lost (3-6 here, moved away after 3 s, back after 5 s),
        // and once the first line as well (moved before it was written).
        assert_eq!(check("0\n1\n2\n7\n8\n9\n10\n11\n12\n13\n14\n"), None);
        assert_eq!(check("1\n2\n3\n4\n5\n6\n7\n8\n"), None);
        for wrong in [
            "",
            "0\n2\n1\n",
            "0\n3\n3\n",
            "0\n15\n",
            "0\nx\n",
            "0\n\n1\n",
        ] {
            assert!(check(wrong).is_some(), "{wrong:?} passed");
        }
        assert!(wrong_end(&bi_file, "-- Enter bi --\n", Some("exit 1"), &all).is_some());
    }

    #[test]
    fn the_shared_memory_reader_must_see_the_other_nodes_write() {
        let shm = by_name("ipcshm-tool");
        let read = |first: u32, second: u32| {
            let mut out = String::new();
            for _ in 0..first {
                out += &format!("{SHM_FIRST}\n");
            }
            for _ in 0..second {
                out += &format!("{SHM_SECOND}\n");
            }
            out
        };
        assert_eq!(wrong_end(&shm, &read(4, 26), Some("exit 0"), ""), None);
        assert!(wrong_end(&shm, &read(30, 0), Some("exit 0"), "").is_some());
        assert!(wrong_end(
            &shm,
            &format!("{SHM_SECOND}\n{}", read(3, 3)),
            Some("exit 0"),
            ""
        )
        .is_some());
    }

    #[test]
    fn a_signal_must_have_been_received() {
        let bi_signal = by_name("bi-signal");
        let got = format!("receive signal 10\n{}", loops("9-9", LOOPS));
        assert_eq!(wrong_end(&bi_signal, &got, Some("exit 0"), ""), None);
        assert!(wrong_end(&bi_signal, &loops("9-9", LOOPS), Some("exit 0"), "").is_some());
    }

    /// docs/kerrighed-tests.md has a row for every program, saying what
    /// the test expects of its migration.
    #[test]
    fn the_docs_table_says_what_the_test_expects() {
        let doc = include_str!("../../../docs/kerrighed-tests.md");
        for p in TEST_PROGRAMS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", p.name)))
                .unwrap_or_else(|| panic!("no row for {} in docs/kerrighed-tests.md", p.name));
            let word = match p.migration {
                Migration::Moves => "away and back",
                Migration::Refused => REFUSED,
            };
            assert!(
                row.contains(word),
                "{}'s row does not say {word:?}: {row}",
                p.name
            );
            assert_eq!(
                row.contains("restarted"),
                p.restart,
                "{}'s row and restart: {row}",
                p.name
            );
        }
    }

    /// A loss mid-move is told from any other failure, under the context
    /// the checks add, so that only it gets a program a second run.
    #[test]
    fn a_loss_mid_move_is_found_under_context() {
        let lost: anyhow::Error = LostMoving {
            pid: 9,
            said: "`migrate 9 131` took it".into(),
        }
        .into();
        let lost = lost.context("bi-clone-semundo").context("test programs");
        assert_eq!(
            lost_moving(&lost).map(ToString::to_string).as_deref(),
            Some("`migrate 9 131` took it")
        );
        let other = anyhow::anyhow!("`migrate 9 131` did not move it there").context("bi");
        assert!(lost_moving(&other).is_none());
    }

    /// Only the scheduler's own requests (a work queue sending) count, for
    /// the lost process only: `migrate`'s, local or from another node, and
    /// another process's do not. Lines as a CI run's consoles printed them.
    #[test]
    fn the_scheduler_is_told_from_migrate_by_the_sender() {
        let pid = 8620159;
        for line in [
            "send_kerrighed_signal: 5 (events/0) -> 8620159 (bi-double)",
            "krg@node131:~$ send_kerrighed_signal: 5 (events/0) -> 8620159 (bi-double)",
            "send_kerrighed_signal: 7 (events/1) -> 8620159 (bi-double)",
        ] {
            assert!(scheduler_signalled(line, pid), "{line}");
        }
        for line in [
            "send_kerrighed_signal: 8685648 (migrate) -> 8620159 (bi-double)",
            "send_kerrighed_signal: 8618790 (krgrpc) -> 8620159 (bi-double)",
            "send_kerrighed_signal: 5 (events/0) -> 8620161 (bi-double)",
            "send_kerrighed_signal: 5 (events/0) -> 86201590 (bi-double)",
            "echo send_kerrighed_signal",
            "(events/0) -> 8620159 (bi-double)",
        ] {
            assert!(!scheduler_signalled(line, pid), "{line}");
        }
    }
}
