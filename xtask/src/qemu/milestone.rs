//! What the boot test watches for: each VM's milestones in boot order (a
//! console line from the real program, a packet on the cluster link),
//! what a profile's nodes go through, and the report with its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::node1::render::{BOOT_SCRIPT, EFI_BOOT_LOADER, ID_CLASH_LINE, NEEDS_BIOS_LINE};
use crate::profile::{KernelKind, Profile, Toolchain, Userland};

use super::boot_time::BootTime;
use super::checks::{fetched, Fetch};
use super::console::Console;
use super::frame::{Mac, Packet, DHCP_ACK};
use super::hub::Seen;
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
    /// A UEFI node: its firmware loads iPXE's EFI build by TFTP.
    EfiLoader,
    /// A node: iPXE runs (it asks for its boot script over TFTP).
    BootScript,
    /// A UEFI node on a Kerrighed image: the boot script tells it, on its
    /// screen, that it needs legacy BIOS (CSM) to run the Kerrighed kernel.
    NeedsBios,
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
    /// A Kerrighed node whose id another node or node1 has (proxy mode,
    /// addresses from the LAN's server): it says so, from node1's words,
    /// and stays out of the cluster (id_clash.rs).
    IdClash,
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
    /// node1 on a LAN with its own DHCP server: a host of that LAN that
    /// did not PXE-boot has its NFS mount of the nodes' root refused, and
    /// granted once it fetched the boot script.
    ExportToBootedOnly,
    /// node1 powered on again after a power cut: every file a node had
    /// acknowledged as written (fsync) just before it is whole.
    WritesKept,
    /// A node tried a service on node1's uplink: reached through node1 with
    /// `[network] gateway = true`, not reached with `false` (uplink.rs).
    Gateway,
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
    /// The cluster: CPU-bound jobs started on one node, with no `migrate`,
    /// run on every node (Kerrighed's scheduler moved them).
    LoadBalanced,
    /// The cluster: a batch of CPU-bound jobs ended sooner spread over
    /// every node than kept on one (gain.rs).
    ClusterGain,
    /// The cluster: a job started under `krgcr-run` is checkpointed,
    /// killed, and `restart`ed from the other node, counting on from the
    /// checkpoint (checkpoint.rs).
    CheckpointRestart,
    /// The cluster: Kerrighed's own test programs (tests/apps) migrated
    /// away and back or refused as documented, some checkpointed and
    /// restarted, each ending as it says it ends (test_programs.rs).
    TestPrograms,
    /// A Kerrighed node powered on once the cluster ran: it stays out
    /// (its own Kerrighed says down, the members do not list it online),
    /// and node1's status page says it was left out.
    LeftOut,
    /// A member's QEMU killed under the running cluster: every survivor's
    /// watch says it was lost and resets its node by sysrq, and node1's
    /// status page names it lost (lost.rs).
    MemberLost,
    /// The survivors, PXE-booted again, form the cluster without the lost
    /// member; what it wrote and synced before is whole.
    FormedAgain,
    /// The lost member powered on again: every member takes it back
    /// (resets), and the cluster forms again with it.
    TakenBack,
}

/// How the boot test sees a milestone happen: something the real
/// program printed on the VM's console, or a packet on the cluster link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sign {
    /// The kernel's banner (the first "Linux version" line); later lines
    /// are looked for after it. Its detail: the first three words.
    Banner,
    /// A console line after the banner holding `pattern` (and, if `with`,
    /// once another holds that too).
    Line {
        pattern: &'static str,
        with: Option<&'static str>,
        detail: Detail,
    },
    /// `text` printed after the banner, not necessarily a whole line (a
    /// prompt waits for an answer without a newline).
    Prompt(&'static str),
    /// node1's DHCP ACK for the VM's MAC; its detail is the address.
    Lease,
    /// The VM fetching a file whose name holds `name`.
    Fetch(Fetch, &'static str),
    /// Not watched for: a command in node1's session checks it once the
    /// VMs are up (checks.rs, reboot.rs, ssi.rs).
    Checked,
}

/// What a console milestone keeps of its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    /// The line from this word on.
    From(&'static str),
    /// What follows this word.
    After(&'static str),
}

/// A bench target read from a boot test's report (bench.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BenchTarget {
    pub(crate) what: &'static str,
    /// The target, from the VM's power-on (2-core machine, TCG), in `unit`.
    pub(crate) seconds: f64,
    pub(crate) unit: BenchUnit,
    /// The boot test it is read from ("Bios", "Uefi").
    pub(crate) firmware: &'static str,
    /// The VM it is read from; None: the last node to reach it.
    pub(crate) vm: Option<&'static str>,
    /// Only a Kerrighed profile's nodes reach it.
    pub(crate) kerrighed_only: bool,
}

/// What a bench target counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BenchUnit {
    Seconds,
    /// Multiples of the run's bare boot (reference.rs): comparable across
    /// machines.
    TimesBare,
    /// Seconds, less the settle time the profile makes the cluster start
    /// wait for (`[cluster] settle`): what the nodes themselves take.
    SecondsLessSettle,
}

