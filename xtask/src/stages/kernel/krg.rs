//! The Kerrighed build itself, inside a chroot (the nodes root for the era
//! toolchain, the build root for the current one): configure, the
//! project's patches, the merged and verified config, and the kernel's,
//! modules' and tools' `make`; what it installs, and how to read the
//! release a bzImage says.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::chroot::{Chroot, Side};
use crate::stages::kconfig;
use crate::stages::userland;

use super::patches::PatchSet;
use super::{DESTDIR, PATCHES_INSIDE, SRC, UNPACK_BIN};

/// The release kerrighed-2.4.x's patched 2.6.20 builds.
pub(crate) const KRG_RELEASE: &str = "2.6.20-krg";

/// What the installs must leave in the nodes root (seed 001's list, and
/// the Kerrighed module itself).
pub(crate) const KRG_INSTALLED: &[&str] = &[
    "boot/vmlinuz-2.6.20-krg",
    "boot/System.map-2.6.20-krg",
    "lib/modules/2.6.20-krg",
    "lib/modules/2.6.20-krg/extra/kerrighed.ko",
    "usr/local/bin/krgadm",
    "usr/local/bin/krgcapset",
    "usr/local/bin/migrate",
];

/// Where Kerrighed's own test programs (tests/apps: `bi`, `bi-cr`, ...)
/// are installed in a static nodes root.
pub(crate) const KRG_TESTS_DIR: &str = "/usr/local/lib/kerrighed/tests";

/// Kerrighed's service files for a Debian nodes root (an LSB init script:
/// a static userland boots with its own rcS instead).
pub(crate) const KRG_SERVICE_FILES: &[&str] = &["etc/init.d/kerrighed", "etc/default/kerrighed"];

/// A kerrighed tree being built in its chroot: each step announces itself
/// and runs in the tree with `CC=` from the profile.
pub(super) struct KrgBuild<'s> {
    pub(super) chroot: Chroot<'s>,
    /// The tree as the chroot sees it (`/usr/src/kerrighed-2.4.4`).
    pub(super) dir: String,
    /// The tree on the host.
    pub(super) tree: PathBuf,
    pub(super) cc_arg: String,
    /// The current toolchain: the kernel is left to krgiso's own steps and
    /// everything installs into the nodes root as DESTDIR.
    pub(super) current: bool,
    pub(super) ccache: bool,
    /// For a static nodes userland: the second tree (as the chroot sees
    /// it) where libkerrighed and the tools are built against musl.
    pub(super) static_tools: Option<String>,
    pub(super) configure_args: Vec<String>,
}

