//! The boot test (`cargo xtask qemu`): node1 boots the ISO in QEMU with an
//! uplink (QEMU's user-mode network, which has its own DHCP server) and a
//! cluster link (a hub on 127.0.0.1); once node1 says it is ready, N nodes
//! power on and PXE-boot from it. The serial consoles and the cluster link
//! are watched live for milestones; at the end the harness checks that every
//! node got node1's lease, pxelinux and the kernel, mounted its NFS root rw
//! (node1 sees the file each node wrote) and reached multi-user, and that
//! node1 served no DHCP on the uplink.

mod boot_time;
pub(crate) mod browser;
mod checkpoint;
mod checks;
pub(crate) mod console;
pub(crate) mod frame;
pub(crate) mod gain;
pub(crate) mod hub;
mod id_clash;
mod lan;
mod late;
mod lost;
mod milestone;
mod reboot;
mod reference;
mod ssi;
mod test_programs;
mod timing;
mod turned_away;
mod uplink;
pub(crate) mod vm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::files;
use crate::host::{self, HostTool};
use crate::interrupt::{self, Interrupted};
use crate::layout::Layout;
use crate::node1::accounts;
use crate::profile::{KernelKind, Network, Profile, Scheduler, Userland};
use crate::stages::kernel::krg::KRG_RELEASE;
use frame::Mac;
use hub::Hub;
use lan::ForeignLan;
use vm::{Accel, Boot, Firmware, Machine, Uplink, Vm, VmSpec};

pub(crate) use boot_time::{BootTime, UnitTime};
use checks::check_node1_status;
use milestone::{
    cluster_dead_end, from_word, print_table, scan, Link, Tracked, KRG_CLASH_STEPS,
    KRG_UEFI_NODE_STEPS, NODE1_STEPS, STOCK_UEFI_NODE_STEPS,
};
pub(crate) use milestone::{
    BenchTarget, BenchUnit, Milestone, NodesBoot, PoweredOnAgain, Reached, Report,
};
pub(crate) use reference::ReferenceBoot;
pub(crate) use vm::{Accel as QemuAccel, Firmware as QemuFirmware};

/// What a Linux kernel prints when it stops for good.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// What a Linux kernel prints when a CPU has not run for 21 s. Under TCG
/// it has meant the emulator stopped delivering a vCPU's timer (seen once
/// in CI: node1's second power-on, stuck for good 2.4 s into its kernel).
const CPU_STALL: &str = "detected stalls on CPUs";

/// node1's NICs: the uplink, and its end of the cluster link.
const NODE1_UPLINK: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0xff, 0x01]);

const NODE1_CLUSTER: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0x00, 0x01]);

/// The PXE node `n` (2, 3, ...): named like the cluster names its machines.
fn node_mac(n: u32) -> Mac {
    Mac([
        0x52,
        0x54,
        0x00,
        0x77,
        0x00,
        u8::try_from(n).unwrap_or(0xfe),
    ])
}

/// Which PXE node (2, 3, ...) the VM called `name` is: `node<n>`, or
/// `node<n>-again` powered on again (the same MAC). node1 is none.
fn pxe_number(name: &str) -> Option<u32> {
    let n = name.strip_prefix("node")?.split('-').next()?;
    n.parse().ok().filter(|&n| n >= 2)
}

