//! The packages stage: debootstrap the node1 root and the nodes root, each
//! from its profile section, and install each one's package set.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Inputs, Layout, Output, Stage, StageRun};
use crate::pipeline::NotBuiltYet;
use crate::profile::Profile;

pub const NODE1_ROOT: &str = "node1-root";
pub const NODES_ROOT: &str = "nodes-root";

pub struct Packages {
    profile: Arc<Profile>,
    layout: Layout,
}

impl Packages {
    pub fn new(profile: Arc<Profile>, layout: &Layout) -> Packages {
        Packages {
            profile,
            layout: layout.clone(),
        }
    }
}

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
        inputs.value("profile [node1]", &self.profile.node1);
        inputs.value("profile [nodes]", &self.profile.nodes);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        let roots = self.layout.build.join("roots");
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
