//! node1's status page as the tests read it: `/status.json`, made by
//! `overlay/node1/usr/local/lib/krgiso/krgiso-status` at each request (busybox
//! httpd runs it), parsed into these types.

use serde::Deserialize;

/// Where the status program is in node1's root.
pub const STATUS_PROGRAM: &str = "usr/local/lib/krgiso/krgiso-status";

#[derive(Debug, Clone, Deserialize)]
pub struct StatusReport {
    pub node1: Node1Status,
    pub cluster: ClusterStatus,
    pub nodes: Vec<NodeStatus>,
    /// The last events of dnsmasq's log (leases, TFTP transfers).
    pub log: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Node1Status {
    /// `full` or `proxy` DHCP.
    pub mode: String,
    pub iface: String,
    pub address: String,
    pub serves_from: String,
    /// `ram` or `disk:DEVICE`.
    pub nodes_root: String,
    pub nodes_root_free_kib: Option<u64>,
    pub uptime_s: Option<u64>,
    /// `cluster` or `all`.
    pub status_page: String,
    pub services: Services,
    pub status_line: String,
}

/// The Kerrighed cluster, as its nodes' reports say.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    /// Nodes that report a Kerrighed node id.
    pub kerrighed_nodes: u32,
    /// The ids the cluster is up on (`131 132 133`), or empty.
    pub up_on: String,
    /// The ids of nodes that booted after the start.
    pub left_out: String,
    /// The ids of members a member's watch found silent (`lost: node ID`).
    pub lost: String,
    /// The schedulers made (`mosix rr`), or empty.
    pub scheduler: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Services {
    pub dhcp: String,
    pub tftp: String,
    pub http: String,
    pub nfs: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub ip: String,
    pub mac: String,
    pub hostname: String,
    pub lease_at: String,
    pub pxe: PxeSteps,
    pub nfs_mounted: bool,
    pub reachable: bool,
    pub load: String,
    pub memory: String,
    pub reported_at: String,
    pub krg_node_id: String,
    pub krg_session: String,
    /// The static nodes' cluster start: waiting, settling, up, left out.
    pub krg_cluster: String,
    /// Processes and threads running on the node (Kerrighed nodes).
    pub processes: String,
    /// Proxy mode, Kerrighed: why this node's id is another's (node1's
    /// words), or empty.
    pub id_clash: String,
}

/// What node1 saw the node fetch: iPXE and its script (TFTP), kernel and
/// initramfs (HTTP, or TFTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PxeSteps {
    pub boot_loader: bool,
    /// iPXE's EFI build: the node booted in UEFI mode.
    pub efi_loader: bool,
    pub boot_script: bool,
    /// Kerrighed: a UEFI node the boot script turned away (it fetched
    /// needs-bios.txt, and no kernel since).
    pub needs_bios: bool,
    pub kernel: bool,
    pub initrd: bool,
}

impl StatusReport {
    pub fn parse(json: &str) -> anyhow::Result<StatusReport> {
        serde_json::from_str(json).map_err(|e| anyhow::anyhow!("status.json: {e}:\n{json}"))
    }

