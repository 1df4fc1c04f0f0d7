//! The node1 stage: the overlays and the config files rendered from the
//! profile (dnsmasq, exports, pxelinux.cfg, kerrighed_nodes, network), and
//! the boot-time service that brings up DHCP + TFTP + NFS by itself.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Inputs, Output, Stage, StageRun};
use crate::kernel::KERNEL;
use crate::packages::{NODE1_ROOT, NODES_ROOT};
use crate::pipeline::{BuildContext, NotBuiltYet};

pub const CONFIG: &str = "config";

pub struct Node1(pub Arc<BuildContext>);

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
        inputs.value("profile [network]", &self.0.profile.network);
        inputs.value("profile [cluster]", &self.0.profile.cluster);
        inputs.value("profile kernel.kind", &self.0.profile.kernel.kind);
        inputs.tree(&self.0.layout.project.join("overlay"))?;
        inputs.output_of("packages", NODE1_ROOT);
        inputs.output_of("packages", NODES_ROOT);
        inputs.output_of("kernel", KERNEL);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::dir(CONFIG, self.0.layout.build.join("node1"))]
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

pub mod render;
