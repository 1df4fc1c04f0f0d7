//! The single-system-image proof, once a Kerrighed cluster of two or more
//! nodes is up: logged in as the cluster user on two nodes' serial
//! consoles, the test checks what a Kerrighed user relies on, each step a
//! milestone that can fail:
//!
//! - `krgadm nodes` on node A lists every node booted as online;
//! - one process space: a job started on A is listed by `ps -e` on B with
//!   the same PID;
//! - migration: `migrate PID <B>` moves that job (a loop that writes, every
//!   second, its PID, a counter and the node it runs on — as it sees itself
//!   in `/proc/nodes/self` — to a file in the shared root) to B, where it
//!   goes on counting; `migrate PID <A>` brings it back;
//! - one machine: A's `/proc/cpuinfo` lists every node's processor.
//!
//! Only programs a lenny node has too are used (sh, ps, setsid, readlink,
//! grep, cat, mv, sleep, kill and Kerrighed's tools), so the proof holds for
//! the `kerrighed` profile's userland as for the static one.
//!
//! Kerrighed's rules (KERRIGHED.md): only a process with a cluster-wide PID
//! moves, so the job starts in a session of its own (`setsid`), given
//! CAN_MIGRATE ([`with_can_migrate`]); and where a process runs is what it
//! reads in `/proc/nodes/self` (`ps` is cluster-wide).

use super::timing::{within, CHECKS, JOB_RECORDS, LOAD_SPREADS, SCHEDULER_APPEARS};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Milestone, Reached, Run};

/// `commands` run in a subshell that hands CAN_MIGRATE to what it starts:
/// `krgcapset -d` changes what its parent hands on, here the subshell's.
/// The login shell hands nothing on, so that only the jobs move: had it
/// CAN_MIGRATE to hand on, every command the test types (`cat`,
/// `migrate`, `checkpoint` and the `sh -c` around it) could be moved by
/// Kerrighed's scheduler too, and one moved while it ran had its output
/// lost (CI and a local run, e2e-boot-krg:
/// `send_kerrighed_signal: 5 (events/0) -> PID (sh)` before a `checkpoint`
/// whose identifier never came).
pub(super) fn with_can_migrate(commands: &str) -> String {
    format!("( krgcapset -d +CAN_MIGRATE; {commands} )")
}

/// Where the job records itself, in the cluster user's home (shared root).
const RECORD: &str = ".krgiso-ssi";

/// Where the load-balancing jobs record themselves, one file each.
const LOAD_RECORDS: &str = ".krgiso-load";

/// What the job last wrote: its PID, its counter, the node it ran on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(crate) pid: u32,
    pub(crate) count: u64,
    pub(crate) node: String,
}

impl Record {
    /// `8618981 27 node131`, possibly among kernel messages on the console.
    pub(super) fn parse(text: &str) -> Option<Record> {
        text.lines().rev().find_map(|line| {
            let mut words = line.split_whitespace();
            let record = Record {
                pid: words.next()?.parse().ok()?,
                count: words.next()?.parse().ok()?,
                node: words.next().filter(|n| n.starts_with("node"))?.to_owned(),
            };
            words.next().is_none().then_some(record)
        })
    }
}

/// A shell loop that, every second, writes its PID, a counter and the node
/// it runs on (`/proc/nodes/self`) to `file` in the shared root. The file
/// is written in place, by the shell and then by `readlink`, with no pipe
/// and no rename: Kerrighed reopens a restarted application's files by
/// path, and a checkpoint taken while the shell held a file renamed since,
/// or a command substitution's pipe, failed `restart` (`No such file or
/// directory`, seen in QEMU). A reader may see the line half written: it
/// reads again.
pub(super) fn counting_job(file: &str) -> String {
    format!(
        "i=0; while :; do i=$((i+1)); printf \"%s %s \" $$ $i > {file}; readlink /proc/nodes/self >> {file}; sleep 1; done"
    )
}

