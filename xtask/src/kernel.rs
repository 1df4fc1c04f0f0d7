//! The kernel stage: linux-2.6.20 + kerrighed-2.4.1 built inside the nodes
//! root with its own compiler (kind = "kerrighed"), or the nodes root's own
//! Debian kernel with an NFS-root initramfs (kind = "stock"); staged for TFTP.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Inputs, Output, Stage, StageRun};
use crate::fetch;
use crate::packages::NODES_ROOT;
use crate::pipeline::{BuildContext, NotBuiltYet};
use crate::profile::KernelKind;

pub const KERNEL: &str = "kernel";

pub struct Kernel(pub Arc<BuildContext>);

impl Stage for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }
    fn about(&self) -> &'static str {
        "build the node kernel in the nodes root and stage it for TFTP"
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        let kernel = &self.0.profile.kernel;
        inputs.value("profile [kernel]", kernel);
        if kernel.kind == KernelKind::Kerrighed {
            // The bytes the kernel is built from: file name and effective pin
            // (the profile's sha256, else sources.lock's). Mirrors may change.
            let lock = self.0.sources_lock()?;
            for name in ["linux", "kerrighed"] {
                if let Some(source) = self.0.profile.source(name) {
                    let pin = fetch::pin_of(source, &lock).unwrap_or("unpinned");
                    inputs.value(&format!("source {name}"), &(&source.file, pin));
                }
            }
            if let Some(config) = &kernel.config {
                inputs.file(&self.0.layout.project.join(config))?;
            }
        }
        inputs.output_of("packages", NODES_ROOT);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::dir(KERNEL, self.0.layout.build.join("kernel"))]
    }
    fn run(&self, _run: &mut StageRun) -> Result<()> {
        Err(NotBuiltYet {
            what: "the kernel stage",
            issue: 5,
            title: "the Kerrighed kernel",
        }
        .into())
    }
}
