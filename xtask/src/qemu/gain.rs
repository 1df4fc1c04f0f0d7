//! What a Kerrighed cluster is for: more work done with more nodes. A
//! fixed batch of CPU-bound jobs, 4 × the cluster's nodes, is started from
//! the first node twice in the same run, on the same cluster:
//!
//! - kept on that node: the jobs lack CAN_MIGRATE, so Kerrighed's
//!   scheduler cannot move them, and the batch has one node's CPU, as on
//!   a one-node cluster of the same image;
//! - free to move: the scheduler spreads them over every node.
//!
//! Each job counts to a fixed number in the shell, then writes where it
//! ended (`/proc/nodes/self`) to the shared root; the batch is over when
//! every job has written. The gain is the first time over the second.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::ssi::{job_places, with_can_migrate};
use super::timing::{within, CHECKS};
use super::{Milestone, Run};

/// Where the batch's jobs write, in the cluster user's home (shared root).
const GAIN_RECORDS: &str = ".krgiso-gain";

/// Jobs per node in the batch.
const JOBS_PER_NODE: usize = 4;

/// How long one job runs alone on a node, about: long enough for the
/// scheduler, which moves one process every 2 s at most, to spread the
/// batch well before its end (with 6 s jobs the spread batch lost a
/// fifth of its time to its start: 1.58x, seen in QEMU).
const JOB_SECONDS: f64 = 10.0;

/// The longest a batch may take.
const BATCH_ENDS: Duration = Duration::from_secs(400);

/// What the batch took, kept on one node and spread over the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClusterGain {
    pub(crate) nodes: usize,
    pub(crate) jobs: usize,
    /// Shell loop iterations per job.
    pub(crate) work: u64,
    pub(crate) one_node_s: f64,
    pub(crate) cluster_s: f64,
    /// How many jobs ended on each node, in the spread batch.
    pub(crate) spread: BTreeMap<String, usize>,
}

impl ClusterGain {
    /// How many times faster the cluster did the batch.
    pub(crate) fn ratio(&self) -> f64 {
        self.one_node_s / self.cluster_s
    }
}

/// The job: count to `work`, then say where it ended, as `PID nodeN`.
fn job(work: u64, dir: &str) -> String {
    format!(
        "i=0; while [ $i -lt {work} ]; do i=$((i+1)); done; echo \"$$ $(readlink /proc/nodes/self)\" > {dir}/$$.new; mv {dir}/$$.new {dir}/$$"
    )
}

/// Iterations for a job of [`JOB_SECONDS`], from a count of `counted`
/// that took `seconds`; at least 10,000.
fn work_for(counted: u64, seconds: f64) -> u64 {
    let rate = counted as f64 / seconds.max(0.001);
    ((rate * JOB_SECONDS) as u64).max(10_000)
}