/// Where the load-balancing jobs say they run: job PID to node, from their
/// `PID nodeN` lines (the last line of a job wins).
pub(super) fn job_places(text: &str) -> BTreeMap<u32, String> {
    text.lines()
        .filter_map(
            |l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                [pid, node] if node.starts_with("node") => {
                    Some((pid.parse().ok()?, (*node).to_owned()))
                }
                _ => None,
            },
        )
        .collect()
}

/// Whether `krgadm nodes` output says every id is online (`131:online`).
pub(super) fn all_online(listing: &str, ids: &[u8]) -> bool {
    ids.iter().all(|id| {
        listing
            .split_whitespace()
            .any(|w| w == format!("{id}:online"))
    })
}

impl Run<'_> {
    /// The proof above on the first two nodes (vms 1 and 2).
    pub(super) fn prove_single_system_image(
        &mut self,
        leases: &[(String, Ipv4Addr)],
    ) -> Result<()> {
        let ids: Vec<u8> = leases.iter().map(|(_, ip)| ip.octets()[3]).collect();
        let (a, b) = (1, 2);
        let (id_a, id_b) = (ids[0], ids[1]);
        let (user, password) = self.test.login.clone();
        let until = within(CHECKS, self.deadline);
        for vm in [a, b] {
            self.vms[vm]
                .vm
                .console
                .login(&user, &password, until)
                .with_context(|| format!("logging in on {}'s serial console", self.name(vm)))?;
        }

        let listing = self.on(a, "krgadm nodes", until)?;
        if !all_online(&listing, &ids) {
            bail!(
                "`krgadm nodes` on {} does not list every node ({ids:?}) online: {listing:?}",
                self.name(a)
            );
        }
        self.record(
            a,
            Milestone::KrgNodes,
            listing.split_whitespace().collect::<Vec<_>>().join(" "),
        );

        let file = format!("/home/{user}/{RECORD}");
        let job = counting_job(&file);
        self.on(
            a,
            &format!(
                "rm -f {file}; {}",
                with_can_migrate(&format!(
                    "setsid sh -c '{job}' </dev/null >/dev/null 2>&1 &"
                ))
            ),
            until,
        )?;
        let first = self.wait_record(a, &file, until, |r| r.node == format!("node{id_a}"))?;
        let pid = first.pid;
        // Where the job runs now, read again just before ps on the other
        // node: a job that had moved there would prove nothing.
        let before_ps = first.count;
        let current = self.wait_record(b, &file, until, |r| r.pid == pid && r.count > before_ps)?;
        if current.node != format!("node{id_a}") {
            bail!(
                "the job {pid} left {} by itself (it runs on {}) before ps on {} could show it",
                self.name(a),
                current.node,
                self.name(b)
            );
        }

        // -e -o: every process, and its arguments, with busybox's ps and
        // with procps' (lenny), whose plain ps shows only the terminal's.
        let ps = self.on(b, "ps -e -o pid,args", until)?;
        let listed = ps.lines().any(|l| {
            l.split_whitespace().next() == Some(&pid.to_string()) && l.contains("i=0; while")
        });
        if !listed {
            bail!(
                "the job {pid} started on {} is not listed by ps on {}:\n{ps}",
                self.name(a),
                self.name(b)
            );
        }
        self.record(
            b,
            Milestone::OneProcessSpace,
            format!("pid {pid} from {} listed here", self.name(a)),
        );

        let mut last = current;
        for (target, label) in [
            (id_b, Milestone::MigratedAway),
            (id_a, Milestone::MigratedBack),
        ] {
            let said = self.on(
                b,
                &format!("migrate {pid} {target}; echo \"migrate exit $?\""),
                until,
            )?;
            if !said.contains("migrate exit 0") {
                bail!(
                    "`migrate {pid} {target}` on {} failed: {said:?}",
                    self.name(b)
                );
            }
            let before = last.count;
            let moved = self
                .wait_record(b, &file, until, |r| {
                    r.pid == pid && r.node == format!("node{target}") && r.count > before
                })
                .with_context(|| {
                    format!(
                        "after `migrate {pid} {target}`, the job never said it ran on node{target}"
                    )
                })?;
            self.record(
                b,
                label,
                format!(
                    "pid {pid} on node{target}, counter {} -> {}",
                    last.count, moved.count
                ),
            );
            last = moved;
        }

        let cpus = self.on(a, "grep -c ^processor /proc/cpuinfo", until)?;
        let seen: usize = cpus
            .lines()
            .rev()
            .find_map(|l| l.trim().parse().ok())
            .with_context(|| format!("no processor count from /proc/cpuinfo: {cpus:?}"))?;
        let booted = leases.len();
        if seen != booted {
            bail!(
                "/proc/cpuinfo on {} lists {seen} processors, not the {booted} of the cluster's nodes (one each)",
                self.name(a)
            );
        }
        self.record(
            a,
            Milestone::ClusterCpus,
            format!("/proc/cpuinfo lists {seen} processors"),
        );
        self.on(a, &format!("kill {pid}"), until)?;
        Ok(())
    }

    /// Kerrighed's scheduler at work (`[cluster] scheduler = "legacy"`):
    /// `krg_legacy_scheduler` made its schedulers, then 2 × nodes
    /// CPU-bound jobs started on the first node, with no `migrate`, each
    /// writing where it runs (`/proc/nodes/self`) to the shared root, are
    /// found on every node.
    pub(super) fn prove_load_balancing(&mut self, leases: &[(String, Ipv4Addr)]) -> Result<()> {
        let a = 1;
        let user = self.test.login.0.clone();
        let until = within(CHECKS, self.deadline);
        let give_up = within(SCHEDULER_APPEARS, until);
        loop {
            // A glob, not ls: the login shell's ls may colour its names.
            let said = self.on(a, "echo /config/krg_scheduler/schedulers/*", until)?;
            let made: Vec<&str> = said
                .split_whitespace()
                .filter_map(|p| p.strip_prefix("/config/krg_scheduler/schedulers/"))
                .collect();
            if made.contains(&"mosix") && made.contains(&"rr") {
                break;
            }
            if Instant::now() > give_up {
                bail!(
                    "no Kerrighed scheduler on {}: /config/krg_scheduler/schedulers lists {made:?}, \
                     not rr and mosix (krg_legacy_scheduler's output is in the first node's /var/log/krg_legacy_scheduler.log)",
                    self.name(a)
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let jobs = 2 * leases.len();
        let dir = format!("/home/{user}/{LOAD_RECORDS}");
        let job = format!(
            "while :; do echo \"$$ $(readlink /proc/nodes/self)\" > {dir}/$$.new; mv {dir}/$$.new {dir}/$$; \
             i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; done"
        );
        self.on(
            a,
            &format!(
                "rm -rf {dir}; mkdir {dir}; {}",
                with_can_migrate(&format!(
                    "for j in $(seq {jobs}); do setsid sh -c '{job}' </dev/null >/dev/null 2>&1 & done"
                ))
            ),
            until,
        )?;
        let started = Instant::now();
        let wanted: Vec<String> = leases
            .iter()
            .map(|(_, ip)| format!("node{}", ip.octets()[3]))
            .collect();
        let give_up = within(LOAD_SPREADS, until);
        let places = loop {
            let places = job_places(&self.on(a, &format!("cat {dir}/*"), until)?);
            let everywhere = wanted.iter().all(|n| places.values().any(|p| p == n));
            if places.len() >= jobs && everywhere {
                break places;
            }
            if Instant::now() > give_up {
                let pids: Vec<String> = places.keys().map(u32::to_string).collect();
                let _ = self.on(a, &format!("kill {}", pids.join(" ")), until);
                bail!(
                    "{jobs} CPU-bound jobs started on {} did not spread over every node ({wanted:?}) in {} s: \
                     they run on {places:?}",
                    self.name(a),
                    LOAD_SPREADS.as_secs()
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        };
        let took = started.elapsed().as_secs_f64();
        let pids: Vec<String> = places.keys().map(u32::to_string).collect();
        self.on(a, &format!("kill {}; rm -rf {dir}", pids.join(" ")), until)?;
        let per_node: Vec<String> = wanted
            .iter()
            .map(|n| format!("{n} x{}", places.values().filter(|p| *p == n).count()))
            .collect();
        self.record(
            a,
            Milestone::LoadBalanced,
            format!(
                "{jobs} jobs started on {}: {} after {took:.0} s",
                self.name(a),
                per_node.join(", ")
            ),
        );
        Ok(())
    }

    pub(super) fn name(&self, vm: usize) -> String {
        self.vms[vm].vm.spec.name.clone()
    }

    /// Runs `command` in the session logged in on `vm`'s console.
    pub(super) fn on(&self, vm: usize, command: &str, until: Instant) -> Result<String> {
        self.vms[vm]
            .vm
            .console
            .run(command, until)
            .with_context(|| format!("running `{command}` on {}", self.name(vm)))
    }

    /// Reads the job's record (from `vm`) until `wanted` holds. The NFS
    /// client may show the old file for a few seconds: it is read again.
    pub(super) fn wait_record(
        &self,
        vm: usize,
        file: &str,
        until: Instant,
        wanted: impl Fn(&Record) -> bool,
    ) -> Result<Record> {
        let give_up = within(JOB_RECORDS, until);
        let mut seen = None;
        loop {
            let text = self.on(vm, &format!("cat {file}"), until)?;
            if let Some(record) = Record::parse(&text) {
                if wanted(&record) {
                    return Ok(record);
                }
                seen = Some(record);
            }
            if Instant::now() > give_up {
                bail!("the job's record in {file} stayed {seen:?}");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    pub(super) fn record(&mut self, vm: usize, milestone: Milestone, detail: String) {
        let name = self.name(vm);
        self.say(&name, &format!("{}: {detail}", milestone.label()));
        let since_power_on = self.vms[vm].vm.seconds();
        let since_start = self.started.elapsed().as_secs_f64();
        self.vms[vm].reached.push(Reached {
            vm: name,
            milestone,
            label: milestone.label(),
            since_power_on,
            since_start,
            detail,
            times_bare: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_is_placed_by_its_last_line() {
        let said = "cat /home/krg/.krgiso-load/*\r\n812 node131\r\n813 node132\r\n[ 12.3] TIPC: noise\r\n812 node132\r\nmv: can't rename\r\n";
        let places = job_places(said);
        assert_eq!(places.len(), 2);
        assert_eq!(places[&812], "node132");
        assert_eq!(places[&813], "node132");
        assert!(job_places("no jobs here\n").is_empty());
    }

    #[test]
    fn the_jobs_record_is_read_among_console_noise() {
        let text = "send_kerrighed_signal: 8684548 (migrate) -> 8618981 (sh)\n8618981 37 node132";
        assert_eq!(
            Record::parse(text),
            Some(Record {
                pid: 8618981,
                count: 37,
                node: "node132".into()
            })
        );
        assert_eq!(
            Record::parse("cat: can't open '/home/krg/.krgiso-ssi'"),
            None
        );
        assert_eq!(Record::parse("8618981 37 node132 extra"), None);
    }

    #[test]
    fn every_node_must_be_online_in_krgadm_nodes() {
        assert!(all_online("131:online\n132:online\n", &[131, 132]));
        assert!(!all_online("131:online\n132:present\n", &[131, 132]));
        assert!(!all_online("131:online\n", &[131, 132]));
    }
}
