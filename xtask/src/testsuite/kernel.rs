//! e2e-kernel-kerrighed (the kerrighed flow against stand-in sources and
//! toolchain), e2e-kernel-stock and e2e-i386-chroot.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use xshell::cmd;

use crate::chroot;
use crate::files;
use crate::host;
use crate::profile;
use crate::shell::StageShell;

use super::smoke::{check_shell, no_mounts_under, SmokeRun, Timings};

/// The stand-in kerrighed tree: configure and Makefiles that record every
/// call, and the stand-in toolchain (make, gcc-4.1) for the nodes root.
mod standin {
    pub(super) const CONFIGURE: &str = include_str!("standin/configure");
    pub(super) const MAKEFILE: &str = include_str!("standin/Makefile");
    pub(super) const KERNEL_MAKEFILE: &str = include_str!("standin/kernel-Makefile");
    pub(super) const MODULES_MAKEFILE_IN: &str = include_str!("standin/modules-Makefile.in");
    pub(super) const MAKE: &str = include_str!("standin/make");
}

/// A .tar.gz or .tar.bz2 (by `name`) of `entries` (path, content, mode).
fn tarball(name: &str, entries: &[(&str, &str, u32)]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for (path, content, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(path)?;
        h.set_size(content.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_230_000_000);
        h.set_cksum();
        b.append(&h, content.as_bytes())?;
    }
    let raw = b.into_inner()?;
    Ok(if name.ends_with(".bz2") {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&raw)?;
        e.finish()?
    } else {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw)?;
        e.finish()?
    })
}

/// The smoke profile with the kerrighed kernel, its sources served by `server`.
fn standin_profile(
    run: &SmokeRun,
    server: &crate::testsuite::http::TestServer,
    pins: (&str, &str),
    fragment: &Path,
) -> Result<String> {
    let smoke = fs::read_to_string(profile::resolve("smoke", &run.project)?)?;
    let (kernel_at, network_at) = (
        smoke
            .find("[kernel]")
            .context("no [kernel] in smoke.toml")?,
        smoke
            .find("[network]")
            .context("no [network] in smoke.toml")?,
    );
    Ok(format!(
        "{}[kernel]\nkind = \"kerrighed\"\nconfig = \"{}\"\ncc = \"gcc-4.1\"\n\n\
         [[sources]]\nname = \"linux\"\nfile = \"linux-2.6.20.tar.bz2\"\nsha256 = \"{}\"\nurls = [\"{}\"]\n\n\
         [[sources]]\nname = \"kerrighed\"\nfile = \"kerrighed-2.4.1.tar.gz\"\nsha256 = \"{}\"\nurls = [\"{}\"]\n\n{}",
        &smoke[..kernel_at],
        fragment.display(),
        pins.0,
        server.url("/linux-2.6.20.tar.bz2"),
        pins.1,
        server.url("/kerrighed-2.4.1.tar.gz"),
        &smoke[network_at..]
    ))
}