impl BenchUnit {
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            BenchUnit::Seconds => "s",
            BenchUnit::TimesBare => "x bare",
            BenchUnit::SecondsLessSettle => "s less settle",
        }
    }
}

/// Everything a milestone needs, in one place: a new milestone is one new
/// arm in [`Milestone::spec`], which the compiler asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spec {
    pub(crate) label: &'static str,
    pub(super) sign: Sign,
    /// Shown, from power-on, in the test parts' timings.
    pub(crate) timed: bool,
    pub(crate) bench: &'static [BenchTarget],
}

const fn line(pattern: &'static str, detail: Detail) -> Sign {
    Sign::Line {
        pattern,
        with: None,
        detail,
    }
}

impl Milestone {
    /// Every milestone, in boot order.
    pub(crate) const ALL: [Milestone; 37] = [
        Milestone::KernelUp,
        Milestone::Ready,
        Milestone::Lease,
        Milestone::EfiLoader,
        Milestone::BootScript,
        Milestone::NeedsBios,
        Milestone::KernelLoaded,
        Milestone::NodeKernelUp,
        Milestone::Tipc,
        Milestone::KrgNodeId,
        Milestone::RootMounted,
        Milestone::IdClash,
        Milestone::KrgLoaded,
        Milestone::NfsRootRw,
        Milestone::MultiUser,
        Milestone::ClusterUp,
        Milestone::SshFromNode1,
        Milestone::NfsRestart,
        Milestone::ExportToBootedOnly,
        Milestone::WritesKept,
        Milestone::Gateway,
        Milestone::LeasesKept,
        Milestone::CarriedOn,
        Milestone::SameAddress,
        Milestone::KrgNodes,
        Milestone::OneProcessSpace,
        Milestone::MigratedAway,
        Milestone::MigratedBack,
        Milestone::ClusterCpus,
        Milestone::LoadBalanced,
        Milestone::ClusterGain,
        Milestone::CheckpointRestart,
        Milestone::TestPrograms,
        Milestone::LeftOut,
        Milestone::MemberLost,
        Milestone::FormedAgain,
        Milestone::TakenBack,
    ];