impl KrgBuild<'_> {
    pub(super) fn make(&self, what: &str, args: &[&str], answer_defaults: bool) -> Result<()> {
        make_step(&self.chroot, &self.dir, what, args, answer_defaults)
    }

    /// libkerrighed's and the tools' builds against musl, when the nodes'
    /// userland is static: the second tree, and where it is on the host.
    fn static_tools(&self) -> Option<StaticTools<'_>> {
        let tree = self.static_tools.as_deref()?;
        let on_host = self
            .tree
            .parent()?
            .join(tree.trim_start_matches(&format!("{SRC}/")));
        Some(StaticTools {
            tree,
            on_host,
            kernel_tree: &self.dir,
        })
    }
    /// configure, kerrighed's patched kernel tree and its build dir, with the
    /// project's patches applied to that tree before its first make.
    pub(super) fn configure(&self, patches: Option<&PatchSet>) -> Result<()> {
        let cc = self.cc_arg.as_str();
        let extra = self.configure_args.iter().map(String::as_str);
        let apply = || -> Result<()> {
            match patches {
                Some(set) => set
                    .apply(&self.chroot, self.chroot.shell(), &self.dir, PATCHES_INSIDE)
                    .map(drop),
                None => Ok(()),
            }
        };
        if self.current {
            // configure would prepare (and first make) the kernel tree
            // itself, with make 4.3 before the patches are in: here its
            // kernel steps are krgiso's.
            let configure: Vec<&str> = ["./configure", "--disable-kernel", cc]
                .into_iter()
                .chain(extra)
                .collect();
            // The tools' configure for musl (one core, 3-4 s) beside
            // kerrighed's own and the unpacking of its kernel tree.
            let tools = self.static_tools();
            let beside: Vec<(&str, Side)> = match &tools {
                Some(tools) if !tools.configured() => {
                    vec![("tools", Box::new(|chroot: &Chroot| tools.configure(chroot)))]
                }
                _ => Vec::new(),
            };
            self.chroot.at_once(beside, || {
                self.make(
                    "configure kerrighed (the kernel by krgiso's steps)",
                    &configure,
                    false,
                )?;
                // Its bzcat's first, if there is one (see UNPACK_BIN).
                let bin = format!("{SRC}/{UNPACK_BIN}");
                self.make(
                    "make kernel-src: the kernel tree with kerrighed's patches",
                    &[
                        "sh",
                        "-c",
                        "PATH=\"$1:$PATH\" && shift && exec \"$@\"",
                        "sh",
                        &bin,
                        "make",
                        "kernel-src",
                        cc,
                    ],
                    false,
                )?;
                apply()?;
                // On every core: it compiles kconfig's programs.
                self.make(
                    "make kernel-prepare: the kernel's build dir",
                    &["make", &userland::jobs(), "kernel-prepare", cc],
                    false,
                )
            })
        } else {
            let configure: Vec<&str> = ["./configure", "--with-kernel-config=oldconfig", cc]
                .into_iter()
                .chain(extra)
                .collect();
            self.make("configure kerrighed", &configure, true)?;
            apply()
        }
    }

    /// defconfig, the fragment merged over it, oldconfig with every default
    /// taken; every `=y` of the fragment must survive. Returns the config.
    pub(super) fn kernel_config(&self, fragment: &str, fragment_path: &Path) -> Result<String> {
        let cc = self.cc_arg.as_str();
        self.make(
            "kernel config: defconfig, then the fragment, then oldconfig",
            &["make", "-C", "kernel", "defconfig", cc],
            false,
        )?;
        let config_path = self.tree.join("kernel/.config");
        let defconfig = fs::read_to_string(&config_path)
            .with_context(|| format!("make defconfig left no {}", config_path.display()))?;
        fs::write(&config_path, kconfig::merge(&defconfig, fragment))
            .context("writing the merged .config")?;
        self.chroot.shell().run(self.chroot.cmd_in(
            &self.dir,
            &["make", "-C", "kernel", "oldconfig", cc],
            true,
        ))?;
        let resolved = fs::read_to_string(&config_path).context("reading the resolved .config")?;
        let dropped = kconfig::dropped(fragment, &resolved);
        if !dropped.is_empty() {
            // The work dir stays after a failure: the config can be read there.
            bail!(
                "the kernel config dropped what {} asks for (unmet dependencies): {}; the resolved config is {}",
                fragment_path.display(),
                dropped.join(", "),
                config_path.display()
            );
        }
        Ok(resolved)
    }

    /// The kernel on every core, then its install, and kerrighed.ko, the
    /// scheduler modules, the libraries and the tools built by theirs.
    pub(super) fn build_and_install(&self) -> Result<()> {
        let destdir = format!("DESTDIR={DESTDIR}");
        // The static tools (a few seconds, mostly one core) beside the
        // kernel's compilations: they install elsewhere in the nodes root.
        let tools = self.static_tools();
        let beside: Vec<(&str, Side)> = match &tools {
            Some(tools) => vec![(
                "tools",
                Box::new(|chroot: &Chroot| tools.build(chroot, &destdir)),
            )],
            None => Vec::new(),
        };
        self.chroot
            .at_once(beside, || self.build_kernel_and_modules(&destdir))?;
        if self.ccache {
            let stats = self
                .chroot
                .read(&["ccache", "--print-stats"])
                .unwrap_or_default();
            self.chroot
                .shell()
                .step(&format!("compiler cache: {}", CacheStats::parse(&stats)));
        }
        Ok(())
    }

    fn build_kernel_and_modules(&self, destdir: &str) -> Result<()> {
        let cc = self.cc_arg.as_str();
        let jobs = userland::jobs();
        self.make(
            "build the kernel (make kernel)",
            &["make", &jobs, "kernel", cc],
            false,
        )?;
        // Kerrighed's install targets build first (automake's install
        // needs all), and its modules' `all` is phony: a `make` before
        // `make install` would compile kerrighed.ko twice.
        let installs: &[(&str, &[&str])] = if self.static_tools.is_some() {
            // The kernel and the modules only: the glibc libraries, tools
            // and LSB service files would not run on a static userland.
            &[
                (
                    "install the kernel (make kernel-install)",
                    &["kernel-install"],
                ),
                (
                    "build and install kerrighed.ko and the scheduler modules (make -C modules install)",
                    &["-C", "modules", "install"],
                ),
            ]
        } else {
            &[
                (
                    "install the kernel (make kernel-install)",
                    &["kernel-install"],
                ),
                (
                    "build and install kerrighed.ko, the scheduler modules, libkerrighed and the tools (make install)",
                    &["install"],
                ),
            ]
        };
        for (what, target) in installs {
            let mut args = vec!["make", &jobs];
            args.extend_from_slice(target);
            args.push(cc);
            if self.current {
                args.push(destdir);
            }
            self.make(what, &args, false)?;
        }
        Ok(())
    }
}