/// The kerrighed kind of the kernel stage, for real, with a stand-in
/// kerrighed tree and toolchain: in a copy of the smoke build (its nodes
/// root is the chroot), sources from a server on 127.0.0.1. Checks the exact
/// order and arguments of every step, that each ran inside the chroot, that a
/// failure at make leaves no stamp and a rerun completes, that a dropped
/// config symbol is named, and where the outputs land.
pub(crate) fn kernel_standin(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-kernel")?;
    let mut timings = Vec::new();
    let base = project.join("build/e2e/krg");
    let build = base.join("build");
    files::remove_tree(&base)?;
    fs::create_dir_all(&build)?;

    s.step("copy the smoke build's roots (the nodes root is the chroot)");
    let sh = s.sh();
    let (roots, stamp) = (
        run.build.join("roots"),
        run.build.join("stamps/packages.json"),
    );
    ensure!(
        stamp.exists(),
        "{} is missing: the packages check runs first",
        stamp.display()
    );
    s.run(cmd!(sh, "cp -a {roots} {build}"))?;
    fs::create_dir_all(build.join("stamps"))?;
    fs::copy(&stamp, build.join("stamps/packages.json"))?;
    let root = build.join("roots/nodes");
    fs::write(
        root.join("etc/krgiso-standin-chroot"),
        "the stand-in records `inside` when it sees this\n",
    )?;
    for (tool, body) in [("make", standin::MAKE), ("gcc-4.1", "#!/bin/sh\nexit 0\n")] {
        let path = root.join("usr/local/bin").join(tool);
        fs::create_dir_all(path.parent().unwrap_or(&root))?;
        fs::write(&path, body)?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }

    let linux = tarball(
        "linux-2.6.20.tar.bz2",
        &[(
            "linux-2.6.20/Makefile",
            "VERSION = 2\nPATCHLEVEL = 6\nSUBLEVEL = 20\n",
            0o644,
        )],
    )?;
    // The tree's directory is not the file's name: the stage must take it
    // from the tarball.
    let top = "kerrighed-standin-2.4.1";
    let krg = tarball(
        "kerrighed-2.4.1.tar.gz",
        &[
            (&format!("{top}/configure"), standin::CONFIGURE, 0o755),
            (&format!("{top}/Makefile"), standin::MAKEFILE, 0o644),
            (
                &format!("{top}/kernel/Makefile"),
                standin::KERNEL_MAKEFILE,
                0o644,
            ),
            (
                &format!("{top}/modules/Makefile.in"),
                standin::MODULES_MAKEFILE_IN,
                0o644,
            ),
        ],
    )?;
    let server = crate::testsuite::http::TestServer::start()?;
    server.route(
        "/linux-2.6.20.tar.bz2",
        crate::testsuite::http::Route::file(&linux),
    );
    server.route(
        "/kerrighed-2.4.1.tar.gz",
        crate::testsuite::http::Route::file(&krg),
    );
    let pins = (
        crate::bytes::sha256_hex(&linux),
        crate::bytes::sha256_hex(&krg),
    );
    let fragment = project.join("kernel-configs/krg-2.6.20.config");
    let profile_path = base.join("profiles/standin.toml");
    fs::create_dir_all(profile_path.parent().unwrap_or(&base))?;
    fs::write(
        &profile_path,
        standin_profile(&run, &server, (&pins.0, &pins.1), &fragment)?,
    )?;

    let exe = &run.exe;
    let kernel = |s: &StageShell, profile: &Path| -> Result<(bool, String)> {
        let sh = s.sh();
        let out = cmd!(sh, "{exe} --profile {profile} --build-dir {build} kernel")
            .ignore_status()
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        s.note(&text);
        Ok((out.status.success(), text))
    };
    let record = root.join("krg-standin.log");
    let stamp = build.join("stamps/kernel.json");

    s.step("a failure injected at make: no stamp, no mount");
    fs::write(root.join("krg-fail-make"), "")?;
    let (ok, said) = kernel(&s, &profile_path)?;
    ensure!(
        !ok,
        "the kernel stage succeeded although make failed:\n{said}"
    );
    ensure!(
        said.contains("failing as the test asked"),
        "the failing make's output was not shown:\n{said}"
    );
    ensure!(!stamp.exists(), "a failed kernel stage wrote a stamp");
    no_mounts_under(&build)?;
    let jobs = format!(
        "-j{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let src = format!("/usr/src/{top}");
    let configure = format!("configure --with-kernel-config=oldconfig CC=gcc-4.1 | cwd={src} | inside | tarball=yes | modules-shell=/bin/bash");
    let made = [
        format!("make -C kernel defconfig CC=gcc-4.1 | cwd={src}/kernel | inside | CC=gcc-4.1"),
        format!("make -C kernel oldconfig CC=gcc-4.1 | cwd={src}/kernel | inside | CC=gcc-4.1"),
        "oldconfig fed=yes".to_owned(),
        format!("make {jobs} kernel CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
        format!("make {jobs} kernel-install CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
        format!("make {jobs} install CC=gcc-4.1 | cwd={src} | inside | CC=gcc-4.1"),
    ];
    let steps_were = |expected: &[String]| -> Result<()> {
        let seen = fs::read_to_string(&record)?;
        let seen: Vec<&str> = seen.lines().collect();
        ensure!(
            seen == expected,
            "the steps ran as:\n{}\nexpected:\n{}",
            seen.join("\n"),
            expected.join("\n")
        );
        Ok(())
    };
    // The whole flow, from configure to the install that failed (it builds
    // kerrighed first, as automake's install does).
    steps_were(&[&[configure][..], &made[..]].concat())?;

    s.step("the rerun completes, making the kept tree again (no unpack, no configure)");
    fs::remove_file(root.join("krg-fail-make"))?;
    fs::remove_file(&record)?;
    let t = Instant::now();
    let (ok, said) = kernel(&s, &profile_path)?;
    timings.push((
        "kernel, kerrighed kind with stand-ins".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    ensure!(ok, "the kernel stage failed:\n{said}");
    ensure!(stamp.exists(), "no kernel stamp after success");
    ensure!(
        said.contains("the kept tree ") && said.contains(&format!("kernel-work/{top} (same")),
        "the rerun after a failed make did not go on with the kept tree:\n{said}"
    );
    no_mounts_under(&build)?;
    steps_were(&made)?;

    for path in crate::stages::kernel::krg::KRG_INSTALLED
        .iter()
        .chain(crate::stages::kernel::krg::KRG_SERVICE_FILES)
    {
        ensure!(root.join(path).exists(), "{path} is not in the nodes root");
    }
    let staged = build.join("kernel");
    let version = crate::stages::kernel::krg::bzimage_release(&staged.join("vmlinuz-2.6.20-krg"))?;
    ensure!(
        version == "2.6.20-krg (stand-in built with gcc-4.1) #1",
        "the staged kernel is not the one built: {version:?}"
    );
    ensure!(
        fs::read_to_string(staged.join("System.map-2.6.20-krg"))? == "stand-in System.map\n",
        "the staged System.map is not the one built"
    );
    ensure!(
        fs::read_to_string(staged.join("release"))?.trim() == "2.6.20-krg",
        "wrong release file"
    );
    let config = fs::read_to_string(staged.join("config-2.6.20-krg"))?;
    for line in [
        "CONFIG_KERRIGHED=y",
        "CONFIG_PREEMPT_NONE=y",
        "# CONFIG_KEYS is not set",
        "CONFIG_NFS_FS=y",
    ] {
        ensure!(
            config.lines().any(|l| l == line),
            "the staged config lacks `{line}`"
        );
    }
    // Kept for the next run, with what it was prepared from.
    let key = fs::read_to_string(build.join("kernel-work/krgiso-tree-key"))?;
    ensure!(
        key.contains(&format!("kerrighed: kerrighed-2.4.1.tar.gz {}", pins.1))
            && key.ends_with(&format!("tree: {top}\n")),
        "the kept tree's key does not say what it was prepared from:\n{key}"
    );

    s.step("a fragment whose symbol oldconfig drops is refused, naming it");
    let bad_fragment = base.join("no-preempt-none.config");
    let text = fs::read_to_string(&fragment)?;
    fs::write(&bad_fragment, text.replace("CONFIG_PREEMPT_NONE=y\n", ""))?;
    let bad_profile = base.join("profiles/no-preempt-none.toml");
    fs::write(
        &bad_profile,
        standin_profile(&run, &server, (&pins.0, &pins.1), &bad_fragment)?,
    )?;
    let (ok, said) = kernel(&s, &bad_profile)?;
    ensure!(!ok, "a kernel config missing CONFIG_KERRIGHED was accepted");
    ensure!(
        said.contains("CONFIG_KERRIGHED is absent"),
        "the dropped symbol was not named:\n{said}"
    );
    no_mounts_under(&build)?;
    Ok(timings)
}

/// The stock kind of the kernel stage, for real, in the smoke build: the
/// nodes root's kernel and an initramfs that carries the NFS boot script.
pub(crate) fn kernel_stock(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-kernel-stock")?;
    let t = Instant::now();
    run.xtask(&s, &["kernel"])?;
    let secs = t.elapsed().as_secs_f64();
    let staged = run.build.join("kernel");
    let release = fs::read_to_string(staged.join("release"))?
        .trim()
        .to_owned();
    let initrd = staged.join(format!("initrd.img-{release}"));
    ensure!(
        staged.join(format!("vmlinuz-{release}")).is_file(),
        "no staged vmlinuz-{release}"
    );
    ensure!(initrd.is_file(), "no staged initrd.img-{release}");
    let sh = s.sh();
    let root = run.root("nodes");
    let inside = format!(
        "/tmp/{}",
        initrd
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("initrd")
    );
    fs::copy(&initrd, root.join(inside.trim_start_matches('/')))?;
    let listing = cmd!(sh, "chroot {root} lsinitramfs {inside}").read();
    let _ = fs::remove_file(root.join(inside.trim_start_matches('/')));
    let listing = listing?;
    ensure!(
        listing.lines().any(|l| l.ends_with("scripts/nfs")),
        "the staged initramfs has no scripts/nfs"
    );
    for needed in ["/e1000.ko", "/virtio_net.ko", "/nfs.ko", "/nfsv3.ko"] {
        ensure!(
            listing.lines().any(|l| l.ends_with(needed)),
            "the staged initramfs has no {needed}"
        );
    }
    ensure!(
        !listing.lines().any(|l| l.contains("/kernel/fs/ext4/")),
        "the staged initramfs has local file systems (ext4)"
    );
    ensure!(
        fs::read(&initrd)?.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "the staged initramfs is not zstd-compressed (is zstd in [nodes] packages?)"
    );
    no_mounts_under(&run.build)?;
    Ok(vec![("kernel, stock kind".to_owned(), secs)])
}

/// An i386 root on this x86_64 host, as the kerrighed profile's lenny root
/// is: debootstrapped (minbase, current Debian, since lenny's archive is not
/// reachable everywhere) and entered the way the stages do. Commands in it
/// must see an i686 machine (`setarch i686`), or the kernel's and
/// kerrighed's configure would pick x86_64.
pub(crate) fn i386_chroot(project: &Path) -> Result<Timings> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("this check is for x86_64 hosts (the build machine the seeds describe)");
    }
    let s = check_shell(project, "e2e-i386")?;
    let base = project.join("build/e2e/i386");
    let root = base.join("root");
    let cache = project.join("build/e2e/downloads/debs/bookworm-i386");
    fs::create_dir_all(&cache)?;
    let t = Instant::now();
    if !root.join("etc/debian_version").exists() {
        files::remove_tree(&root)?;
        fs::create_dir_all(&root)?;
        s.step("debootstrap a minimal bookworm i386 root");
        // The lenny profile's way: the stages of the others use mmdebstrap.
        let debootstrap = [host::HostTool::new("debootstrap", "debootstrap")];
        host::ensure_tools(&debootstrap, true, s.log_path())?;
        let sh = s.sh();
        let cache_arg = format!("--cache-dir={}", cache.display());
        s.run(cmd!(sh, "debootstrap --arch=i386 --variant=minbase {cache_arg} bookworm {root} http://deb.debian.org/debian"))?;
    }
    let bootstrap = t.elapsed().as_secs_f64();
    s.step("enter it as the stages do");
    let chroot = chroot::Chroot::enter(&root, "i386", &[], &s)?;
    let machine = chroot.read(&["uname", "-m"])?;
    let dpkg_arch = chroot.read(&["dpkg", "--print-architecture"])?;
    let in_dir = s.read(chroot.cmd_in("/tmp", &["uname", "-m"], false))?;
    drop(chroot);
    no_mounts_under(&base)?;
    ensure!(
        machine == "i686",
        "uname -m in the i386 chroot says {machine:?}, not i686: setarch is not applied"
    );
    ensure!(
        in_dir == "i686",
        "uname -m via cmd_in says {in_dir:?}, not i686"
    );
    ensure!(
        dpkg_arch == "i386",
        "dpkg in the i386 root says {dpkg_arch:?}"
    );
    Ok(vec![(
        "debootstrap i386 minbase (or reuse)".to_owned(),
        bootstrap,
    )])
}