    pub(crate) fn spec(self) -> Spec {
        use Detail::{After, From};
        let (label, sign, timed, bench): (_, _, _, &'static [BenchTarget]) = match self {
            Milestone::KernelUp | Milestone::NodeKernelUp => {
                ("kernel up", Sign::Banner, false, &[])
            }
            Milestone::Ready => (
                "status line",
                line("krgiso: node1 ", From("krgiso:")),
                true,
                &[
                    BenchTarget {
                        what: "node1 power-on to status line, BIOS, ISO",
                        seconds: 40.0,
                        unit: BenchUnit::Seconds,
                        firmware: "Bios",
                        vm: Some("node1"),
                        kerrighed_only: false,
                    },
                    BenchTarget {
                        what: "node1 status line as a multiple of a bare boot, BIOS, ISO",
                        seconds: 2.0,
                        unit: BenchUnit::TimesBare,
                        firmware: "Bios",
                        vm: Some("node1"),
                        kerrighed_only: false,
                    },
                    // The UEFI boot test powers node1 on again from its
                    // stick (KRGISO-DATA kept): the second boot is the
                    // target.
                    BenchTarget {
                        what: "node1 power-on to status line, UEFI, stick, second boot",
                        seconds: 45.0,
                        unit: BenchUnit::Seconds,
                        firmware: "Uefi",
                        vm: Some("node1-again"),
                        kerrighed_only: false,
                    },
                ],
            ),
            Milestone::Lease => ("DHCP lease", Sign::Lease, false, &[]),
            Milestone::EfiLoader => (
                "UEFI firmware loaded iPXE",
                Sign::Fetch(Fetch::Tftp, EFI_BOOT_LOADER),
                false,
                &[],
            ),
            Milestone::BootScript => (
                "iPXE asked for its script",
                Sign::Fetch(Fetch::Tftp, BOOT_SCRIPT),
                false,
                &[],
            ),
            // iPXE's own output of the script's `echo`, on the node's
            // console.
            Milestone::NeedsBios => (
                "told it needs BIOS/CSM",
                line(NEEDS_BIOS_LINE, From("krgiso:")),
                false,
                &[],
            ),
            Milestone::KernelLoaded => (
                "kernel asked for over HTTP",
                Sign::Fetch(Fetch::Http, "vmlinuz"),
                false,
                &[],
            ),
            Milestone::Tipc => (
                "TIPC up",
                line("TIPC: Activated", From("TIPC:")),
                false,
                &[],
            ),
            Milestone::KrgNodeId => (
                "Kerrighed node id",
                line(KRG_NODE_ID, After(KRG_NODE_ID)),
                false,
                &[],
            ),
            Milestone::RootMounted => (
                "NFS root mounted",
                line("VFS: Mounted root (nfs", From("VFS:")),
                true,
                &[],
            ),
            Milestone::IdClash => (
                "told its node id clashes",
                line(ID_CLASH_LINE, From("Kerrighed node id")),
                true,
                &[],
            ),
            Milestone::KrgLoaded => (
                "Kerrighed loaded",
                Sign::Line {
                    pattern: "Kerrighed session ID",
                    with: Some(KRG_LOADED),
                    detail: From("Kerrighed session ID"),
                },
                false,
                &[],
            ),
            // The node's report line (krgiso-node-report), which says
            // whether its root took a write.
            Milestone::NfsRootRw => (
                "NFS root mounted rw",
                line("krgiso: node ", From("krgiso:")),
                true,
                &[],
            ),
            Milestone::MultiUser => (
                "multi-user (login prompt)",
                Sign::Prompt("login: "),
                true,
                &[BenchTarget {
                    what: "PXE node power-on to multi-user (last node)",
                    seconds: 60.0,
                    unit: BenchUnit::Seconds,
                    firmware: "Bios",
                    vm: None,
                    kerrighed_only: false,
                }],
            ),
            Milestone::ClusterUp => (
                "cluster up",
                line("Kerrighed is running on ", From("Kerrighed is running on ")),
                true,
                &[BenchTarget {
                    what: "Kerrighed node power-on to cluster up, less settle (last node)",
                    seconds: 10.0,
                    unit: BenchUnit::SecondsLessSettle,
                    firmware: "Bios",
                    vm: None,
                    kerrighed_only: true,
                }],
            ),
            Milestone::SshFromNode1 => ("ssh from node1", Sign::Checked, false, &[]),
            Milestone::NfsRestart => ("NFS server restart survived", Sign::Checked, false, &[]),
            Milestone::ExportToBootedOnly => (
                "NFS root refused to a LAN host until it PXE-booted",
                Sign::Checked,
                false,
                &[],
            ),
            Milestone::WritesKept => (
                "acknowledged writes kept through a power cut",
                Sign::Checked,
                false,
                &[],
            ),
            Milestone::Gateway => (
                "uplink through node1 as the profile says",
                Sign::Checked,
                false,
                &[],
            ),
            Milestone::LeasesKept => ("leases kept across the reboot", Sign::Checked, false, &[]),
            Milestone::CarriedOn => (
                "carried on through node1's reboot",
                Sign::Checked,
                false,
                &[],
            ),
            Milestone::SameAddress => (
                "same address after a power cycle",
                Sign::Checked,
                false,
                &[],
            ),
            Milestone::KrgNodes => ("krgadm nodes: all online", Sign::Checked, true, &[]),
            Milestone::OneProcessSpace => ("one process space", Sign::Checked, true, &[]),
            Milestone::MigratedAway => ("process migrated away", Sign::Checked, true, &[]),
            Milestone::MigratedBack => ("process migrated back", Sign::Checked, true, &[]),
            Milestone::ClusterCpus => ("cluster-wide /proc/cpuinfo", Sign::Checked, true, &[]),
            Milestone::LoadBalanced => ("load balanced", Sign::Checked, true, &[]),
            Milestone::ClusterGain => ("cluster gain measured", Sign::Checked, false, &[]),
            Milestone::CheckpointRestart => ("checkpoint, kill, restart", Sign::Checked, true, &[]),
            Milestone::TestPrograms => ("Kerrighed's test programs", Sign::Checked, true, &[]),
            Milestone::LeftOut => ("booted late: left out", Sign::Checked, true, &[]),
            Milestone::MemberLost => ("a member lost, seen", Sign::Checked, true, &[]),
            Milestone::FormedAgain => ("the cluster formed again", Sign::Checked, true, &[]),
            Milestone::TakenBack => ("the lost node taken back", Sign::Checked, true, &[]),
        };
        Spec {
            label,
            sign,
            timed,
            bench,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        self.spec().label
    }
}

/// Why a node that must join the cluster (`steps` holds ClusterUp) never
/// can, said at once rather than at the deadline: the cluster started
/// (`cluster_up`, the kernel's line) without all `nodes` booted together,
/// a Kerrighed 2.4 cluster taking no node once it runs; or the node's
/// cluster start found it up without this node.
pub(super) fn cluster_dead_end(
    steps: &[Milestone],
    cluster_up: Option<&str>,
    console: &Console,
    kernel_at: usize,
    nodes: u32,
) -> Option<String> {
    if !steps.contains(&Milestone::ClusterUp) {
        return None;
    }
    if let Some(said) = cluster_up {
        let all = format!("Kerrighed is running on {nodes} nodes");
        return (!said.starts_with(&all)).then(|| {
            format!("\"{said}\": the cluster started without all {nodes} nodes booted together")
        });
    }
    let f = console.find(kernel_at, LEFT_OUT)?;
    Some(format!(
        "it was left out of the cluster, which can no longer take it: {}",
        from_word(&f.line, "krgiso:")
    ))
}

/// What one look at a VM found: the milestones of `steps` it newly
/// reached, in order (a milestone counts only once those before it are
/// in), each with its detail; and where this boot's kernel banner ends.
#[derive(Debug)]
pub(super) struct Scan {
    pub(super) reached: Vec<(Milestone, String)>,
    pub(super) kernel_at: usize,
}

/// A VM on the cluster link, and who gives it its lease.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub(super) node: Mac,
    /// node1's cluster NIC, or a LAN's own DHCP server.
    pub(super) dhcp_server: Mac,
}