/// PXE node `n`'s firmware (2, 3, ...) in a test of `nodes` nodes whose
/// last `uefi_nodes` are UEFI; a node powered on later (`--late-node`,
/// beyond the test's nodes) is a BIOS one.
fn node_firmware(n: u32, nodes: u32, uefi_nodes: u32) -> Firmware {
    if n < 2 + nodes && n + uefi_nodes >= 2 + nodes {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

/// Where each node says it is up and whether its root is writable
/// (overlay/nodes/usr/local/sbin/krgiso-node-report), in the shared root.
const NODE_REPORTS: &str = "var/lib/krgiso/nodes";

/// What to boot and how.
#[derive(Debug, Clone)]
pub(crate) struct BootTest {
    pub(crate) iso: PathBuf,
    /// Boot node1 from this USB stick image (`usb --allow-file` writes
    /// one) instead of the ISO as a CD.
    pub(crate) stick: Option<PathBuf>,
    /// build/qemu: logs, consoles, captures, report.json.
    pub(crate) dir: PathBuf,
    pub(crate) nodes: u32,
    pub(crate) firmware: Firmware,
    /// How many of the PXE nodes (the last ones) boot with OVMF, in UEFI
    /// mode: they load iPXE's EFI build, which boots a stock kernel, and
    /// turns a node of a Kerrighed image away (turned_away.rs).
    pub(crate) uefi_nodes: u32,
    pub(crate) accel: Accel,
    pub(crate) timeout: Duration,
    pub(crate) keep: bool,
    pub(crate) network: Network,
    /// Where node1 exports the nodes' root.
    pub(crate) export_dir: String,
    /// The cluster user and password, to log in on node1's console.
    pub(crate) login: (String, String),
    /// What the nodes boot, and so which milestones they must pass.
    pub(crate) nodes_boot: NodesBoot,
    /// Whether Chromium renders node1's status page into a screenshot.
    pub(crate) screenshot: Screenshot,
    /// After the checks, cut node1's power right after each node fsyncs a
    /// file, and power it on again (it keeps what KRGISO-DATA holds), then
    /// each node: the files whole, the same addresses, nothing lost.
    pub(crate) reboot: bool,
    /// Who serves DHCP on the cluster link.
    pub(crate) link_dhcp: LinkDhcp,
    /// Kerrighed's load balancing, as the profile sets it up.
    pub(crate) scheduler: Scheduler,
    /// Once the cluster runs, power on one more node: it must be left out,
    /// and say so (Kerrighed nodes).
    pub(crate) late_node: bool,
    /// At the end, kill a member's QEMU: the others must see it lost,
    /// reset, and form the cluster again without it (Kerrighed nodes with
    /// the static userland, whose watch does it).
    pub(crate) lose_node: bool,
    /// How long the nodes' cluster start waits for no new node.
    pub(crate) settle: Duration,
    /// Kerrighed's test programs are in the nodes' root (a static
    /// userland): the node kernel's NR_CPUS, to read where a process runs.
    pub(crate) test_programs: Option<u32>,
    /// Which of Kerrighed's test programs run: all, or a seeded sample.
    pub(crate) test_program_sample: Option<(u64, usize)>,
    /// The last two PXE nodes get addresses whose Kerrighed id is node2's
    /// and node1's (id_clash.rs).
    pub(crate) id_clash: bool,
    /// Of the cluster's proofs, the single-system-image one only (no
    /// checkpoint, load balancing or test programs).
    pub(crate) ssi_only: bool,
    /// Time a batch of CPU-bound jobs kept on one node, then spread over
    /// the cluster (gain.rs).
    pub(crate) cluster_gain: bool,
}

/// Who serves DHCP on the cluster link: node1 (a link of the cluster's
/// own), or the LAN's own server (a [`ForeignLan`]), node1 then only
/// proxying the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkDhcp {
    Node1,
    Foreign,
}

/// The status page in a browser: always in `cargo xtask test` (which
/// installs Chromium), when Chromium is there for `cargo xtask qemu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Screenshot {
    Required,
    IfInstalled,
}

/// The running test: the VMs, the link, the clock.
struct Run<'a> {
    test: &'a BootTest,
    started: Instant,
    deadline: Instant,
    accel: Accel,
    hub: Hub,
    vms: Vec<Tracked>,
    /// VMs powered off for good (node1 before it was powered on again):
    /// what they reached is still reported.
    retired: Vec<Tracked>,
    boot_times: BTreeMap<String, BootTime>,
    /// VMs powered on again, and why: a CPU stall is given one per run.
    powered_on_again: Vec<PoweredOnAgain>,
    /// The LAN with a DHCP server of its own, when the test has one.
    lan: Option<ForeignLan>,
    /// How many nodes the cluster must start with: the test's nodes, then
    /// those present when it forms again after a loss (lost.rs).
    cluster_nodes: u32,
    /// UEFI nodes of a Kerrighed image, turned away, and their addresses.
    turned_away: Vec<(String, std::net::Ipv4Addr)>,
    /// The service on node1's uplink, when node1 has one (uplink.rs).
    uplink_service: Option<uplink::UplinkService>,
    /// Nodes whose Kerrighed id another has, and their addresses.
    clashing: Vec<(String, std::net::Ipv4Addr)>,
    /// The run's bare boot, which its boot times are also given against.
    reference: Option<reference::ReferenceBoot>,
    /// What the cluster gained on a batch of jobs, when measured (gain.rs).
    cluster_gain: Option<gain::ClusterGain>,
}

/// Why a VM was powered on again after its emulated CPU stalled.
const STALLED: &str = "its emulated CPU stalled";

/// Why a VM was powered on again after QEMU died of a signal (seen once in
/// CI: SIGSEGV under TCG 1.4 s into node1's kernel).
const EMULATOR_CRASHED: &str = "QEMU crashed";

