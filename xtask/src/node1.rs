//! The node1 stage: the overlays and the config files rendered from the
//! profile (dnsmasq, exports, pxelinux.cfg, kerrighed_nodes, network), and
//! the boot-time service that brings up DHCP + TFTP + NFS by itself.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Inputs, Layout, Output, Stage, StageRun};
use crate::kernel::KERNEL;
use crate::packages::{NODE1_ROOT, NODES_ROOT};
use crate::pipeline::NotBuiltYet;
use crate::profile::Profile;

pub const CONFIG: &str = "config";

pub struct Node1 {
    profile: Arc<Profile>,
    layout: Layout,
}

impl Node1 {
    pub fn new(profile: Arc<Profile>, layout: &Layout) -> Node1 {
        Node1 {
            profile,
            layout: layout.clone(),
        }
    }
}

impl Stage for Node1 {
    fn name(&self) -> &'static str {
        "node1"
    }
    fn about(&self) -> &'static str {
        "apply the overlays and render node1's PXE, DHCP and NFS configuration"
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        inputs.value("profile [network]", &self.profile.network);
        inputs.value("profile [cluster]", &self.profile.cluster);
        inputs.value("profile kernel.kind", &self.profile.kernel.kind);
        inputs.tree(&self.layout.project.join("overlay"))?;
        inputs.output_of("packages", NODE1_ROOT);
        inputs.output_of("packages", NODES_ROOT);
        inputs.output_of("kernel", KERNEL);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::dir(CONFIG, self.layout.build.join("node1"))]
    }
    fn run(&self, _run: &mut StageRun) -> Result<()> {
        Err(NotBuiltYet {
            what: "the node1 stage",
            issue: 6,
            title: "node1's PXE, DHCP and NFS services",
        }
        .into())
    }
}