/// Looks for `steps` not yet reached (`has`) in the VM's console (from its
/// banner at `kernel_at`, 0 before it is seen) and in what the hub saw of
/// the VM (`link.node`) on the cluster link.
pub(super) fn scan(
    steps: &[Milestone],
    has: impl Fn(Milestone) -> bool,
    console: &Console,
    kernel_at: usize,
    seen: &[Seen],
    link: Link,
) -> Result<Scan> {
    let mac = link.node;
    let mut scan = Scan {
        reached: Vec::new(),
        kernel_at,
    };
    for &m in steps.iter().filter(|&&m| !has(m)) {
        let at = scan.kernel_at;
        let found = match m.spec().sign {
            Sign::Banner => console.find(0, "Linux version").map(|f| {
                scan.kernel_at = f.end;
                first_words(&f.line, 3)
            }),
            Sign::Line {
                pattern,
                with,
                detail,
            } => console
                .find(at, pattern)
                .filter(|_| with.is_none_or(|w| console.find(at, w).is_some()))
                .map(|f| match detail {
                    Detail::From(word) => from_word(&f.line, word),
                    Detail::After(word) => from_word(&f.line, word)[word.len()..].trim().to_owned(),
                }),
            Sign::Prompt(text) => console.find_text(at, text).map(|_| String::new()),
            Sign::Lease => seen.iter().find_map(|s| match &s.packet {
                Packet::Dhcp {
                    sender,
                    from_server: true,
                    message: Some(DHCP_ACK),
                    client,
                    your_address,
                } if *client == mac && *sender == link.dhcp_server => {
                    Some(your_address.to_string())
                }
                _ => None,
            }),
            Sign::Fetch(by, name) => fetched(seen, mac, by, |f| f.contains(name)),
            Sign::Checked => None,
        };
        let Some(detail) = found else { break };
        if m == Milestone::NfsRootRw && !detail.contains("rw=ok") {
            bail!("its NFS root is not writable: {detail}");
        }
        scan.reached.push((m, detail));
    }
    Ok(scan)
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

/// A stock-kernel node in UEFI mode: its firmware loads iPXE's EFI build
/// first (QEMU's BIOS nodes have iPXE in their network card's ROM already).
pub(super) const STOCK_UEFI_NODE_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::EfiLoader,
    Milestone::BootScript,
    Milestone::KernelLoaded,
    Milestone::NodeKernelUp,
    Milestone::NfsRootRw,
    Milestone::MultiUser,
];

