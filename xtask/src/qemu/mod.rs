//! The boot test (`cargo xtask qemu`): node1 boots the ISO in QEMU with an
//! uplink (QEMU's user-mode network, which has its own DHCP server) and a
//! cluster link (a hub on 127.0.0.1); once node1 says it is ready, N nodes
//! power on and PXE-boot from it. The serial consoles and the cluster link
//! are watched live for milestones; at the end the harness checks that every
//! node got node1's lease, pxelinux and the kernel, mounted its NFS root rw
//! (node1 sees the file each node wrote) and reached multi-user, and that
//! node1 served no DHCP on the uplink.

pub mod console;
pub mod frame;
pub mod hub;
mod ssi;
pub mod vm;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::files;
use crate::host::{self, HostTool};
use crate::interrupt::{self, Interrupted};
use crate::layout::Layout;
use crate::node1::accounts;
use crate::profile::{KernelKind, Network, Profile, Toolchain, Userland};
use frame::{Mac, Packet, DHCP_ACK};
use hub::Hub;
use vm::{Accel, Boot, Firmware, Machine, Vm, VmSpec};

pub use vm::{Accel as QemuAccel, Firmware as QemuFirmware};

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

/// Where each node says it is up and whether its root is writable
/// (overlay/nodes/usr/local/sbin/krgiso-node-report), in the shared root.
const NODE_REPORTS: &str = "var/lib/krgiso/nodes";

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct BootTest {
    pub iso: PathBuf,
    /// Boot node1 from this USB stick image (`usb --allow-file` writes
    /// one) instead of the ISO as a CD.
    pub stick: Option<PathBuf>,
    /// build/qemu: logs, consoles, captures, report.json.
    pub dir: PathBuf,
    pub nodes: u32,
    pub firmware: Firmware,
    pub accel: Accel,
    pub timeout: Duration,
    pub keep: bool,
    pub network: Network,
    /// Where node1 exports the nodes' root.
    pub export_dir: String,
    /// The cluster user and password, to log in on node1's console.
    pub login: (String, String),
    /// What the nodes boot, and so which milestones they must pass.
    pub nodes_boot: NodesBoot,
}

/// What the PXE nodes boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodesBoot {
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
    pub fn of(profile: &Profile) -> NodesBoot {
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
    fn steps(self, nodes: u32) -> &'static [Milestone] {
        match self {
            NodesBoot::Stock => STOCK_NODE_STEPS,
            NodesBoot::Kerrighed {
                userland: false, ..
            } => KRG_KERNEL_STEPS,
            NodesBoot::Kerrighed { nbmin, .. } if nodes >= u32::from(nbmin) => KRG_NODE_STEPS,
            NodesBoot::Kerrighed { .. } => KRG_NODE_STEPS.split_at(KRG_NODE_STEPS.len() - 1).0,
        }
    }

    fn machine(self) -> Machine {
        match self {
            NodesBoot::Stock => Machine::Pc64,
            NodesBoot::Kerrighed { .. } => Machine::Pc32,
        }
    }
}

/// The steps a VM goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Milestone {
    /// node1: its kernel prints its banner.
    KernelUp,
    /// node1: the krgiso status line.
    Ready,
    /// A node: a DHCP ACK from node1 for its MAC.
    Lease,
    /// A node: pxelinux runs (it asks for ldlinux.c32 over TFTP).
    Pxelinux,
    /// A node: it asks for the kernel over TFTP.
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
    fn label(self) -> &'static str {
        match self {
            Milestone::KernelUp | Milestone::NodeKernelUp => "kernel up",
            Milestone::Ready => "status line",
            Milestone::Lease => "lease from node1",
            Milestone::Pxelinux => "pxelinux loaded",
            Milestone::KernelLoaded => "kernel loaded over TFTP",
            Milestone::Tipc => "TIPC up",
            Milestone::KrgNodeId => "Kerrighed node id",
            Milestone::RootMounted => "NFS root mounted",
            Milestone::KrgLoaded => "Kerrighed loaded",
            Milestone::ClusterUp => "cluster up",
            Milestone::SshFromNode1 => "ssh from node1",
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

const NODE1_STEPS: &[Milestone] = &[Milestone::KernelUp, Milestone::Ready];
const STOCK_NODE_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::Pxelinux,
    Milestone::KernelLoaded,
    Milestone::NodeKernelUp,
    Milestone::NfsRootRw,
    Milestone::MultiUser,
];
const KRG_NODE_STEPS: &[Milestone] = &[
    Milestone::Lease,
    Milestone::Pxelinux,
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
const KRG_KERNEL_STEPS: &[Milestone] = KRG_NODE_STEPS.split_at(7).0;

/// A milestone reached: seconds since the VM's power-on and since the start.
#[derive(Debug, Clone, Serialize)]
pub struct Reached {
    pub vm: String,
    pub milestone: Milestone,
    pub label: &'static str,
    pub since_power_on: f64,
    pub since_start: f64,
    pub detail: String,
}

/// What the boot test saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub firmware: String,
    pub accel: String,
    pub nodes: u32,
    pub reached: Vec<Reached>,
    pub node1_status: String,
    pub leases: BTreeMap<String, String>,
    pub seconds: f64,
}