    pub fn node(&self, ip: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.ip == ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::net::TcpListener;
    use std::path::Path;
    use std::process::Command;

    /// node1's settings under `t`, as its programs read them:
    /// `cluster.env` (`cluster`, then `EXPORT_DIR` at `t/export`) and
    /// `run/node1.env` (`node1`); the run directory and the nodes' reports
    /// directory made. Returns those two directories.
    fn node1_settings(
        t: &Path,
        cluster: &str,
        node1: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (run, export) = (t.join("run"), t.join("export"));
        let reports = export.join("var/lib/krgiso/nodes");
        fs::create_dir_all(&run).unwrap();
        fs::create_dir_all(&reports).unwrap();
        let env = format!("{cluster}EXPORT_DIR={}\n", export.display());
        fs::write(t.join("cluster.env"), env).unwrap();
        fs::write(run.join("node1.env"), node1).unwrap();
        (run, reports)
    }

    /// The status program in the overlay, as node1 runs it.
    fn status_program() -> std::path::PathBuf {
        crate::project_root()
            .join("overlay/node1")
            .join(STATUS_PROGRAM)
    }

    /// What the status program (or a link to it, or another of node1's
    /// programs) prints, run as httpd or a person runs it, on the settings
    /// and run directory under `t`, with the variables `vars` (the nodes'
    /// ssh port, caps).
    fn status_output(program: &Path, args: &[&str], t: &Path, vars: &[(&str, &str)]) -> String {
        let out = Command::new(program)
            .args(args)
            .env("KRGISO_ENV", t.join("cluster.env"))
            .env("KRGISO_RUN", t.join("run"))
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The status program run on fixtures shaped like the real files
    /// (dnsmasq's log and lease table, httpd's -vv log, the nodes'
    /// reports): each node has a row with what its sources say, the JSON
    /// parses, and the page shows the same rows, escaped.
    #[test]
    fn the_status_program_gathers_each_nodes_facts() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let tftp = t.join("tftp");
        fs::create_dir_all(&tftp).unwrap();
        for f in [
            "vmlinuz-6.1.0-50-amd64",
            "initrd.img-6.1.0-50-amd64",
            crate::node1::render::NEEDS_BIOS,
        ] {
            fs::write(tftp.join(f), "boot file").unwrap();
        }
        // Loopback addresses stand for the nodes: the program probes them.
        let (run, reports) = node1_settings(
            t,
            &format!(
                "ADDRESS=127.0.0.1\nPREFIX=8\nTFTP_DIR={}\nBOOT_LOADER=undionly.kpxe\nBOOT_SCRIPT=boot.ipxe\nHTTP_PORT=80\nSTATUS_LISTEN=cluster\n",
                tftp.display()
            ),
            "MODE=full\nIFACE=ens5\nSERVE=127.0.0.1\nNODES=ram\n",
        );
        fs::write(run.join("status"), "krgiso: node1 iface=ens5 dhcp=full\n").unwrap();
        fs::write(
            run.join("dnsmasq.leases"),
            "1796092481 52:54:00:77:00:02 127.0.0.2 node2 01:52:54:00:77:00:02\n\
             1796092482 52:54:00:77:00:03 127.0.0.3 * 01:52:54:00:77:00:03\n",
        )
        .unwrap();
        fs::write(
            run.join("dnsmasq.log"),
            "Nov 30 12:33:16 dnsmasq-dhcp[24791]: 3044131650 DHCPDISCOVER(ens5) 52:54:00:77:00:02 \n\
             Nov 30 12:33:16 dnsmasq-dhcp[24791]: 3044131650 sent size:  4 option: 51 lease-time  12h\n\
             Nov 30 12:33:17 dnsmasq-dhcp[24791]: 3044131650 DHCPACK(ens5) 127.0.0.2 52:54:00:77:00:02 node2\n\
             Nov 30 12:33:18 dnsmasq-tftp[24791]: sent /srv/krgiso/tftp/undionly.kpxe to 127.0.0.2\n\
             Nov 30 12:33:18 dnsmasq-tftp[24791]: sent /srv/krgiso/tftp/boot.ipxe to 127.0.0.2\n\
             Nov 30 12:33:19 dnsmasq-dhcp[24791]: 3044131651 DHCPACK(ens5) 127.0.0.3 52:54:00:77:00:03 <b>\"x\"\n\
             Nov 30 12:33:20 dnsmasq-tftp[24791]: sent /srv/krgiso/tftp/snponly.efi to 127.0.0.3\n",
        )
        .unwrap();
        fs::write(
            run.join("httpd.log"),
            // node2 was turned away in UEFI mode, then booted in legacy
            // mode; node3, a UEFI node, was turned away.
            "127.0.0.2:51018: url:/needs-bios.txt\n\
             127.0.0.2:51020: url:/vmlinuz-6.1.0-50-amd64\n127.0.0.2:51020: response:200\n\
             127.0.0.3:40010: url:/needs-bios.txt\n\
             127.0.0.2:51022: url:/initrd.img-6.1.0-50-amd64\n\
             127.0.0.9:40000: url:/status.json\n127.0.0.1:40002: url:/\n",
        )
        .unwrap();
        fs::write(
            reports.join("127.0.0.2"),
            "node2 127.0.0.2 6.1.0-50-amd64 2026-11-30T12:34:00Z\nhostname=node2\nload=0.12 0.05 0.01\nmem=812 MiB free of 983 MiB\nreported=2026-11-30T12:35:00Z\n",
        )
        .unwrap();
        // A Kerrighed node that booted after the cluster started.
        let left_out = "left out: the cluster is up on 130 131 without this node";
        fs::write(
            reports.join("127.0.0.3"),
            format!("node3 127.0.0.3 2.6.20-krg 2026-11-30T12:36:00Z\nkrg_node_id=3\nkrg_session=status: down\nkrg_cluster={left_out}\nprocesses=41\nkrg_scheduler=mosix rr\n"),
        )
        .unwrap();
        // node2 accepts on "its ssh port"; node3 refuses (nothing listens
        // there): both answered, both are reachable.
        let listener = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let program = status_program();
        let run_it =
            |args: &[&str]| status_output(&program, args, t, &[("KRGISO_SSH_PORT", &port)]);
        let json = run_it(&["json"]);
        let report = StatusReport::parse(&json).unwrap();
        assert_eq!(report.node1.mode, "full");
        assert_eq!(report.node1.iface, "ens5");
        assert_eq!(report.node1.nodes_root, "ram");
        assert_eq!(report.node1.status_page, "cluster");
        assert!(report.node1.nodes_root_free_kib.is_some());
        assert_eq!(
            report
                .nodes
                .iter()
                .map(|n| n.ip.as_str())
                .collect::<Vec<_>>(),
            ["127.0.0.2", "127.0.0.3"]
        );
        let n2 = report.node("127.0.0.2").unwrap();
        assert_eq!(n2.mac, "52:54:00:77:00:02");
        assert_eq!(n2.hostname, "node2");
        assert_eq!(n2.lease_at, "Nov 30 12:33:17");
        assert_eq!(
            n2.pxe,
            PxeSteps {
                boot_loader: true,
                efi_loader: false,
                boot_script: true,
                needs_bios: false,
                kernel: true,
                initrd: true
            }
        );
        assert!(n2.reachable);
        assert_eq!(n2.load, "0.12 0.05 0.01");
        assert_eq!(n2.memory, "812 MiB free of 983 MiB");
        let n3 = report.node("127.0.0.3").unwrap();
        assert_eq!(n3.hostname, "", "a lease without a name has none");
        assert!(n3.reachable, "a refused connection is an answer");
        assert!(!n3.nfs_mounted);
        assert!(!n3.pxe.boot_loader && !n3.pxe.kernel);
        assert!(n3.pxe.efi_loader, "a UEFI node's EFI loader: {:?}", n3.pxe);
        assert!(n3.pxe.needs_bios, "{:?}", n3.pxe);
        assert_eq!(
            (n3.krg_node_id.as_str(), n3.krg_cluster.as_str()),
            ("3", left_out)
        );
        assert_eq!(n2.krg_cluster, "", "a node without Kerrighed");
        assert_eq!(n3.processes, "41");
        let c = &report.cluster;
        assert_eq!(
            (
                c.kerrighed_nodes,
                c.up_on.as_str(),
                c.left_out.as_str(),
                c.scheduler.as_str()
            ),
            (1, "", "3", "mosix rr")
        );
        // The log: its events, not log-dhcp's option dumps; quotes kept.
        assert!(report
            .log
            .iter()
            .any(|l| l.contains("DHCPACK(ens5) 127.0.0.2")));
        assert!(report.log.iter().any(|l| l.ends_with("<b>\"x\"")));
        assert!(!report.log.iter().any(|l| l.contains("lease-time")));

        let page = run_it(&["html"]);
        assert!(page.contains("<td class=\"ip\">127.0.0.2</td>"), "{page}");
        assert!(page.contains("52:54:00:77:00:03"));
        assert_eq!(
            page.matches("<td class=\"no\">UEFI: needs BIOS/CSM")
                .count(),
            1,
            "node3 only: {page}"
        );
        assert!(
            page.contains(&format!(
                "<td class=\"krg\">node 3, {left_out}, 41 processes here</td>"
            )),
            "the cluster start's state, not krgadm's \"down\": {page}"
        );
        assert!(
            page.contains("<dt>State</dt><dd>not started</dd>"),
            "{page}"
        );
        assert!(
            page.contains("<dt>Left out</dt><dd>3: booted after"),
            "{page}"
        );
        assert!(
            page.contains("<dt>Scheduler</dt><dd>mosix rr</dd>"),
            "{page}"
        );
        assert!(
            page.contains("&lt;b&gt;&quot;x&quot;"),
            "log lines are escaped"
        );
        assert!(!page.contains("<b>\"x\""));
        assert!(page.contains("http-equiv=\"refresh\""));
        drop(listener);
    }

    /// Proxy mode: node1 sees no lease, yet a node that asked it on port
    /// 4011 has its row with its MAC, and no lease time is made up.
    #[test]
    fn in_proxy_mode_a_node_is_known_by_its_pxe_request() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let (run, _) = node1_settings(
            t,
            "ADDRESS=10.77.0.1\nPREFIX=24\nBOOT_SCRIPT=boot.ipxe\n",
            "MODE=proxy\nIFACE=ens4\nSERVE=192.168.77.101\n",
        );
        // What node1's dnsmasq logged as two iPXE nodes booted through it
        // (e2e-boot-bios), a LAN host's DHCP request among them.
        fs::write(
            run.join("dnsmasq.log"),
            "Dec  3 19:09:23 dnsmasq-dhcp[548]: 2387643400 PXE(ens4) 52:54:00:77:00:02 proxy\n\
             Dec  3 19:09:24 dnsmasq-dhcp[548]: 2387643401 DHCPREQUEST(ens4) 192.168.77.40 52:54:00:99:00:01\n\
             Dec  3 19:09:39 dnsmasq-dhcp[548]: 0 PXE(ens4) 192.168.77.122 52:54:00:77:00:02 boot.ipxe\n\
             Dec  3 19:09:39 dnsmasq-tftp[548]: sent /run/krgiso/tftp/boot.ipxe to 192.168.77.122\n",
        )
        .unwrap();
        let program = status_program();
        let report = StatusReport::parse(&status_output(&program, &["json"], t, &[])).unwrap();
        assert_eq!(report.node1.mode, "proxy");
        let ips: Vec<&str> = report.nodes.iter().map(|n| n.ip.as_str()).collect();
        assert_eq!(ips, ["192.168.77.122"], "a LAN host's request makes no row");
        let node = report.node("192.168.77.122").unwrap();
        assert_eq!(node.mac, "52:54:00:77:00:02");
        assert_eq!(node.lease_at, "");
        assert!(node.pxe.boot_script);
    }

