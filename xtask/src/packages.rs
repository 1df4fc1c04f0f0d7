//! The packages stage: debootstrap the node1 root and the nodes root, each
//! from its profile section, and install each one's package set.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Inputs, Output, Stage, StageRun};
use crate::pipeline::{BuildContext, NotBuiltYet};

pub const NODE1_ROOT: &str = "node1-root";
pub const NODES_ROOT: &str = "nodes-root";

pub struct Packages(pub Arc<BuildContext>);

impl Stage for Packages {
    fn name(&self) -> &'static str {
        "packages"
    }
    fn about(&self) -> &'static str {
        "debootstrap the node1 and nodes roots and install their package sets"
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        inputs.value("profile [node1]", &self.0.profile.node1);
        inputs.value("profile [nodes]", &self.0.profile.nodes);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        let roots = self.0.layout.build.join("roots");
        vec![
            Output::dir(NODE1_ROOT, roots.join("node1")),
            Output::dir(NODES_ROOT, roots.join("nodes")),
        ]
    }
    fn run(&self, _run: &mut StageRun) -> Result<()> {
        Err(NotBuiltYet {
            what: "the packages stage",
            issue: 4,
            title: "debootstrap of the node1 and nodes roots",
        }
        .into())
    }
}