/// A UEFI node on a Kerrighed image: iPXE's EFI build runs the boot
/// script, which turns it away (the Kerrighed kernel has no EFI stub).
pub(super) const KRG_UEFI_NODE_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::EfiLoader,
    Milestone::BootScript,
    Milestone::NeedsBios,
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

/// A Kerrighed node whose id another has: its kernel's steps, then it is
/// told, and boots on without Kerrighed.
pub(super) const KRG_CLASH_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::BootScript,
    Milestone::KernelLoaded,
    Milestone::NodeKernelUp,
    Milestone::Tipc,
    Milestone::KrgNodeId,
    Milestone::RootMounted,
    Milestone::IdClash,
    Milestone::NfsRootRw,
    Milestone::MultiUser,
];

/// What the Kerrighed module prints once loaded.
pub(super) const KRG_LOADED: &str = "Kerrighed... loaded!";

/// A Kerrighed node powered on once the cluster runs: all a node goes
/// through but the cluster start, which it cannot join.
pub(super) const KRG_LATE_STEPS: &[Milestone] = KRG_NODE_STEPS.split_at(KRG_NODE_STEPS.len() - 1).0;

/// What `krgiso-cluster-start` says on the console of a node that found
/// the cluster up without it.
pub(super) const LEFT_OUT: &str = "krgiso: cluster: left out";

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
            NodesBoot::Kerrighed { .. } => KRG_LATE_STEPS,
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
    pub(crate) vm: String,
    pub(crate) milestone: Milestone,
    pub(crate) label: &'static str,
    pub(crate) since_power_on: f64,
    pub(crate) since_start: f64,
    pub(crate) detail: String,
    /// `since_power_on` as a multiple of the run's bare boot (set in the
    /// report, when the run had one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) times_bare: Option<f64>,
}

/// A VM powered on again during a run, not by the test's plan (a KVM that
/// failed, an emulated CPU that stalled): said in the report, so a run
/// that needed it is never read as a clean one.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoweredOnAgain {
    pub(crate) vm: String,
    pub(crate) why: String,
    pub(crate) since_start: f64,
}

/// What the boot test saw.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) firmware: String,
    pub(crate) accel: String,
    pub(crate) nodes: u32,
    pub(crate) reached: Vec<Reached>,
    pub(crate) node1_status: String,
    pub(crate) leases: BTreeMap<String, String>,
    pub(crate) seconds: f64,
    /// Where each VM's boot went, as its init measured it (node1, and one
    /// node when the nodes run systemd).
    pub(crate) boot_times: BTreeMap<String, BootTime>,
    /// Every VM powered on again, and why.
    pub(crate) powered_on_again: Vec<PoweredOnAgain>,
    /// The run's bare boot (reference.rs), when it had one (TCG).
    pub(crate) reference: Option<super::ReferenceBoot>,
    /// How long the cluster start waited for no new node (Kerrighed).
    pub(crate) settle_s: f64,
    /// What the cluster gained on a batch of CPU-bound jobs (gain.rs).
    pub(crate) cluster_gain: Option<super::gain::ClusterGain>,
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
    print!("{}", table(report));
}

