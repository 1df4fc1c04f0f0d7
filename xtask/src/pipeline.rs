//! The krgiso pipeline: the four stages of DESIGN.md over one profile, and
//! which stages each command runs.

use std::sync::Arc;

pub use crate::engine::NotBuiltYet;
use crate::engine::{Engine, Layout, Stage};
use crate::profile::Profile;
use crate::{iso::Iso, kernel::Kernel, node1::Node1, packages::Packages};

/// `build`: everything, in order, skipping what is up to date.
pub const BUILD: &[&str] = &["packages", "kernel", "node1", "iso"];
/// `allbutkernel`: everything but the kernel, which is used as built.
pub const ALL_BUT_KERNEL: &[&str] = &["packages", "node1", "iso"];
/// `iso`: the image from the existing roots and kernel (node1 if it is stale).
pub const ISO: &[&str] = &["node1", "iso"];

/// What every stage works from: the profile and where things live.
pub struct BuildContext {
    pub profile: Arc<Profile>,
    pub layout: Layout,
}

pub fn stages(profile: &Arc<Profile>, layout: &Layout) -> Vec<Box<dyn Stage>> {
    let cx = Arc::new(BuildContext {
        profile: profile.clone(),
        layout: layout.clone(),
    });
    vec![
        Box::new(Packages(cx.clone())),
        Box::new(Kernel(cx.clone())),
        Box::new(Node1(cx.clone())),
        Box::new(Iso(cx)),
    ]
}

pub fn engine(profile: &Arc<Profile>, layout: Layout) -> Engine {
    let stages = stages(profile, &layout);
    Engine::new(layout, stages)
}