impl BootTest {
    /// The boot test of a build's image, with the defaults `cargo xtask
    /// test` uses. Refuses when there is no image, before installing
    /// QEMU, iPXE (and OVMF) on the host if they are missing.
    pub(crate) fn for_build(
        profile: &Profile,
        layout: &Layout,
        nodes: u32,
        firmware: Firmware,
    ) -> Result<BootTest> {
        let (iso, _) = layout.image(&profile.iso);
        if !iso.is_file() {
            bail!(
                "no image at {}: {}",
                iso.display(),
                crate::layout::NO_IMAGE_HINT
            );
        }
        let nodes_boot = NodesBoot::of(profile);
        let mut tools = vec![
            HostTool::new(vm::QEMU, "qemu-system-x86"),
            HostTool::new(nodes_boot.machine().program(), "qemu-system-x86"),
            HostTool::new("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu"),
            // The reference boot's kernel, read out of the image.
            HostTool::new("xorriso", "xorriso"),
        ];
        if firmware == Firmware::Uefi {
            tools.push(HostTool::new(vm::OVMF, "ovmf"));
        }
        host::ensure_tools(&tools, true, &layout.log("qemu"))?;
        let user = profile.cluster.user.clone();
        let saved = layout.credentials();
        let password = match std::env::var("KRGISO_PASSWORD") {
            Ok(p) => p,
            Err(_) => accounts::read_saved_password(&saved, &user).with_context(|| {
                format!(
                    "the boot test logs in on node1 as {user} to check the nodes' NFS root, and {} has no password for it \
(the profile sets its own): put it in KRGISO_PASSWORD (reading {} may need root)",
                    saved.display(),
                    saved.display()
                )
            })?,
        };
        let test_programs = test_programs(profile, layout)?;
        Ok(BootTest::new(
            profile,
            iso,
            layout.qemu(),
            (nodes, firmware),
            (user, password),
            test_programs,
        ))
    }

    /// A boot test of `profile`'s image `iso` with `nodes` PXE nodes,
    /// node1 under `firmware`, logging in as `login`, its files in `dir`:
    /// with the defaults, none of the options.
    fn new(
        profile: &Profile,
        iso: PathBuf,
        dir: PathBuf,
        (nodes, firmware): (u32, Firmware),
        login: (String, String),
        test_programs: Option<u32>,
    ) -> BootTest {
        BootTest {
            iso,
            stick: None,
            dir,
            nodes,
            firmware,
            uefi_nodes: 0,
            accel: Accel::Tcg,
            timeout: Duration::from_secs(900),
            keep: false,
            network: profile.network.clone(),
            export_dir: crate::layout::EXPORT_DIR.to_owned(),
            login,
            nodes_boot: NodesBoot::of(profile),
            screenshot: Screenshot::IfInstalled,
            reboot: false,
            link_dhcp: LinkDhcp::Node1,
            scheduler: profile.cluster.scheduler,
            late_node: false,
            lose_node: false,
            settle: Duration::from_secs(profile.cluster.settle.into()),
            test_programs,
            test_program_sample: None,
            id_clash: false,
            ssi_only: false,
            cluster_gain: false,
        }
    }

    /// The cluster link as an ordinary LAN with its own DHCP server: its
    /// tools installed if they are missing.
    pub(crate) fn on_a_foreign_lan(self, log: &Path) -> Result<BootTest> {
        host::ensure_tools(&lan::tools(), true, log)?;
        Ok(BootTest {
            link_dhcp: LinkDhcp::Foreign,
            ..self
        })
    }

    /// The last `n` PXE nodes in UEFI mode (OVMF installed if it is
    /// missing). A stock kernel has an EFI stub; the Kerrighed kernel
    /// (2.6.20) has none, so on a Kerrighed image those nodes must be
    /// turned away, told why, and the cluster formed by the others.
    pub(crate) fn with_uefi_nodes(self, n: u32, log: &Path) -> Result<BootTest> {
        if n > self.nodes {
            bail!(
                "--uefi-nodes {n}: more than the {} PXE nodes (--nodes)",
                self.nodes
            );
        }
        if n > 0 {
            host::ensure_tools(&[HostTool::new(vm::OVMF, "ovmf")], true, log)?;
        }
        Ok(BootTest {
            uefi_nodes: n,
            ..self
        })
    }

    /// PXE node `n`'s firmware (2, 3, ...).
    fn node_firmware(&self, n: u32) -> Firmware {
        node_firmware(n, self.nodes, self.uefi_nodes)
    }

    /// Whether PXE node `n` is a UEFI node of a Kerrighed image, which the
    /// boot script turns away.
    fn turned_away(&self, n: u32) -> bool {
        self.nodes_boot != NodesBoot::Stock && self.node_firmware(n) == Firmware::Uefi
    }

    /// How many of the PXE nodes boot the node kernel.
    fn booting_nodes(&self) -> u32 {
        match self.nodes_boot {
            NodesBoot::Stock => self.nodes,
            NodesBoot::Kerrighed { .. } => {
                let clashing = if self.id_clash {
                    id_clash::CLASHING_NODES
                } else {
                    0
                };
                self.nodes - self.uefi_nodes - clashing
            }
        }
    }

    /// Of the cluster's proofs, the single-system-image one only: for a
    /// test about something else (the ids of a foreign LAN), to save time.
    pub(crate) fn with_the_ssi_proof_only(self) -> BootTest {
        BootTest {
            ssi_only: true,
            ..self
        }
    }

