//! Checkpoint and restart, as a Kerrighed user does them (`checkpoint`,
//! `restart`, KERRIGHED.md): a counting job started on node A under
//! `krgcr-run` (which makes its application checkpointable) is
//! moved to node B with `migrate`, checkpointed there, goes on counting,
//! and its whole application is killed. `restart`, run on node A, must
//! bring it back with its own PID, counting on from the checkpointed
//! value: above what it had counted before the checkpoint, below what it
//! had counted at the kill. Kerrighed 2.4.4 restarts each process on the
//! node it was checkpointed on while that node is in the cluster
//! (`global_init_restart()`, app_restart.c): B, where the job goes on
//! counting.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::ssi::{counting_job, with_can_migrate, Record};
use super::timing::{within, CHECKS, ZOMBIES_REAPED};
use super::{Milestone, Run};

/// Where the job records itself, in the cluster user's home.
const RECORD: &str = ".krgiso-cr";
/// What `checkpoint` says when a process of the application is a zombie.
const ZOMBIE_REFUSED: &str = "can not checkpoint an application with dead/zombie process";
/// How many times `checkpoint` is asked while it says that.
const CHECKPOINT_TRIES: u32 = 5;

/// What `checkpoint` printed: the application's id and the version it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub(super) app_id: u32,
    pub(super) version: u32,
}

impl Checkpoint {
    /// `Identifier: 8619342` and `Version: 1` lines among kernel messages.
    pub(super) fn parse(said: &str) -> Option<Checkpoint> {
        let value = |key: &str| {
            said.lines()
                .find_map(|l| l.trim().strip_prefix(key)?.trim().parse().ok())
        };
        Some(Checkpoint {
            app_id: value("Identifier:")?,
            version: value("Version:")?,
        })
    }
}

/// `checkpoint ARGS` as the test runs it, then its exit status; `what`
/// says which. It must stay where it runs: Kerrighed's scheduler once moved
/// the `checkpoint` tool while it waited, and it exited 0 with every line
/// it printed lost (CI, e2e-boot-krg, `send_kerrighed_signal: 5
/// (events/0) -> PID (checkpoint)`). The login shell hands it no
/// CAN_MIGRATE: only the jobs get it ([`with_can_migrate`]).
fn checkpoint_command(args: &str, what: &str) -> String {
    format!("checkpoint {args}; echo \"{what} exit $?\"")
}

