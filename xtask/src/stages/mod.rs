//! The krgiso pipeline: the four stages over one profile, in order
//! (packages, kernel, node1, iso), and which stages each command runs.
//!
//! A stage module depends on the engine, on `layout` (where every other
//! stage's outputs are) and on the shared steps here (`userland`,
//! `static_builds`, `kconfig`, `root_kernels`), never on another stage.

pub(crate) mod initramfs;
pub(crate) mod iso;
pub(crate) mod kconfig;
pub mod kernel;
pub(crate) mod node1;
pub(crate) mod packages;
pub(crate) mod root_kernels;
pub(crate) mod static_builds;
pub(crate) mod userland;

use iso::Iso;
use kernel::Kernel;
use node1::Node1;
use packages::Packages;

use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::{Engine, Stage};
use crate::fetch::SourcesLock;
use crate::layout::Layout;
use crate::profile::Profile;

/// `build`: everything, in order, skipping what is up to date.
pub const BUILD: &[&str] = &["packages", "kernel", "node1", "iso"];
/// `allbutkernel`: everything but the kernel, which is used as built.
pub const ALL_BUT_KERNEL: &[&str] = &["packages", "node1", "iso"];
/// `iso`: the image from the existing roots and kernel (node1 if it is stale).
pub const ISO: &[&str] = &["node1", "iso"];

/// What every stage works from: the profile, where it came from (its
/// `sources.lock` sits beside it) and where things live.
pub struct BuildContext {
    pub profile: Profile,
    pub profile_path: PathBuf,
    pub layout: Layout,
    /// `--offline`: no stage may open a network connection.
    pub offline: bool,
    /// `--sources-dir`: source tarballs at hand, tried before the mirrors.
    pub sources_dir: Option<PathBuf>,
}

impl BuildContext {
    pub(crate) fn sources_lock(&self) -> anyhow::Result<SourcesLock> {
        SourcesLock::of_profile(&self.profile_path)
    }
}

pub fn stages(cx: &Arc<BuildContext>) -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(Packages(cx.clone())),
        Box::new(Kernel(cx.clone())),
        Box::new(Node1(cx.clone())),
        Box::new(Iso(cx.clone())),
    ]
}

pub(crate) fn engine(cx: BuildContext) -> Engine {
    let cx = Arc::new(cx);
    Engine::new(cx.layout.clone(), stages(&cx))
}