/// The report as a table: each milestone since its VM's power-on and
/// since the start, and, when the run had a reference boot, since
/// power-on as a multiple of it.
fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<7} {:<28} {:>10} {:>10} {:>8}",
        "vm", "milestone", "power-on", "start", "x bare"
    );
    for r in &report.reached {
        let ratio = r.times_bare.map_or("-".to_owned(), |x| format!("{x:.2}"));
        let _ = writeln!(
            out,
            "{:<7} {:<28} {:>9.1}s {:>9.1}s {:>8}",
            r.vm, r.label, r.since_power_on, r.since_start, ratio
        );
    }
    if let Some(b) = &report.reference {
        let _ = writeln!(
            out,
            "x bare: a multiple of this run's bare boot, {:.1} s ({}, no init)",
            b.seconds, b.kernel
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::node_mac;
    use crate::qemu::NODE1_CLUSTER;
    use std::io::Write as _;
    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

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

    /// The cluster that started without a node, or a node left out, fails
    /// the run at once; the cluster of every node, or a node still waiting,
    /// does not. A late node (no ClusterUp among its steps) is never
    /// failed for being left out.
    #[test]
    fn a_cluster_milestone_that_can_no_longer_come_is_a_dead_end() {
        let (console, _guest) =
            scripted("Linux version 2.6.20-krg\r\nkrgiso: cluster: settling: 131 132 present\r\n");
        let dead = |up, nodes| cluster_dead_end(KRG_NODE_STEPS, up, &console, 0, nodes);
        assert_eq!(dead(None, 3), None, "still settling");
        assert_eq!(
            dead(Some("Kerrighed is running on 3 nodes: 131-133"), 3),
            None
        );
        let two = dead(Some("Kerrighed is running on 2 nodes: 131,132"), 3).unwrap();
        assert!(two.contains("without all 3 nodes"), "{two}");
        assert!(dead(Some("Kerrighed is running on 30 nodes"), 3).is_some());

        let (left, _guest) = scripted(
            "Linux version 2.6.20-krg\r\nkrgiso: cluster: left out: the cluster is up on 131 132 without this node\r\n",
        );
        let why = cluster_dead_end(KRG_NODE_STEPS, None, &left, 0, 3).unwrap();
        assert!(why.ends_with("up on 131 132 without this node"), "{why}");
        assert_eq!(cluster_dead_end(KRG_LATE_STEPS, None, &left, 0, 3), None);
    }

    /// A console that printed `text`, all of it read in.
    fn scripted(text: &str) -> (Console, UnixStream) {
        let (guest, ours) = UnixStream::pair().unwrap();
        let console = Console::over(ours).unwrap();
        (&guest).write_all(text.as_bytes()).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while console.position() < text.len() {
            assert!(Instant::now() < until, "the console read nothing");
            std::thread::sleep(Duration::from_millis(5));
        }
        (console, guest)
    }

    const KRG_BOOT: &str = "SeaBIOS (version 1.16)\r\n\
        krgiso: node node9 10.77.0.109 rw=ok (a line before the banner)\r\n\
        [    0.000000] Linux version 2.6.20-krg (root@build) (gcc 12.2.0) #1 SMP\r\n\
        [    1.1] TIPC: Activated (version 1.6.2 compiled Dec  3 2026)\r\n\
        [    1.2] Automatic setting of kerrighed_node_id: 102\r\n\
        [    1.5] VFS: Mounted root (nfs filesystem).\r\n\
        [    2.0] Kerrighed session ID : 1\r\n\
        [    2.1] Kerrighed... loaded!\r\n\
        krgiso: node node2 10.77.0.102 2.6.20-krg rw=ok\r\n\
        \r\nnode2 login: ";

    fn link(mac: Mac) -> Vec<Seen> {
        let ip = Ipv4Addr::new(10, 77, 0, 102);
        let ack = |client, sender| Seen {
            packet: Packet::Dhcp {
                sender,
                from_server: true,
                message: Some(DHCP_ACK),
                client,
                your_address: ip,
            },
        };
        vec![
            // Another node's lease, and one from a server that is not node1.
            ack(node_mac(3), NODE1_CLUSTER),
            ack(mac, Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])),
            ack(mac, NODE1_CLUSTER),
            Seen {
                packet: Packet::TftpRead {
                    sender: mac,
                    from: ip,
                    file: "boot.ipxe".into(),
                },
            },
            Seen {
                packet: Packet::HttpGet {
                    sender: mac,
                    from: ip,
                    path: "/vmlinuz-2.6.20-krg".into(),
                },
            },
        ]
    }

    /// `observe()`'s search, on a scripted console and link: each
    /// milestone from what really shows it, in order, never from a line
    /// before this boot's banner or a packet of another VM or server.
    fn on_node1s_link(node: Mac) -> Link {
        Link {
            node,
            dhcp_server: NODE1_CLUSTER,
        }
    }

    #[test]
    fn a_scan_sees_each_milestone_from_the_console_and_the_link_in_order() {
        let mac = node_mac(2);
        let on = on_node1s_link(mac);
        let steps = KRG_NODE_STEPS;
        let none = |_| false;
        let (console, _guest) = scripted(KRG_BOOT);
        let all = scan(steps, none, &console, 0, &link(mac), on).unwrap();
        let got: Vec<Milestone> = all.reached.iter().map(|r| r.0).collect();
        // The cluster does not start with one node.
        assert_eq!(got, &steps[..steps.len() - 1]);
        let detail = |m| &all.reached.iter().find(|r| r.0 == m).unwrap().1;
        assert_eq!(detail(Milestone::Lease), "10.77.0.102");
        assert_eq!(detail(Milestone::BootScript), "boot.ipxe");
        assert_eq!(detail(Milestone::NodeKernelUp), "Linux version 2.6.20-krg");
        assert_eq!(detail(Milestone::KrgNodeId), "102");
        assert_eq!(detail(Milestone::KrgLoaded), "Kerrighed session ID : 1");
        assert!(detail(Milestone::NfsRootRw).contains("node2 10.77.0.102"));
        assert!(all.kernel_at > KRG_BOOT.find("Linux version").unwrap());

        // No lease from node1 for this MAC: nothing, however far the
        // console got.
        let foreign = &link(mac)[..2];
        let seen = scan(steps, none, &console, 0, foreign, on).unwrap();
        assert!(seen.reached.is_empty(), "{:?}", seen.reached);
        // node1's lease but no fetch yet: only the lease.
        let seen = scan(steps, none, &console, 0, &link(mac)[..3], on).unwrap();
        assert_eq!(seen.reached.len(), 1);

        // The next look goes on from what was reached.
        let reached: Vec<Milestone> = steps[..4].to_vec();
        let next = scan(
            steps,
            |m| reached.contains(&m),
            &console,
            all.kernel_at,
            &[],
            on,
        )
        .unwrap();
        assert_eq!(next.reached[0].0, Milestone::Tipc);

        // Before the banner, no console line counts (the report line of
        // an earlier boot printed above it).
        let early = "krgiso: node node2 10.77.0.102 rw=ok\r\nnode2 login: ";
        let (console, _guest) = scripted(early);
        let seen = scan(STOCK_NODE_STEPS, none, &console, 0, &link(mac), on).unwrap();
        assert_eq!(seen.reached.last().unwrap().0, Milestone::KernelLoaded);

        // "loaded!" missing: Kerrighed is not counted as loaded.
        let (console, _guest) = scripted(&KRG_BOOT.replace("Kerrighed... loaded!", "oops"));
        let seen = scan(steps, none, &console, 0, &link(mac), on).unwrap();
        assert_eq!(seen.reached.last().unwrap().0, Milestone::RootMounted);

        // A root that took no write fails the boot test at once.
        let (console, _guest) = scripted(&KRG_BOOT.replace("rw=ok\r\n\r\n", "rw=failed\r\n\r\n"));
        let err = scan(steps, none, &console, 0, &link(mac), on).unwrap_err();
        assert!(err.to_string().contains("not writable"), "{err}");
    }

    /// The report's table gives each milestone as a multiple of the bare
    /// boot when the run had one, and says what that boot was.
    #[test]
    fn the_table_gives_times_as_multiples_of_the_bare_boot() {
        let reached = |vm: &str, since_power_on: f64, times_bare| Reached {
            vm: vm.into(),
            milestone: Milestone::Ready,
            label: "status line",
            since_power_on,
            since_start: since_power_on,
            detail: String::new(),
            times_bare,
        };
        let report = Report {
            firmware: "Bios".into(),
            accel: "TCG".into(),
            nodes: 0,
            reached: vec![reached("node1", 40.0, Some(40.0 / 16.0))],
            node1_status: String::new(),
            leases: BTreeMap::new(),
            seconds: 60.0,
            boot_times: BTreeMap::new(),
            powered_on_again: Vec::new(),
            reference: Some(super::super::ReferenceBoot {
                seconds: 16.0,
                kernel: "Linux version 6.1.0-50-amd64".into(),
            }),
            settle_s: 0.0,
            cluster_gain: None,
        };
        let text = table(&report);
        let row = text.lines().find(|l| l.starts_with("node1")).unwrap();
        assert!(row.trim_end().ends_with("2.50"), "{text}");
        assert!(text.contains("a multiple of this run's bare boot, 16.0 s (Linux version 6.1.0-50-amd64, no init)"), "{text}");
        // Without a reference (KVM), no multiple.
        let kvm = Report {
            reference: None,
            reached: vec![reached("node1", 12.0, None)],
            ..report
        };
        let text = table(&kvm);
        assert!(
            text.lines()
                .any(|l| l.starts_with("node1") && l.trim_end().ends_with('-')),
            "{text}"
        );
        assert!(!text.contains("bare boot,"), "{text}");
    }

    /// A node whose id clashes: told so (node1's words, after rcS's
    /// prefix), no Kerrighed, then its report and login. Neither line is
    /// taken for the other.
    #[test]
    fn a_node_told_of_its_id_clash_boots_on_without_kerrighed() {
        let mac = node_mac(2);
        let clash = "krgiso: id clash: Kerrighed node id 102 (the last octet of 10.77.0.102) is already 10.77.1.102's: this node stays out of the cluster.";
        let text = KRG_BOOT.replace("[    2.1] Kerrighed... loaded!", clash);
        let (console, _guest) = scripted(&text);
        let on = on_node1s_link(mac);
        let all = scan(KRG_CLASH_STEPS, |_| false, &console, 0, &link(mac), on).unwrap();
        let got: Vec<Milestone> = all.reached.iter().map(|r| r.0).collect();
        assert_eq!(got, KRG_CLASH_STEPS);
        let detail = |m| &all.reached.iter().find(|r| r.0 == m).unwrap().1;
        assert!(detail(Milestone::IdClash).starts_with("Kerrighed node id 102 (the last octet"));
        assert!(
            detail(Milestone::NfsRootRw).contains("node2 10.77.0.102"),
            "{}",
            detail(Milestone::NfsRootRw)
        );
        // Without the line, the node is not counted as told.
        let (console, _guest) = scripted(KRG_BOOT);
        let seen = scan(KRG_CLASH_STEPS, |_| false, &console, 0, &link(mac), on).unwrap();
        assert_eq!(seen.reached.last().unwrap().0, Milestone::RootMounted);
    }

    #[test]
    fn every_milestone_is_listed_once_and_watched_ones_have_a_sign() {
        for (i, m) in Milestone::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i, "{m:?} out of place in ALL");
        }
        assert_eq!(Milestone::ALL.last(), Some(&Milestone::TakenBack));
        // A step the boot test waits for must be one it can see.
        for steps in [
            NODE1_STEPS,
            STOCK_NODE_STEPS,
            KRG_NODE_STEPS,
            KRG_LATE_STEPS,
        ] {
            for m in steps {
                assert_ne!(m.spec().sign, Sign::Checked, "{m:?} is waited for");
            }
        }
        let mut labels: Vec<&str> = Milestone::ALL.iter().map(|m| m.label()).collect();
        labels.sort();
        labels.dedup();
        // KernelUp and NodeKernelUp share theirs.
        assert_eq!(labels.len(), Milestone::ALL.len() - 1);
        for m in Milestone::ALL {
            for b in m.spec().bench {
                assert!(m.spec().sign != Sign::Checked && b.seconds > 0.0, "{m:?}");
            }
        }
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
