//! The files node1 and the nodes need, rendered from the profile: one
//! function per file, typed values in, text out, each with a golden file
//! beside its test (`golden/<profile>/`).
//!
//! What only the running node1 can know (which interface is the cluster
//! link; in proxy mode, the address a foreign DHCP server gave it and its
//! subnet) is decided at boot by `cluster-link` in `overlay/node1`: it
//! fills in the boot script's template ([`NODE1`]) into a file of its own,
//! and dnsmasq gets the interface and the proxy subnet on its command line.
//! Nothing at boot edits a file rendered here.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::layout::{EXPORT_DIR, NODES_LAYER, NODES_TREE, SERVED_DIR, TFTP_DIR};
use crate::profile::{Cluster, KernelKind, Network, Profile, Scheduler, Userland};

/// What a node's PXE firmware loads by TFTP: iPXE, on top of the
/// firmware's own network driver (UNDI). iPXE then fetches `BOOT_SCRIPT`,
/// and the script the kernel and initramfs over HTTP. TFTP sends one block
/// per round trip: between two machines under load it moved about
/// 430 KB/s; iPXE's HTTP several MB/s (docs/node1-boot.md). Firmware that
/// is iPXE already (QEMU's, many servers') skips this step.
pub(crate) const BOOT_LOADER: &str = "undionly.kpxe";

/// What a UEFI node's PXE firmware loads by TFTP instead: iPXE built as
/// an EFI program that drives the network card through the firmware's own
/// driver (its Simple Network Protocol), as undionly.kpxe does through
/// UNDI. Debian's ipxe package also ships `ipxe.efi`, with iPXE's own
/// drivers: it knows only the cards iPXE knows, where every machine that
/// can PXE-boot in UEFI mode has a firmware driver for its card.
pub(crate) const EFI_BOOT_LOADER: &str = "snponly.efi";

/// The DHCP client architectures (option 93, RFC 4578) of x86-64 UEFI
/// firmware: 7 (what EDK2, OVMF among them, sends) and 9 (what the RFC's
/// errata and some firmware call x86-64 EFI).
const EFI_X86_64_ARCHS: [u8; 2] = [7, 9];

/// The iPXE script every node runs, in the TFTP root (and on the web).
pub(crate) const BOOT_SCRIPT: &str = "boot.ipxe";

/// Where the boot script's template is, in node1's root.
pub(crate) const BOOT_TEMPLATE: &str = "etc/krgiso/boot.ipxe.in";

/// What stands for node1's address in the boot script's template: the
/// profile's address on a cluster link of its own, the one a foreign DHCP
/// server gave node1 in proxy mode.
pub(crate) const NODE1: &str = "@NODE1@";

/// The port node1's web server listens on (the boot files; the status page).
pub(crate) const HTTP_PORT: u16 = 80;

/// Who node1's web server runs as once it has its port (Debian's
/// base-passwd has it on every system).
pub(crate) const HTTP_USER: &str = "www-data";

/// The files the nodes boot over HTTP, as the kernel stage staged them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootFiles {
    pub(crate) kind: KernelKind,
    pub(crate) kernel: String,
    pub(crate) initrd: Option<String>,
}

impl BootFiles {
    pub(crate) fn for_release(kind: KernelKind, release: &str) -> BootFiles {
        BootFiles {
            kind,
            kernel: format!("vmlinuz-{release}"),
            initrd: (kind == KernelKind::Stock).then(|| format!("initrd.img-{release}")),
        }
    }
}

const HEADER: &str =
    "# Rendered by krgiso (cargo xtask node1) from the profile: edit the profile, not this file.\n";

/// dnsmasq when it is the only DHCP server on the cluster link: leases from
/// the profile's range, PXE boot, TFTP. No DNS (port=0), not authoritative
/// (a stray server elsewhere is not overruled), and only on the interface
/// the boot service names (`interface=` comes from /run/krgiso/dnsmasq.conf).
/// How long a node's lease lasts before it asks again (dnsmasq's form):
/// long enough that node1 rebooting keeps every node on its address.
const LEASE_TIME: &str = "12h";

