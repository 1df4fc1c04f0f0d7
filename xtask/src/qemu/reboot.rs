//! The cluster across reboots (`BootTest::reboot`): node1 shut down by the
//! cluster user and powered on again from the same stick, then each node
//! powered off and on. A node keeps its address (so, with Kerrighed, its
//! node id) because node1 keeps its lease table on KRGISO-DATA; what the
//! nodes wrote is still there; a node that ran through node1's absence
//! carries on.

use super::timing::{within, CHECKS};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::checks::{append_on_node, check_node1_status, written_by};
use super::milestone::{Milestone, NODE1_STEPS};
use super::{Run, Tracked};
use crate::interrupt;

impl Run<'_> {
    pub(super) fn reboot_node1_then_the_nodes(
        &mut self,
        leases: &[(String, Ipv4Addr)],
    ) -> Result<()> {
        let (user, password) = self.test.login.clone();
        let until = within(CHECKS, self.deadline);
        {
            let console = self.log_in_on_node1(until, "to shut it down")?;
            console.sudo(&password, until)?;
            console.send("sudo -n systemctl poweroff\n")?;
        }
        self.say(
            "node1",
            "shut down by the cluster user (sudo systemctl poweroff)",
        );
        let t = Instant::now();
        while self.vms[0].vm.failure().is_none() {
            interrupt::check()?;
            if t.elapsed() > Duration::from_secs(120) {
                bail!("node1 did not power off within 120 s of `systemctl poweroff`");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.say(
            "node1",
            &format!(
                "powered off {:.1} s after the command",
                t.elapsed().as_secs_f64()
            ),
        );
        self.power_on_again(0, NODE1_STEPS)?;
        self.wait_for(|vms| vms[0].done())?;
        let status = self.vms[0].detail(Milestone::Ready).to_owned();
        check_node1_status(&status, self.test.link_dhcp)?;
        if !status.contains("nodes=disk:") {
            bail!("node1 powered on again without its nodes' root on KRGISO-DATA: {status}");
        }

        // Its lease table: every node's lease, kept on KRGISO-DATA.
        let console = self.log_in_on_node1(until, "after its reboot")?;
        let table = console.run("cat /run/krgiso/dnsmasq.leases", until)?;
        for (i, (name, ip)) in leases.iter().enumerate() {
            let mac = self.vms[i + 1].vm.spec.cluster.0.to_string();
            let kept = table.lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.get(1) == Some(&mac.as_str())
                    && fields.get(2) == Some(&ip.to_string().as_str())
            });
            if !kept {
                bail!("node1's lease table after its reboot has no lease of {ip} to {name} ({mac}):\n{table}");
            }
        }
        // The nodes that ran on: their next write succeeds and lands after
        // what they wrote before node1 went away.
        let mut carried_on = Vec::new();
        for (i, (name, ip)) in leases.iter().enumerate() {
            let f = written_by(ip);
            let (lines, secs) = append_on_node(console, &user, ip, "after-reboot", until)?;
            if lines != ["before", "after", "after-reboot"] {
                bail!("{name} ({ip}) after node1's reboot: {f} should say before, after, after-reboot; it says {lines:?}");
            }
            carried_on.push((i + 1, format!("{f} appended and read back in {secs:.1} s")));
        }
        let _ = console.send("exit\n");
        self.record(
            0,
            Milestone::LeasesKept,
            format!("{} lease(s) in the table after power-on", leases.len()),
        );
        for (vm, detail) in carried_on {
            self.record(vm, Milestone::CarriedOn, detail);
        }

        // Each node powered off and on again: the same address.
        for i in 1..self.vms.len() {
            let steps = self.vms[i].steps;
            self.power_on_again(i, steps)?;
        }
        self.wait_for(|vms| vms.iter().all(Tracked::done))?;
        for (i, (name, before)) in leases.iter().enumerate() {
            let now = self.vms[i + 1].detail(Milestone::Lease).to_owned();
            if now != before.to_string() {
                bail!("{name} had {before} and got {now} after a power cycle");
            }
            self.record(i + 1, Milestone::SameAddress, now);
        }
        Ok(())
    }

    /// VM `i` stopped (if it still runs) and powered on again as
    /// `<name>-again`, with the same disks and MAC; the old one's
    /// milestones stay in the report.
    pub(super) fn power_on_again(&mut self, i: usize, steps: &'static [Milestone]) -> Result<()> {
        let mut old = self.vms.remove(i);
        old.vm.stop();
        let mut spec = old.vm.spec.clone();
        spec.name = format!("{}-again", spec.name);
        self.retired.push(old);
        let tracked = self.start_tracked(spec, steps, self.accel, "power on")?;
        self.vms.insert(i, tracked);
        Ok(())
    }
}
