//! The nodes' static userland (`[nodes] userland = "static"`): a 2.6.20
//! node cannot run current glibc (it refuses kernels older than 3.2 and
//! calls system calls 2.6.20 lacks), so its programs are built static
//! against musl, in the build root, from Debian's source packages: busybox
//! (init, shell, mount, networking, login) and dropbear (ssh). The kernel
//! stage adds Kerrighed's tools, built the same way.
//!
//! Nothing is installed on the host and the build root is not changed:
//! apt reads a private sources list (a `deb-src` line for `[nodes]` suite
//! and mirror) and keeps its lists in the work dir; the source packages
//! are kept in the download cache, so a rebuild downloads nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::chroot::{Chroot, ExtraBind, Side, CHROOT_PATH};
use crate::files;
use crate::layout::Layout;
use crate::profile::RootSpec;
use crate::shell::StageShell;
use crate::stages::kconfig;
use crate::stages::static_builds::{self, BuildKey, StaticBuilds};

/// Where the build root sees the work dir, the source package cache and
/// the compiler cache.
pub(crate) const WORK_INSIDE: &str = "/usr/src/krgiso-userland";
const SOURCES_INSIDE: &str = "/var/cache/krgiso-sources";
pub(crate) const CCACHE_INSIDE: &str = "/var/cache/krgiso-ccache";
/// The kernel's user-space headers (linux/, asm/, …) for musl, which ships
/// none: links into the build root's linux-libc-dev.
pub(crate) const KHEADERS_INSIDE: &str = "/usr/src/krgiso-userland/kheaders";
/// The musl compiler Debian's musl-tools provides.
pub(crate) const MUSL_CC: &str = "musl-gcc";

/// The busybox options krgiso sets over `make defconfig`: static, its own
/// crypt, and the applets a diskless node has no use for turned off.
const BUSYBOX_CONFIG: &str = include_str!("busybox-node.config");

/// dropbear's build options: key logins only (musl's Debian build has no
/// crypt()), and a PATH that has Kerrighed's tools.
const DROPBEAR_OPTIONS: &str = "\
/* krgiso: the nodes' ssh server */
#define DROPBEAR_SVR_PASSWORD_AUTH 0
#define DEFAULT_PATH \"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"
#define DEFAULT_ROOT_PATH \"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"
";

