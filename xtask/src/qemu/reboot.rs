//! The cluster across reboots (`BootTest::reboot`): node1's power cut
//! (its QEMU killed) right after each node had a file acknowledged as
//! written, node1 powered on again from the same stick, then each node
//! powered off and on. Every acknowledged file is whole on node1's disk
//! (the export is `sync`); a node keeps its address (so, with Kerrighed,
//! its node id) because node1 keeps its lease table on KRGISO-DATA; what
//! the nodes wrote is still there; a node that ran through node1's
//! absence carries on.

use super::timing::{within, CHECKS};
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::checks::{append_on_node, check_node1_status, ssh_command, written_by};
use super::milestone::{Milestone, NODE1_STEPS};
use super::{Run, Tracked};

impl Run<'_> {
    pub(super) fn reboot_node1_then_the_nodes(
        &mut self,
        leases: &[(String, Ipv4Addr)],
    ) -> Result<()> {
        let user = self.test.login.0.clone();
        let until = within(CHECKS, self.deadline);
        // Each node writes a file of its own, and fsyncs it (NFS: WRITEs,
        // then a COMMIT node1 answers): acknowledged as on disk. Then the
        // power cut, at once.
        let mut acknowledged = Vec::new();
        let t = Instant::now();
        {
            let console = self.log_in_on_node1(until, "to have the nodes write")?;
            for (name, ip) in leases {
                let f = durable_file(ip);
                let said = console.run(
                    &ssh_command(
                        &user,
                        ip,
                        &format!("'dd if=/dev/urandom of={f} bs=64k count={DURABLE_BLOCKS} conv=fsync 2>/dev/null && sha256sum {f}'"),
                    ),
                    until,
                )?;
                let sum = sum_of(&said, &f)
                    .with_context(|| format!("{name} ({ip}) could not write {f}: {said:?}"))?;
                acknowledged.push((name.clone(), f, sum));
            }
        }
        self.vms[0].vm.kill();
        self.say(
            "node1",
            &format!(
                "QEMU killed (a power cut) {:.1} s after the first of {} node(s) began writing its {} KiB file, each acknowledged (fsync)",
                t.elapsed().as_secs_f64(),
                acknowledged.len(),
                DURABLE_BLOCKS * 64
            ),
        );
        self.power_on_again(0, NODE1_STEPS)?;
        self.wait_for(|vms| vms[0].done())?;
        let status = self.vms[0].detail(Milestone::Ready).to_owned();
        check_node1_status(&status, self.test.link_dhcp)?;
        if !status.contains("nodes=disk:") {
            bail!("node1 powered on again without its nodes' root on KRGISO-DATA: {status}");
        }

        // Every acknowledged file, whole, read from node1's own disk.
        let console = self.log_in_on_node1(until, "after its reboot")?;
        let home = format!("{}/home/{user}", self.test.export_dir);
        for (name, f, sum) in &acknowledged {
            let said = console.run(&format!("sha256sum {home}/{f}"), until)?;
            if sum_of(&said, &format!("{home}/{f}")).as_deref() != Some(sum.as_str()) {
                bail!("{name} had {f} acknowledged as written before node1's power cut; after it, node1's disk has: {said:?} (sha256 was {sum})");
            }
        }
        let writes_kept = format!(
            "{} file(s) of {} KiB, acknowledged before the power cut, whole after it",
            acknowledged.len(),
            DURABLE_BLOCKS * 64
        );
        // Its lease table: every node's lease, kept on KRGISO-DATA.
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
        self.record(0, Milestone::WritesKept, writes_kept);
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

/// How much each node writes before node1's power cut, in 64 KiB blocks.
const DURABLE_BLOCKS: u32 = 64;

/// The file node `ip` writes before node1's power cut, in its home.
fn durable_file(ip: &Ipv4Addr) -> String {
    format!("durable-{ip}")
}

/// The sha256 that `sha256sum` printed for `file`.
fn sum_of(said: &str, file: &str) -> Option<String> {
    said.lines().find_map(|l| {
        let (sum, name) = l.trim().split_once("  ")?;
        (name == file && sum.len() == 64).then(|| sum.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sha256sum printed on a node, among console noise: the sum of
    /// the named file only, and none for an error.
    #[test]
    fn the_sum_is_read_for_its_file_only() {
        let sum = "a".repeat(64);
        let said = format!("ssh: warning\r\n{sum}  durable-10.77.0.131\r\n");
        assert_eq!(sum_of(&said, "durable-10.77.0.131"), Some(sum.clone()));
        assert_eq!(sum_of(&said, "durable-10.77.0.13"), None);
        assert_eq!(
            sum_of(
                "sha256sum: durable-10.77.0.131: No such file or directory",
                "durable-10.77.0.131"
            ),
            None
        );
    }
}
