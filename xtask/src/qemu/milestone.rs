//! What the boot test watches for: each VM's milestones in boot order (a
//! console line from the real program, a packet on the cluster link),
//! what a profile's nodes go through, and the report with its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::profile::{KernelKind, Profile, Toolchain, Userland};

use super::boot_time::BootTime;
use super::vm::{Machine, Vm};

/// The steps a VM goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Milestone {
    /// node1: its kernel prints its banner.
    KernelUp,
    /// node1: the krgiso status line.
    Ready,
    /// A node: a DHCP ACK from node1 for its MAC.
    Lease,
    /// A node: iPXE runs (it asks for its boot script over TFTP).
    BootScript,
    /// A node: iPXE asks node1's web server for the kernel.
    KernelLoaded,
    /// A node: the kernel runs.
    NodeKernelUp,
    /// A Kerrighed node: TIPC, Kerrighed's communication layer, is up.
    Tipc,
    /// A Kerrighed node: the kernel took its node id from its address.
    KrgNodeId,
    /// A Kerrighed node: the kernel mounted its NFS root.
    RootMounted,
    /// A Kerrighed node: kerrighed.ko loaded, with the profile's session.
    KrgLoaded,
    /// A node: its NFS root is mounted and took a write.
    NfsRootRw,
    /// A node: a login prompt on its serial console.
    MultiUser,
    /// A Kerrighed node: the cluster started with every node the test booted.
    ClusterUp,
    /// A Kerrighed node: node1's cluster key opens an ssh session on it.
    SshFromNode1,
    /// A node: what it wrote before node1's NFS server restarted is still
    /// there, and its next write after succeeds.
    NfsRestart,
    /// node1 powered on again: its lease table is the one from before.
    LeasesKept,
    /// A node that ran through node1's power-off: its next write succeeds,
    /// what it wrote before is there.
    CarriedOn,
    /// A node powered on again: the same address as before.
    SameAddress,
    /// The cluster: `krgadm nodes` lists every node online.
    KrgNodes,
    /// The cluster: a job started on one node is listed, same PID, on another.
    OneProcessSpace,
    /// The cluster: `migrate` moved the job to the other node, still counting.
    MigratedAway,
    /// The cluster: `migrate` brought it back.
    MigratedBack,
    /// The cluster: one node's /proc/cpuinfo lists every node's processor.
    ClusterCpus,
}

impl Milestone {
    pub(super) fn label(self) -> &'static str {
        match self {
            Milestone::KernelUp | Milestone::NodeKernelUp => "kernel up",
            Milestone::Ready => "status line",
            Milestone::Lease => "lease from node1",
            Milestone::BootScript => "iPXE asked for its script",
            Milestone::KernelLoaded => "kernel asked for over HTTP",
            Milestone::Tipc => "TIPC up",
            Milestone::KrgNodeId => "Kerrighed node id",
            Milestone::RootMounted => "NFS root mounted",
            Milestone::KrgLoaded => "Kerrighed loaded",
            Milestone::ClusterUp => "cluster up",
            Milestone::SshFromNode1 => "ssh from node1",
            Milestone::NfsRestart => "NFS server restart survived",
            Milestone::LeasesKept => "leases kept across the reboot",
            Milestone::CarriedOn => "carried on through node1's reboot",
            Milestone::SameAddress => "same address after a power cycle",
            Milestone::KrgNodes => "krgadm nodes: all online",
            Milestone::OneProcessSpace => "one process space",
            Milestone::MigratedAway => "process migrated away",
            Milestone::MigratedBack => "process migrated back",
            Milestone::ClusterCpus => "cluster-wide /proc/cpuinfo",
            Milestone::NfsRootRw => "NFS root mounted rw",
            Milestone::MultiUser => "multi-user (login prompt)",
        }
    }
}

pub(super) const NODE1_STEPS: &[Milestone] = &[Milestone::KernelUp, Milestone::Ready];

pub(super) const STOCK_NODE_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::BootScript,
    Milestone::KernelLoaded,
    Milestone::NodeKernelUp,
    Milestone::NfsRootRw,
    Milestone::MultiUser,
];

