//! Where everything lives: every path in the build dir, and the outputs
//! one stage makes for the next. Stages find each other's work here, never
//! in each other's modules.
//!
//! ```text
//! build/
//!   roots/node1, roots/nodes, roots/build   packages: the root filesystems
//!   kernel/                                 kernel: the node kernel, staged
//!   kernel-work/                            kernel: the kept tree, made again incrementally
//!   userland-work/                          packages: scratch, never in the image
//!   node1/node1, node1/nodes                node1: the layers over each root
//!   credentials                             node1: the cluster user's generated password (0600)
//!   stamps/<stage>.json, logs/<stage>.log   the engine
//!   qemu/                                   the boot test
//! out/<image>.iso, out/<image>.iso.sha256   iso
//! downloads/, ccache/, static-builds/      beside the build dir, kept by clean --all
//! ```

use std::path::{Path, PathBuf};

use crate::profile::IsoSpec;

/// Where everything lives.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The krgiso checkout: profiles/, overlay/, kernel-configs/.
    pub(crate) project: PathBuf,
    /// Stage outputs, stamps and logs (`./build`, or `--build-dir`).
    pub build: PathBuf,
    /// Where the image lands (`./out`, or `<build-dir>/out`).
    pub out: PathBuf,
    /// Download cache, beside the build dir; shared by all profiles, kept by `clean --all`.
    pub downloads: PathBuf,
    /// The compiler cache (ccache) the kernel is built with, beside the
    /// build dir: kept by `clean kernel` and `clean --all`, so a rebuild
    /// of the kernel compiles only what changed.
    pub(crate) compiler_cache: PathBuf,
    /// The static userland's builds (busybox, dropbear), each kept by its
    /// source version, recipe and compilers, beside the build dir: kept by
    /// `clean packages` and `clean --all`, so a rebuild compiles nothing
    /// that did not change.
    pub(crate) static_builds: PathBuf,
}

/// An output one stage makes and later stages read: the stage that makes
/// it and its name in that stage's stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Product {
    pub(crate) stage: &'static str,
    pub(crate) name: &'static str,
}

impl Product {
    /// Its key among a later stage's inputs (the digest is its generation).
    pub(crate) fn input_key(&self) -> String {
        format!("output {}/{}", self.stage, self.name)
    }
}

/// packages: node1's root filesystem.
pub(crate) const NODE1_ROOT: Product = Product {
    stage: "packages",
    name: "node1-root",
};
/// packages: the nodes' root filesystem (exported by node1 over NFS).
pub(crate) const NODES_ROOT: Product = Product {
    stage: "packages",
    name: "nodes-root",
};
/// packages: where `toolchain = "current"` compiles the kernel; never in the image.
pub(crate) const BUILD_ROOT: Product = Product {
    stage: "packages",
    name: "build-root",
};
/// kernel: the node kernel, its initrd, config, System.map and release.
pub(crate) const STAGED_KERNEL: Product = Product {
    stage: "kernel",
    name: "kernel",
};
/// node1: the layers laid over the node1 and nodes roots.
pub(crate) const LAYERS: Product = Product {
    stage: "node1",
    name: "config",
};
/// iso: the image and its `.sha256`.
pub(crate) const IMAGE: Product = Product {
    stage: "iso",
    name: "image",
};
pub(crate) const IMAGE_CHECKSUM: Product = Product {
    stage: "iso",
    name: "checksum",
};

/// The root filesystems the packages stage builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    Node1,
    Nodes,
    Build,
}

impl Root {
    /// The root a profile section (`node1`, `nodes`, `buildroot`) describes.
    pub(crate) fn of_section(section: &str) -> Root {
        match section {
            "node1" => Root::Node1,
            "nodes" => Root::Nodes,
            _ => Root::Build,
        }
    }
    /// Its name: its directory under `roots/` and in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Root::Node1 => "node1",
            Root::Nodes => "nodes",
            Root::Build => "build",
        }
    }
    pub(crate) fn product(self) -> Product {
        match self {
            Root::Node1 => NODE1_ROOT,
            Root::Nodes => NODES_ROOT,
            Root::Build => BUILD_ROOT,
        }
    }
}

/// Inside node1's root: where the nodes root sits in the live image.
pub(crate) const NODES_TREE: &str = "usr/lib/krgiso/nodes-root";
/// Inside node1's root: the nodes' layer (what the node1 stage renders
/// and overlays into the nodes root), which node1 lays over the nodes root
/// at boot.
pub(crate) const NODES_LAYER: &str = "usr/lib/krgiso/nodes-layer";
/// Inside node1's root: the boot files the image carries (iPXE, the node
/// kernel and initramfs), which node1 serves by TFTP and HTTP.
pub(crate) const TFTP_DIR: &str = "/srv/krgiso/tftp";
/// On the running node1: its TFTP root, made at each start by
/// `cluster-link` (overlay/node1): links to the boot files and the boot
/// script filled in from its template for the address the nodes reach.
pub(crate) const SERVED_DIR: &str = "/run/krgiso/tftp";
/// Inside node1's root: what node1 exports to the nodes over NFS.
pub(crate) const EXPORT_DIR: &str = "/srv/krgiso/nodes";
/// What to do when there is no image yet.
pub(crate) const NO_IMAGE_HINT: &str = "run `cargo xtask build` (or `cargo xtask iso`)";

/// The boot files inside a root filesystem or layer at `root`.
pub(crate) fn tftp_dir(root: &Path) -> PathBuf {
    root.join(TFTP_DIR.trim_start_matches('/'))
}