pub(crate) fn dnsmasq_full(net: &Network) -> String {
    let mut s = String::from(HEADER);
    s.push_str("# DHCP with leases, PXE and TFTP on the cluster link only.\n");
    s.push_str("port=0\nbind-interfaces\nexcept-interface=lo\n");
    let _ = writeln!(
        s,
        "dhcp-range={},{},{},{LEASE_TIME}",
        net.dhcp_range.start,
        net.dhcp_range.end,
        net.address.netmask()
    );
    // No more leases than the range has addresses: a host that makes up
    // MAC addresses cannot grow the table (dnsmasq's default is 1000).
    let size = u32::from(net.dhcp_range.end) - u32::from(net.dhcp_range.start) + 1;
    let _ = writeln!(s, "dhcp-lease-max={size}");
    // No ping before an offer: dnsmasq waits 3 s for an answer, one new
    // client after the other (24 nodes: the last one 72 s). The link is
    // node1's own (it found no other DHCP server on it) and the range is
    // the profile's, for the nodes.
    s.push_str("no-ping\n");
    if net.gateway {
        let _ = writeln!(s, "dhcp-option=option:router,{}", net.address.addr);
    } else {
        s.push_str("# no gateway: the nodes get no default route\ndhcp-option=option:router\n");
    }
    s.push_str("dhcp-option=option:dns-server\n");
    s.push_str(&full_boot_lines());
    // iPXE's option 176 (no-pxedhcp): this server's offer is all there
    // is, do not wait seconds for a proxy DHCP offer.
    s.push_str("dhcp-option=tag:ipxe,encap:175,176,1\n");
    s.push_str(&tftp_lines());
    s.push_str("dhcp-leasefile=/run/krgiso/dnsmasq.leases\nlog-dhcp\n");
    s
}

/// dnsmasq when another DHCP server already answers on the cluster link:
/// proxy DHCP (PXE boot information only, no leases) for the subnet that
/// server hands out: the boot service gives it to dnsmasq as
/// `--dhcp-range=NET,proxy`.
pub(crate) fn dnsmasq_proxy() -> String {
    let mut s = String::from(HEADER);
    s.push_str(
        "# Proxy DHCP: another server gives the addresses; this only says how to PXE-boot.\n",
    );
    s.push_str("port=0\nbind-interfaces\nexcept-interface=lo\n");
    s.push_str("# dhcp-range=NET,proxy: on the command line, from the DHCP probe at boot\n");
    s.push_str(&proxy_boot_lines());
    s.push_str(&tftp_lines());
    s.push_str("log-dhcp\n");
    s
}

/// PXE firmware gets iPXE, the BIOS or the UEFI build by its client
/// architecture; iPXE (it sends DHCP option 175) gets the script.
fn full_boot_lines() -> String {
    let mut s = String::from("dhcp-match=set:ipxe,175\n");
    for arch in EFI_X86_64_ARCHS {
        let _ = writeln!(s, "dhcp-match=set:efi64,option:client-arch,{arch}");
    }
    // Tags that exclude one another: the order of the lines does not matter.
    let _ = writeln!(s, "dhcp-boot=tag:!ipxe,tag:!efi64,{BOOT_LOADER}");
    let _ = writeln!(s, "dhcp-boot=tag:!ipxe,tag:efi64,{EFI_BOOT_LOADER}");
    let _ = writeln!(s, "dhcp-boot=tag:ipxe,{BOOT_SCRIPT}");
    s
}

/// The same in proxy mode, where a PXE boot service is chosen by the
/// client's system type (dnsmasq's names for architectures 0, 7 and 9).
fn proxy_boot_lines() -> String {
    let mut s = String::from("dhcp-match=set:ipxe,175\n");
    let menu = "\"krgiso: boot a Kerrighed node\"";
    for (system, loader) in [
        ("x86PC", BOOT_LOADER),
        ("BC_EFI", EFI_BOOT_LOADER),
        ("X86-64_EFI", EFI_BOOT_LOADER),
    ] {
        let _ = writeln!(s, "pxe-service=tag:!ipxe,{system},{menu},{loader}");
        let _ = writeln!(s, "pxe-service=tag:ipxe,{system},{menu},{BOOT_SCRIPT}");
    }
    s
}

fn tftp_lines() -> String {
    format!("enable-tftp\ntftp-root={SERVED_DIR}\n")
}