pub(super) const KRG_NODE_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::BootScript,
    Milestone::KernelLoaded,
    Milestone::NodeKernelUp,
    Milestone::Tipc,
    Milestone::KrgNodeId,
    Milestone::RootMounted,
    Milestone::KrgLoaded,
    Milestone::NfsRootRw,
    Milestone::MultiUser,
    Milestone::ClusterUp,
];

/// The Kerrighed kernel's own steps: up to the root it mounts.
pub(super) const KRG_KERNEL_STEPS: &[Milestone] = KRG_NODE_STEPS.split_at(7).0;

/// What the PXE nodes boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodesBoot {
    /// Debian's amd64 kernel with an NFS-root initramfs, on a 64-bit PC.
    Stock,
    /// The i386 Kerrighed kernel (NIC and NFS root built in), on a 32-bit
    /// PC. `userland`: the nodes root has programs that run on 2.6.20, so
    /// the node loads Kerrighed, writes its report and offers a login; with
    /// `nbmin` nodes up the cluster starts (in `session`).
    Kerrighed {
        userland: bool,
        session: u8,
        nbmin: u16,
    },
}

impl NodesBoot {
    pub(crate) fn of(profile: &Profile) -> NodesBoot {
        match profile.kernel.kind {
            KernelKind::Stock => NodesBoot::Stock,
            // lenny's userland runs on 2.6.20, and so do static programs;
            // a current Debian root's glibc refuses to (KERRIGHED.md), and
            // such nodes stop after mounting their root.
            KernelKind::Kerrighed => NodesBoot::Kerrighed {
                userland: profile.kernel.toolchain == Toolchain::Era
                    || profile.nodes.userland == Userland::Static,
                session: profile.cluster.session,
                nbmin: profile.cluster.nbmin,
            },
        }
    }

    /// What each of `nodes` nodes must pass: the cluster starts only with
    /// nbmin of them.
    pub(super) fn steps(self, nodes: u32) -> &'static [Milestone] {
        match self {
            NodesBoot::Stock => STOCK_NODE_STEPS,
            NodesBoot::Kerrighed {
                userland: false, ..
            } => KRG_KERNEL_STEPS,
            NodesBoot::Kerrighed { nbmin, .. } if nodes >= u32::from(nbmin) => KRG_NODE_STEPS,
            NodesBoot::Kerrighed { .. } => KRG_NODE_STEPS.split_at(KRG_NODE_STEPS.len() - 1).0,
        }
    }

    pub(super) fn machine(self) -> Machine {
        match self {
            NodesBoot::Stock => Machine::Pc64,
            NodesBoot::Kerrighed { .. } => Machine::Pc32,
        }
    }
}

/// A milestone reached: seconds since the VM's power-on and since the start.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reached {
    pub vm: String,
    pub milestone: Milestone,
    pub label: &'static str,
    pub since_power_on: f64,
    pub since_start: f64,
    pub detail: String,
}

/// A VM powered on again during a run, not by the test's plan (a KVM that
/// failed, an emulated CPU that stalled): said in the report, so a run
/// that needed it is never read as a clean one.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoweredOnAgain {
    pub vm: String,
    pub why: String,
    pub since_start: f64,
}

/// What the boot test saw.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub firmware: String,
    pub accel: String,
    pub nodes: u32,
    pub reached: Vec<Reached>,
    pub node1_status: String,
    pub leases: BTreeMap<String, String>,
    pub seconds: f64,
    /// Where each VM's boot went, as its init measured it (node1, and one
    /// node when the nodes run systemd).
    pub boot_times: BTreeMap<String, BootTime>,
    /// Every VM powered on again, and why.
    pub powered_on_again: Vec<PoweredOnAgain>,
}

/// One VM and how far it got.
pub(super) struct Tracked {
    pub(super) vm: Vm,
    pub(super) steps: &'static [Milestone],
    pub(super) reached: Vec<Reached>,
    /// Console position where the current boot's kernel banner ends.
    pub(super) kernel_at: usize,
    /// How many hub packets were seen before this VM was powered on: its
    /// lease and fetches are looked for after them (a VM powered on again
    /// must not be credited with its earlier boot's).
    pub(super) seen_from: usize,
}

