//! Kerrighed node ids that clash (`--id-clash`). Kerrighed takes a node's
//! id from the last octet of its address; on a LAN whose own DHCP server
//! hands out the addresses (node1 only proxies), two nodes in different
//! /24s, or a node and node1, can end in the same octet. node1 names such
//! a node when it fetches its boot script (nfs-client); the node reads it
//! from node1's web server, says it on its console and stays out of the
//! cluster; node1's status page shows it in the node's row.
//!
//! The test makes both clashes on the LAN of [`super::lan`] (a /16): of
//! its PXE nodes, the last but one gets node2's octet in the next /24, the
//! last node1's. They are powered on once every other node has fetched
//! its boot script, so the others keep their ids; the others form the
//! cluster with the ids of the LAN's addresses.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};

use super::lan;
use super::milestone::{Milestone, NodesBoot, KRG_LOADED};
use super::{BootTest, LinkDhcp, Run};

/// Whose id a clashing node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Clash {
    /// PXE node n's.
    Node(u32),
    Node1,
}

/// The clashing nodes a test has: the last two PXE nodes.
pub(super) const CLASHING_NODES: u32 = 2;

impl BootTest {
    /// Two of the PXE nodes get addresses whose Kerrighed id is another's:
    /// for a Kerrighed image on a LAN with its own DHCP server, with two
    /// nodes left to form the cluster.
    pub(crate) fn with_id_clashes(self) -> Result<BootTest> {
        let others = self.nodes.saturating_sub(self.uefi_nodes + CLASHING_NODES);
        match (self.nodes_boot, self.link_dhcp) {
            (NodesBoot::Kerrighed { .. }, LinkDhcp::Foreign)
                if others >= 2 && !self.late_node && !self.lose_node =>
            {
                Ok(BootTest {
                    id_clash: true,
                    ..self
                })
            }
            (NodesBoot::Stock, _) => {
                bail!("--id-clash is for Kerrighed nodes: this profile's nodes boot a stock kernel, which has no node id")
            }
            (_, LinkDhcp::Node1) => bail!(
                "--id-clash needs --foreign-dhcp: node1's own DHCP server keeps the nodes in one /24 and away from its octet"
            ),
            _ => bail!(
                "--id-clash needs {} more PXE nodes than the two that form the cluster (--nodes {} or more, BIOS ones), and no --late-node or --lose-node",
                CLASHING_NODES,
                2 + CLASHING_NODES + self.uefi_nodes
            ),
        }
    }

    /// Whose id PXE node `n` (2, 3, ...) has, if it is a clashing one.
    pub(super) fn clash_of(&self, n: u32) -> Option<Clash> {
        let last = 1 + self.nodes;
        match self.id_clash {
            true if n == last - 1 => Some(Clash::Node(2)),
            true if n == last => Some(Clash::Node1),
            _ => None,
        }
    }

    /// The address the LAN's DHCP server keeps for PXE node `n`.
    pub(super) fn lan_address(&self, n: u32) -> Ipv4Addr {
        match self.clash_of(n) {
            Some(Clash::Node(m)) => lan::same_octet_next_24(lan::address_of_node(m)),
            Some(Clash::Node1) => lan::same_octet_next_24(lan::NODE1_ADDRESS),
            None => lan::address_of_node(n),
        }
    }
}

impl Run<'_> {
    /// The clashing nodes, powered on once every other booting node has
    /// fetched its boot script from node1 (which keeps an id for the
    /// first address that has it).
    pub(super) fn power_on_clashing_nodes(&mut self) -> Result<()> {
        let clashing: Vec<u32> = (2..2 + self.test.nodes)
            .filter(|&n| self.test.clash_of(n).is_some())
            .collect();
        if clashing.is_empty() {
            return Ok(());
        }
        self.wait_for(|vms| vms[1..].iter().all(|t| t.has(Milestone::BootScript)))?;
        for n in clashing {
            let spec = self.node_spec(n)?;
            self.power_on(spec, self.test.node_steps(n))?;
        }
        Ok(())
    }

    /// The leases of the nodes that form the cluster; the clashing nodes'
    /// are kept in `self.clashing`. Each clashing node was told of its
    /// clash in node1's words, naming the one whose id it has, and never
    /// loaded Kerrighed.
    pub(super) fn set_clashing_apart(
        &mut self,
        leases: Vec<(String, Ipv4Addr)>,
    ) -> Result<Vec<(String, Ipv4Addr)>> {
        let mut members = Vec::new();
        for (name, ip) in leases {
            let Some(clash) = super::pxe_number(&name).and_then(|n| self.test.clash_of(n)) else {
                members.push((name, ip));
                continue;
            };
            let i = self.index_of(&name);
            let said = self.vms[i].detail(Milestone::IdClash).to_owned();
            let holder = match clash {
                Clash::Node(m) => format!("is already {}'s", lan::address_of_node(m)),
                Clash::Node1 => format!("is node1's own ({})", lan::NODE1_ADDRESS),
            };
            let id = ip.octets()[3];
            if !said.starts_with(&format!(
                "Kerrighed node id {id} (the last octet of {ip}) {holder}"
            )) {
                bail!(
                    "{name} ({ip}) was told of a clash, but not that its id {id} {holder}: {said}"
                );
            }
            let t = &self.vms[i];
            if t.vm.console.find_text(t.kernel_at, KRG_LOADED).is_some() {
                bail!("{name} ({ip}) was told its id clashes, yet loaded Kerrighed");
            }
            self.clashing.push((name, ip));
        }
        Ok(members)
    }

    /// The index in `self.vms` of the VM called `name`.
    fn index_of(&self, name: &str) -> usize {
        self.vms
            .iter()
            .position(|t| t.vm.spec.name == name)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_two_nodes_get_node2s_and_node1s_octet_in_the_next_24() {
        let test = BootTest {
            id_clash: true,
            ..crate::qemu::tests::boot_test(
                4,
                NodesBoot::Kerrighed {
                    userland: true,
                    session: 1,
                    nbmin: 2,
                },
            )
        };
        let addresses: Vec<Ipv4Addr> = (2..6).map(|n| test.lan_address(n)).collect();
        assert_eq!(
            addresses,
            [
                Ipv4Addr::new(192, 168, 77, 122),
                Ipv4Addr::new(192, 168, 77, 123),
                Ipv4Addr::new(192, 168, 78, 122),
                Ipv4Addr::new(192, 168, 78, 100),
            ]
        );
        assert_eq!(lan::NODE1_ADDRESS.octets()[3], 100);
        // node1's and node2's ids are those the clashing nodes have.
        assert_eq!(test.clash_of(4), Some(Clash::Node(2)));
        assert_eq!(test.clash_of(5), Some(Clash::Node1));
        assert_eq!(test.clash_of(3), None);
        let without = BootTest {
            id_clash: false,
            ..test
        };
        assert_eq!(without.lan_address(4), Ipv4Addr::new(192, 168, 77, 124));
    }
}