/// One VM and how far it got.
struct Tracked {
    vm: Vm,
    steps: &'static [Milestone],
    reached: Vec<Reached>,
    /// Console position where the current boot's kernel banner ends.
    kernel_at: usize,
}

impl Tracked {
    fn has(&self, m: Milestone) -> bool {
        self.reached.iter().any(|r| r.milestone == m)
    }
    fn done(&self) -> bool {
        self.steps.iter().all(|&m| self.has(m))
    }
    fn next(&self) -> Option<Milestone> {
        self.steps.iter().copied().find(|&m| !self.has(m))
    }
    fn detail(&self, m: Milestone) -> &str {
        self.reached
            .iter()
            .find(|r| r.milestone == m)
            .map_or("", |r| r.detail.as_str())
    }
}

/// The running test: the VMs, the link, the clock.
struct Run<'a> {
    test: &'a BootTest,
    started: Instant,
    deadline: Instant,
    accel: Accel,
    hub: Hub,
    vms: Vec<Tracked>,
}

impl BootTest {
    /// The boot test of a build's image, with the defaults `cargo xtask
    /// test` uses. Refuses when there is no image, before installing
    /// QEMU, iPXE (and OVMF) on the host if they are missing.
    pub fn for_build(
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
        ];
        if firmware == Firmware::Uefi {
            tools.push(HostTool::new(vm::OVMF, "ovmf"));
        }
        host::ensure_tools(&tools, true, &layout.log("qemu"))?;
        let user = profile.cluster.user.clone();
        let saved = layout.build.join("credentials");
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
        Ok(BootTest {
            iso,
            stick: None,
            dir: layout.build.join("qemu"),
            nodes,
            firmware,
            accel: Accel::Tcg,
            timeout: Duration::from_secs(900),
            keep: false,
            network: profile.network.clone(),
            export_dir: crate::layout::EXPORT_DIR.to_owned(),
            login: (user, password),
            nodes_boot,
        })
    }

    pub fn run(&self) -> Result<Report> {
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
        let mut run = Run {
            test: self,
            started,
            deadline: started + self.timeout,
            accel: self.accel,
            hub,
            vms: Vec::new(),
        };
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

impl Run<'_> {
    fn boot_and_check(&mut self) -> Result<Report> {
        let node1 = self.node1_spec()?;
        self.power_on(node1, NODE1_STEPS)?;
        self.wait_for(|vms| vms[0].done())?;
        let status = self.vms[0].detail(Milestone::Ready).to_owned();
        check_node1_status(&status)?;

        for n in 2..2 + self.test.nodes {
            let port = self.hub.add_member()?;
            let spec = VmSpec {
                name: format!("node{n}"),
                machine: self.test.nodes_boot.machine(),
                memory_mib: 1024,
                cpus: 1,
                firmware: Firmware::Bios,
                boot: Boot::Network,
                uplink: None,
                cluster: (node_mac(n), self.hub.port(), port),
            };
            self.power_on(spec, self.test.nodes_boot.steps(self.test.nodes))?;
        }
        self.wait_for(|vms| vms.iter().all(Tracked::done))?;

        let leases = self.check_cluster_link()?;
        self.check_uplink()?;
        let reports = self
            .test
            .nodes_boot
            .steps(self.test.nodes)
            .contains(&Milestone::NfsRootRw);
        if self.test.nodes > 0 && reports {
            self.check_reports_on_node1(&leases)?;
        }
        let cluster = self
            .test
            .nodes_boot
            .steps(self.test.nodes)
            .contains(&Milestone::ClusterUp);
        if cluster && self.test.nodes >= 2 {
            self.prove_single_system_image(&leases)?;
        }
        let report = Report {
            firmware: format!("{:?}", self.test.firmware),
            accel: accel_name(self.accel).to_owned(),
            nodes: self.test.nodes,
            reached: self.vms.iter().flat_map(|t| t.reached.clone()).collect(),
            node1_status: status,
            leases: leases
                .iter()
                .map(|(vm, ip)| (vm.clone(), ip.to_string()))
                .collect(),
            seconds: self.started.elapsed().as_secs_f64(),
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
            memory_mib: 2048,
            cpus: 2,
            firmware: self.test.firmware,
            boot: match &self.test.stick {
                Some(stick) => Boot::UsbStick(stick.clone()),
                None => Boot::Cdrom(self.test.iso.clone()),
            },
            uplink: Some((NODE1_UPLINK, self.test.dir.join("node1-uplink.pcap"))),
            cluster: (NODE1_CLUSTER, self.hub.port(), port),
        })
    }

    fn power_on(&mut self, spec: VmSpec, steps: &'static [Milestone]) -> Result<()> {
        let name = spec.name.clone();
        let vm = Vm::start(spec, self.accel, &self.test.dir)?;
        self.say(&name, &format!("power on ({})", accel_name(vm.accel)));
        self.vms.push(Tracked {
            vm,
            steps,
            reached: Vec::new(),
            kernel_at: 0,
        });
        Ok(())
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
            let t = &self.vms[i];
            bail!(
                "{} stopped before \"{}\": {why}",
                t.vm.spec.name,
                t.next().map_or("the end", Milestone::label)
            );
        }
        let t = &self.vms[i];
        let mac = t.vm.spec.cluster.0;
        let console = &t.vm.console;
        let mut new = Vec::new();
        // Where this boot's kernel banner ends: later lines are searched
        // from there (also in this pass, once the banner is found).
        let mut kernel_at = t.kernel_at;
        for &m in t.steps.iter().filter(|&&m| !t.has(m)) {
            let found: Option<String> = match m {
                Milestone::KernelUp | Milestone::NodeKernelUp => {
                    console.find(0, "Linux version").map(|f| {
                        kernel_at = f.end;
                        first_words(&f.line, 3)
                    })
                }
                Milestone::Ready => console
                    .find(kernel_at, "krgiso: node1 ")
                    .map(|f| from_marker(&f.line)),
                Milestone::Lease => seen.iter().find_map(|s| match &s.packet {
                    Packet::Dhcp {
                        sender,
                        from_server: true,
                        message: Some(DHCP_ACK),
                        client,
                        your_address,
                    } if *client == mac && *sender == NODE1_CLUSTER => {
                        Some(your_address.to_string())
                    }
                    _ => None,
                }),
                Milestone::Pxelinux => tftp_read(seen, mac, |f| f.ends_with("ldlinux.c32")),
                Milestone::KernelLoaded => tftp_read(seen, mac, |f| f.contains("vmlinuz")),
                Milestone::Tipc => console
                    .find(kernel_at, "TIPC: Activated")
                    .map(|f| from_word(&f.line, "TIPC:")),
                Milestone::KrgNodeId => console.find(kernel_at, KRG_NODE_ID).map(|f| {
                    from_word(&f.line, KRG_NODE_ID)[KRG_NODE_ID.len()..]
                        .trim()
                        .to_owned()
                }),
                Milestone::RootMounted => console
                    .find(kernel_at, "VFS: Mounted root (nfs")
                    .map(|f| from_word(&f.line, "VFS:")),
                Milestone::KrgLoaded => console
                    .find(kernel_at, "Kerrighed session ID")
                    .filter(|_| console.find(kernel_at, "Kerrighed... loaded!").is_some())
                    .map(|f| from_word(&f.line, "Kerrighed session ID")),
                Milestone::ClusterUp => console
                    .find(kernel_at, "Kerrighed is running on ")
                    .map(|f| from_word(&f.line, "Kerrighed is running on ")),
                Milestone::NfsRootRw => console
                    .find(kernel_at, "krgiso: node ")
                    .map(|f| from_marker(&f.line)),
                Milestone::MultiUser if kernel_at > 0 => console
                    .find_text(kernel_at, "login: ")
                    .map(|_| String::new()),
                Milestone::MultiUser => None,
                // Checked by the single-system-image proof, not watched for.
                Milestone::SshFromNode1
                | Milestone::KrgNodes
                | Milestone::OneProcessSpace
                | Milestone::MigratedAway
                | Milestone::MigratedBack
                | Milestone::ClusterCpus => None,
            };
            let Some(detail) = found else { break };
            if m == Milestone::NfsRootRw && !detail.contains("rw=ok") {
                bail!("{}: its NFS root is not writable: {detail}", t.vm.spec.name);
            }
            new.push((m, detail));
        }
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
            });
        }
        Ok(())
    }

    /// KVM failed (it does on some hosts, with "internal error"): start
    /// this VM again under TCG, and the later ones too. Warned once.
    fn fall_back_to_tcg(&mut self, i: usize, why: &str) -> Result<()> {
        if self.accel == Accel::Kvm {
            eprintln!("warning: KVM does not work here ({why}); falling back to TCG (slower)");
            self.accel = Accel::Tcg;
        }
        let old = self.vms.remove(i);
        let spec = old.vm.spec.clone();
        let steps = old.steps;
        drop(old);
        let vm = Vm::start(spec, Accel::Tcg, &self.test.dir)?;
        self.say(&vm.spec.name.clone(), "power on again (TCG)");
        self.vms.insert(
            i,
            Tracked {
                vm,
                steps,
                reached: Vec::new(),
                kernel_at: 0,
            },
        );
        Ok(())
    }

    /// Every node's lease came from node1, in the range; no one else served
    /// DHCP on the cluster link.
    fn check_cluster_link(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        let seen = self.hub.seen();
        let rogue: Vec<String> = seen
            .iter()
            .filter_map(|s| match &s.packet {
                Packet::Dhcp {
                    sender,
                    from_server: true,
                    ..
                } if *sender != NODE1_CLUSTER => Some(sender.to_string()),
                _ => None,
            })
            .collect();
        if !rogue.is_empty() {
            bail!("a DHCP server other than node1 answered on the cluster link: {rogue:?}");
        }
        let mut leases = Vec::new();
        for t in self.vms.iter().skip(1) {
            let name = &t.vm.spec.name;
            let lease: Ipv4Addr = t
                .detail(Milestone::Lease)
                .parse()
                .with_context(|| format!("{name}: no lease address seen"))?;
            if !self.test.network.dhcp_range.contains(lease) {
                bail!(
                    "{name} got {lease}, outside the profile's DHCP range {}-{}",
                    self.test.network.dhcp_range.start,
                    self.test.network.dhcp_range.end
                );
            }
            if t.steps.contains(&Milestone::NfsRootRw) {
                let said = t.detail(Milestone::NfsRootRw);
                if !said.contains(&format!("address={lease} ")) {
                    bail!("{name} leased {lease} but reports another address: {said}");
                }
            }
            if t.steps.contains(&Milestone::KrgNodeId) {
                // KRG_AUTONODEID: the id is the last octet of the address.
                let id = t.detail(Milestone::KrgNodeId);
                if id != lease.octets()[3].to_string() {
                    bail!("{name} leased {lease} but Kerrighed gave it node id {id}");
                }
            }
            if let NodesBoot::Kerrighed { session, .. } = self.test.nodes_boot {
                if t.steps.contains(&Milestone::KrgLoaded) {
                    let said = t.detail(Milestone::KrgLoaded);
                    if said.rsplit(':').next().map(str::trim) != Some(&session.to_string()) {
                        bail!("{name} joined Kerrighed session \"{said}\", not the profile's {session}");
                    }
                }
            }
            if t.steps.contains(&Milestone::ClusterUp) {
                let said = t.detail(Milestone::ClusterUp);
                let all = format!("Kerrighed is running on {} nodes", self.test.nodes);
                if !said.starts_with(&all) {
                    bail!(
                        "{name}: \"{said}\": the cluster did not start with all {} nodes",
                        self.test.nodes
                    );
                }
            }
            leases.push((name.clone(), lease));
        }
        Ok(leases)
    }

    /// node1 served no DHCP on the uplink (and the capture did see node1
    /// there: its own DHCP request to QEMU's server).
    fn check_uplink(&self) -> Result<()> {
        let path = self.test.dir.join("node1-uplink.pcap");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut asked = false;
        for f in frame::pcap_frames(&bytes)? {
            if let Some(Packet::Dhcp {
                sender,
                from_server,
                ..
            }) = frame::parse(f)
            {
                if sender == NODE1_UPLINK && from_server {
                    bail!(
                        "node1 sent DHCP server traffic on the uplink (see {})",
                        path.display()
                    );
                }
                asked |= sender == NODE1_UPLINK && !from_server;
            }
        }
        if !asked {
            bail!(
                "the uplink capture {} has no DHCP request from node1: is the uplink up?",
                path.display()
            );
        }
        self.say(
            "node1",
            "served no DHCP on the uplink (its capture checked)",
        );
        Ok(())
    }

    /// Logs in on node1's console and lists what the nodes wrote into the
    /// exported root: each node's file must be there.
    /// Logged in on node1's console: every node's file is under the
    /// export; and, for Kerrighed nodes, node1's cluster key opens an ssh
    /// session on each (their sshd runs on 2.6.20).
    fn check_reports_on_node1(&mut self, leases: &[(String, Ipv4Addr)]) -> Result<()> {
        let (user, password) = self.test.login.clone();
        let until = (Instant::now() + Duration::from_secs(120)).min(self.deadline);
        let console = &self.vms[0].vm.console;
        console
            .login(&user, &password, until)
            .context("logging in on node1's serial console")?;
        let dir = format!("{}/{NODE_REPORTS}", self.test.export_dir);
        let listed = console.run(&format!("ls -1 {dir}"), until)?;
        let listed: Vec<&str> = listed.lines().map(str::trim).collect();
        for (name, ip) in leases {
            if !listed.contains(&ip.to_string().as_str()) {
                bail!("{name} wrote {dir}/{ip} in its NFS root, but node1 does not see it (listed: {listed:?})");
            }
        }
        self.say(
            "node1",
            &format!("sees every node's file in {dir}: the NFS root is rw"),
        );
        let mut ssh = Vec::new();
        if matches!(self.test.nodes_boot, NodesBoot::Kerrighed { .. }) {
            for (i, (name, ip)) in leases.iter().enumerate() {
                let said = console.run(
                    &format!("ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 {user}@{ip} uname -nr"),
                    until,
                )?;
                let release = crate::stages::kernel::krg::KRG_RELEASE;
                if !said.contains(release) {
                    bail!("node1 could not ssh to {name} ({ip}) as {user} with the cluster key: {said:?}");
                }
                let line = said
                    .lines()
                    .rev()
                    .find(|l| l.contains(release))
                    .unwrap_or("");
                ssh.push((i + 1, line.trim().to_owned()));
            }
        }
        let _ = self.vms[0].vm.console.send("exit\n");
        for (vm, detail) in ssh {
            self.record(vm, Milestone::SshFromNode1, detail);
        }
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

/// What the Kerrighed kernel prints when KRG_AUTONODEID sets the node id.
const KRG_NODE_ID: &str = "Automatic setting of kerrighed_node_id:";

/// A console line from the krgiso marker on (a log prefix cut off).
fn from_marker(line: &str) -> String {
    from_word(line, "krgiso:")
}

/// A console line from `word` on.
fn from_word(line: &str, word: &str) -> String {
    line[line.find(word).unwrap_or(0)..].trim_end().to_owned()
}

fn first_words(line: &str, n: usize) -> String {
    let at = line.find("Linux version").unwrap_or(0);
    line[at..]
        .split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

fn tftp_read(seen: &[hub::Seen], mac: Mac, wanted: impl Fn(&str) -> bool) -> Option<String> {
    seen.iter().find_map(|s| match &s.packet {
        Packet::TftpRead { sender, file, .. } if *sender == mac && wanted(file) => {
            Some(file.clone())
        }
        _ => None,
    })
}

/// node1's status line must say: full DHCP, TFTP and NFS up.
fn check_node1_status(line: &str) -> Result<()> {
    let fields: BTreeMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let mut wrong = Vec::new();
    for (key, want) in [("dhcp", "full"), ("tftp", "ok"), ("nfs", "ok")] {
        match fields.get(key) {
            Some(v) if *v == want => {}
            Some(v) => wrong.push(format!("{key}={v} (want {key}={want})")),
            None => wrong.push(format!("no {key}= field")),
        }
    }
    if !wrong.is_empty() {
        bail!("node1 is not ready: {} in \"{line}\"", wrong.join(", "));
    }
    Ok(())
}

fn print_table(report: &Report) {
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

    #[test]
    fn node1_status_must_say_full_dhcp_tftp_and_nfs() {
        let ok = "krgiso: node1 iface=ens4 address=10.77.0.1/24 dhcp=full tftp=ok nfs=ok nodes=ram";
        check_node1_status(ok).unwrap();
        let proxy = ok.replace("dhcp=full", "dhcp=proxy");
        let e = check_node1_status(&proxy).unwrap_err().to_string();
        assert!(e.contains("dhcp=proxy (want dhcp=full)"), "{e}");
        let broken = "krgiso: node1 iface=ens4 dhcp=full tftp=FAILED(no pxelinux.0)";
        let e = check_node1_status(broken).unwrap_err().to_string();
        assert!(e.contains("tftp=FAILED(no pxelinux.0)"), "{e}");
        assert!(e.contains("no nfs= field"), "{e}");
    }

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
        for name in ["kerrighed", "kerrighed-current"] {
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
        let mut glibc = load("kerrighed-current");
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