/// Builds the static userland of `spec` into `out` (a fresh directory),
/// compiling in `build_root` with `cc` under musl-gcc (its default, the
/// root's `gcc`, when `None`).
pub(crate) fn build(
    shell: &StageShell,
    layout: &Layout,
    spec: &RootSpec,
    build_root: &Path,
    cc: Option<&str>,
    out: &Path,
) -> Result<()> {
    let work = layout.userland_work();
    files::remove_tree(&work)?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let sources = layout.downloads.join("debsrc").join(&spec.suite);
    fs::create_dir_all(&sources)
        .with_context(|| format!("creating the source package cache {}", sources.display()))?;

    shell.step("the base of the nodes root: directories, devices, accounts");
    base_files(out)?;

    let mut binds = vec![
        ExtraBind {
            host: work.clone(),
            inside: WORK_INSIDE.into(),
        },
        ExtraBind {
            host: sources.clone(),
            inside: SOURCES_INSIDE.into(),
        },
    ];
    let ccache = compiler_cache(build_root, layout, &mut binds)?;
    let mut chroot = Chroot::enter(build_root, &spec.arch, &binds, shell)?;
    if ccache {
        use_compiler_cache(&mut chroot);
    }
    if let Some(cc) = cc {
        musl_runs(&mut chroot, cc);
    }
    require_musl(&chroot)?;
    kernel_headers(&chroot)?;

    shell.step(&format!(
        "the source packages {} of {} from {}",
        spec.packages.join(", "),
        spec.suite,
        spec.mirror
    ));
    let apt = apt_options(&work, spec)?;
    let apt_args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["apt-get".to_owned(), "-q".to_owned()];
        args.extend(apt.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: Vec<String>, dir: &str| -> Result<()> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        shell.run(chroot.cmd_in(dir, &args, false))
    };
    run(apt_args(&["update"]), "/")?;
    let jobs = jobs();
    let builds = StaticBuilds::new(&layout.static_builds);
    let compilers = static_builds::packages_of(build_root)?;
    // Kept builds are copied in; the others are fetched and unpacked here,
    // one apt at a time, then built.
    let mut to_build = Vec::new();
    for pkg in &spec.packages {
        let uris = chroot.read(
            &apt_args(&["source", "--print-uris", pkg])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        let dsc = dsc_line(&uris)
            .with_context(|| format!("apt-get source found no .dsc for {pkg}:\n{uris}"))?;
        let recipe = match pkg.as_str() {
            "busybox" => busybox_recipe(),
            "dropbear" => dropbear_recipe(),
            other => bail!("no static recipe for `{other}` (profile [nodes] packages)"),
        };
        let key = BuildKey::new(
            pkg,
            &[
                ("source", dsc.join(" ")),
                ("recipe", recipe),
                ("compilers (the build root's packages)", compilers.clone()),
                ("compiler", cc.unwrap_or("the root's gcc").to_owned()),
                ("arch", spec.arch.clone()),
            ],
        );
        if let Some(kept) = builds.get(&key) {
            shell.step(&format!(
                "{pkg}: the kept build of {} (same source, recipe and compilers)",
                dsc[0]
            ));
            files::copy_tree(&kept, out)?;
            continue;
        }
        let mut download = vec!["source", "--download-only"];
        download.push(pkg);
        run(apt_args(&download), SOURCES_INSIDE)?;
        run(
            vec![
                "dpkg-source".into(),
                "-x".into(),
                format!("{SOURCES_INSIDE}/{}", dsc[0]),
                format!("{WORK_INSIDE}/{pkg}"),
            ],
            WORK_INSIDE,
        )?;
        to_build.push((pkg.as_str(), key));
    }

    // One package: built, installed beside the root first (so the build
    // can be kept), checked, kept.
    let build_one =
        |shell: &StageShell, chroot: &Chroot, pkg: &str, key: &BuildKey| -> Result<()> {
            let tree = format!("{WORK_INSIDE}/{pkg}");
            let installed = work.join(format!("{pkg}.installed"));
            let host_tree = work.join(pkg);
            match pkg {
                "busybox" => busybox(shell, chroot, &host_tree, &tree, &jobs, &installed)?,
                _ => dropbear(shell, chroot, &host_tree, &tree, &jobs, &installed)?,
            }
            require_static(&installed)?;
            builds.put(key, &installed)?;
            shell.note(&format!(
                "{pkg}: build kept in {}",
                layout.show(&layout.static_builds)
            ));
            Ok(())
        };
    // All at once, each on a branch of its own: one's configure and
    // install (one core) overlap the other's compilations.
    let build_one = &build_one;
    let sides: Vec<(&str, Side)> = to_build
        .iter()
        .map(|(pkg, key)| {
            let side: Side =
                Box::new(move |chroot: &Chroot| build_one(chroot.shell(), chroot, pkg, key));
            (*pkg, side)
        })
        .collect();
    chroot.at_once(sides, || Ok(()))?;
    // Copied in once all are built: no two threads write into one root.
    for (pkg, _) in &to_build {
        files::copy_tree(&work.join(format!("{pkg}.installed")), out)?;
    }
    drop(chroot);

    require_static(out)?;
    files::remove_tree(&work)
}

/// Every program in a static userland root must start without a dynamic
/// loader: one that asks for one would not run on the node.
pub(crate) fn require_static(root: &Path) -> Result<()> {
    let dynamic = dynamic_programs(root)?;
    if !dynamic.is_empty() {
        bail!(
            "the static nodes root has programs that need a dynamic loader (they would not start on a node): {}",
            dynamic
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `-jN`, every core.
pub(crate) fn jobs() -> String {
    format!(
        "-j{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

/// Binds the compiler cache when the build root has ccache; says whether.
pub(crate) fn compiler_cache(
    build_root: &Path,
    layout: &Layout,
    binds: &mut Vec<ExtraBind>,
) -> Result<bool> {
    if !build_root.join("usr/lib/ccache").is_dir() {
        return Ok(false);
    }
    let cache = &layout.compiler_cache;
    fs::create_dir_all(cache)
        .with_context(|| format!("creating the compiler cache {}", cache.display()))?;
    binds.push(ExtraBind {
        host: cache.clone(),
        inside: CCACHE_INSIDE.into(),
    });
    Ok(true)
}

/// Every compiler the chroot runs goes through the compiler cache, in its
/// depend mode: where the build asks for a dependency file (kbuild's
/// `-Wp,-MD`, automake's `-MD`), ccache hashes the headers the compiler
/// itself lists there instead of running the preprocessor first. A miss
/// then costs one compilation, not a preprocessing and a compilation:
/// measured on 60 of the kernel's files, 5.9 s instead of 7.4 s (plain gcc
/// 5.7 s), and a hit the same 0.3 s. Those headers are hashed byte for
/// byte, so kconfig (the kernel's with patch 12, busybox's) leaves the time
/// out of the autoconf.h every file includes: with it, a tree configured
/// anew missed for every file.
pub(crate) fn use_compiler_cache(chroot: &mut Chroot) {
    chroot.set_env("PATH", &format!("/usr/lib/ccache:{CHROOT_PATH}"));
    chroot.set_env("CCACHE_DIR", CCACHE_INSIDE);
    chroot.set_env("CCACHE_DEPEND", "1");
    chroot.set_env("KCONFIG_NOTIMESTAMP", "1");
}

/// musl-gcc is a wrapper: it runs `$REALGCC` (the root's default gcc
/// when unset) with musl's specs. The build root's compiler for the kernel
/// (`[kernel] cc`) then builds the static programs too.
pub(crate) fn musl_runs(chroot: &mut Chroot, cc: &str) {
    chroot.set_env("REALGCC", cc);
}

fn require_musl(chroot: &Chroot) -> Result<()> {
    match chroot.read(&["sh", "-c", "command -v \"$1\"", "sh", MUSL_CC]) {
        Ok(path) if !path.is_empty() => Ok(()),
        _ => bail!(
            "{MUSL_CC} is not in the build root: add musl-tools (and dpkg-dev) to [buildroot] packages"
        ),
    }
}

/// Links the build root's kernel headers where musl builds look (see
/// [`KHEADERS_INSIDE`]); the directory is inside the work dir.
pub(crate) fn kernel_headers(chroot: &Chroot) -> Result<()> {
    let multiarch = chroot.read(&["gcc", "-print-multiarch"])?;
    let script = "mkdir -p \"$1\" && cd \"$1\" && \
                  for d in linux asm-generic mtd; do ln -sfn /usr/include/$d $d; done && \
                  ln -sfn /usr/include/$2/asm asm";
    chroot.run(&["sh", "-c", script, "sh", KHEADERS_INSIDE, multiarch.trim()])
}

/// The musl compiler's flags: size over speed, the kernel headers.
pub(crate) fn musl_cflags() -> String {
    format!("-Os -isystem {KHEADERS_INSIDE}")
}

/// apt options that read a private sources list (deb-src of `[nodes]`)
/// and keep the lists in the work dir: the build root is not changed.
fn apt_options(work: &Path, spec: &RootSpec) -> Result<Vec<String>> {
    let lists = work.join("apt-lists");
    fs::create_dir_all(lists.join("partial"))?;
    fs::write(
        work.join("sources.list"),
        format!(
            "deb-src {} {} {}\n",
            spec.mirror,
            spec.suite,
            spec.components.join(" ")
        ),
    )?;
    fs::create_dir_all(work.join("sources.list.d"))?;
    fs::create_dir_all(work.join("apt-cache/archives/partial"))?;
    Ok([
        format!("Dir::Etc::SourceList={WORK_INSIDE}/sources.list"),
        format!("Dir::Etc::SourceParts={WORK_INSIDE}/sources.list.d"),
        format!("Dir::State::Lists={WORK_INSIDE}/apt-lists"),
        format!("Dir::Cache={WORK_INSIDE}/apt-cache"),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_owned(), o])
    .collect())
}

/// The `.dsc` line of `apt-get source --print-uris` output (lines `'URI'
/// NAME SIZE HASH`) without its URI: name, size and hash (the same source
/// from any mirror).
fn dsc_line(uris: &str) -> Option<Vec<String>> {
    uris.lines()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|words| words.first().is_some_and(|name| name.ends_with(".dsc")))
}

/// busybox's init waits for SIGCHLD in `sigtimedwait()` with the signal's
/// action left at SIG_DFL. While it sleeps there 2.6.20 unblocks the
/// waited-for signals, then takes a SIG_DFL SIGCHLD for an ignored one and
/// drops it (`sig_ignored()`; later kernels also look at `real_blocked`).
/// So init never woke: on the nodes it reaped no child, every orphan stayed
/// a zombie (a checkpointed application could never be restarted: "already
/// running"), and after a logout the console got no new login. With a
/// handler the signal counts; init never runs it, as SIGCHLD stays blocked
/// outside `sigtimedwait()`, which takes it first.
pub(crate) const INIT_SIGCHLD_FIX: &str = "\tsignal(SIGCHLD, record_signo); /* krgiso: 2.6.20 drops a SIG_DFL SIGCHLD during sigtimedwait() */\n";

/// Where the fix goes: right after init blocks the signals it waits for.
const INIT_SIGCHLD_AFTER: &str = "\tsigprocmask(SIG_BLOCK, &G.delayed_sigset, NULL);\n";

/// Puts [`INIT_SIGCHLD_FIX`] into busybox's `init/init.c` under `tree`.
fn fix_init_sigchld(tree: &Path) -> Result<()> {
    let path = tree.join("init/init.c");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if text.matches(INIT_SIGCHLD_AFTER).count() != 1 {
        bail!(
            "{} no longer has one `{}`: busybox's init changed; check whether 2.6.20 nodes still need krgiso's SIGCHLD fix (stages/userland.rs)",
            path.display(),
            INIT_SIGCHLD_AFTER.trim()
        );
    }
    let fixed = text.replacen(
        INIT_SIGCHLD_AFTER,
        &format!("{INIT_SIGCHLD_AFTER}{INIT_SIGCHLD_FIX}"),
        1,
    );
    fs::write(&path, fixed).with_context(|| format!("writing {}", path.display()))
}

/// What krgiso does to busybox beyond its source, as the key of a kept build.
fn busybox_recipe() -> String {
    format!(
        "{BUSYBOX_CONFIG}{INIT_SIGCHLD_FIX}EXTRA_CFLAGS={} config: {BUSYBOX_DEFCONFIG} install: krgiso's links",
        musl_cflags()
    )
}

/// Where busybox's kconfig reads [`BUSYBOX_CONFIG`] from, in the tree.
const BUSYBOX_DEFCONFIG: &str = ".krgiso-defconfig";

/// Builds busybox in `tree` and installs it, with its applet links, under
/// `installed` (on the host).
fn busybox(
    shell: &StageShell,
    chroot: &Chroot,
    host: &Path,
    tree: &str,
    jobs: &str,
    installed: &Path,
) -> Result<()> {
    shell.step("busybox: init reaps its children on 2.6.20 (SIGCHLD fix)");
    fix_init_sigchld(host)?;
    let cc = format!("CC={MUSL_CC}");
    let make = |what: &str, args: &[&str]| -> Result<()> {
        shell.step(what);
        shell.run(chroot.cmd_in(tree, args, false))
    };
    // One kconfig pass: `conf -D` takes the options given and every other
    // one's default. (defconfig, these options merged in, then oldconfig
    // also kept what a turned-off applet had selected: hush was compiled,
    // for the link to drop.)
    fs::write(host.join(BUSYBOX_DEFCONFIG), BUSYBOX_CONFIG)
        .with_context(|| format!("writing busybox's options into {}", host.display()))?;
    let defconfig = format!("KBUILD_DEFCONFIG={BUSYBOX_DEFCONFIG}");
    make(
        "busybox: defconfig with krgiso's options",
        &["make", "defconfig", &defconfig, &cc, "HOSTCC=gcc"],
    )?;
    let config = host.join(".config");
    let resolved = fs::read_to_string(&config).context("busybox's defconfig left no .config")?;
    let dropped = kconfig::dropped(BUSYBOX_CONFIG, &resolved);
    if !dropped.is_empty() {
        bail!("busybox's config dropped {}", dropped.join(", "));
    }
    let flags = format!("EXTRA_CFLAGS={}", musl_cflags());
    // The program and its applet list; not `all`, whose docs (pod2text,
    // pod2man, pod2html) nothing installs.
    make(
        "busybox: build, static against musl",
        &[
            "make",
            jobs,
            &cc,
            "HOSTCC=gcc",
            &flags,
            "busybox",
            "busybox.links",
        ],
    )?;
    shell.step("busybox: install with its applet links");
    install_busybox(host, installed)
}

/// What busybox's `make install` does with `INSTALL_APPLET_SYMLINKS`
/// (`applets/install.sh --symlinks`), without make going through the
/// whole tree again (3 s): the program as `bin/busybox` under `prefix`,
/// and for each line of `busybox.links` a link to it. Every line is
/// checked before anything is installed.
fn install_busybox(tree: &Path, prefix: &Path) -> Result<()> {
    let list = tree.join("busybox.links");
    let text = fs::read_to_string(&list).with_context(|| {
        format!(
            "reading {}: busybox's build lists its applets there",
            list.display()
        )
    })?;
    let links = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(applet_link)
        .collect::<Result<Vec<_>>>()?;
    install_multicall(&tree.join("busybox"), prefix, "bin/busybox", links)
}

/// An applet's link (relative to the root it is installed in) and what it
/// points to, as busybox's install.sh has them: `bin/busybox`, relative to
/// the link's directory. Only the directories busybox installs into.
fn applet_link(link: &str) -> Result<(&str, &'static str)> {
    let (dir, name) = link.rsplit_once('/').unwrap_or(("", link));
    let target = match dir {
        "" if link.starts_with('/') => "bin/busybox",
        "/bin" => "busybox",
        "/sbin" => "../bin/busybox",
        "/usr/bin" | "/usr/sbin" => "../../bin/busybox",
        _ => bail!("busybox.links names `{link}`: busybox installs applets in /, /bin, /sbin, /usr/bin and /usr/sbin only"),
    };
    if name.is_empty() || name == "." || name == ".." {
        bail!("busybox.links names `{link}`, which is no applet's name");
    }
    Ok((&link[1..], target))
}

/// A program that is many programs (busybox, dropbearmulti) installed
/// under `root` as `program` (mode 755), and each of `links` (a path under
/// `root`, and its target relative to the link's directory) made a link to
/// it. Whatever was at those paths is replaced.
fn install_multicall<'a>(
    built: &Path,
    root: &Path,
    program: &str,
    links: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<()> {
    let installed = root.join(program);
    make_room(&installed)?;
    fs::copy(built, &installed)
        .and_then(|_| fs::set_permissions(&installed, fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("installing {}", installed.display()))?;
    for (link, target) in links {
        let path = root.join(link);
        make_room(&path)?;
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("linking {} to {program}", path.display()))?;
    }
    Ok(())
}

/// `path`'s directory made, and whatever was at `path` removed.
fn make_room(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(())
}

/// dropbear's configure options, besides the compiler and its flags.
const DROPBEAR_CONFIGURE: &[&str] = &[
    "--enable-static",
    "--disable-zlib",
    "--disable-lastlog",
    "--disable-utmp",
    "--disable-utmpx",
    "--disable-wtmp",
    "--disable-wtmpx",
    "--disable-pututline",
    "--disable-pututxline",
];

/// What dropbear's make builds: one static program for all its names.
const DROPBEAR_MAKE: &[&str] = &[
    "PROGRAMS=dropbear dbclient dropbearkey scp",
    "MULTI=1",
    "STATIC=1",
];

/// What krgiso does to dropbear beyond its source, as the key of a kept build.
fn dropbear_recipe() -> String {
    format!(
        "{DROPBEAR_OPTIONS}{} {} CFLAGS={}",
        DROPBEAR_CONFIGURE.join(" "),
        DROPBEAR_MAKE.join(" "),
        dropbear_cflags()
    )
}

/// The musl flags, and a dependency file per object (`-MD`, which
/// dropbear's Makefile does not ask for): with one, the compiler cache's
/// depend mode needs no preprocessor run per file. Its 707 compilations,
/// cold: `make` 20.3 s without, 13.8 s with.
fn dropbear_cflags() -> String {
    format!("{} -MD", musl_cflags())
}

/// Builds dropbear in `tree` and installs it under `out` (on the host).
fn dropbear(
    shell: &StageShell,
    chroot: &Chroot,
    host: &Path,
    tree: &str,
    jobs: &str,
    out: &Path,
) -> Result<()> {
    fs::write(host.join("localoptions.h"), DROPBEAR_OPTIONS)?;
    let cc = format!("CC={MUSL_CC}");
    let cflags = format!("CFLAGS={}", dropbear_cflags());
    let make = |what: &str, args: &[&str]| -> Result<()> {
        shell.step(what);
        shell.run(chroot.cmd_in(tree, args, false))
    };
    make(
        "dropbear: configure for musl",
        &[&["./configure", &cc, &cflags][..], DROPBEAR_CONFIGURE].concat(),
    )?;
    make(
        "dropbear: build, static against musl",
        &[&["make", jobs][..], DROPBEAR_MAKE].concat(),
    )?;
    shell.step("dropbear: install (one program, its names as links)");
    install_multicall(
        &host.join("dropbearmulti"),
        out,
        "usr/sbin/dropbearmulti",
        [
            ("usr/sbin/dropbear", "dropbearmulti"),
            ("usr/bin/dbclient", "../sbin/dropbearmulti"),
            ("usr/bin/ssh", "../sbin/dropbearmulti"),
            ("usr/bin/dropbearkey", "../sbin/dropbearmulti"),
            ("usr/bin/scp", "../sbin/dropbearmulti"),
        ],
    )
}

/// What a root needs before its programs: the directories, the two devices
/// the kernel opens before init runs (2.6.20 has no devtmpfs), root's
/// account, and the host name Kerrighed reads at boot.
fn base_files(out: &Path) -> Result<()> {
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "usr/local/sbin",
        "etc",
        "dev",
        "proc",
        "sys",
        "tmp",
        "var/run",
        "var/log",
        "var/lib",
        "root",
        "home",
        "config",
        "lib",
    ] {
        fs::create_dir_all(out.join(dir))?;
    }
    fs::set_permissions(out.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(out.join("root"), fs::Permissions::from_mode(0o700))?;
    for (path, text, mode) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        ),
        (
            "etc/group",
            "root:x:0:\nshadow:x:42:\nnogroup:x:65534:\n",
            0o644,
        ),
        (
            "etc/shadow",
            "root:*:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n",
            0o640,
        ),
        ("etc/shells", "/bin/sh\n", 0o644),
        ("etc/hostname", "krgiso\n", 0o644),
    ] {
        let file = out.join(path);
        fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
    }
    // dropbear makes each node's host keys at first use, in RAM.
    std::os::unix::fs::symlink("/var/run/dropbear", out.join("etc/dropbear"))?;
    for (name, major, minor, mode) in [("console", 5, 1, 0o600), ("null", 1, 3, 0o666)] {
        mknod_char(&out.join("dev").join(name), major, minor, mode)?;
    }
    Ok(())
}

fn mknod_char(path: &Path, major: u32, minor: u32, mode: u32) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; makedev has no preconditions.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(major, minor),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating the device {}", path.display()));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Programs under `root` that ask for a dynamic loader (an ELF
/// `PT_INTERP`): they would not start on a static-userland node.
pub(crate) fn dynamic_programs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                let bytes =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                if has_interpreter(&bytes) {
                    found.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether an ELF file has a `PT_INTERP` program header (32- or 64-bit,
/// little-endian).
pub(crate) fn has_interpreter(bytes: &[u8]) -> bool {
    if bytes.len() < 52 || !bytes.starts_with(b"\x7fELF") || bytes[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    let (phoff, phentsize, phnum) = match bytes[4] {
        1 => (u32_at(28), u16_at(42), u16_at(44)),
        2 => (u64_at(32), u16_at(54), u16_at(56)),
        _ => return false,
    };
    let (Some(phoff), Some(size), Some(num)) = (phoff, phentsize, phnum) else {
        return false;
    };
    const PT_INTERP: usize = 3;
    (0..num).any(|i| u32_at(phoff + i * size) == Some(PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fix lands once, right after init blocks its signals; a tree
    /// without that line stops the build instead of shipping an init
    /// that never reaps.
    #[test]
    fn init_gets_its_sigchld_handler_once_or_the_build_stops() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("init")).unwrap();
        let init = t.path().join("init/init.c");
        fs::write(
            &init,
            format!("int main(void)\n{{\n{INIT_SIGCHLD_AFTER}\trun();\n}}\n"),
        )
        .unwrap();
        fix_init_sigchld(t.path()).unwrap();
        let fixed = fs::read_to_string(&init).unwrap();
        assert!(
            fixed.contains(&format!("{INIT_SIGCHLD_AFTER}{INIT_SIGCHLD_FIX}\trun();")),
            "{fixed}"
        );
        fs::write(&init, "int main(void) { run(); }\n").unwrap();
        let err = fix_init_sigchld(t.path()).unwrap_err().to_string();
        assert!(
            err.contains("init/init.c") && err.contains("SIGCHLD"),
            "{err}"
        );
    }

    /// The links busybox's install.sh makes: each relative to bin/busybox
    /// from its own directory, a listed name twice linked once, an existing
    /// file replaced; a directory install.sh does not know, or a name that
    /// climbs out, stops the install.
    #[test]
    fn busybox_is_installed_with_the_links_install_sh_makes() {
        let t = tempfile::tempdir().unwrap();
        let (tree, prefix) = (t.path().join("tree"), t.path().join("prefix"));
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("busybox"), b"\x7fELF busybox").unwrap();
        fs::write(
            tree.join("busybox.links"),
            "/linuxrc\n/bin/sh\n/sbin/init\n/usr/bin/[\n/usr/sbin/chroot\n/bin/sh\n\n",
        )
        .unwrap();
        fs::create_dir_all(prefix.join("sbin")).unwrap();
        fs::write(prefix.join("sbin/init"), "an older init").unwrap();
        install_busybox(&tree, &prefix).unwrap();

        let program = prefix.join("bin/busybox");
        assert_eq!(fs::read(&program).unwrap(), b"\x7fELF busybox");
        let mode = fs::metadata(&program).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
        for (link, target) in [
            ("linuxrc", "bin/busybox"),
            ("bin/sh", "busybox"),
            ("sbin/init", "../bin/busybox"),
            ("usr/bin/[", "../../bin/busybox"),
            ("usr/sbin/chroot", "../../bin/busybox"),
        ] {
            let path = prefix.join(link);
            assert_eq!(fs::read_link(&path).unwrap(), Path::new(target), "{link}");
            // Each resolves to the program itself.
            assert_eq!(
                fs::canonicalize(&path).unwrap(),
                fs::canonicalize(&program).unwrap()
            );
        }

        for bad in [
            "/usr/local/bin/x",
            "bin/sh",
            "/bin/..",
            "/bin/../etc/passwd",
            "/usr/bin/",
        ] {
            fs::write(tree.join("busybox.links"), format!("/bin/sh\n{bad}\n")).unwrap();
            let fresh = t.path().join("fresh");
            let err = install_busybox(&tree, &fresh).unwrap_err();
            assert!(format!("{err:#}").contains(bad), "{bad}: {err:#}");
            // Nothing installed from a list with a bad line.
            assert!(!fresh.exists(), "{bad}");
        }
        fs::remove_file(tree.join("busybox.links")).unwrap();
        let err = install_busybox(&tree, &prefix).unwrap_err();
        assert!(format!("{err:#}").contains("busybox.links"), "{err:#}");
    }

    #[test]
    fn the_dsc_is_found_in_apt_print_uris() {
        let uris = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox_1.35.0-4%2bdeb12u1.dsc' busybox_1.35.0-4+deb12u1.dsc 2323 SHA256:aa\n\
                    'http://deb.debian.org/debian/pool/main/b/busybox/busybox_1.35.0.orig.tar.bz2' busybox_1.35.0.orig.tar.bz2 2485495 SHA256:bb\n";
        assert_eq!(
            dsc_line(uris).unwrap(),
            ["busybox_1.35.0-4+deb12u1.dsc", "2323", "SHA256:aa"]
        );
        assert_eq!(dsc_line("Reading package lists...\n"), None);
    }

    /// A minimal 32-bit ELF header with one program header of `kind`.
    fn elf32(kind: u32) -> Vec<u8> {
        let mut b = vec![0u8; 52 + 32];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1; // 32-bit
        b[5] = 1; // little-endian
        b[28..32].copy_from_slice(&52u32.to_le_bytes()); // e_phoff
        b[42..44].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
        b[44..46].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[52..56].copy_from_slice(&kind.to_le_bytes()); // p_type
        b
    }

    #[test]
    fn a_program_that_needs_a_loader_is_found() {
        assert!(has_interpreter(&elf32(3)));
        assert!(!has_interpreter(&elf32(1)), "PT_LOAD only: static");
        assert!(!has_interpreter(b"#!/bin/sh\necho hi\n"));
        let t = tempfile::tempdir().unwrap();
        for (name, bytes, mode) in [
            ("bin/busybox", elf32(1), 0o755),
            ("usr/bin/dynamic", elf32(3), 0o755),
            ("lib/libx.so", elf32(3), 0o644),
            ("etc/init.d/rcS", b"#!/bin/sh\n".to_vec(), 0o755),
        ] {
            let path = t.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        assert_eq!(
            dynamic_programs(t.path()).unwrap(),
            [PathBuf::from("usr/bin/dynamic")]
        );
    }
}
