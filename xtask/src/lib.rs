//! krgiso: a `cargo xtask` pipeline that builds a bootable live USB/ISO image
//! for a Kerrighed single-system-image cluster. See README.md and DESIGN.md.

pub mod bench;
pub mod chroot;
pub mod cli;
pub mod e2e;
pub mod e2e_image;
pub mod e2e_krg;
pub mod e2e_usb;
pub mod engine;
pub mod fetch;
pub mod files;
#[cfg(test)]
mod golden;
pub mod host;
pub mod interrupt;
pub mod iso;
pub mod kernel;
pub mod kernel_config;
pub mod kernel_patches;
pub mod modules_makefile;
pub mod node1;
pub mod packages;
pub mod pipeline;
pub mod profile;
pub mod qemu;
pub mod shell;
pub mod test_http;
pub mod testsuite;
pub mod unpack;
pub mod usb;
pub mod userland;

use std::path::{Path, PathBuf};

/// The krgiso checkout this binary was built from.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}
