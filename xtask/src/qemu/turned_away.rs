//! A UEFI node on a Kerrighed image (`qemu --uefi-nodes N` with a
//! Kerrighed profile). The Kerrighed kernel (Linux 2.6.20) has no EFI
//! stub, so the boot script turns such a node away and says why. Checked
//! on the real thing:
//!
//! - its firmware got iPXE's EFI build from node1, which ran the boot
//!   script (TFTP reads on the cluster link);
//! - the script's words are on its console, and it never asked for the
//!   kernel;
//! - node1's web server was asked for `needs-bios.txt`, so that the status
//!   page's row says "UEFI: needs BIOS/CSM" (checks.rs).
//!
//! These nodes are powered on and off before the cluster's: Kerrighed's
//! settle window must not wait on them, nor they slow the nodes' boot.

use anyhow::{bail, Result};

use super::checks::{fetched, Fetch};
use super::milestone::KRG_UEFI_NODE_STEPS;
use super::{Run, Tracked};
use crate::node1::render::NEEDS_BIOS;

impl Run<'_> {
    /// Powers on the test's UEFI nodes of a Kerrighed image, checks that
    /// each was turned away, and powers them off; keeps their addresses
    /// for the status page's check.
    pub(super) fn turn_away_uefi_nodes(&mut self) -> Result<()> {
        let uefi: Vec<u32> = (2..2 + self.test.nodes)
            .filter(|&n| self.test.turned_away(n))
            .collect();
        if uefi.is_empty() {
            return Ok(());
        }
        let first = self.vms.len();
        for &n in &uefi {
            let spec = self.node_spec(n)?;
            self.power_on(spec, KRG_UEFI_NODE_STEPS)?;
        }
        self.wait_for(|vms| vms.iter().all(Tracked::done))?;
        let seen = self.hub.seen();
        let gone: Vec<Tracked> = self.vms.drain(first..).collect();
        for mut t in gone {
            let name = t.vm.spec.name.clone();
            let ip = self.leased(&t)?;
            let mac = t.vm.spec.cluster.0;
            let after = &seen[t.seen_from.min(seen.len())..];
            if let Some(kernel) = fetched(after, mac, Fetch::Http, |f| f.contains("vmlinuz")) {
                bail!("{name}, a UEFI node, asked for the Kerrighed kernel ({kernel}), which it cannot run");
            }
            if fetched(after, mac, Fetch::Http, |f| f.ends_with(NEEDS_BIOS)).is_none() {
                bail!("{name}, turned away, never asked node1's web server for {NEEDS_BIOS}: the status page cannot name it");
            }
            t.vm.stop();
            self.say(&name, &format!("turned away at {ip}, powered off"));
            self.turned_away.push((name, ip));
            self.retired.push(t);
        }
        Ok(())
    }
}
