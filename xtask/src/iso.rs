//! The iso stage: squashfs of the node1 root, the nodes root image, BIOS and
//! UEFI boot, one hybrid ISO that boots from a USB stick, and its checksum.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Inputs, Output, Stage, StageRun};
use crate::kernel::KERNEL;
use crate::node1::CONFIG;
use crate::packages::{NODE1_ROOT, NODES_ROOT};
use crate::pipeline::{BuildContext, NotBuiltYet};

pub struct Iso(pub Arc<BuildContext>);

impl Stage for Iso {
    fn name(&self) -> &'static str {
        "iso"
    }
    fn about(&self) -> &'static str {
        "pack the roots and the kernel into a hybrid BIOS + UEFI ISO"
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        inputs.value("profile [iso]", &self.0.profile.iso);
        inputs.output_of("packages", NODE1_ROOT);
        inputs.output_of("packages", NODES_ROOT);
        inputs.output_of("kernel", KERNEL);
        inputs.output_of("node1", CONFIG);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        let BuildContext {
            profile, layout, ..
        } = &*self.0;
        let image = layout.out.join(&profile.iso.output);
        let checksum = layout.out.join(format!("{}.sha256", profile.iso.output));
        vec![
            Output::file("image", image),
            Output::file("checksum", checksum),
        ]
    }
    fn run(&self, _run: &mut StageRun) -> Result<()> {
        Err(NotBuiltYet {
            what: "the iso stage",
            issue: 7,
            title: "a hybrid BIOS + UEFI image",
        }
        .into())
    }
}