impl Run<'_> {
    /// The batch timed kept on the first node, then spread over the
    /// cluster; recorded as [`Milestone::ClusterGain`] and in the report.
    pub(super) fn measure_cluster_gain(&mut self, leases: &[(String, Ipv4Addr)]) -> Result<()> {
        let a = 1;
        let until = within(CHECKS + 2 * BATCH_ENDS, self.deadline);
        // How fast this node counts, under this host's load: timed from
        // here, around one console command.
        let counted = 100_000;
        let t = Instant::now();
        self.on(
            a,
            &format!("i=0; while [ $i -lt {counted} ]; do i=$((i+1)); done"),
            until,
        )?;
        let work = work_for(counted, t.elapsed().as_secs_f64());
        let nodes = leases.len();
        let jobs = JOBS_PER_NODE * nodes;
        let here = self.on(a, "readlink /proc/nodes/self", until)?;
        let here = here.trim().to_owned();

        let (one_node_s, kept) = self.timed_batch(jobs, work, false, until)?;
        let elsewhere: Vec<&String> = kept.values().filter(|n| **n != here).collect();
        ensure!(
            elsewhere.is_empty(),
            "jobs without CAN_MIGRATE left {here}: they ended on {elsewhere:?}"
        );
        let (cluster_s, spread) = self.timed_batch(jobs, work, true, until)?;
        let mut per_node = BTreeMap::new();
        for node in spread.values() {
            *per_node.entry(node.clone()).or_insert(0) += 1;
        }
        ensure!(
            per_node.len() >= 2,
            "the batch free to move ended on {per_node:?} only: Kerrighed's scheduler did not spread it"
        );
        let gain = ClusterGain {
            nodes,
            jobs,
            work,
            one_node_s,
            cluster_s,
            spread: per_node,
        };
        let spread: Vec<String> = gain
            .spread
            .iter()
            .map(|(node, n)| format!("{node} x{n}"))
            .collect();
        self.record(
            a,
            Milestone::ClusterGain,
            format!(
                "{jobs} jobs of {work} iterations from {}: {one_node_s:.1} s kept on {here}, {cluster_s:.1} s over {nodes} nodes ({}): {:.2}x",
                self.name(a),
                spread.join(", "),
                gain.ratio()
            ),
        );
        self.cluster_gain = Some(gain);
        Ok(())
    }

    /// Starts `jobs` jobs from the first node, with CAN_MIGRATE or
    /// without, and waits for all to end: the seconds, and where each
    /// ended.
    fn timed_batch(
        &self,
        jobs: usize,
        work: u64,
        migrate: bool,
        until: Instant,
    ) -> Result<(f64, BTreeMap<u32, String>)> {
        let a = 1;
        let user = self.test.login.0.clone();
        let dir = format!("/home/{user}/{GAIN_RECORDS}");
        self.on(a, &format!("rm -rf {dir}; mkdir {dir}"), until)?;
        let job = job(work, &dir);
        // The login shell hands on no CAN_MIGRATE: kept, the jobs cannot move.
        let batch = format!(
            "for j in $(seq {jobs}); do setsid sh -c '{job}' </dev/null >/dev/null 2>&1 & done"
        );
        let batch = if migrate {
            with_can_migrate(&batch)
        } else {
            batch
        };
        let started = Instant::now();
        self.on(a, &batch, until)?;
        let give_up = within(BATCH_ENDS, until);
        loop {
            // Only the finished names: `PID`, not `PID.new`.
            let done = self.on(a, &format!("ls {dir} | grep -cv new"), until)?;
            let done: usize = done.trim().parse().unwrap_or(0);
            if done >= jobs {
                break;
            }
            if Instant::now() > give_up {
                bail!(
                    "{done} of {jobs} jobs ({}) ended within {} s",
                    if migrate {
                        "free to move"
                    } else {
                        "kept on one node"
                    },
                    BATCH_ENDS.as_secs()
                );
            }
            // Each look takes some of the first node's CPU.
            std::thread::sleep(Duration::from_secs(1));
        }
        let seconds = started.elapsed().as_secs_f64();
        let places = job_places(&self.on(a, &format!("cat {dir}/*"), until)?);
        self.on(a, &format!("rm -rf {dir}"), until)?;
        ensure!(
            places.len() == jobs,
            "{jobs} jobs ended, but {} said where: {places:?}",
            places.len()
        );
        Ok((seconds, places))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_for_about_job_seconds_whatever_the_machine() {
        // 100,000 iterations in 2 s: 50,000 a second, 10 s of them.
        assert_eq!(work_for(100_000, 2.0), 500_000);
        assert_eq!(work_for(100_000, 0.5), 2_000_000);
        // A reading that makes no sense still gives a job that counts.
        assert_eq!(work_for(100_000, 1e9), 10_000);
        assert_eq!(work_for(100_000, 0.0), 1_000_000_000);
    }

    /// The job run by a real sh (the host's, without /proc/nodes): it
    /// counts, then leaves one file named by its PID that starts with it,
    /// and the count the test polls with sees it only then.
    #[test]
    fn a_job_leaves_one_finished_record_named_by_its_pid() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().display().to_string();
        let count = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("ls {dir} | grep -cv new"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(count(), "0");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(job(2000, &dir))
            .status()
            .unwrap();
        assert!(status.success());
        let names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let pid: u32 = names[0].parse().unwrap();
        let text = std::fs::read_to_string(t.path().join(&names[0])).unwrap();
        assert!(text.starts_with(&format!("{pid} ")), "{text:?}");
        assert_eq!(count(), "1");
    }
}