/// `args` run in `dir` inside the chroot, announced as the step `what`
/// in the chroot's shell.
fn make_step(
    chroot: &Chroot,
    dir: &str,
    what: &str,
    args: &[&str],
    answer_defaults: bool,
) -> Result<()> {
    chroot.shell().step(what);
    chroot
        .shell()
        .run(chroot.cmd_in(dir, args, answer_defaults))
}

/// libkerrighed and the tools again, static against musl, in the second
/// tree (which uses the first one's patched kernel headers), installed
/// into the nodes root (KERRIGHED.md, "A two-node cluster"); Kerrighed's
/// test programs with them.
struct StaticTools<'b> {
    /// The second tree, as the chroot sees it.
    tree: &'b str,
    /// The second tree on the host.
    on_host: PathBuf,
    /// The first tree (the kernel's), as the chroot sees it.
    kernel_tree: &'b str,
}

impl StaticTools<'_> {
    /// Configured already: beside kerrighed's own configure, or by the
    /// run that kept the tree (kept_tree.rs).
    fn configured(&self) -> bool {
        self.on_host.join("config.status").is_file()
            && self.on_host.join("tools/Makefile").is_file()
    }

    /// 2.6.20's linux/types.h clashes with musl's own types without
    /// `__KERNEL_STRICT_NAMES`.
    fn cflags() -> String {
        format!("{} -D__KERNEL_STRICT_NAMES", userland::musl_cflags())
    }

    /// libkerrighed's and the tools' configure, for musl and static.
    fn configure(&self, chroot: &Chroot) -> Result<()> {
        make_step(
            chroot,
            self.tree,
            "configure libkerrighed and the tools for musl, static",
            &[
                "./configure",
                "--disable-kernel",
                "--disable-python",
                "--disable-service",
                "--disable-shared",
                "--enable-static",
                // Kerrighed's own test programs (tests/apps) and no others:
                // ktp wants LTP, proc and benchmark are not run here.
                "--enable-tests",
                "--disable-tests-ktp",
                "--disable-tests-proc",
                "--disable-tests-benchmark",
                &format!("CC={}", userland::MUSL_CC),
                &format!("CFLAGS={}", Self::cflags()),
            ],
            false,
        )
    }

    fn build(&self, chroot: &Chroot, destdir: &str) -> Result<()> {
        let tree = self.tree;
        userland::kernel_headers(chroot)?;
        // libkerrighed includes the patched kernel's headers from here.
        chroot.run(&[
            "ln",
            "-sfn",
            &format!("{}/_kernel", self.kernel_tree),
            &format!("{tree}/_kernel"),
        ])?;
        if self.configured() {
            chroot
                .shell()
                .note("libkerrighed and the tools for musl: configured already");
        } else {
            self.configure(chroot)?;
        }
        // CFLAGS again on make's command line: configure's -Werror goes
        // (musl's 64-bit time_t printed with %ld); -all-static: libtool
        // drops a plain -static.
        let make_flags = format!("CFLAGS={} -Wall", Self::cflags());
        let jobs = userland::jobs();
        for dir in ["libs", "tools"] {
            make_step(
                chroot,
                tree,
                &format!("build {dir} static against musl"),
                &["make", &jobs, "-C", dir, &make_flags, "LDFLAGS=-all-static"],
                false,
            )?;
        }
        make_step(
            chroot,
            tree,
            "install the static tools",
            &["make", "-C", "tools", "install", destdir],
            false,
        )?;
        // The programs link -lbi, built beside them: -L. lets libtool find
        // its libbi.la (the tarball expects it installed first). musl
        // declares CLONE_FILES and friends only under _GNU_SOURCE. -O0:
        // the optimizer drops bi's loop (its sum is never read), and a
        // test program must run long enough to be moved.
        let tests_flags = format!("{make_flags} -D_GNU_SOURCE -O0");
        make_step(
            chroot,
            tree,
            "build Kerrighed's test programs (tests/apps) static against musl",
            &[
                "make",
                &jobs,
                "-C",
                "tests/apps",
                &tests_flags,
                "LDFLAGS=-all-static -L.",
            ],
            false,
        )?;
        make_step(
            chroot,
            tree,
            "install the test programs",
            &[
                "make",
                "-C",
                "tests/apps",
                "install-binPROGRAMS",
                &format!("bindir={KRG_TESTS_DIR}"),
                destdir,
            ],
            false,
        )
    }
}