    /// The reports' directory is the nodes': a link there is not followed,
    /// a name that is no address is skipped, only MAX_REPORTS files are
    /// read, and an address only a report names is never probed (it could
    /// be any host).
    #[test]
    fn the_nodes_reports_are_read_with_care() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let (_, reports) = node1_settings(
            t,
            "ADDRESS=10.77.0.1\nPREFIX=24\n",
            "MODE=full\nIFACE=ens5\nSERVE=10.77.0.1\n",
        );
        // A host that would accept the probe, named only by a report.
        let listener = TcpListener::bind("127.0.0.7:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        fs::write(reports.join("127.0.0.7"), "load=1.00\n").unwrap();
        fs::write(t.join("secret"), "load=node1's secret\n").unwrap();
        std::os::unix::fs::symlink(t.join("secret"), reports.join("127.0.0.8")).unwrap();
        fs::write(reports.join("node9"), "load=9\n").unwrap();
        for i in 1..=3 {
            fs::write(reports.join(format!("127.0.1.{i}")), "load=0.5\n").unwrap();
        }
        let program = status_program();
        let json = |max: &str| {
            let vars = [
                ("KRGISO_SSH_PORT", port.as_str()),
                ("KRGISO_MAX_REPORTS", max),
            ];
            StatusReport::parse(&status_output(&program, &["json"], t, &vars)).unwrap()
        };
        let report = json("256");
        let ips: Vec<&str> = report.nodes.iter().map(|n| n.ip.as_str()).collect();
        assert_eq!(ips, ["127.0.0.7", "127.0.1.1", "127.0.1.2", "127.0.1.3"]);
        let named = report.node("127.0.0.7").unwrap();
        assert_eq!(named.load, "1.00");
        assert!(
            !named.reachable,
            "an address only a report names was probed"
        );
        assert!(
            !serde_json::to_string(&report.nodes.iter().map(|n| &n.load).collect::<Vec<_>>())
                .unwrap()
                .contains("secret")
        );
        assert_eq!(json("2").nodes.len(), 2, "MAX_REPORTS is not a cap");
        drop(listener);
    }