impl Tracked {
    pub(super) fn has(&self, m: Milestone) -> bool {
        self.reached.iter().any(|r| r.milestone == m)
    }
    pub(super) fn done(&self) -> bool {
        self.steps.iter().all(|&m| self.has(m))
    }
    pub(super) fn next(&self) -> Option<Milestone> {
        self.steps.iter().copied().find(|&m| !self.has(m))
    }
    pub(super) fn detail(&self, m: Milestone) -> &str {
        self.reached
            .iter()
            .find(|r| r.milestone == m)
            .map_or("", |r| r.detail.as_str())
    }
}

/// What the Kerrighed kernel prints when KRG_AUTONODEID sets the node id.
pub(super) const KRG_NODE_ID: &str = "Automatic setting of kerrighed_node_id:";

/// A console line from the krgiso marker on (a log prefix cut off).
pub(super) fn from_marker(line: &str) -> String {
    from_word(line, "krgiso:")
}

/// A console line from `word` on.
pub(super) fn from_word(line: &str, word: &str) -> String {
    line[line.find(word).unwrap_or(0)..].trim_end().to_owned()
}

pub(super) fn first_words(line: &str, n: usize) -> String {
    let at = line.find("Linux version").unwrap_or(0);
    line[at..]
        .split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn print_table(report: &Report) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<7} {:<28} {:>10} {:>10}",
        "vm", "milestone", "power-on", "start"
    );
    for r in &report.reached {
        let _ = writeln!(
            out,
            "{:<7} {:<28} {:>9.1}s {:>9.1}s",
            r.vm, r.label, r.since_power_on, r.since_start
        );
    }
    print!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{node_mac, NODE1_CLUSTER};

    #[test]
    fn each_profile_boots_its_nodes_on_its_pc_with_its_milestones() {
        let load = |name: &str| {
            Profile::load(&crate::project_root().join(format!("profiles/{name}.toml"))).unwrap()
        };
        let smoke = NodesBoot::of(&load("smoke"));
        assert_eq!(smoke, NodesBoot::Stock);
        assert_eq!(smoke.machine().program(), "qemu-system-x86_64");
        assert!(smoke.steps(2).contains(&Milestone::MultiUser));
        assert!(!smoke.steps(2).contains(&Milestone::Tipc));
        // lenny's userland runs on 2.6.20, and so does the static one.
        for name in ["kerrighed-2.4.1-lenny", "kerrighed-2.4.4"] {
            let krg = NodesBoot::of(&load(name));
            assert_eq!(
                krg,
                NodesBoot::Kerrighed {
                    userland: true,
                    session: 1,
                    nbmin: 2
                },
                "{name}"
            );
            assert_eq!(krg.machine().program(), "qemu-system-i386");
            for m in [
                Milestone::Tipc,
                Milestone::KrgNodeId,
                Milestone::RootMounted,
                Milestone::KrgLoaded,
                Milestone::NfsRootRw,
                Milestone::MultiUser,
            ] {
                assert!(krg.steps(1).contains(&m), "{name}: {m:?}");
            }
            // nbmin = 2: one node alone never starts the cluster.
            assert!(!krg.steps(1).contains(&Milestone::ClusterUp));
            assert_eq!(krg.steps(2).last(), Some(&Milestone::ClusterUp));
        }
        // A Debian root of today on the 2.6.20 kernel: up to its root.
        let mut glibc = load("kerrighed-2.4.4");
        glibc.nodes.userland = Userland::Debian;
        let bare = NodesBoot::of(&glibc);
        assert_eq!(bare.steps(2).last(), Some(&Milestone::RootMounted));
    }

    #[test]
    fn milestones_come_in_boot_order() {
        for steps in [STOCK_NODE_STEPS, KRG_KERNEL_STEPS, KRG_NODE_STEPS] {
            let mut sorted = steps.to_vec();
            sorted.sort();
            assert_eq!(sorted, steps);
        }
        assert_eq!(node_mac(2).to_string(), "52:54:00:77:00:02");
        assert_ne!(node_mac(2), NODE1_CLUSTER);
    }
}
