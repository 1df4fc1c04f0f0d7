//! The boot test's waits and VM sizes, named once. Every wait is also
//! bounded by the run's own deadline (`--timeout`): [`within`].

use std::time::{Duration, Instant};

/// A group of checks run over a console once a milestone is seen
/// (logging in, the nodes' root, the cluster proof, a reboot).
pub(crate) const CHECKS: Duration = Duration::from_secs(300);
/// The status page asked again until every row is whole.
pub(crate) const STATUS_PAGE_SETTLES: Duration = Duration::from_secs(60);
/// A fresh login prompt, asked for again after each wait this long.
pub(crate) const PROMPT_ANSWERS: Duration = Duration::from_secs(10);
/// sudo's password prompt.
pub(crate) const SUDO_ASKS: Duration = Duration::from_secs(30);
/// A job's record on the shared root saying what the proof waits for.
pub(crate) const JOB_RECORDS: Duration = Duration::from_secs(90);
/// Kerrighed's scheduler, set up once the cluster is up (its first node
/// runs krg_legacy_scheduler), then spreading CPU-bound jobs over every
/// node: the mosix balancer moves one every 2 s at most.
pub(crate) const SCHEDULER_APPEARS: Duration = Duration::from_secs(60);
pub(crate) const LOAD_SPREADS: Duration = Duration::from_secs(120);

/// A node powered on once the cluster runs, saying it was left out: after
/// the profile's settle time, its boot's own stragglers, and this.
pub(crate) const LEFT_OUT_SAID: Duration = Duration::from_secs(60);

/// A program started by the test, running (exec'd).
pub(crate) const PROGRAM_STARTS: Duration = Duration::from_secs(20);
/// A process `migrate` was told to move, on its new node. bi-clone-semundo
/// moving back was still in D state, mid-move, after 15 s (1 run in 5).
pub(crate) const MIGRATION_LANDS: Duration = Duration::from_secs(30);
/// One of Kerrighed's test programs, moved and restarted, at its end.
pub(crate) const PROGRAM_ENDS: Duration = Duration::from_secs(90);

/// Killed processes gone from `ps`, reaped by their parents or init.
pub(crate) const ZOMBIES_REAPED: Duration = Duration::from_secs(20);

/// node1: 2 vCPUs and 2 GiB, a small server of today.
pub(crate) const NODE1_CPUS: u32 = 2;
pub(crate) const NODE1_MEMORY_MIB: u32 = 2048;
/// A PXE node: 1 vCPU and 1 GiB, so that several fit on a 2-core host.
pub(crate) const NODE_CPUS: u32 = 1;
pub(crate) const NODE_MEMORY_MIB: u32 = 1024;

/// `wait` from now, but never after `deadline`.
pub(crate) fn within(wait: Duration, deadline: Instant) -> Instant {
    (Instant::now() + wait).min(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_at_the_deadline_when_that_comes_first() {
        let now = Instant::now();
        let soon = now + Duration::from_secs(5);
        assert_eq!(within(CHECKS, soon), soon);
        let later = now + Duration::from_secs(3600);
        let until = within(PROMPT_ANSWERS, later);
        assert!(until < later && until >= now + PROMPT_ANSWERS);
    }
}