    /// A node writes its own report: quotes, backslashes, tabs, control
    /// characters and markup in it are text in the JSON and on the page,
    /// never structure.
    #[test]
    fn a_nodes_report_cannot_break_the_json_or_the_page() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let (run, reports) = node1_settings(
            t,
            "ADDRESS=10.77.0.1\nPREFIX=24\n",
            "MODE=full\nIFACE=ens5\nSERVE=10.77.0.1\n",
        );
        fs::write(
            run.join("dnsmasq.leases"),
            "1764500000 52:54:00:77:00:05 127.0.0.5 node5 *\n",
        )
        .unwrap();
        fs::write(
            reports.join("127.0.0.5"),
            "load=a\"b\\c\td\u{1}e\u{1b}[0m\nkrg_cluster=up on 5 </td><script>x</script>\n",
        )
        .unwrap();
        let program = status_program();
        let vars = [("KRGISO_SSH_PORT", "1")];
        let report = StatusReport::parse(&status_output(&program, &["json"], t, &vars)).unwrap();
        let node = report.node("127.0.0.5").unwrap();
        assert_eq!(node.load, "a\"b\\c de[0m");
        assert_eq!(node.krg_cluster, "up on 5 </td><script>x</script>");
        let page = status_output(&program, &["html"], t, &vars);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("a&quot;b\\c"), "{page}");
    }

    /// A member lost: the survivors' reports say so (krgiso-cluster-watch's
    /// words), the lost one's last report still says up. The page names
    /// the lost id once, calls the cluster down, and says what happens.
    #[test]
    fn a_lost_member_is_named_and_the_cluster_called_down() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let (_, reports) = node1_settings(
            t,
            "ADDRESS=10.77.0.1\nPREFIX=24\n",
            "MODE=full\nIFACE=ens5\nSERVE=10.77.0.1\n",
        );
        let lost = "lost: node 133 silent for 10 s; this node reboots, and the cluster forms again with the nodes present";
        for (id, state) in [(131, lost), (132, lost), (133, "up on 131 132 133")] {
            fs::write(
                reports.join(format!("127.0.1.{id}")),
                format!("node{id} 127.0.1.{id} 2.6.20-krg 2026-12-04T08:00:00Z\nkrg_node_id={id}\nkrg_cluster={state}\n"),
            )
            .unwrap();
        }
        let program = status_program();
        let report = StatusReport::parse(&status_output(&program, &["json"], t, &[])).unwrap();
        assert_eq!(
            (report.cluster.lost.as_str(), report.cluster.up_on.as_str()),
            ("133", "")
        );
        let page = status_output(&program, &["html"], t, &[]);
        assert!(
            page.contains("<dt>State</dt><dd>down: a member was lost</dd>"),
            "{page}"
        );
        assert!(
            page.contains("<dt>Lost</dt><dd>133: went silent; the other members reboot"),
            "{page}"
        );
        // Once the survivors have booted again, their reports say so.
        for id in [131, 132] {
            fs::write(
                reports.join(format!("127.0.1.{id}")),
                format!("node{id} 127.0.1.{id} 2.6.20-krg 2026-12-04T08:02:00Z\nkrg_node_id={id}\nkrg_cluster=up on 131 132\n"),
            )
            .unwrap();
        }
        let report = StatusReport::parse(&status_output(&program, &["json"], t, &[])).unwrap();
        assert_eq!(report.cluster.lost, "");
    }

    /// Proxy mode on a Kerrighed image: node1's dnsmasq hook (nfs-client)
    /// run as dnsmasq runs it, on each boot script fetched. An address
    /// whose last octet an earlier one has, or node1's, is named; the
    /// first keeps its id, a fetch again changes nothing, other files are
    /// no sign of a node. The status page shows the clash in the node's
    /// row; with stock nodes (no ids) there is none.
    #[test]
    fn node1_names_a_node_whose_kerrighed_id_another_has() {
        let lib = crate::project_root().join("overlay/node1/usr/local/lib/krgiso");
        for (ids, clashes) in [("last-octet", true), ("none", false)] {
            let tmp = tempfile::tempdir().unwrap();
            let t = tmp.path();
            let (run, reports) = node1_settings(
                t,
                &format!("CLUSTER_IFACE=auto\nADDRESS=10.77.0.1\nPREFIX=24\nBOOT_SCRIPT=boot.ipxe\nNODE_IDS={ids}\nID_CLASHES=id-clashes\n"),
                "MODE=proxy\nIFACE=ens5\nSERVE=192.168.77.100\n",
            );
            fs::write(run.join("link.env"), "MODE=proxy\nSERVE=192.168.77.100\n").unwrap();
            // The hook sources node1.sh where the image has it: here, the
            // overlay's.
            let hook = t.join("nfs-client");
            let text = fs::read_to_string(lib.join("nfs-client")).unwrap();
            let node1_sh = lib.join("node1.sh");
            fs::write(
                &hook,
                text.replace(
                    "/usr/local/lib/krgiso/node1.sh",
                    &node1_sh.display().to_string(),
                ),
            )
            .unwrap();
            let exe = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
            fs::set_permissions(&hook, exe).unwrap();
            let fetched = |address: &str, file: &str| {
                status_output(
                    &hook,
                    &["tftp", "1024", address, file],
                    t,
                    &[("KRGISO_NFS", "no")],
                );
            };
            fetched("192.168.77.122", "/run/krgiso/tftp/boot.ipxe");
            fetched("192.168.77.123", "boot.ipxe");
            fetched("192.168.78.122", "boot.ipxe");
            fetched("192.168.78.100", "boot.ipxe");
            fetched("192.168.77.122", "boot.ipxe");
            fetched("192.168.79.123", "snponly.efi");
            let clients = fs::read_to_string(run.join("nfs-clients")).unwrap();
            assert_eq!(
                clients,
                "192.168.77.122\n192.168.77.123\n192.168.78.122\n192.168.78.100\n"
            );
            let clash =
                |address: &str| fs::read_to_string(run.join("id-clashes").join(address)).ok();
            for first in ["192.168.77.122", "192.168.77.123"] {
                assert_eq!(clash(first), None, "{first} fetched first: it keeps its id");
            }
            assert_eq!(
                clash("192.168.79.123"),
                None,
                "only the boot script is a node's sign"
            );
            // A member's report: the page then has its Kerrighed section.
            fs::write(
                reports.join("192.168.77.122"),
                "node122 192.168.77.122 2.6.20-krg 2026-12-04T23:00:00Z\nkrg_node_id=122\nkrg_cluster=up on 122 123\n",
            )
            .unwrap();
            let report =
                StatusReport::parse(&status_output(&status_program(), &["json"], t, &[])).unwrap();
            let page = status_output(&status_program(), &["html"], t, &[]);
            if !clashes {
                assert!(
                    !run.join("id-clashes").exists(),
                    "stock nodes have no ids to clash"
                );
                assert!(report.nodes.iter().all(|n| n.id_clash.is_empty()));
                continue;
            }
            let twin = clash("192.168.78.122").expect("a second node with id 122 is named");
            assert!(
                twin.starts_with("Kerrighed node id 122 (the last octet of 192.168.78.122) is already 192.168.77.122's: this node stays out of the cluster."),
                "{twin}"
            );
            let node1s = clash("192.168.78.100").expect("a node with node1's octet is named");
            assert!(
                node1s.starts_with("Kerrighed node id 100 (the last octet of 192.168.78.100) is node1's own (192.168.77.100)"),
                "{node1s}"
            );
            // What to do, in both.
            for said in [&twin, &node1s] {
                assert!(
                    said.contains("in one /24 that leave out node1's octet 100")
                        && said.contains("full DHCP mode"),
                    "{said}"
                );
            }
            let shown = report
                .node("192.168.78.122")
                .expect("a row for the clashing node");
            assert_eq!(shown.id_clash, twin.trim_end());
            assert!(
                page.contains(
                    "<dt>Id clashes</dt><dd>192.168.78.100 192.168.78.122: out of the cluster"
                ),
                "{page}"
            );
            assert!(page.contains("<td class=\"no\">id clash: Kerrighed node id 122 (the last octet of 192.168.78.122) is already 192.168.77.122's"), "{page}");
        }
    }

    /// As busybox httpd runs it: for /status.json (interpreter of *.json,
    /// the file as argument) and as cgi-bin/index.cgi, with a CGI header.
    #[test]
    fn as_a_cgi_it_says_what_it_sends() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        fs::write(t.join("cluster.env"), "ADDRESS=127.0.0.1\nPREFIX=8\n").unwrap();
        let program = status_program();
        let cgi = t.join("cgi-bin");
        fs::create_dir_all(&cgi).unwrap();
        std::os::unix::fs::symlink(&program, cgi.join("index.cgi")).unwrap();
        for (args, program, header) in [
            (
                vec!["status.json"],
                program.clone(),
                "Content-Type: application/json\r\n",
            ),
            (
                vec![],
                cgi.join("index.cgi"),
                "Content-Type: text/html; charset=utf-8\r\n",
            ),
        ] {
            let text = status_output(&program, &args, t, &[("KRGISO_SSH_PORT", "22")]);
            assert!(text.starts_with(header), "{text}");
            let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
            if header.contains("json") {
                let report = StatusReport::parse(body).unwrap();
                assert!(report.nodes.is_empty());
                assert_eq!(report.node1.mode, "unknown");
            } else {
                assert!(body.contains("Nodes (0)"));
            }
        }
    }
}