/// How the nodes' root is exported (also to a proxy-DHCP subnet at boot):
/// read-write to the cluster subnet only (never `*`). `sync`: node1
/// answers a write (and a node's fsync) once it is on its disk, so that
/// with the root on KRGISO-DATA a power cut of node1 loses nothing a node
/// was told is safe; on a tmpfs root it costs nothing. `fsid` because the
/// root may live on a tmpfs, which has no UUID to export by.
pub(crate) const EXPORT_OPTIONS: &str = "rw,no_root_squash,no_subtree_check,sync,fsid=77";

pub(crate) fn exports(net: &Network) -> String {
    format!(
        "{HEADER}{EXPORT_DIR} {}({EXPORT_OPTIONS})\n",
        net.address.subnet()
    )
}

/// A 2.6.20 nfsroot speaks NFSv3 (and v2) over TCP or UDP; a current
/// nfs-kernel-server serves neither v2 nor UDP unless told to.
pub(crate) fn nfs_conf() -> String {
    format!("{HEADER}[nfsd]\nvers3=y\ntcp=y\nudp=y\n")
}

/// What every node boots, as an iPXE script: the kernel (and initramfs)
/// from node1's web server, with its root on NFS from node1. A failed
/// fetch (node1 still starting, a lost link) is retried every 5 s.
/// `node1` is the address the nodes reach node1 at: [`NODE1`] in the
/// template.
pub(crate) fn ipxe_script(node1: &str, cluster: &Cluster, boot: &BootFiles) -> String {
    let http = format!("http://{node1}/");
    let mut args = vec![
        "root=/dev/nfs".to_owned(),
        format!("nfsroot={node1}:{EXPORT_DIR},v3,tcp"),
        "ip=dhcp".to_owned(),
        "rw".to_owned(),
    ];
    if boot.kind == KernelKind::Kerrighed {
        args.push(format!("session_id={}", cluster.session));
    }
    args.push("console=tty0".to_owned());
    args.push("console=ttyS0,115200".to_owned());
    // iPXE's EFI builds before 1.21 hand the initramfs to the kernel's
    // EFI stub only when the command line names it (QEMU's ROM one did
    // not, and the node found no root); the BIOS build and the kernel
    // ignore the word.
    if let Some(initrd) = &boot.initrd {
        args.insert(0, format!("initrd={initrd}"));
    }
    let initrd = boot
        .initrd
        .as_ref()
        .map(|i| format!("initrd {http}{i} || goto failed\n"))
        .unwrap_or_default();
    let (uefi_check, needs_bios) = if boot.kind == KernelKind::Kerrighed {
        (
            "# Linux 2.6.20 has no EFI stub: a node in UEFI mode cannot run it.\niseq ${platform} efi && goto needs_bios ||\n".to_owned(),
            format!(
                ":needs_bios\n# node1's web server logs this fetch: its status page names the node.\nimgfetch --name {NEEDS_BIOS} {http}{NEEDS_BIOS} ||\n{NEEDS_BIOS_SAID}:wait\nsleep 60\ngoto wait\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "#!ipxe\n# Rendered by krgiso from the profile; node1 puts in its address at boot.\n{uefi_check}:load\nkernel {http}{} {} || goto failed\n{initrd}boot || goto failed\n:failed\necho krgiso: could not load the node kernel from {node1}: trying again in 5 s\nsleep 5\ngoto load\n{needs_bios}",
        boot.kernel,
        args.join(" ")
    )
}

/// What a UEFI node asks node1's web server for when the boot script finds
/// it cannot run the Kerrighed kernel: the request is the status page's
/// sign of it. The file says what the node's screen says.
pub(crate) const NEEDS_BIOS: &str = "needs-bios.txt";

/// What the node's screen says then, and the text of [`NEEDS_BIOS`] (as
/// iPXE `echo` lines).
const NEEDS_BIOS_SAID: &str = "echo krgiso: this PC started its network boot in UEFI mode, and the Kerrighed node kernel (Linux 2.6.20) boots only in legacy BIOS mode.\n\
    echo krgiso: turn on legacy boot (CSM) in its firmware setup, then power every node off and on together to boot the cluster again.\n";

/// The start of the first line the node's screen shows.
pub(crate) const NEEDS_BIOS_LINE: &str = "krgiso: this PC started its network boot in UEFI mode";

/// Where node1 names, in proxy mode, the Kerrighed nodes whose id (the
/// last octet of the address the LAN's DHCP server gave them) another node
/// or node1 already has: one file per address, in its run directory and
/// at this path of its web server. The node's rcS asks for its own and
/// stays out of the cluster if it is there; the status page shows it.
pub(crate) const ID_CLASHES: &str = "id-clashes";

/// The start of the line a node told of its clash says on its console.
pub(crate) const ID_CLASH_LINE: &str = "krgiso: id clash:";

/// The text node1 serves as [`NEEDS_BIOS`].
pub(crate) fn needs_bios_text() -> String {
    NEEDS_BIOS_SAID
        .lines()
        .map(|l| format!("{}\n", l.trim_start_matches("echo ")))
        .collect()
}

/// node1's firewall: on every link but the cluster link (and lo) nothing
/// comes in but replies to what node1 asked, ICMP, DHCP replies to its own
/// client and ssh. So TFTP, rpcbind, NFS, mountd, statd, lockd (whatever
/// ports they take) and the status page never answer the uplink; with
/// `[status] listen = "all"` the web server lets its port through when it
/// starts. `krgiso-guard.service` loads it before any link is up;
/// `cluster-link` loads it again at each start and adds the cluster link
/// to `cluster_links`.
pub(crate) fn guard_nft() -> String {
    format!(
        "#!/usr/sbin/nft -f\n{HEADER}table inet {GUARD_TABLE}\ndelete table inet {GUARD_TABLE}\ntable inet {GUARD_TABLE} {{\n    set cluster_links {{\n        type ifname\n    }}\n    chain input {{\n        type filter hook input priority 0; policy drop;\n        iifname \"lo\" accept\n        iifname @cluster_links accept\n        ct state established,related accept\n        ct state invalid drop\n        meta l4proto {{ icmp, ipv6-icmp }} accept\n        udp sport 67 udp dport 68 accept\n        tcp dport 22 accept\n    }}\n}}\n"
    )
}

/// The nft table [`guard_nft`] makes.
pub(crate) const GUARD_TABLE: &str = "krgiso_guard";

/// sshd on node1: keys from anywhere, a password only from the cluster
/// subnet (node1's uplink is any LAN it is plugged into).
pub(crate) fn sshd_conf(net: &Network) -> String {
    format!(
        "{HEADER}PasswordAuthentication no\nKbdInteractiveAuthentication no\n\nMatch Address {}\n    PasswordAuthentication yes\n",
        net.address.subnet()
    )
}

/// node1's wired interfaces take DHCP from outside (the uplink); the boot
/// service gives the cluster link its static address with a file in
/// /run/systemd/network that sorts before this one.
pub(crate) fn uplink_network() -> String {
    format!("{HEADER}[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n\n[DHCPv4]\nRouteMetric=100\n")
}

/// The type of the key pair node1 makes for the cluster user at its first
/// boot: ed25519 (made in milliseconds, where RSA takes seconds under
/// QEMU's TCG) unless the nodes' sshd predates it (OpenSSH 6.5, jessie).
pub(crate) fn cluster_key_type(nodes_suite: &str) -> &'static str {
    match nodes_suite {
        "etch" | "lenny" | "squeeze" | "wheezy" => "rsa",
        _ => "ed25519",
    }
}

/// The values the boot service reads (shell syntax).
pub(crate) fn cluster_env(p: &Profile) -> String {
    let (net, cluster, status) = (&p.network, &p.cluster, &p.status);
    let a = net.address;
    format!(
        "{HEADER}CLUSTER_USER={}\nCLUSTER_KEY={}\nCLUSTER_IFACE={}\nADDRESS={}\nPREFIX={}\nNETWORK={}\nGATEWAY={}\nEXPORT_DIR={EXPORT_DIR}\nEXPORT_OPTIONS={EXPORT_OPTIONS}\nTFTP_DIR={TFTP_DIR}\nNODES_TREE=/{}\nNODES_LAYER=/{}\nBOOT_LOADER={BOOT_LOADER}\nEFI_BOOT_LOADER={EFI_BOOT_LOADER}\nBOOT_SCRIPT={BOOT_SCRIPT}\nHTTP_PORT={HTTP_PORT}\nHTTP_USER={HTTP_USER}\nSTATUS_LISTEN={}\nNEEDS_BIOS={NEEDS_BIOS}\nNODE_IDS={}\nID_CLASHES={ID_CLASHES}\n",
        cluster.user,
        cluster_key_type(&p.nodes.suite),
        net.cluster_iface,
        a.addr,
        a.prefix,
        a.network(),
        if net.gateway { "yes" } else { "no" },
        NODES_TREE,
        NODES_LAYER,
        status.listen.as_str(),
        // Kerrighed takes a node's id from its address (KRG_AUTONODEID).
        match p.kernel.kind {
            KernelKind::Kerrighed => "last-octet",
            KernelKind::Stock => "none",
        }
    )
}

/// Kerrighed's own file. Its parser counts every other line, comments and
/// blank ones too, as a node: so nothing but the settings. With `nbmin`
/// Kerrighed starts the cluster by itself as soon as that many nodes are
/// present, leaving out for good any node a moment later (2.4 adds no node
/// to a running cluster): the static nodes' file has none, which turns
/// that off (the kernel keeps -1), and `krgiso-cluster-start` starts the
/// cluster once no new node has come for the settle time. lenny's nodes
/// keep Kerrighed's own way.
pub(crate) fn kerrighed_nodes(cluster: &Cluster, userland: Userland) -> String {
    match userland {
        Userland::Static => format!("session={}\n", cluster.session),
        Userland::Debian => format!("session={}\nnbmin={}\n", cluster.session, cluster.nbmin),
    }
}

/// The nodes' `/etc/default/kerrighed`, read by Kerrighed's own init
/// script (lenny's nodes) and by the static nodes' rcS alike; the static
/// nodes' cluster start reads NBMIN and SETTLE from it too, their
/// watch LOST_AFTER.
pub(crate) fn default_kerrighed(cluster: &Cluster, userland: Userland) -> String {
    let legacy = cluster.scheduler == Scheduler::Legacy;
    let mut s = format!(
        "{HEADER}# Start Kerrighed at boot.\nENABLE=true\n\
         # Load balancing: once the cluster is up, its first node runs\n\
         # krg_legacy_scheduler (round-robin placement, mosix migration).\n\
         LEGACY_SCHED={legacy}\n"
    );
    if userland == Userland::Static {
        let _ = write!(
            s,
            "# rcS: where node1's web server names a node whose id another has.\n\
             ID_CLASHES={ID_CLASHES}\n\
             # krgiso-cluster-start: the cluster starts once at least NBMIN nodes\n\
             # are present and no new one has come for SETTLE seconds.\n\
             NBMIN={}\nSETTLE={}\n\
             # krgiso-cluster-watch: a member unanswered for LOST_AFTER\n\
             # seconds is lost; this node then reboots, and the cluster\n\
             # forms again with the nodes present.\n\
             LOST_AFTER={}\n",
            cluster.nbmin, cluster.settle, cluster.lost_after
        );
    }
    s
}

/// The nodes' fstab: the root is NFS from node1 (the kernel mounted it, by
/// nfsroot=), configfs where Kerrighed's tools look, and per-node scratch in
/// RAM so nodes sharing one root do not step on each other.
pub(crate) fn nodes_fstab() -> String {
    format!(
        "{HEADER}# <file system> <mount point> <type> <options> <dump> <pass>\n\
         /dev/nfs  /        nfs       defaults  0 0\n\
         proc      /proc    proc      defaults  0 0\n\
         configfs  /config  configfs  defaults  0 0\n\
         tmpfs     /tmp     tmpfs     defaults,mode=1777  0 0\n\
         tmpfs     /var/tmp tmpfs     defaults,mode=1777  0 0\n"
    )
}

/// Names for node1 and every address a node can get: `node<last octet>`,
/// the octet being the node id Kerrighed derives (KRG_AUTONODEID).
pub(crate) fn hosts(net: &Network) -> String {
    let mut s = format!(
        "{HEADER}127.0.0.1\tlocalhost\n{}\tnode1\n",
        net.address.addr
    );
    let (start, end) = (
        u32::from(net.dhcp_range.start),
        u32::from(net.dhcp_range.end),
    );
    for ip in (start..=end).map(Ipv4Addr::from) {
        let _ = writeln!(s, "{ip}\tnode{}", ip.octets()[3]);
    }
    s
}

/// Every file, with the path it takes in its root.
pub(crate) fn node1_files(p: &Profile, boot: &BootFiles) -> Vec<(PathBuf, String)> {
    let (net, cluster) = (&p.network, &p.cluster);
    let mut files: Vec<(PathBuf, String)> = [
        ("etc/krgiso/dnsmasq-full.conf", dnsmasq_full(net)),
        ("etc/krgiso/dnsmasq-proxy.conf", dnsmasq_proxy()),
        ("etc/krgiso/cluster.env", cluster_env(p)),
        ("etc/krgiso/exports-full", exports(net)),
        ("etc/nfs.conf.d/krgiso.conf", nfs_conf()),
        ("etc/krgiso/guard.nft", guard_nft()),
        ("etc/ssh/sshd_config.d/krgiso.conf", sshd_conf(net)),
        (
            "etc/systemd/network/90-krgiso-uplink.network",
            uplink_network(),
        ),
        ("etc/hosts", hosts(net)),
        // The name /etc/hosts gives node1's cluster address (sudo looks
        // its own name up, and would wait for DNS).
        ("etc/hostname", "node1\n".to_owned()),
    ]
    .into_iter()
    .map(|(path, text)| (path.into(), text))
    .collect();
    files.push((BOOT_TEMPLATE.into(), ipxe_script(NODE1, cluster, boot)));
    files
}

pub(crate) fn nodes_files(p: &Profile) -> Vec<(PathBuf, String)> {
    let (net, cluster, userland) = (&p.network, &p.cluster, p.nodes.userland);
    let files = vec![
        ("etc/kerrighed_nodes", kerrighed_nodes(cluster, userland)),
        (
            "etc/default/kerrighed",
            default_kerrighed(cluster, userland),
        ),
        ("etc/fstab", nodes_fstab()),
        ("etc/hosts", hosts(net)),
    ];
    files.into_iter().map(|(p, t)| (p.into(), t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    /// `[cluster] scheduler`: Kerrighed's own variable, as its init script
    /// reads it; legacy unless the profile says none.
    #[test]
    fn the_scheduler_key_sets_legacy_sched() {
        let path = crate::project_root().join("profiles/kerrighed-2.4.4.toml");
        let mut p = Profile::load(&path).unwrap();
        let u = p.nodes.userland;
        assert!(default_kerrighed(&p.cluster, u).contains("\nLEGACY_SCHED=true\n"));
        p.cluster.scheduler = Scheduler::None;
        assert!(default_kerrighed(&p.cluster, u).contains("\nLEGACY_SCHED=false\n"));
    }
    use std::path::Path;

    fn profile(name: &str) -> Profile {
        Profile::load(&crate::project_root().join(format!("profiles/{name}.toml"))).unwrap()
    }

    fn boot(p: &Profile) -> BootFiles {
        let release = match p.kernel.kind {
            KernelKind::Kerrighed => "2.6.20-krg",
            KernelKind::Stock => "6.1.0-50-amd64",
        };
        BootFiles::for_release(p.kernel.kind, release)
    }

    /// Checks one rendered file; returns its golden file's path.
    fn golden(profile: &str, root: &str, path: &Path, text: &str) -> String {
        let golden = format!("node1/golden/{profile}/{root}/{}", path.display());
        crate::golden::check(&golden, text);
        golden
    }

    /// node1 makes the cluster key in a type the nodes' sshd knows: lenny's
    /// OpenSSH 5.1 knows no ed25519.
    #[test]
    fn the_cluster_key_type_follows_the_nodes_sshd() {
        let lenny = profile("kerrighed-2.4.1-lenny");
        assert!(cluster_env(&lenny).contains("\nCLUSTER_KEY=rsa\n"));
        assert!(cluster_env(&profile("smoke")).contains("\nCLUSTER_KEY=ed25519\n"));
        assert_eq!(cluster_key_type("trixie"), "ed25519");
    }

    #[test]
    fn every_rendered_file_matches_its_golden_file_for_both_profiles() {
        let mut checked = Vec::new();
        for name in [crate::profile::DEFAULT, "smoke"] {
            let p = profile(name);
            for (path, text) in node1_files(&p, &boot(&p)) {
                checked.push(golden(name, "node1", &path, &text));
            }
            for (path, text) in nodes_files(&p) {
                checked.push(golden(name, "nodes", &path, &text));
            }
        }
        crate::golden::no_stale_files("node1/golden", &checked);
    }

    /// Kerrighed's parser takes any other line for a node. The static
    /// nodes' file has no nbmin, so that Kerrighed's autostart stays off
    /// and the settle window decides; lenny's nodes keep Kerrighed's own.
    #[test]
    fn kerrighed_nodes_has_only_settings_and_nbmin_only_for_lenny() {
        for (name, nbmin) in [
            (crate::profile::DEFAULT, false),
            ("kerrighed-2.4.1-lenny", true),
        ] {
            let p = profile(name);
            let text = kerrighed_nodes(&p.cluster, p.nodes.userland);
            assert!(
                text.lines()
                    .all(|l| l.starts_with("session=") || l.starts_with("nbmin=")),
                "{text}"
            );
            assert!(text.starts_with(&format!("session={}\n", p.cluster.session)));
            assert_eq!(text.contains("nbmin="), nbmin, "{name}: {text}");
            let default = default_kerrighed(&p.cluster, p.nodes.userland);
            assert_eq!(!default.contains("\nSETTLE="), nbmin, "{name}: {default}");
        }
    }

    #[test]
    fn the_export_is_for_the_cluster_subnet_never_everyone() {
        let p = profile(crate::profile::DEFAULT);
        let text = exports(&p.network);
        let line = text.lines().find(|l| l.starts_with(EXPORT_DIR)).unwrap();
        assert!(
            line.contains(" 10.77.0.0/24(") && !line.contains('*'),
            "{line}"
        );
        for opt in ["rw", "no_root_squash", "no_subtree_check"] {
            assert!(line.contains(opt), "{line}");
        }
    }

    #[test]
    fn the_kerrighed_boot_line_is_what_a_2_6_20_node_needs() {
        let p = profile(crate::profile::DEFAULT);
        let text = ipxe_script(&p.network.address.addr.to_string(), &p.cluster, &boot(&p));
        let append = text.lines().find(|l| l.starts_with("kernel ")).unwrap();
        for want in [
            "root=/dev/nfs",
            "nfsroot=10.77.0.1:/srv/krgiso/nodes,v3,tcp",
            "ip=dhcp",
            " rw ",
            "session_id=1",
        ] {
            assert!(append.contains(want), "{want} missing: {append}");
        }
        assert!(
            append.starts_with("kernel http://10.77.0.1/vmlinuz-2.6.20-krg "),
            "{append}"
        );
        assert!(
            !text.contains("initrd"),
            "the kerrighed kernel has NIC and NFS built in: {text}"
        );
    }

    /// A UEFI node on a Kerrighed image is sent away before any kernel,
    /// asks node1 for the file the status page names it by, says so in
    /// the words the boot test looks for, and waits; a stock image boots
    /// UEFI nodes like the others.
    #[test]
    fn a_kerrighed_script_turns_a_uefi_node_away_and_says_why() {
        let p = profile(crate::profile::DEFAULT);
        let text = ipxe_script("10.77.0.1", &p.cluster, &boot(&p));
        let at = |what: &str| {
            text.find(what)
                .unwrap_or_else(|| panic!("no {what:?} in {text}"))
        };
        assert!(at("iseq ${platform} efi && goto needs_bios") < at(":load"));
        assert!(at(":needs_bios") < at(&format!("http://10.77.0.1/{NEEDS_BIOS}")));
        assert!(at(":needs_bios") < at(&format!("echo {NEEDS_BIOS_LINE}")));
        let wait = &text[at(":wait")..];
        assert!(wait.contains("goto wait") && !wait.contains("kernel") && !wait.contains("reboot"));
        assert!(needs_bios_text().starts_with(NEEDS_BIOS_LINE));
        let stock = profile("smoke");
        let text = ipxe_script("10.77.0.1", &stock.cluster, &boot(&stock));
        assert!(
            !text.contains("platform") && !text.contains(NEEDS_BIOS),
            "{text}"
        );
    }

    #[test]
    fn a_gateway_hands_out_node1_as_router() {
        let mut p = profile("smoke");
        p.network.gateway = false;
        assert!(dnsmasq_full(&p.network)
            .lines()
            .any(|l| l == "dhcp-option=option:router"));
        p.network.gateway = true;
        assert!(dnsmasq_full(&p.network)
            .lines()
            .any(|l| l == "dhcp-option=option:router,10.77.0.1"));
    }
}
