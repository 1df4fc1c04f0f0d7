//! krgiso: a `cargo xtask` pipeline that builds a bootable live USB/ISO image
//! for a Kerrighed single-system-image cluster. See README.md;
//! docs/source-tree.md says which module is which.
//!
//! `pub` is for what the integration tests (`xtask/tests`) and `main`
//! use; everything else is `pub(crate)`, so rustc reports dead code.

#![warn(unreachable_pub)]

// The command line, and where things live.
pub mod cli;
pub mod layout;
pub mod profile;

// The stage engine and the four stages, in pipeline order.
pub mod engine;
pub mod stages;

// What the stages and commands share: bytes (hashes, sizes), running
// commands, chroots, host tools, files, Ctrl-C, downloads and tarballs.
pub mod bytes;
pub(crate) mod chroot;
pub mod fetch;
pub mod files;
pub(crate) mod host;
pub mod interrupt;
pub(crate) mod shell;
pub mod unpack;

// node1's rendered files, and the commands beyond the build.
pub(crate) mod bench;
pub mod node1;
pub(crate) mod qemu;
pub(crate) mod seeded;
pub(crate) mod usb;

// `cargo xtask test`: its parts and fixtures.
#[cfg(test)]
mod golden;
pub mod testsuite;

use std::path::{Path, PathBuf};

/// The krgiso checkout this binary belongs to: the one around it when it
/// sits at `<checkout>/target/<debug|release>/xtask` (a checkout copied or
/// moved after it was built uses its own profiles), else the one it was
/// built from.
pub fn project_root() -> PathBuf {
    let around = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_owned()))
        .filter(|dir| dir.join("xtask/Cargo.toml").is_file() && dir.join("profiles").is_dir());
    around.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    })
}