/// What a running node1 at `root` serves by TFTP ([`SERVED_DIR`]).
pub(crate) fn served_dir(root: &Path) -> PathBuf {
    root.join(SERVED_DIR.trim_start_matches('/'))
}

impl Layout {
    /// The default layout under `project`, or one around an explicit build dir.
    pub fn new(project: &Path, build_dir: Option<&Path>) -> Layout {
        match build_dir {
            None => Layout {
                project: project.to_owned(),
                build: project.join("build"),
                out: project.join("out"),
                downloads: project.join("downloads"),
                compiler_cache: project.join("ccache"),
                static_builds: project.join("static-builds"),
            },
            Some(build) => Layout {
                project: project.to_owned(),
                build: build.to_owned(),
                out: build.join("out"),
                downloads: build.parent().unwrap_or(Path::new(".")).join("downloads"),
                compiler_cache: build.parent().unwrap_or(Path::new(".")).join("ccache"),
                static_builds: build
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("static-builds"),
            },
        }
    }

    pub(crate) fn logs(&self) -> PathBuf {
        self.build.join("logs")
    }
    pub(crate) fn log(&self, stage: &str) -> PathBuf {
        self.logs().join(format!("{stage}.log"))
    }
    pub(crate) fn stamps(&self) -> PathBuf {
        self.build.join("stamps")
    }
    pub fn stamp(&self, stage: &str) -> PathBuf {
        self.stamps().join(format!("{stage}.json"))
    }
    /// The lock one run at a time holds on the build dir.
    pub(crate) fn lock(&self) -> PathBuf {
        self.build.join(".lock")
    }
    /// Where a root filesystem is built.
    pub(crate) fn root(&self, root: Root) -> PathBuf {
        self.build.join("roots").join(root.name())
    }
    /// Where the kernel stage leaves the node kernel (and its initrd,
    /// config, System.map, release) for node1's TFTP root.
    pub(crate) fn staged_kernel(&self) -> PathBuf {
        self.build.join("kernel")
    }
    /// Where the kernel's sources are unpacked and built; never in the image.
    pub(crate) fn kernel_work(&self) -> PathBuf {
        self.build.join("kernel-work")
    }
    /// Where the static nodes userland is compiled; never in the image.
    pub(crate) fn userland_work(&self) -> PathBuf {
        self.build.join("userland-work")
    }
    /// The node1 stage's layers: `node1/` over node1's root, `nodes/` over the nodes'.
    pub fn layers(&self) -> PathBuf {
        self.build.join("node1")
    }
    /// The layer over a root.
    pub(crate) fn layer(&self, root: Root) -> PathBuf {
        self.layers().join(root.name())
    }
    /// The cluster user's password, readable by root only.
    pub(crate) fn credentials(&self) -> PathBuf {
        self.build.join("credentials")
    }
    /// The iso stage's scratch: the ISO tree and the stacked roots.
    pub(crate) fn iso_tree(&self) -> PathBuf {
        self.build.join("iso-tree")
    }
    pub(crate) fn iso_stacks(&self) -> PathBuf {
        self.build.join("iso-stacks")
    }
    /// The iso stage's image of the roots, kept while the roots are unchanged.
    pub(crate) fn iso_roots(&self) -> PathBuf {
        self.build.join("iso-roots")
    }
    /// The image and its `.sha256`.
    pub(crate) fn image(&self, spec: &IsoSpec) -> (PathBuf, PathBuf) {
        (
            self.out.join(&spec.output),
            self.out.join(format!("{}.sha256", spec.output)),
        )
    }
    /// The boot test's consoles, captures and report.
    pub(crate) fn qemu(&self) -> PathBuf {
        self.build.join("qemu")
    }
    /// The UEFI boot test's (from a stick), beside the BIOS one's.
    pub(crate) fn qemu_uefi(&self) -> PathBuf {
        self.build.join("qemu-uefi")
    }
    /// The reports the bench reads its boot times from: the BIOS boot
    /// test's and the UEFI one's.
    pub(crate) fn boot_reports(&self) -> Vec<PathBuf> {
        vec![
            self.qemu().join("report.json"),
            self.qemu_uefi().join("report.json"),
        ]
    }
    /// A path shown relative to the project when it is inside it.
    pub(crate) fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.project)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_build_dir_keeps_downloads_and_the_compiler_cache_beside_it() {
        let layout = Layout::new(Path::new("/p"), Some(Path::new("/b/e2e")));
        assert_eq!(layout.out, Path::new("/b/e2e/out"));
        assert_eq!(layout.downloads, Path::new("/b/downloads"));
        assert_eq!(layout.compiler_cache, Path::new("/b/ccache"));
        assert_eq!(layout.static_builds, Path::new("/b/static-builds"));
        let default = Layout::new(Path::new("/p"), None);
        assert_eq!(default.build, Path::new("/p/build"));
        assert_eq!(default.out, Path::new("/p/out"));
    }

    #[test]
    fn each_section_names_its_own_root_and_product() {
        for (section, dir, product) in [
            ("node1", "node1", NODE1_ROOT),
            ("nodes", "nodes", NODES_ROOT),
            ("buildroot", "build", BUILD_ROOT),
        ] {
            let root = Root::of_section(section);
            assert_eq!(root.product(), product);
            let layout = Layout::new(Path::new("/p"), None);
            assert_eq!(layout.root(root), Path::new("/p/build/roots").join(dir));
        }
        assert_eq!(tftp_dir(Path::new("/r")), Path::new("/r/srv/krgiso/tftp"));
    }
}