/// The release a bzImage says it is (its `kernel_version` string, as
/// `file` shows it: "2.6.20-krg (root@host) #1 SMP ..."), read from the
/// setup header (boot protocol 2.00 and later).
pub(crate) fn bzimage_release(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let not_bzimage = || anyhow::anyhow!("{} is not a bzImage (no setup header)", path.display());
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]) as usize)
    };
    if bytes.get(0x202..0x206) != Some(b"HdrS") || u16_at(0x206).is_none_or(|v| v < 0x200) {
        return Err(not_bzimage());
    }
    let at = u16_at(0x20e).ok_or_else(not_bzimage)? + 0x200;
    let text = bytes.get(at..).ok_or_else(not_bzimage)?;
    let end = text
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(text.len().min(256));
    Ok(String::from_utf8_lossy(&text[..end]).trim().to_owned())
}

/// What ccache says it did, in one phrase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

impl CacheStats {
    /// From `ccache --print-stats` (tab-separated `key value` lines).
    pub(crate) fn parse(text: &str) -> CacheStats {
        let mut stats = CacheStats::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "direct_cache_hit" | "preprocessed_cache_hit" => stats.hits += value,
                "cache_miss" => stats.misses += value,
                _ => {}
            }
        }
        stats
    }
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.hits + self.misses;
        let share = (100 * self.hits).checked_div(total).unwrap_or(0);
        write!(f, "{} of {total} compilations reused ({share}%)", self.hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bzimage_says_its_release_in_its_setup_header() {
        let t = tempfile::tempdir().unwrap();
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x0205u16.to_le_bytes());
        image[0x20e..0x210].copy_from_slice(&0x0123u16.to_le_bytes());
        let version = b"2.6.20-krg (root@vm) (gcc version 12.2.0) #1 SMP\0rest";
        image[0x323..0x323 + version.len()].copy_from_slice(version);
        let path = t.path().join("bzImage");
        fs::write(&path, &image).unwrap();
        assert_eq!(
            bzimage_release(&path).unwrap(),
            "2.6.20-krg (root@vm) (gcc version 12.2.0) #1 SMP"
        );
        // Not a bzImage: no magic, or a protocol older than 2.00.
        image[0x202] = b'X';
        fs::write(&path, &image).unwrap();
        assert!(bzimage_release(&path)
            .unwrap_err()
            .to_string()
            .contains("not a bzImage"));
        image[0x202] = b'H';
        image[0x206..0x208].copy_from_slice(&0x0105u16.to_le_bytes());
        fs::write(&path, &image).unwrap();
        assert!(bzimage_release(&path).is_err());
        fs::write(&path, b"short").unwrap();
        assert!(bzimage_release(&path).is_err());
    }

    #[test]
    fn compiler_cache_statistics_count_both_kinds_of_hit() {
        // `ccache --print-stats` (ccache 4.8), abridged.
        let text = "stats_updated_timestamp\t1764480000\n\
                    direct_cache_hit\t900\n\
                    preprocessed_cache_hit\t100\n\
                    cache_miss\t250\n\
                    files_in_cache\t2500\n";
        let stats = CacheStats::parse(text);
        assert_eq!(
            stats,
            CacheStats {
                hits: 1000,
                misses: 250
            }
        );
        assert_eq!(stats.to_string(), "1000 of 1250 compilations reused (80%)");
        assert_eq!(
            CacheStats::parse("").to_string(),
            "0 of 0 compilations reused (0%)"
        );
    }
}
