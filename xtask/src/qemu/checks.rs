//! What the boot test asserts once the VMs are up: node1's status line,
//! the leases and TFTP reads on the cluster link, no DHCP server from node1
//! on the uplink, every node's file in node1's export, and node1's status
//! page (its JSON, and the page in Chromium).

use super::timing::{within, CHECKS, STATUS_PAGE_SETTLES};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::profile::Scheduler;
use anyhow::{bail, Context, Result};

use super::boot_time::{self, BootTime};
use super::browser;
use super::console::Console;
use super::frame::{Mac, Packet};
use super::milestone::{Milestone, NodesBoot};
use super::vm::Firmware;
use super::{LinkDhcp, Run, Screenshot, NODE1_CLUSTER, NODE1_UPLINK, NODE_REPORTS};
use crate::files;
use crate::node1::render::BOOT_SCRIPT;
use crate::node1::status::StatusReport;

impl Run<'_> {
    /// Every node's lease came from the link's DHCP server (node1, or the
    /// LAN's own), in its range; no one else served DHCP on the cluster
    /// link.
    pub(super) fn check_cluster_link(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        let seen = self.hub.seen();
        let server = self.dhcp_server();
        let rogue: Vec<String> = seen
            .iter()
            .filter_map(|s| match &s.packet {
                Packet::Dhcp {
                    sender,
                    from_server: true,
                    ..
                } if *sender != NODE1_CLUSTER && *sender != server => Some(sender.to_string()),
                _ => None,
            })
            .collect();
        if !rogue.is_empty() {
            bail!("an unknown DHCP server answered on the cluster link: {rogue:?}");
        }
        if self.test.link_dhcp == LinkDhcp::Foreign {
            let handed = addresses_handed_out(&seen, NODE1_CLUSTER, server);
            if !handed.is_empty() {
                bail!("node1 handed out addresses on a LAN with its own DHCP server: {handed:?}");
            }
            self.say(
                "node1",
                "only proxied: every address on the LAN came from its own server",
            );
        }
        let mut leases = Vec::new();
        for t in self.vms.iter().skip(1) {
            let name = &t.vm.spec.name;
            let lease = self.leased(t)?;
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
            leases.push((name.clone(), lease));
        }
        Ok(leases)
    }

    /// The address VM `t` leased: from node1's range, or on a LAN with
    /// its own server the address that server keeps for it.
    pub(super) fn leased(&self, t: &super::Tracked) -> Result<Ipv4Addr> {
        let name = &t.vm.spec.name;
        let lease: Ipv4Addr = t
            .detail(Milestone::Lease)
            .parse()
            .with_context(|| format!("{name}: no lease address seen"))?;
        match self.test.link_dhcp {
            LinkDhcp::Node1 => {
                let range = self.test.network.dhcp_range;
                if !range.contains(lease) {
                    bail!(
                        "{name} got {lease}, outside the DHCP range {}-{}",
                        range.start,
                        range.end
                    );
                }
            }
            LinkDhcp::Foreign => {
                let kept = super::pxe_number(name).map(|n| self.test.lan_address(n));
                if kept != Some(lease) {
                    bail!("{name} got {lease}, not the address the LAN's DHCP server keeps for it ({kept:?})");
                }
            }
        }
        Ok(lease)
    }

    /// node1 served no DHCP on the uplink (and the capture did see node1
    /// there: its own DHCP request to QEMU's server). On a LAN with its own
    /// server node1 has no other link: `check_cluster_link` saw to it.
    pub(super) fn check_uplink(&self) -> Result<()> {
        if self.test.link_dhcp == LinkDhcp::Foreign {
            return Ok(());
        }
        let path = self.test.dir.join("node1-uplink.pcap");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut asked = false;
        for f in super::frame::pcap_frames(&bytes)? {
            if let Some(Packet::Dhcp {
                sender,
                from_server,
                ..
            }) = super::frame::parse(f)
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

    /// Logged in on node1's serial console: every node's file in the
    /// export (when the nodes write one), where node1's boot went and
    /// where one node's went (systemd nodes, over ssh), and an ssh session
    /// on every node with the cluster key node1 made.
    pub(super) fn session_on_node1(
        &mut self,
        leases: &[(String, Ipv4Addr)],
        reports: bool,
    ) -> Result<()> {
        let user = self.test.login.0.clone();
        let until = within(CHECKS, self.deadline);
        let console = self.log_in_on_node1(until, "to check the nodes' root")?;
        // What the nodes write is theirs: node1 runs no setuid program
        // and opens no device node from it.
        let mounts = console.run("grep -E ' /(srv|run)/krgiso' /proc/mounts", until)?;
        let export = &self.test.export_dir;
        let unsafe_mounts: Vec<&str> = mounts
            .lines()
            .filter(|l| {
                let options = l.split_whitespace().nth(3).unwrap_or("");
                let has = |o: &str| options.split(',').any(|x| x == o);
                !(has("nosuid") && has("nodev"))
            })
            .collect();
        if !mounts.contains(&format!(" {export} ")) || !unsafe_mounts.is_empty() {
            bail!("node1 mounts the nodes' tree without nosuid,nodev: {unsafe_mounts:?} (of {mounts:?})");
        }
        if reports {
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
        }
        // The status page, asked of node1's web server on node1 (its
        // busybox is the client there): the JSON and the page.
        let console = &self.vms[0].vm.console;
        // The page says what is true now: a node's ssh daemon or its NFS
        // mount may come a few seconds after its login prompt, so it is
        // asked again, every 3 s for up to 60 s, until every row is whole.
        let status_page = if reports {
            let url = self.status_url();
            let json =
                self.status_json_until(until, |report| self.status_rows(leases, report).is_ok())?;
            Some((
                json,
                console.run(&format!("busybox wget -qO- {url}"), until)?,
            ))
        } else {
            None
        };
        let ssh_to = |ip: &Ipv4Addr, command: &str| ssh_command(&user, ip, command);
        // ssh from node1 to each node with the key node1 made at its boot
        // (the image holds none): `uname -nr` answered by the node itself;
        // and each node's host key is its own (ssh-keyscan from node1).
        let mut ssh = Vec::new();
        let mut host_keys_seen: Vec<(String, BTreeSet<String>)> = Vec::new();
        for (i, (name, ip)) in leases.iter().enumerate().filter(|_| reports) {
            let said = console.run(&ssh_to(ip, "uname -nr"), until)?;
            let Some(line) = node_uname(&said, self.test.nodes_boot) else {
                bail!(
                    "node1 could not ssh to {name} ({ip}) as {user} with the cluster key: {said:?}"
                );
            };
            let keys = console.run(&format!("ssh-keyscan -T 10 {ip} 2>/dev/null"), until)?;
            let keys = host_keys(&keys);
            if keys.is_empty() {
                bail!("node1's ssh-keyscan got no host key from {name} ({ip})");
            }
            if let Some((other, _)) = host_keys_seen.iter().find(|(_, k)| !keys.is_disjoint(k)) {
                bail!("{name} ({ip}) has the same ssh host key as {other}: the nodes share one root, yet each must have its own");
            }
            host_keys_seen.push((name.clone(), keys));
            ssh.push((i + 1, line.to_owned()));
        }
        // Where the boots went: a measurement, never a reason to fail.
        let mut boot_times = vec![("node1".to_owned(), boot_time::NODE1_DIR.to_owned())];
        if let (NodesBoot::Stock, Some((name, ip))) = (self.test.nodes_boot, leases.first()) {
            let dir = format!("{}/{}/{ip}", self.test.export_dir, boot_time::NODES_DIR);
            boot_times.push((name.clone(), dir));
        }
        let boot_times: Vec<(String, Option<BootTime>)> = boot_times
            .into_iter()
            .map(|(vm, dir)| {
                let output = console.run(&boot_time::read_command(&dir), until).ok();
                (vm, output.as_deref().and_then(BootTime::from_output))
            })
            .collect();
        if reports {
            self.restart_nfs_under_the_nodes(leases, until)?;
        }
        let _ = self.vms[0].vm.console.send("exit\n");
        for (vm, boot) in boot_times {
            match boot {
                Some(boot) => {
                    let unfinished = if boot.unfinished.is_empty() {
                        String::new()
                    } else {
                        format!("; still starting: {}", boot.unfinished.join(" "))
                    };
                    let summary = match boot.summary.as_str() {
                        "" => "not finished within 30 s of multi-user",
                        summary => summary,
                    };
                    self.say(
                        &vm,
                        &format!("boot: {summary}; slowest: {}{unfinished}", boot.top(3)),
                    );
                    self.boot_times.insert(vm, boot);
                }
                None => self.say(
                    &vm,
                    "boot: no systemd-analyze record (krgiso-boot-time wrote none, or reading it failed)",
                ),
            }
        }
        for (vm, detail) in ssh {
            self.record(vm, Milestone::SshFromNode1, detail);
        }
        if let Some((json, page)) = status_page {
            self.check_status_page(leases, &json, &page)?;
        }
        Ok(())
    }

    /// On a LAN with its own DHCP server, the LAN's host (which never
    /// PXE-booted) tries a real NFS mount of the nodes' root at node1's
    /// address, with a user-space client: refused. Then it fetches the boot
    /// script by TFTP, as a node's iPXE does, and the same mount is granted:
    /// node1 exports to the hosts that booted from it, and to no other.
    pub(super) fn check_export_to_booted_only(&mut self) -> Result<()> {
        let Some(lan) = &self.lan else {
            return Ok(());
        };
        let status = self.vms[0].detail(Milestone::Ready);
        let address = node1_address(status)
            .with_context(|| format!("node1's status line has no address: {status}"))?;
        let url = format!("nfs://{address}{}", self.test.export_dir);
        let (mounted, said) = lan.run("nfs-ls", &[&url])?;
        if mounted || !mount_refused(&said) {
            bail!(
                "a LAN host that never PXE-booted tried to mount {url}: it should be refused by node1's mountd, yet nfs-ls said {said:?}"
            );
        }
        let refused = said.trim().to_owned();
        let script = format!("tftp://{address}/{BOOT_SCRIPT}");
        let (fetched, said) = lan.run(
            "curl",
            &["-sS", "--max-time", "20", "-o", "/dev/null", &script],
        )?;
        if !fetched {
            bail!("the LAN host could not fetch {script}: {said}");
        }
        // node1 exports from dnsmasq's TFTP hook: give it a few seconds.
        let until = within(Duration::from_secs(30), self.deadline);
        let listing = loop {
            let (mounted, said) = lan.run("nfs-ls", &[&url])?;
            if mounted {
                break said;
            }
            if Instant::now() >= until {
                bail!("the LAN host fetched node1's boot script, yet its mount of {url} is still refused: {said:?}");
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        if !listing.lines().any(|l| l.trim_end().ends_with(" etc")) {
            bail!("the LAN host mounted {url} but its listing has no etc: {listing:?}");
        }
        self.record(
            0,
            Milestone::ExportToBootedOnly,
            format!("refused ({refused}); granted after the boot script"),
        );
        Ok(())
    }

    /// node1's serial console, logged in as the cluster user (`why` says
    /// what for, in the error).
    pub(super) fn log_in_on_node1(&self, until: Instant, why: &str) -> Result<&Console> {
        let (user, password) = &self.test.login;
        let console = &self.vms[0].vm.console;
        console
            .login(user, password, until)
            .with_context(|| format!("logging in on node1's serial console {why}"))?;
        Ok(console)
    }

    /// node1's NFS server restarted under the running nodes, by the
    /// cluster user with sudo: each node writes a file in its home (in the
    /// shared root) before, then appends to it after. The append succeeds,
    /// the node reads both lines back, and node1 finds both in the export.
    fn restart_nfs_under_the_nodes(
        &mut self,
        leases: &[(String, Ipv4Addr)],
        until: Instant,
    ) -> Result<()> {
        let (user, password) = self.test.login.clone();
        let console = &self.vms[0].vm.console;
        for (name, ip) in leases {
            let (lines, _) = append_on_node(console, &user, ip, "before", until)?;
            if lines != ["before"] {
                bail!(
                    "{name} ({ip}) could not write {} in its home over ssh: {lines:?}",
                    written_by(ip)
                );
            }
        }
        console.sudo(&password, until)?;
        let t = Instant::now();
        let said = console.run(
            // As root: without D-Bus (minbase) systemctl answers only root.
            "sudo -n systemctl restart nfs-server && sudo -n systemctl is-active nfs-server",
            until,
        )?;
        if said.lines().last().map(str::trim) != Some("active") {
            bail!("node1's NFS server did not come back after a restart: {said:?}");
        }
        let restart = t.elapsed().as_secs_f64();
        let mut survived = Vec::new();
        for (i, (name, ip)) in leases.iter().enumerate() {
            let f = written_by(ip);
            let (lines, secs) = append_on_node(console, &user, ip, "after", until)?;
            if lines != ["before", "after"] {
                bail!("{name} ({ip}) after node1's NFS server restarted: {f} should say before, after; it says {lines:?}");
            }
            let served = console.run(
                &format!("sudo -n cat {}/home/{user}/{f}", self.test.export_dir),
                until,
            )?;
            let served: Vec<&str> = served.lines().map(str::trim).collect();
            if !served.ends_with(&["before", "after"]) {
                bail!("node1's export does not hold what {name} wrote before and after the NFS restart: {served:?}");
            }
            survived.push((
                i + 1,
                format!(
                    "wrote before and after (server restart {restart:.1} s; write after it {secs:.1} s)"
                ),
            ));
        }
        for (vm, detail) in survived {
            self.record(vm, Milestone::NfsRestart, detail);
        }
        Ok(())
    }

    /// node1's `status.json`, fetched by node1's own busybox from its
    /// logged-in console, asked again a second after each answer, for up to
    /// [`STATUS_PAGE_SETTLES`] until `whole` accepts it (what a page says
    /// is what is true now, and a node's report may lag): the last one.
    pub(super) fn status_json_until(
        &self,
        until: Instant,
        whole: impl Fn(&StatusReport) -> bool,
    ) -> Result<String> {
        let url = self.status_url();
        let settled = within(STATUS_PAGE_SETTLES, until);
        loop {
            let json = self.vms[0]
                .vm
                .console
                .run(&format!("busybox wget -qO- {url}status.json"), until)?;
            if StatusReport::parse(&json).is_ok_and(|r| whole(&r)) || Instant::now() >= settled {
                return Ok(json);
            }
            // A second: how soon the page says a change (a lost member)
            // is measured by this.
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// What the status page must say the cluster is up on (`131 132`),
    /// when the test's nodes form one.
    fn cluster_summary(&self, leases: &[(String, Ipv4Addr)]) -> Option<String> {
        let cluster = self.test.forms_a_cluster();
        let mut ids: Vec<u8> = leases.iter().map(|(_, ip)| ip.octets()[3]).collect();
        ids.sort_unstable();
        cluster.then(|| ids.iter().map(u8::to_string).collect::<Vec<_>>().join(" "))
    }

    /// node1's status page, where its status line says it serves.
    pub(super) fn status_url(&self) -> String {
        let status = self.vms[0].detail(Milestone::Ready);
        let address = node1_address(status).unwrap_or(self.test.network.address.addr);
        format!("http://{address}/")
    }

    /// Every node's row on the status page, whole: the test saw the node
    /// do all of it. Its address and MAC, or what the row lacks.
    fn status_rows(
        &self,
        leases: &[(String, Ipv4Addr)],
        report: &StatusReport,
    ) -> Result<Vec<(String, String)>> {
        let mut rows = Vec::new();
        for (i, (name, ip)) in leases.iter().enumerate() {
            let mac = self.vms[i + 1].vm.spec.cluster.0.to_string();
            let row = report.node(&ip.to_string()).with_context(|| {
                format!(
                    "node1's status page has no row for {name} ({ip}): see {}",
                    self.test.dir.join("status.json").display()
                )
            })?;
            let mut missing = Vec::new();
            let checks = [
                (row.mac == mac, "its MAC"),
                // In proxy mode the lease is the LAN server's: node1 sees
                // none.
                (
                    !row.lease_at.is_empty() || self.test.link_dhcp == LinkDhcp::Foreign,
                    "its lease time",
                ),
                // A UEFI node's firmware loaded iPXE's EFI build from node1
                // (a BIOS node in QEMU has iPXE in its card's ROM).
                (
                    row.pxe.efi_loader == (self.vms[i + 1].vm.spec.firmware == Firmware::Uefi),
                    "iPXE's EFI build fetched exactly when it is a UEFI node",
                ),
                (row.pxe.boot_script, "the boot script fetched"),
                (row.pxe.kernel, "the kernel fetched"),
                // The Kerrighed kernel mounts its NFS root itself: no initramfs.
                (
                    row.pxe.initrd || !matches!(self.test.nodes_boot, NodesBoot::Stock),
                    "the initramfs fetched",
                ),
                (row.nfs_mounted, "its NFS root mounted"),
                (row.reachable, "reachable"),
            ];
            for (ok, what) in checks {
                if !ok {
                    missing.push(what);
                }
            }
            if let NodesBoot::Kerrighed { userland, .. } = self.test.nodes_boot {
                if row.krg_node_id != ip.octets()[3].to_string() {
                    missing.push("its Kerrighed node id");
                }
                if userland && row.processes.is_empty() {
                    missing.push("how many processes run on it");
                }
            }
            if !missing.is_empty() {
                bail!(
                    "node1's status page does not show {name} ({ip}) with {}: {row:?}",
                    missing.join(", ")
                );
            }
            rows.push((ip.to_string(), mac));
        }
        for (name, ip) in &self.clashing {
            let row = report.node(&ip.to_string()).with_context(|| {
                format!("node1's status page has no row for {name} ({ip}), a node whose Kerrighed id another has")
            })?;
            let id = format!("Kerrighed node id {} ", ip.octets()[3]);
            if !row.id_clash.starts_with(&id) || !row.krg_node_id.is_empty() {
                bail!("node1's status page does not show {name} ({ip}) with its id clash (and out of the cluster): {row:?}");
            }
        }
        for (name, ip) in &self.turned_away {
            let row = report.node(&ip.to_string()).with_context(|| {
                format!("node1's status page has no row for {name} ({ip}), a UEFI node turned away")
            })?;
            if !(row.pxe.efi_loader && row.pxe.needs_bios && !row.pxe.kernel) {
                bail!(
                    "node1's status page does not show {name} ({ip}) as a UEFI node that needs BIOS/CSM: {row:?}"
                );
            }
        }
        if let Some(wanted) = self.cluster_summary(leases) {
            let c = &report.cluster;
            let schedulers = self.test.scheduler == Scheduler::Legacy;
            if c.up_on != wanted || (schedulers && !c.scheduler.contains("mosix")) {
                bail!(
                    "node1's status page does not show the cluster up on {wanted}{}: {c:?}",
                    if schedulers {
                        " with the mosix scheduler"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(rows)
    }

    /// node1's status page lists every node with what the test saw: its
    /// MAC and lease, the boot script, kernel and initramfs it fetched, its
    /// NFS root mounted, reachable; on Kerrighed nodes the node id. Then
    /// Chromium renders the page node1 served: a screenshot, and the same
    /// rows in the text it shows.
    fn check_status_page(
        &mut self,
        leases: &[(String, Ipv4Addr)],
        json: &str,
        page: &str,
    ) -> Result<()> {
        let dir = &self.test.dir;
        files::write_atomic(&dir.join("status.json"), json.as_bytes())?;
        files::write_atomic(&dir.join("status.html"), page.as_bytes())?;
        let report = StatusReport::parse(json)?;
        let password = &self.test.login.1;
        if !password.is_empty()
            && (json.contains(password.as_str()) || page.contains(password.as_str()))
        {
            bail!("node1's status page shows the cluster user's password");
        }
        let rows = self.status_rows(leases, &report)?;
        self.say(
            "node1",
            &format!(
                "status page: every node with its lease, boot files, NFS root ({} in {})",
                "status.json",
                dir.display()
            ),
        );
        let chromium = crate::host::find_program(browser::CHROMIUM).is_some();
        if !chromium && self.test.screenshot == Screenshot::IfInstalled {
            self.say(
                "node1",
                "status page: no screenshot (chromium is not installed)",
            );
            return Ok(());
        }
        let html = dir.join("status.html");
        let png = dir.join("status.png");
        let text = browser::render(&format!("file://{}", html.display()), &png, dir)?;
        let mode = format!("DHCP mode {}", dhcp_mode(self.test.link_dhcp));
        let up = self
            .cluster_summary(leases)
            .map(|ids| format!("up on {} nodes: {ids}", leases.len()));
        let turned_away = (!self.turned_away.is_empty()).then_some(NEEDS_BIOS_SHOWN);
        let clashing = (!self.clashing.is_empty()).then_some(ID_CLASH_SHOWN);
        let mut absent: Vec<&str> = ["krgiso cluster: node1", mode.as_str()]
            .into_iter()
            .chain(up.as_deref())
            .chain(turned_away)
            .chain(clashing)
            .filter(|t| !text.contains(t))
            .collect();
        for (ip, mac) in &rows {
            for t in [ip, mac] {
                if !text.contains(t.as_str()) {
                    absent.push(t);
                }
            }
        }
        if !absent.is_empty() {
            bail!("Chromium's rendering of the status page lacks {absent:?}: it shows {text:?}");
        }
        self.say(
            "node1",
            &format!(
                "status page rendered by Chromium, every node in it: {}",
                png.display()
            ),
        );
        Ok(())
    }
}

/// The file each node writes in the cluster user's home (in the shared
/// root) around node1's NFS restart and reboot.
pub(super) fn written_by(ip: &Ipv4Addr) -> String {
    format!("nfs-restart-{ip}")
}

/// What each node writes first in that file.
const FIRST_LINE: &str = "before";

/// What node1's status page shows in the iPXE column of a UEFI node turned
/// away by a Kerrighed image's boot script (krgiso-status).
const NEEDS_BIOS_SHOWN: &str = "UEFI: needs BIOS/CSM";

/// What node1's status page shows in the Kerrighed column of a node whose
/// id another has (krgiso-status).
const ID_CLASH_SHOWN: &str = "id clash: Kerrighed node id";

/// On node `ip`, over ssh from node1's console as the cluster user: `line`
/// written to its file (the first, `before`, starts it afresh; the others
/// are appended) and the file read back. Its lines, and how long that took.
pub(super) fn append_on_node(
    console: &Console,
    user: &str,
    ip: &Ipv4Addr,
    line: &str,
    until: Instant,
) -> Result<(Vec<String>, f64)> {
    let f = written_by(ip);
    let to = if line == FIRST_LINE { ">" } else { ">>" };
    let t = Instant::now();
    let command = format!("'echo {line} {to} {f} && sync && cat {f}'");
    let said = console.run(&ssh_command(user, ip, &command), until)?;
    let lines = said.lines().map(|l| l.trim().to_owned()).collect();
    Ok((lines, t.elapsed().as_secs_f64()))
}

/// The command node1 runs to run `command` on a node as the cluster user,
/// with the cluster key (no host key kept: the nodes' keys are new each build).
pub(super) fn ssh_command(user: &str, ip: &Ipv4Addr, command: &str) -> String {
    format!("ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=20 {user}@{ip} {command}")
}

/// The first file `mac` asked for, by TFTP or HTTP as `by` says, that
/// `wanted` accepts.
pub(super) fn fetched(
    seen: &[super::hub::Seen],
    mac: Mac,
    by: Fetch,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    seen.iter().find_map(|s| {
        let (sender, name) = match (&s.packet, by) {
            (Packet::TftpRead { sender, file, .. }, Fetch::Tftp) => (sender, file),
            (Packet::HttpGet { sender, path, .. }, Fetch::Http) => (sender, path),
            _ => return None,
        };
        (*sender == mac && wanted(name)).then(|| name.clone())
    })
}

/// How a node fetched a file from node1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetch {
    Tftp,
    Http,
}

/// The host keys in what `ssh-keyscan` printed: `TYPE BASE64` of each
/// `HOST TYPE BASE64` line.
fn host_keys(said: &str) -> BTreeSet<String> {
    said.lines()
        .filter_map(
            |l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                [_, kind, key] if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") => {
                    Some(format!("{kind} {key}"))
                }
                _ => None,
            },
        )
        .collect()
}

/// The line `uname -nr` printed on a node, in what node1's console showed
/// after ssh: a name that is not node1's and a release (the Kerrighed
/// kernel's, on Kerrighed nodes).
fn node_uname(said: &str, nodes_boot: NodesBoot) -> Option<&str> {
    said.lines().map(str::trim).rev().find(|line| {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [host, release] => {
                *host != "node1"
                    && release.starts_with(|c: char| c.is_ascii_digit())
                    && (!matches!(nodes_boot, NodesBoot::Kerrighed { .. })
                        || *release == crate::stages::kernel::krg::KRG_RELEASE)
            }
            _ => false,
        }
    })
}

/// node1's status line must say: DHCP as the link calls for (full on a
/// link of its own, proxy on a LAN with a server), TFTP, HTTP and NFS up,
/// and the cluster key made.
pub(super) fn check_node1_status(line: &str, link: LinkDhcp) -> Result<()> {
    let fields: BTreeMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let mut wrong = Vec::new();
    for (key, want) in [
        ("dhcp", dhcp_mode(link)),
        ("tftp", "ok"),
        ("http", "ok"),
        ("nfs", "ok"),
        ("key", "ok"),
    ] {
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

/// The addresses `node1` offered or acknowledged to a client that the
/// LAN's `server` did not give it: a proxy answers with none (0.0.0.0),
/// or, on port 4011, with the client's own.
fn addresses_handed_out(seen: &[super::hub::Seen], node1: Mac, server: Mac) -> Vec<String> {
    let given_by = |who: Mac| {
        seen.iter().filter_map(move |s| match &s.packet {
            Packet::Dhcp {
                sender,
                from_server: true,
                client,
                your_address,
                ..
            } if *sender == who && !your_address.is_unspecified() => Some((*client, *your_address)),
            _ => None,
        })
    };
    let leased: BTreeSet<(Mac, Ipv4Addr)> = given_by(server).collect();
    given_by(node1)
        .filter(|given| !leased.contains(given))
        .map(|(client, ip)| format!("{ip} to {client}"))
        .collect()
}

/// Whether an NFS client's words say the server refused the mount (not
/// that it could not be reached).
fn mount_refused(said: &str) -> bool {
    said.contains("MNT3ERR_ACCES") || said.contains("Permission denied")
}

/// What node1's status line and page call the DHCP mode the link wants.
fn dhcp_mode(link: LinkDhcp) -> &'static str {
    match link {
        LinkDhcp::Node1 => "full",
        LinkDhcp::Foreign => "proxy",
    }
}

/// node1's address on the cluster link, from its status line
/// (`address=A/P`): the profile's in full mode, the LAN's lease in proxy
/// mode.
pub(super) fn node1_address(status: &str) -> Option<Ipv4Addr> {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_are_read_from_keyscan_lines() {
        let said = "# 10.77.0.131:22 SSH-2.0-OpenSSH_9.2p1\r\n10.77.0.131 ssh-ed25519 AAAAC3Nz\r\n10.77.0.131 ecdsa-sha2-nistp256 AAAAE2V\r\nKRGISO-OUTPUT-END\r\n";
        let keys = host_keys(said);
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            ["ecdsa-sha2-nistp256 AAAAE2V", "ssh-ed25519 AAAAC3Nz"]
        );
        assert!(
            host_keys("ssh: connect to host 10.77.0.131 port 22: Connection refused\n").is_empty()
        );
    }

    #[test]
    fn ssh_counts_only_when_the_node_itself_answered() {
        let krg = NodesBoot::Kerrighed {
            userland: true,
            session: 1,
            nbmin: 2,
        };
        let release = crate::stages::kernel::krg::KRG_RELEASE;
        let answered =
            format!("ssh -o BatchMode=yes krg@10.77.0.131 uname -nr\r\n(none) {release}\r\n");
        assert_eq!(
            node_uname(&answered, krg),
            Some(format!("(none) {release}").as_str())
        );
        assert_eq!(
            node_uname("krgiso 6.1.0-50-amd64\n", NodesBoot::Stock),
            Some("krgiso 6.1.0-50-amd64")
        );
        // Refused, or answered by node1 itself, or the wrong kernel.
        assert_eq!(
            node_uname(
                "krg@10.77.0.131: Permission denied (publickey).\n",
                NodesBoot::Stock
            ),
            None
        );
        assert_eq!(node_uname("node1 6.1.0-50-amd64\n", NodesBoot::Stock), None);
        assert_eq!(node_uname("krgiso 6.1.0-50-amd64\n", krg), None);
    }

    /// On a LAN with its own server, node1's proxy answers carry no
    /// address (0.0.0.0), or on port 4011 the one the LAN gave the node:
    /// neither counts. An address of node1's own choosing does.
    #[test]
    fn a_proxy_hands_out_no_address_of_its_own() {
        use crate::qemu::frame::{self, tests::bootp, tests::udp_frame};
        let (lan, node1, node) = (
            Mac([0x52, 0x54, 0, 0x77, 0xfe, 1]),
            Mac([0x52, 0x54, 0, 0x77, 0, 1]),
            Mac([0x52, 0x54, 0, 0x77, 0, 2]),
        );
        let leased = Ipv4Addr::new(192, 168, 77, 122);
        let seen = |packets: &[(Mac, Ipv4Addr)]| -> Vec<super::super::hub::Seen> {
            packets
                .iter()
                .map(|&(sender, yiaddr)| {
                    let f = udp_frame(
                        sender,
                        Ipv4Addr::UNSPECIFIED,
                        (67, 68),
                        &bootp(2, node, yiaddr, frame::DHCP_ACK),
                    );
                    super::super::hub::Seen {
                        packet: frame::parse(&f).unwrap(),
                    }
                })
                .collect()
        };
        let proxy = seen(&[
            (lan, leased),
            (node1, Ipv4Addr::UNSPECIFIED),
            (node1, leased),
        ]);
        assert!(addresses_handed_out(&proxy, node1, lan).is_empty());
        let serving = seen(&[(lan, leased), (node1, Ipv4Addr::new(10, 77, 0, 150))]);
        assert_eq!(
            addresses_handed_out(&serving, node1, lan),
            ["10.77.0.150 to 52:54:00:77:00:02"]
        );
    }

    #[test]
    fn node1s_address_is_read_from_its_status_line() {
        let line = "krgiso: node1 iface=ens4 address=192.168.77.101/24 dhcp=proxy tftp=ok";
        assert_eq!(node1_address(line), Some(Ipv4Addr::new(192, 168, 77, 101)));
        assert_eq!(
            node1_address("krgiso: node1 iface=none dhcp=failed(x)"),
            None
        );
    }

    /// libnfs's words for a refusal by mountd (what e2e-boot-bios saw),
    /// not for a server out of reach.
    #[test]
    fn a_refused_mount_is_told_from_an_unreachable_server() {
        assert!(mount_refused("Failed to mount nfs share : mount_cb: RPC error: Mount failed with error MNT3ERR_ACCES(13) Permission denied(13)"));
        assert!(!mount_refused(
            "Failed to mount nfs share : nfs_service failed. Connection refused"
        ));
    }

    #[test]
    fn node1_status_must_say_the_links_dhcp_mode_tftp_http_and_nfs() {
        let own = LinkDhcp::Node1;
        let ok = "krgiso: node1 iface=ens4 address=10.77.0.1/24 dhcp=full tftp=ok http=ok nfs=ok nodes=ram key=ok";
        check_node1_status(ok, own).unwrap();
        let no_http = ok.replace("http=ok", "http=failed(see /run/krgiso/httpd.log)");
        let e = check_node1_status(&no_http, own).unwrap_err().to_string();
        assert!(e.contains("http=failed(see /run/krgiso/httpd.log)"), "{e}");
        let proxy = ok.replace("dhcp=full", "dhcp=proxy");
        let e = check_node1_status(&proxy, own).unwrap_err().to_string();
        assert!(e.contains("dhcp=proxy (want dhcp=full)"), "{e}");
        // On a LAN with its own DHCP server, the other way round.
        check_node1_status(&proxy, LinkDhcp::Foreign).unwrap();
        let e = check_node1_status(ok, LinkDhcp::Foreign)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dhcp=full (want dhcp=proxy)"), "{e}");
        let broken = "krgiso: node1 iface=ens4 dhcp=full tftp=FAILED(no boot.ipxe)";
        let e = check_node1_status(broken, own).unwrap_err().to_string();
        assert!(e.contains("tftp=FAILED(no boot.ipxe)"), "{e}");
        assert!(e.contains("no nfs= field"), "{e}");
    }
}
