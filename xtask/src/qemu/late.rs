//! A node powered on once the Kerrighed cluster runs (`qemu --late-node`).
//! Kerrighed 2.4 adds no node to a running cluster: the node must stay
//! out, the cluster carry on without it, and the node say so on its
//! console and in its report, for node1's status page. Each is checked on
//! the real thing:
//!
//! - a member's `krgadm nodes` does not list the late node online, and
//!   its `krgadm cluster status` still says up on the nodes booted first;
//! - the late node's own `krgadm cluster status` (over ssh from node1)
//!   says down;
//! - node1's status page gives the late node's row the state its cluster
//!   start reported (left out, with what to do), and lists it among the
//!   cluster's nodes left out.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::checks::ssh_command;
use super::milestone::{KRG_LATE_STEPS, LEFT_OUT};
use super::timing::{within, CHECKS, LEFT_OUT_SAID};
use super::{Milestone, Run};
use crate::interrupt;
use crate::node1::status::StatusReport;

impl Run<'_> {
    /// Powers on one more node once the cluster of `members` runs, and
    /// checks that it is left out, and said so.
    pub(super) fn prove_a_late_node_left_out(
        &mut self,
        members: &[(String, Ipv4Addr)],
    ) -> Result<()> {
        let spec = self.node_spec(self.test.nodes + 2)?;
        self.power_on(spec, KRG_LATE_STEPS)?;
        self.wait_for(|vms| vms.iter().all(super::Tracked::done))?;
        let late = self.vms.len() - 1;
        let name = self.vms[late].vm.spec.name.clone();
        let ip = self.leased(&self.vms[late])?;
        let id = ip.octets()[3];

        self.wait_left_out(late)?;
        let until = within(CHECKS, self.deadline);
        let member = &members[0].0;
        let listing = self.on(1, "krgadm nodes; krgadm cluster status", until)?;
        let up = format!("up on {} nodes", members.len());
        if listing.contains(&format!("{id}:online")) || !listing.contains(&up) {
            bail!("{member}'s krgadm, with {name} (id {id}) booted late: {listing:?}: not the cluster {up} without it");
        }
        let node1 = self.log_in_on_node1(until, "to ask the late node and the status page")?;
        let mine = node1.run(
            &ssh_command(&self.test.login.0, &ip, "krgadm cluster status"),
            until,
        )?;
        if !mine.contains("status: down") {
            bail!("{name}, left out, has its own krgadm say {mine:?}, not \"status: down\"");
        }
        let page = self.left_out_on_status_page(&ip, until);
        let _ = self.vms[0].vm.console.send("exit\n");
        let page = page?;
        self.record(
            late,
            Milestone::LeftOut,
            format!("id {id} not online on {member}, its own cluster down; its console and the status page: {page}"),
        );
        Ok(())
    }

    /// The late node's console line saying it was left out, once its
    /// cluster start has waited out the settle time. A node that joined
    /// the cluster instead fails at once.
    fn wait_left_out(&self, late: usize) -> Result<()> {
        let t = &self.vms[late];
        let give_up = within(self.test.settle + LEFT_OUT_SAID, self.deadline);
        loop {
            interrupt::check()?;
            if t.vm.console.find(t.kernel_at, LEFT_OUT).is_some() {
                return Ok(());
            }
            if let Some(f) = t.vm.console.find(t.kernel_at, "Kerrighed is running on") {
                bail!(
                    "{}, powered on after the cluster started, joined it: {}",
                    t.vm.spec.name,
                    f.line.trim()
                );
            }
            if Instant::now() > give_up {
                bail!(
                    "{} never said it was left out of the running cluster (its cluster start logs to /var/log/krgiso-cluster-start.log; its console: {})",
                    t.vm.spec.name,
                    t.vm.files.log.display()
                );
            }
            t.vm.console.wait_a_little();
        }
    }

    /// The late node's row on node1's status page, asked again until it
    /// says left out (the node's report reaches node1 through the NFS
    /// root), and the cluster's list of nodes left out, with its id.
    fn left_out_on_status_page(&self, ip: &Ipv4Addr, until: Instant) -> Result<String> {
        let id = ip.octets()[3].to_string();
        let left_out = |r: &StatusReport| {
            let listed = r.cluster.left_out.split_whitespace().any(|l| l == id);
            r.node(&ip.to_string())
                .filter(|n| listed && n.krg_cluster.starts_with("left out"))
                .map(|n| n.krg_cluster.clone())
        };
        let json = self.status_json_until(until, |r| left_out(r).is_some())?;
        let report = StatusReport::parse(&json)?;
        left_out(&report).with_context(|| {
            format!(
                "node1's status page does not say {ip} was left out (its row and the cluster's list): {:?}, left out: {:?}",
                report.node(&ip.to_string()),
                report.cluster.left_out
            )
        })
    }
}