impl Run<'_> {
    /// The proof above, on nodes A and B (vms 1 and 2, logged in).
    pub(super) fn prove_checkpoint_restart(&mut self, id_a: u8, id_b: u8) -> Result<()> {
        let (a, b) = (1, 2);
        let until = within(CHECKS, self.deadline);
        let user = self.test.login.0.clone();
        let file = format!("/home/{user}/{RECORD}");
        let job = counting_job(&file);
        let node_b = format!("node{id_b}");
        // -b: krgcr-run returns once the job runs, in a session of its own
        // whose id (the application's root PID) it writes to FILE.sid.
        self.on(
            a,
            &format!(
                "rm -f {file} {file}.sid; {}",
                with_can_migrate(&format!(
                    "krgcr-run -b -q -o {file}.sid -- sh -c '{job}' </dev/null >/dev/null 2>&1"
                ))
            ),
            until,
        )?;
        let started = self.wait_record(a, &file, until, |r| r.count >= 2)?;
        let pid = started.pid;
        // Moved to B before its checkpoint, so that `restart` brings it
        // back there and nothing moves it after: a restarted job moved
        // with `migrate` oopsed Kerrighed 2.4.4 at its next fork
        // (docs/nodes-userland.md).
        let said = self.on(
            a,
            &format!("migrate {pid} {id_b}; echo \"migrate exit $?\""),
            until,
        )?;
        if !said.contains("migrate exit 0") {
            bail!("`migrate {pid} {id_b}` of the job failed: {said:?}");
        }
        let before = self.wait_record(b, &file, until, |r| {
            r.node == node_b && r.count > started.count
        })?;
        let taken = self.checkpoint(b, pid, until)?;
        let after = self.wait_record(b, &file, until, |r| r.count > before.count)?;
        // Counted well past the checkpoint, then the whole application
        // (its session: the job and its sleep) killed.
        let last = self.wait_record(b, &file, until, |r| r.count >= after.count + 8)?;
        self.on(b, &format!("kill -9 -{pid}"), until)?;
        let killed = self.wait_still(b, &file, until)?;
        if killed.count < last.count {
            bail!(
                "the job's record went back from {} to {} before any restart",
                last.count,
                killed.count
            );
        }

        self.restart_app(a, &taken, until)?;
        let resumed = self
            .wait_record(a, &file, until, |r| r.count < killed.count)
            .with_context(|| {
                format!(
                    "after `restart`, the job never counted again from below {}",
                    killed.count
                )
            })?;
        if resumed.pid != pid || resumed.count <= before.count {
            bail!(
                "after `restart`, the job says {resumed:?}: not pid {pid} counting on from the checkpoint (taken between {} and {})",
                before.count,
                after.count
            );
        }
        let counting = self.wait_record(a, &file, until, |r| {
            r.node == node_b && r.count > resumed.count + 1
        })?;
        self.on(
            a,
            &format!(
                "kill -9 -{pid}; rm -rf {file} {file}.sid /var/chkpt/{}",
                taken.app_id
            ),
            until,
        )?;
        self.no_zombies(a, until)?;
        self.record(
            a,
            Milestone::CheckpointRestart,
            format!(
                "pid {pid} started on node{id_a}, migrated to {node_b}, checkpointed there at {}..{}, killed at {}, restarted from here at {}, counting {} on {} (its checkpoint's node)",
                before.count, after.count, killed.count, resumed.count, counting.count, counting.node
            ),
        );
        Ok(())
    }

    /// `checkpoint PID`, run on `vm`: the application PID belongs to. As
    /// Kerrighed's own tests do, PID is a process of the program itself:
    /// `checkpoint` runs its C/R callbacks by signalling that very PID
    /// (libkrgcb's `cr_execute_chkpt_callbacks()`) and waits for their
    /// answer. Kerrighed refuses an application while one of its processes
    /// is a zombie not yet reaped (a shell's child that has just ended):
    /// asked again a second later, as a user would, a few times.
    pub(super) fn checkpoint(&self, vm: usize, pid: u32, until: Instant) -> Result<Checkpoint> {
        let mut tries = 0;
        loop {
            tries += 1;
            let said = self.on(
                vm,
                &checkpoint_command(&pid.to_string(), "checkpoint"),
                until,
            )?;
            if said.contains("checkpoint exit 0") {
                if let Some(taken) = Checkpoint::parse(&said) {
                    return Ok(taken);
                }
                bail!(
                    "`checkpoint {pid}` on {} exited 0 but printed no identifier and version (its output lost?): {said:?}",
                    self.name(vm)
                );
            }
            if !said.contains(ZOMBIE_REFUSED) || tries == CHECKPOINT_TRIES {
                bail!(
                    "`checkpoint {pid}` on {} failed (try {tries}): {said:?}",
                    self.name(vm)
                );
            }
            // A freeze that meets a zombie gives up without thawing what it
            // had frozen (checkpoint.c: freeze_checkpoint_unfreeze() thaws
            // only after a failed checkpoint, not a failed freeze). The
            // shell then never reaps its child, and every later try met the
            // same zombie (CI rehearsal 11: five tries, a `readlink` of the
            // job frozen mid-exit). Thawed as a user would, with no signal:
            // `checkpoint -u` (what it says, of an application not frozen,
            // does not matter).
            self.on(
                vm,
                &checkpoint_command(&format!("-u {pid}"), "unfreeze"),
                until,
            )?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// `restart` of `taken`, run on `vm`.
    pub(super) fn restart_app(&self, vm: usize, taken: &Checkpoint, until: Instant) -> Result<()> {
        let (id, version) = (taken.app_id, taken.version);
        let said = self.on(
            vm,
            &format!("restart {id} {version}; echo \"restart exit $?\""),
            until,
        )?;
        if said.contains("restart exit 0") {
            return Ok(());
        }
        bail!(
            "`restart {id} {version}` on {} failed: {said:?}",
            self.name(vm)
        )
    }

    /// Every process the test killed is reaped: its orphans are init's,
    /// and busybox's init on 2.6.20 reaped none before krgiso's SIGCHLD
    /// fix (stages/userland.rs), which also kept `restart` from working.
    fn no_zombies(&self, vm: usize, until: Instant) -> Result<()> {
        let give_up = within(ZOMBIES_REAPED, until);
        loop {
            // ps is cluster-wide: every node's processes.
            let ps = self.on(vm, "ps -e -o stat,pid,ppid,comm", until)?;
            let zombies: Vec<&str> = ps
                .lines()
                .filter(|l| l.trim_start().starts_with('Z'))
                .collect();
            if zombies.is_empty() {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!("zombies left in the cluster (nobody reaps them): {zombies:?}");
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }

    /// The record once it has stopped changing (the job is gone).
    fn wait_still(&self, vm: usize, file: &str, until: Instant) -> Result<Record> {
        let mut seen = None;
        loop {
            let text = self.on(vm, &format!("cat {file}; sleep 3; cat {file}"), until)?;
            let records: Vec<Record> = text.lines().filter_map(Record::parse).collect();
            if let [.., x, y] = records.as_slice() {
                if x == y {
                    return Ok(y.clone());
                }
            }
            if Instant::now() > until {
                bail!("the killed job's record in {file} kept changing: {seen:?}");
            }
            seen = records.last().cloned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What 2.4.4's `checkpoint` printed in QEMU, kernel messages and all.
    #[test]
    fn the_application_and_version_are_read_from_checkpoints_output() {
        let said = "Freezing application in which process 8619342 is involved...\r\n\
            send_kerrighed_signal: 8618907 (krgrpc) -> 8619342 (sh)\r\n\
            Checkpointing application in which process 8619342 is involved...\r\n\
            Identifier: 8619342\r\nVersion: 1\r\nDescription: No description\r\n\
            Unfreezing application in which process 8619342 is involved...\r\ncheckpoint exit 0\r\n";
        assert_eq!(
            Checkpoint::parse(said),
            Some(Checkpoint {
                app_id: 8619342,
                version: 1
            })
        );
        assert_eq!(
            Checkpoint::parse(
                "checkpoint: can not checkpoint an application with dead/zombie process\n"
            ),
            None
        );
    }
}