    /// Once the cluster runs, time a batch of CPU-bound jobs kept on one
    /// node, then spread by Kerrighed's scheduler (gain.rs): for Kerrighed
    /// nodes that start a cluster of two or more with the scheduler on.
    pub(crate) fn with_cluster_gain(self) -> Result<BootTest> {
        match self.nodes_boot {
            NodesBoot::Kerrighed { .. }
                if self.forms_a_cluster()
                    && self.booting_nodes() >= 2
                    && self.scheduler == Scheduler::Legacy =>
            {
                Ok(BootTest {
                    cluster_gain: true,
                    ..self
                })
            }
            _ => bail!(
                "the cluster's gain needs Kerrighed nodes that form a cluster of two or more with its scheduler on ([cluster] scheduler = \"legacy\")"
            ),
        }
    }

    /// Of Kerrighed's test programs, `count` picked by `seed`
    /// (seeded.rs), not all: the same seed picks the same ones again.
    pub(crate) fn with_a_sample_of_test_programs(self, seed: u64, count: usize) -> BootTest {
        BootTest {
            test_program_sample: Some((seed, count)),
            ..self
        }
    }

    /// What PXE node `n` must pass.
    fn node_steps(&self, n: u32) -> &'static [Milestone] {
        if self.clash_of(n).is_some() {
            return KRG_CLASH_STEPS;
        }
        match (self.node_firmware(n), self.nodes_boot) {
            (Firmware::Uefi, NodesBoot::Stock) => STOCK_UEFI_NODE_STEPS,
            (Firmware::Uefi, NodesBoot::Kerrighed { .. }) => KRG_UEFI_NODE_STEPS,
            (Firmware::Bios, _) => self.nodes_boot.steps(self.booting_nodes()),
        }
    }

    /// One more node powered on once the cluster runs, to be left out: for
    /// Kerrighed nodes that start a cluster of two or more.
    pub(crate) fn with_a_late_node(self) -> Result<BootTest> {
        match self.nodes_boot {
            NodesBoot::Kerrighed { .. } if self.forms_a_cluster() && self.booting_nodes() >= 2 => {
                Ok(BootTest {
                    late_node: true,
                    ..self
                })
            }
            NodesBoot::Kerrighed { nbmin, .. } => bail!(
                "--late-node needs a running cluster to be late for: boot at least {} nodes (--nodes), with a userland that starts Kerrighed",
                nbmin.max(2)
            ),
            NodesBoot::Stock => {
                bail!("--late-node is for Kerrighed nodes: this profile's nodes boot a stock kernel")
            }
        }
    }

    /// At the end, one member lost: for a cluster whose other members are
    /// enough to start it again (nbmin), with the static userland's watch.
    pub(crate) fn with_a_lost_node(self) -> Result<BootTest> {
        match self.nodes_boot {
            NodesBoot::Kerrighed { nbmin, .. }
                if self.forms_a_cluster()
                    && self.test_programs.is_some()
                    && self.booting_nodes() > u32::from(nbmin.max(2)) =>
            {
                Ok(BootTest {
                    lose_node: true,
                    ..self
                })
            }
            NodesBoot::Kerrighed { nbmin, .. } => bail!(
                "--lose-node needs a cluster that can form again without one member: boot at least {} nodes (--nodes; nbmin is {nbmin}), with the static userland (its watch sees the loss)",
                nbmin.max(2) + 1
            ),
            NodesBoot::Stock => {
                bail!("--lose-node is for Kerrighed nodes: this profile's nodes boot a stock kernel")
            }
        }
    }

    /// Whether the nodes the test boots start a Kerrighed cluster.
    pub(crate) fn forms_a_cluster(&self) -> bool {
        self.nodes_boot
            .steps(self.booting_nodes())
            .contains(&Milestone::ClusterUp)
    }

    /// The test as `cargo xtask test` runs it: Chromium installed if it is
    /// missing, and the status page's screenshot required.
    pub(crate) fn with_screenshot(self, log: &Path) -> Result<BootTest> {
        host::ensure_tools(
            &[HostTool::new(browser::CHROMIUM, browser::CHROMIUM_PACKAGE)],
            true,
            log,
        )?;
        Ok(BootTest {
            screenshot: Screenshot::Required,
            ..self
        })
    }

    pub(crate) fn run(&self) -> Result<Report> {
        if let Some(stick) = self.stick.as_deref().filter(|s| !s.is_file()) {
            bail!(
                "no USB stick image at {}: write one with `cargo xtask usb --allow-file {}`",
                stick.display(),
                stick.display()
            );
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        for old in std::fs::read_dir(&self.dir)?.flatten() {
            let _ = files::remove_tree(&old.path());
        }
        let started = Instant::now();
        let hub = Hub::start(&self.dir.join("cluster.pcap"))?;
        let lan = match self.link_dhcp {
            LinkDhcp::Node1 => None,
            LinkDhcp::Foreign => {
                // node1 and every node (a late one too) on an address of
                // their own: the test knows each node's id in advance.
                let reserved: Vec<(Mac, std::net::Ipv4Addr)> = (2..3 + self.nodes)
                    .map(|n| (node_mac(n), self.lan_address(n)))
                    .chain([(NODE1_CLUSTER, lan::NODE1_ADDRESS)])
                    .collect();
                Some(ForeignLan::start(&hub, &self.dir, &reserved)?)
            }
        };
        let mut run = Run {
            test: self,
            started,
            deadline: started + self.timeout,
            accel: self.accel,
            hub,
            vms: Vec::new(),
            retired: Vec::new(),
            boot_times: BTreeMap::new(),
            powered_on_again: Vec::new(),
            lan,
            cluster_nodes: self.booting_nodes(),
            turned_away: Vec::new(),
            uplink_service: match self.link_dhcp {
                LinkDhcp::Node1 => Some(uplink::UplinkService::write(&self.dir)?),
                LinkDhcp::Foreign => None,
            },
            clashing: Vec::new(),
            reference: None,
            cluster_gain: None,
        };
        if run.lan.is_some() {
            println!(
                "the cluster link is a LAN with its own DHCP server ({}-{}): node1 must only proxy",
                lan::LAN_RANGE.start,
                lan::LAN_RANGE.end
            );
        }
        println!(
            "booting {} as node1 ({:?}, {}) with {} PXE node(s); logs in {}",
            self.stick.as_deref().unwrap_or(&self.iso).display(),
            self.firmware,
            accel_name(self.accel),
            self.nodes,
            self.dir.display()
        );
        let result = run.boot_and_check();
        match &result {
            Ok(_) => println!(
                "boot test passed in {:.0} s",
                started.elapsed().as_secs_f64()
            ),
            Err(e) if e.downcast_ref::<Interrupted>().is_none() => run.show_failure(),
            Err(_) => {}
        }
        if self.keep {
            run.keep_running()?;
        }
        result
    }
}

fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Tcg => "TCG",
        Accel::Kvm => "KVM",
    }
}

/// With a static nodes userland, the kernel stage installs Kerrighed's
/// test programs: the node kernel's NR_CPUS, read from its staged config.
fn test_programs(profile: &Profile, layout: &Layout) -> Result<Option<u32>> {
    if profile.kernel.kind != KernelKind::Kerrighed || profile.nodes.userland != Userland::Static {
        return Ok(None);
    }
    let path = layout.staged_kernel().join(format!("config-{KRG_RELEASE}"));
    let config = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the node kernel's config {}: {}",
            path.display(),
            crate::layout::NO_IMAGE_HINT
        )
    })?;
    let nr_cpus = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_NR_CPUS=")?.trim().parse().ok())
        .with_context(|| format!("{} sets no CONFIG_NR_CPUS", path.display()))?;
    Ok(Some(nr_cpus))
}

impl Run<'_> {
    fn boot_and_check(&mut self) -> Result<Report> {
        // Under KVM (or once it has failed) seconds are not TCG's, and
        // need no yardstick.
        if self.accel == Accel::Tcg {
            self.reference = Some(self.boot_the_reference()?);
        }
        let node1 = self.node1_spec()?;
        self.power_on(node1, NODE1_STEPS)?;
        self.wait_for(|vms| vms[0].done())?;
        let status = self.vms[0].detail(Milestone::Ready).to_owned();
        check_node1_status(&status, self.test.link_dhcp)?;

        self.turn_away_uefi_nodes()?;
        for n in (2..2 + self.test.nodes)
            .filter(|&n| !self.test.turned_away(n) && self.test.clash_of(n).is_none())
        {
            let spec = self.node_spec(n)?;
            self.power_on(spec, self.test.node_steps(n))?;
        }
        self.power_on_clashing_nodes()?;
        self.wait_for(|vms| vms.iter().all(Tracked::done))?;

        let leases = self.check_cluster_link()?;
        let leases = self.set_clashing_apart(leases)?;
        self.check_uplink()?;
        let reports = self
            .test
            .nodes_boot
            .steps(self.test.booting_nodes())
            .contains(&Milestone::NfsRootRw);
        self.session_on_node1(&leases, !leases.is_empty() && reports)?;
        if reports {
            self.check_gateway(&leases)?;
        }
        self.check_export_to_booted_only()?;
        let cluster = self.test.forms_a_cluster();
        if cluster && leases.len() >= 2 {
            self.prove_single_system_image(&leases)?;
            if self.test.cluster_gain {
                self.measure_cluster_gain(&leases)?;
            }
            let id = |i: usize| leases[i].1.octets()[3];
            if !self.test.ssi_only {
                self.prove_checkpoint_restart(id(0), id(1))?;
                if self.test.scheduler == Scheduler::Legacy {
                    self.prove_load_balancing(&leases)?;
                }
                if let Some(nr_cpus) = self.test.test_programs {
                    self.prove_test_programs(id(0), id(1), nr_cpus)?;
                }
            }
        }
        if self.test.late_node {
            self.prove_a_late_node_left_out(&leases)?;
        }
        if self.test.lose_node {
            self.prove_a_lost_node_recovered(&leases)?;
        }
        if self.test.reboot {
            self.reboot_node1_then_the_nodes(&leases)?;
        }
        let report = Report {
            firmware: format!("{:?}", self.test.firmware),
            accel: accel_name(self.accel).to_owned(),
            nodes: self.test.nodes,
            reached: self
                .retired
                .iter()
                .chain(&self.vms)
                .flat_map(|t| t.reached.clone())
                .map(|r| Reached {
                    times_bare: self
                        .reference
                        .as_ref()
                        .map(|b| r.since_power_on / b.seconds),
                    ..r
                })
                .collect(),
            node1_status: status,
            leases: leases
                .iter()
                .map(|(vm, ip)| (vm.clone(), ip.to_string()))
                .collect(),
            seconds: self.started.elapsed().as_secs_f64(),
            boot_times: std::mem::take(&mut self.boot_times),
            powered_on_again: self.powered_on_again.clone(),
            reference: self.reference.clone(),
            cluster_gain: self.cluster_gain.clone(),
            settle_s: self.test.settle.as_secs_f64(),
        };
        files::write_atomic(
            &self.test.dir.join("report.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        print_table(&report);
        Ok(report)
    }

    fn node1_spec(&mut self) -> Result<VmSpec> {
        let port = self.hub.add_member()?;
        Ok(VmSpec {
            name: "node1".into(),
            machine: Machine::Pc64,
            memory_mib: timing::NODE1_MEMORY_MIB,
            cpus: timing::NODE1_CPUS,
            firmware: self.test.firmware,
            boot: match &self.test.stick {
                Some(stick) => Boot::UsbStick(stick.clone()),
                None => Boot::Cdrom(self.test.iso.clone()),
            },
            // On a LAN with its own DHCP server node1 has one NIC, as a
            // PC plugged into an office LAN does: the LAN is its uplink too.
            uplink: self.uplink_service.as_ref().map(|service| Uplink {
                mac: NODE1_UPLINK,
                pcap: self.test.dir.join("node1-uplink.pcap"),
                service: service.program.clone(),
            }),
            cluster: (NODE1_CLUSTER, self.hub.port(), port),
        })
    }

    /// PXE node `n` (node2, node3, ...), on a new port of the hub.
    fn node_spec(&mut self, n: u32) -> Result<VmSpec> {
        let port = self.hub.add_member()?;
        Ok(VmSpec {
            name: format!("node{n}"),
            // A PC that PXE-boots in UEFI mode is a 64-bit one.
            machine: match self.test.node_firmware(n) {
                Firmware::Uefi => Machine::Pc64,
                Firmware::Bios => self.test.nodes_boot.machine(),
            },
            memory_mib: timing::NODE_MEMORY_MIB,
            cpus: timing::NODE_CPUS,
            firmware: self.test.node_firmware(n),
            boot: Boot::Network,
            uplink: None,
            cluster: (node_mac(n), self.hub.port(), port),
        })
    }

    fn power_on(&mut self, spec: VmSpec, steps: &'static [Milestone]) -> Result<()> {
        let tracked = self.start_tracked(spec, steps, self.accel, "power on")?;
        self.vms.push(tracked);
        Ok(())
    }

    /// A VM started and watched from now on: its milestones are looked
    /// for in what happens after this.
    fn start_tracked(
        &self,
        spec: VmSpec,
        steps: &'static [Milestone],
        accel: Accel,
        what: &str,
    ) -> Result<Tracked> {
        let name = spec.name.clone();
        let seen_from = self.hub.seen().len();
        let vm = Vm::start(spec, accel, &self.test.dir)?;
        self.say(&name, &format!("{what} ({})", accel_name(vm.accel)));
        Ok(Tracked {
            vm,
            steps,
            reached: Vec::new(),
            kernel_at: 0,
            seen_from,
        })
    }

    /// The MAC of whoever gives the nodes their lease.
    fn dhcp_server(&self) -> Mac {
        match self.test.link_dhcp {
            LinkDhcp::Node1 => NODE1_CLUSTER,
            LinkDhcp::Foreign => lan::LAN_SERVER,
        }
    }

    fn say(&self, vm: &str, what: &str) {
        println!(
            "[{:>6.1}s] {vm}: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Watches consoles and the link until `done`, a VM dies, or the time
    /// is up.
    fn wait_for(&mut self, done: impl Fn(&[Tracked]) -> bool) -> Result<()> {
        loop {
            interrupt::check()?;
            let seen = self.hub.seen();
            for i in 0..self.vms.len() {
                self.observe(i, &seen)?;
            }
            if done(&self.vms) {
                return Ok(());
            }
            if Instant::now() > self.deadline {
                let late: Vec<String> = self
                    .vms
                    .iter()
                    .filter_map(|t| {
                        t.next()
                            .map(|m| format!("{} never reached \"{}\"", t.vm.spec.name, m.label()))
                    })
                    .collect();
                bail!(
                    "boot test timed out after {} s: {}",
                    self.test.timeout.as_secs(),
                    late.join("; ")
                );
            }
            if let Some(t) = self.vms.first() {
                t.vm.console.wait_a_little();
            }
        }
    }

    /// Checks one VM for new milestones (and for having died).
    fn observe(&mut self, i: usize, seen: &[hub::Seen]) -> Result<()> {
        if let Some(why) = self.vms[i].vm.failure() {
            if self.vms[i].vm.accel == Accel::Kvm {
                return self.fall_back_to_tcg(i, &why);
            }
            if self.vms[i].vm.crashed() {
                return self.second_chance(i, EMULATOR_CRASHED, why);
            }
            let t = &self.vms[i];
            bail!(
                "{} stopped before \"{}\": {why}",
                t.vm.spec.name,
                t.next().map_or("the end", Milestone::label)
            );
        }
        let t = &self.vms[i];
        let seen = &seen[t.seen_from.min(seen.len())..];
        let mac = t.vm.spec.cluster.0;
        let console = &t.vm.console;
        // A panicked kernel never gets further, and QEMU stays up: stop now
        // rather than at the deadline.
        if let Some(panic) = console.kernel_panic(t.kernel_at) {
            bail!(
                "{} panicked before \"{}\": {panic}",
                t.vm.spec.name,
                t.next().map_or("the end", Milestone::label),
            );
        }
        if let Some(f) = console.find(t.kernel_at, CPU_STALL) {
            let why = from_word(&f.line, "rcu:");
            return self.second_chance(i, STALLED, why);
        }
        let link = Link {
            node: mac,
            dhcp_server: self.dhcp_server(),
        };
        let found = scan(t.steps, |m| t.has(m), console, t.kernel_at, seen, link)
            .with_context(|| t.vm.spec.name.clone())?;
        let (new, kernel_at) = (found.reached, found.kernel_at);
        self.vms[i].kernel_at = kernel_at;
        let name = self.vms[i].vm.spec.name.clone();
        let since_power_on = self.vms[i].vm.seconds();
        for (m, detail) in new {
            self.say(
                &name,
                &if detail.is_empty() {
                    m.label().to_owned()
                } else {
                    format!("{}: {detail}", m.label())
                },
            );
            self.vms[i].reached.push(Reached {
                vm: name.clone(),
                milestone: m,
                label: m.label(),
                since_power_on,
                since_start: self.started.elapsed().as_secs_f64(),
                detail,
                times_bare: None,
            });
        }
        if let Some(why) = self.dead_end(i) {
            bail!("{name}: {why}");
        }
        Ok(())
    }

    /// What makes a milestone of VM `i` unreachable for good.
    fn dead_end(&self, i: usize) -> Option<String> {
        let t = &self.vms[i];
        let up = t
            .has(Milestone::ClusterUp)
            .then(|| t.detail(Milestone::ClusterUp));
        cluster_dead_end(t.steps, up, &t.vm.console, t.kernel_at, self.cluster_nodes)
    }

    /// The emulator failed VM `i` (`fault`: its CPU stalled, or QEMU
    /// crashed): it is powered on again, with a warning, once per run and
    /// only before it is up (node1 serves, a node has its root), since
    /// starting it again later would lose what the checks need.
    fn second_chance(&mut self, i: usize, fault: &str, why: String) -> Result<()> {
        let t = &self.vms[i];
        let up = [
            Milestone::Ready,
            Milestone::NfsRootRw,
            Milestone::RootMounted,
        ];
        let given_before = self
            .powered_on_again
            .iter()
            .any(|p| p.why.starts_with(STALLED) || p.why.starts_with(EMULATOR_CRASHED));
        if given_before || up.iter().any(|&m| t.has(m)) {
            bail!(
                "{}: {fault} before \"{}\" ({why}): run the test again",
                t.vm.spec.name,
                t.next().map_or("the end", Milestone::label)
            );
        }
        eprintln!(
            "warning: {}: {fault} ({why}); powering it on again (once per run)",
            t.vm.spec.name
        );
        let accel = self.accel;
        self.restart(i, accel, "power on again", format!("{fault} ({why})"))
    }

    /// KVM failed (it does on some hosts, with "internal error"): start
    /// this VM again under TCG, and the later ones too. Warned once.
    fn fall_back_to_tcg(&mut self, i: usize, why: &str) -> Result<()> {
        if self.accel == Accel::Kvm {
            eprintln!("warning: KVM does not work here ({why}); falling back to TCG (slower)");
            self.accel = Accel::Tcg;
        }
        self.restart(
            i,
            Accel::Tcg,
            "power on again",
            format!("KVM failed ({why})"),
        )
    }

    /// Stops VM `i` and powers it on again, its milestones still to come;
    /// the report keeps `why`.
    fn restart(&mut self, i: usize, accel: Accel, what: &str, why: String) -> Result<()> {
        self.powered_on_again.push(PoweredOnAgain {
            vm: self.vms[i].vm.spec.name.clone(),
            why,
            since_start: self.started.elapsed().as_secs_f64(),
        });
        let old = self.vms.remove(i);
        let spec = old.vm.spec.clone();
        let steps = old.steps;
        drop(old);
        let tracked = self.start_tracked(spec, steps, accel, what)?;
        self.vms.insert(i, tracked);
        Ok(())
    }

    fn show_failure(&self) {
        for t in &self.vms {
            eprintln!(
                "--- last lines of {} ({}):",
                t.vm.spec.name,
                t.vm.files.log.display()
            );
            for line in t.vm.console.tail(15) {
                eprintln!("  {line}");
            }
        }
    }

    /// `--keep`: hand the consoles over to the user, run until Ctrl-C.
    fn keep_running(&mut self) -> Result<()> {
        println!("\nthe VMs keep running (--keep). Their serial consoles:");
        for t in &mut self.vms {
            t.vm.console.detach();
            println!(
                "  {:<7} socat -,raw,echo=0 UNIX-CONNECT:{}",
                t.vm.spec.name,
                t.vm.files.console.display()
            );
        }
        println!(
            "logs in {}; press Ctrl-C to stop the VMs",
            self.test.dir.display()
        );
        while !interrupt::is_interrupted() {
            if self.vms.iter_mut().all(|t| t.vm.failure().is_some()) {
                println!("every VM has stopped");
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A boot test of the default profile's network, as `qemu` would make
    /// it, without an image: for what derives from its settings.
    pub(crate) fn boot_test(nodes: u32, nodes_boot: NodesBoot) -> BootTest {
        let profile = Profile::load(
            &crate::project_root().join(format!("profiles/{}.toml", crate::profile::DEFAULT)),
        )
        .unwrap();
        BootTest {
            nodes_boot,
            link_dhcp: LinkDhcp::Foreign,
            ..BootTest::new(
                &profile,
                "/b/out/k.iso".into(),
                "/b/qemu".into(),
                (nodes, Firmware::Bios),
                ("krg".into(), String::new()),
                None,
            )
        }
    }

    #[test]
    fn a_pxe_node_is_known_by_its_name_again_too() {
        assert_eq!(pxe_number("node5"), Some(5));
        assert_eq!(pxe_number("node12-again"), Some(12));
        assert_eq!(pxe_number("node1"), None);
        assert_eq!(pxe_number("node1-again"), None);
        assert_eq!(pxe_number("lan"), None);
    }

    /// --id-clash: for Kerrighed nodes on a foreign LAN, with two nodes
    /// besides the clashing ones; those two are the cluster.
    #[test]
    fn id_clashes_leave_two_nodes_to_form_the_cluster() {
        let krg = NodesBoot::Kerrighed {
            userland: true,
            session: 1,
            nbmin: 2,
        };
        let test = boot_test(4, krg).with_id_clashes().unwrap();
        assert_eq!(test.booting_nodes(), 2);
        assert!(test.forms_a_cluster());
        assert_eq!(test.node_steps(4), KRG_CLASH_STEPS);
        assert_eq!(test.node_steps(3), milestone::KRG_NODE_STEPS);
        let err = |t: BootTest| t.with_id_clashes().unwrap_err().to_string();
        assert!(err(boot_test(3, krg)).contains("--nodes 4 or more"));
        assert!(err(boot_test(4, NodesBoot::Stock)).contains("stock kernel"));
        let own_dhcp = BootTest {
            link_dhcp: LinkDhcp::Node1,
            ..boot_test(4, krg)
        };
        assert!(err(own_dhcp).contains("--foreign-dhcp"));
    }

    /// The last --uefi-nodes of the test's nodes are UEFI; none when it is
    /// 0, and never a node powered on later (the late node, n = nodes + 2:
    /// CI once booted it under OVMF, where no Kerrighed kernel runs).
    #[test]
    fn only_the_last_uefi_nodes_of_the_tests_nodes_are_uefi() {
        let firmwares = |nodes, uefi| -> Vec<Firmware> {
            (2..2 + nodes + 1)
                .map(|n| node_firmware(n, nodes, uefi))
                .collect()
        };
        use Firmware::{Bios, Uefi};
        assert_eq!(firmwares(3, 0), [Bios, Bios, Bios, Bios]);
        assert_eq!(firmwares(2, 1), [Bios, Uefi, Bios]);
        assert_eq!(firmwares(1, 1), [Uefi, Bios]);
        assert_eq!(firmwares(3, 2), [Bios, Uefi, Uefi, Bios]);
    }
}
