//! `cargo xtask test`: the whole test suite, in the order CI runs it, with
//! the time each part took. Installs what it needs first.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use xshell::cmd;

pub(crate) mod disk;
pub mod http;
pub(crate) mod image;
pub(crate) mod kernel;
pub(crate) mod kill;
pub(crate) mod krg;
pub(crate) mod node1;
pub(crate) mod packages;
pub(crate) mod security;
pub(crate) mod smoke;
pub(crate) mod usb;
pub(crate) mod user;

use crate::host::{self, NeedsRoot};
use crate::shell::StageShell;

/// One part of the suite that needs no root.
struct Part {
    name: &'static str,
    check: Check,
}

enum Check {
    /// `cargo ARGS`.
    Cargo(&'static [&'static str]),
    /// shellcheck over every shell program of the tree ([`shell_programs`]).
    Shellcheck,
}

const PARTS: &[Part] = &[
    Part {
        name: "fmt",
        check: Check::Cargo(&["fmt", "--all", "--", "--check"]),
    },
    Part {
        name: "shellcheck",
        check: Check::Shellcheck,
    },
    Part {
        name: "clippy",
        check: Check::Cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    },
    Part {
        name: "cargo-test",
        check: Check::Cargo(&["test", "--workspace"]),
    },
];

/// Where the shell programs live: what runs in the image, the test
/// stand-ins and scripts, CI's.
const SHELL_DIRS: &[&str] = &["overlay", "xtask/src/testsuite", "ci", ".ci"];

/// Every file under [`SHELL_DIRS`] whose `#!` line names sh, bash or dash.
pub(crate) fn shell_programs(project: &Path) -> Vec<std::path::PathBuf> {
    let mut programs: Vec<_> = SHELL_DIRS
        .iter()
        .flat_map(|dir| crate::files::walk(&project.join(dir)))
        .filter(|path| {
            let Ok(mut file) = std::fs::File::open(path) else {
                return false;
            };
            let mut head = [0u8; 64];
            let n = std::io::Read::read(&mut file, &mut head).unwrap_or(0);
            let first = String::from_utf8_lossy(&head[..n]);
            let interpreter = first
                .strip_prefix("#!")
                .and_then(|l| l.lines().next())
                .unwrap_or_default();
            let words: Vec<&str> = interpreter.split_whitespace().collect();
            let program = match words.as_slice() {
                [env, name, ..] if env.ends_with("/env") => name,
                [path, ..] => path.rsplit('/').next().unwrap_or_default(),
                [] => "",
            };
            matches!(program, "sh" | "bash" | "dash")
        })
        .collect();
    programs.sort();
    programs
}

/// An end-to-end part: real stages as root, returning what it measured.
struct EndToEnd {
    name: &'static str,
    about: &'static str,
    check: fn(&Path) -> Result<smoke::Timings>,
}

const END_TO_END: &[EndToEnd] = &[
    EndToEnd {
        name: "e2e-packages",
        about: "the smoke packages stage for real (root, Debian mirror)",
        check: packages::packages,
    },
    EndToEnd {
        name: "e2e-kernel-stock",
        about: "the smoke kernel stage: stock kernel + NFS initramfs",
        check: kernel::kernel_stock,
    },
    EndToEnd {
        name: "e2e-node1",
        about: "the smoke node1 stage: layers, TFTP root, accounts",
        check: node1::node1_layers,
    },
    EndToEnd {
        name: "e2e-node1-netns",
        about: "node1's boot service in network namespaces: full and proxy DHCP, TFTP, the status page, the proxy lease kept",
        check: node1::node1_netns,
    },
    EndToEnd {
        name: "e2e-pxe-crowd",
        about: "24 PXE clients at once against node1's boot service in network namespaces: distinct leases, boot files by TFTP and HTTP, dnsmasq stays up",
        check: node1::pxe_crowd,
    },
    EndToEnd {
        name: "e2e-i386-chroot",
        about: "an i386 root entered as the stages do sees an i686 machine",
        check: kernel::i386_chroot,
    },
    EndToEnd {
        name: "e2e-kernel-kerrighed",
        about: "the kerrighed kernel flow with stand-in sources and toolchain",
        check: kernel::kernel_standin,
    },
    EndToEnd {
        name: "e2e-kernel-krg",
        about: "`cargo xtask build` with the default profile (Kerrighed 2.4.4, the real kernel): sources out of reach stop it before any stage; then the build, its outputs, the static userland, a bad patch named, a warm rebuild",
        check: krg::kernel_krg,
    },
    EndToEnd {
        name: "e2e-user",
        about: "the README's commands as users who are not root: status and --dry-run build work; build stops at once with one line without sudo rights, and runs again through sudo with them, keeping the pre-download directory",
        check: user::unprivileged,
    },
    EndToEnd {
        name: "e2e-boot-krg",
        about: "`qemu --nodes 4 --uefi-nodes 1 --late-node --lose-node` on the default profile: a UEFI node is turned away and told it needs BIOS/CSM; three 2.6.20-krg nodes form one Kerrighed cluster; krgadm nodes, one process space, migration, checkpoint/restart, cluster-wide cpuinfo, load balanced by Kerrighed's scheduler, Kerrighed's test programs; a node powered on later is left out and says so; a member lost, the cluster formed again",
        check: krg::boot_krg,
    },
    EndToEnd {
        name: "e2e-boot-krg-proxy",
        about: "`qemu --nodes 4 --foreign-dhcp --id-clash --cluster-gain` on the default profile: node1 only proxies on a LAN with its own DHCP server (a /16); two nodes boot through it and form the Kerrighed cluster with the ids of the LAN's addresses (the single-system-image proof); two more get an address whose id is node2's and node1's: each clash named on node1's status page and on the node's console, and the node stays out; on the two-node cluster, a batch of CPU-bound jobs timed kept on one node and spread over both",
        check: krg::boot_krg_proxy,
    },
    EndToEnd {
        name: "e2e-build",
        about: "the smoke `build` to the ISO: El Torito BIOS + UEFI, MBR, contents, sha256, Ctrl-C keeps the image",
        check: image::build_and_image,
    },
    EndToEnd {
        name: "e2e-disk-full",
        about: "the smoke `build` on a small loop-mounted file system: refused before any stage when too small; filled during the iso stage, one line naming it and the place; enlarged, the rerun makes only the image",
        check: disk::disk_full,
    },
    EndToEnd {
        name: "e2e-kill",
        about: "the smoke `build` killed (SIGKILL, a PID namespace) at seeded moments of each stage, then run again: a stamp exactly for the stages that said done, no mount or process left, the same packages and versions, rendered files and image entries (type, mode, owner) as the uninterrupted build",
        check: kill::kill_matrix,
    },
    EndToEnd {
        name: "e2e-usb",
        about: "`usb`: refusals on loop devices (not removable, mounted, too small), write + read-back, --data",
        check: usb::usb,
    },
    // Before the boot tests: its interrupted run replaces build/qemu,
    // where e2e-bench-quick reads e2e-boot-bios's report.
    EndToEnd {
        name: "e2e-boot-interrupt",
        about: "`qemu --accel kvm`: KVM or one warning and TCG; Ctrl-C stops every VM; run to its end, a restart under TCG is in report.json",
        check: image::boot_interrupted,
    },
    EndToEnd {
        name: "e2e-boot-bios",
        about: "`qemu --nodes 2 --uefi-nodes 1 --foreign-dhcp`: node1 from the ISO (SeaBIOS) on a LAN with its own DHCP server (a network namespace on the cluster link): node1 only proxies, two nodes (one BIOS, one UEFI: `--uefi-nodes 1`) PXE-boot through it into the NFS root, and a LAN host that did not PXE-boot has its NFS mount refused",
        check: image::boot_bios,
    },
    EndToEnd {
        name: "e2e-boot-uefi",
        about: "`usb --data` to a stick file, node1 boots it under OVMF (UEFI), nodes root on KRGISO-DATA, one PXE node in UEFI mode",
        check: image::boot_uefi_stick,
    },
    EndToEnd {
        name: "e2e-security",
        about: "node1 and its image tried from outside: no private key in the ISO or its squashfs images, the password in no log; in network namespaces an uplink host (only ssh, by key; forged sources dropped), a proxy-LAN host that did not PXE-boot (no export for it), rogue DHCP offers (refused)",
        check: security::security,
    },
    EndToEnd {
        name: "e2e-bench-quick",
        about: "`bench --quick`: a no-op build runs nothing, iso after an overlay change leaves the kernel alone",
        check: image::bench_quick,
    },
];

/// Every part's name, for `--only`.
pub(crate) fn part_names() -> Vec<&'static str> {
    PARTS
        .iter()
        .map(|p| p.name)
        .chain(END_TO_END.iter().map(|e| e.name))
        .collect()
}

/// Which parts a run takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Parts<'a> {
    All,
    Only(&'a str),
    /// This part and every one after it.
    From(&'a str),
}

impl Parts<'_> {
    fn wanted(&self, name: &str) -> bool {
        match self {
            Parts::All => true,
            Parts::Only(only) => *only == name,
            Parts::From(from) => {
                let names = part_names();
                let at = |n: &str| names.iter().position(|p| *p == n);
                at(name) >= at(from)
            }
        }
    }
}

pub(crate) fn run(project: &Path, parts: Parts, dry_run: bool) -> Result<()> {
    let wanted = |name: &str| parts.wanted(name);
    if let Parts::Only(o) | Parts::From(o) = parts {
        if !part_names().contains(&o) {
            bail!("no test part `{o}`; parts: {}", part_names().join(", "));
        }
    }
    if dry_run {
        println!("cargo xtask test would run:");
        for part in PARTS.iter().filter(|p| wanted(p.name)) {
            match part.check {
                Check::Cargo(args) => println!("  {:<22} cargo {}", part.name, args.join(" ")),
                Check::Shellcheck => println!(
                    "  {:<22} shellcheck over the shell programs in {}",
                    part.name,
                    SHELL_DIRS.join(", ")
                ),
            }
        }
        for e in END_TO_END.iter().filter(|e| wanted(e.name)) {
            println!("  {:<22} {}", e.name, e.about);
        }
        return Ok(());
    }
    // As another user, the build dir may be root's (a build made through
    // sudo): the cargo parts log beside cargo's own output instead.
    let log = if host::is_root() {
        project.join("build/logs/test.log")
    } else {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| project.join("target"))
            .join("krgiso-test.log")
    };
    let s = StageShell::new("test", &log, true)?;
    let sh = s.sh();
    sh.change_dir(project);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    if PARTS
        .iter()
        .any(|p| wanted(p.name) && matches!(p.check, Check::Cargo(_)))
    {
        ensure_rust_components(&s, &cargo)?;
    }

    let started = Instant::now();
    let mut rows: Vec<(String, f64, bool)> = Vec::new();
    let mut failed = None;
    for part in PARTS.iter().filter(|p| wanted(p.name)) {
        s.step(part.name);
        let t = Instant::now();
        let result = match part.check {
            Check::Cargo(args) => s.run(cmd!(sh, "{cargo} {args...}")),
            Check::Shellcheck => shellcheck(&s, project),
        };
        rows.push((
            part.name.to_owned(),
            t.elapsed().as_secs_f64(),
            result.is_ok(),
        ));
        if let Err(e) = result {
            failed = Some((part.name, e));
            break;
        }
    }
    // The end-to-end parts run real stages as root. As another user, the
    // cargo parts above ran as that user (its toolchain, its target dir);
    // the rest runs again through sudo, from the first end-to-end part.
    let first_e2e = END_TO_END.iter().find(|e| wanted(e.name));
    if let (Some(first), None, false) = (first_e2e, &failed, host::is_root()) {
        s.finish();
        print_rows(&rows, started);
        return Err(NeedsRoot {
            what: "the end-to-end parts".to_owned(),
            why: "debootstrap, chroot, mounts, loop devices, network namespaces",
            resume: match parts {
                Parts::Only(_) => Vec::new(),
                _ => vec!["--from".to_owned(), first.name.to_owned()],
            },
        }
        .into());
    }
    for e in END_TO_END.iter().filter(|e| wanted(e.name)) {
        if failed.is_some() {
            break;
        }
        s.step(&format!("{}: {}", e.name, e.about));
        let t = Instant::now();
        let result = (e.check)(project);
        match result {
            Ok(timings) => {
                rows.extend(
                    timings
                        .into_iter()
                        .map(|(what, secs)| (format!("  {what}"), secs, true)),
                );
                rows.push((e.name.to_owned(), t.elapsed().as_secs_f64(), true));
            }
            Err(err) => {
                rows.push((e.name.to_owned(), t.elapsed().as_secs_f64(), false));
                failed = Some((e.name, err));
            }
        }
    }
    s.finish();
    print_rows(&rows, started);
    if let Some((name, err)) = failed {
        return Err(err.context(format!("test part `{name}` failed")));
    }
    Ok(())
}

/// shellcheck (installed if missing, as root on Debian) over every shell
/// program: no finding passes.
fn shellcheck(s: &StageShell, project: &Path) -> Result<()> {
    host::ensure_tools(
        &[host::HostTool::new("shellcheck", "shellcheck")],
        host::is_root(),
        &project.join("build/logs/host.log"),
    )?;
    let programs = shell_programs(project);
    ensure!(
        programs.len() >= 8,
        "only {} shell programs found under {}",
        programs.len(),
        SHELL_DIRS.join(", ")
    );
    s.note(&format!("shellcheck: {} programs", programs.len()));
    let sh = s.sh();
    s.run(cmd!(sh, "shellcheck -x --format=gcc {programs...}"))
        .context("shellcheck has findings (each with its file and line above)")
}

/// What each part took, and whether it passed.
fn print_rows(rows: &[(String, f64, bool)], started: Instant) {
    println!();
    println!("{:<44} {:>9}  result", "part", "seconds");
    for (name, secs, ok) in rows {
        println!(
            "{name:<44} {secs:>9.1}  {}",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    println!("{:<44} {:>9.1}", "total", started.elapsed().as_secs_f64());
}

/// rustfmt and clippy come from rustup, not apt: add them if missing.
fn ensure_rust_components(s: &StageShell, cargo: &str) -> Result<()> {
    let sh = s.sh();
    let have = |sub: &str| {
        cmd!(sh, "{cargo} {sub} --version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
    };
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    if host::find_program("rustup").is_none() {
        bail!("cargo fmt or cargo clippy is missing and rustup is not installed: install the rustfmt and clippy components of your Rust toolchain");
    }
    s.step("rustup component add rustfmt clippy");
    s.run(cmd!(sh, "rustup component add rustfmt clippy"))
        .context("could not add the rustfmt and clippy components")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_a_part_takes_it_and_every_part_after_it() {
        let from = Parts::From("e2e-packages");
        assert!(!from.wanted("cargo-test"));
        assert!(from.wanted("e2e-packages"));
        assert!(from.wanted("e2e-bench-quick"));
        let only = Parts::Only("e2e-user");
        assert!(only.wanted("e2e-user") && !only.wanted("e2e-boot-krg"));
        assert!(Parts::All.wanted("fmt"));
    }

    /// A program the image runs must be executable there: the overlay's
    /// modes go into the image as they are (a new `cluster-key` without
    /// its x bit failed node1's start). A library that is only sourced is
    /// named `*.sh`.
    #[test]
    fn the_overlays_programs_are_executable() {
        use std::os::unix::fs::PermissionsExt;
        let project = crate::project_root();
        let programs: Vec<_> = shell_programs(&project)
            .into_iter()
            .filter(|p| p.starts_with(project.join("overlay")))
            .filter(|p| p.extension().is_none_or(|e| e != "sh"))
            .collect();
        assert!(programs.len() > 10, "{programs:?}");
        for program in programs {
            let mode = std::fs::metadata(&program).unwrap().permissions().mode();
            assert!(
                mode & 0o111 == 0o111,
                "{} has mode {mode:o}",
                program.display()
            );
        }
    }

    #[test]
    fn shell_programs_are_found_by_their_interpreter_line() {
        let project = crate::project_root();
        let found = shell_programs(&project);
        let has = |path: &str| found.contains(&project.join(path));
        for program in [
            "overlay/node1/usr/local/sbin/krgiso-node1",
            "overlay/nodes-static/etc/init.d/rcS",
            "overlay/node1/etc/krgiso/udhcpc-probe",
            ".ci/run",
        ] {
            assert!(has(program), "{program} not found in {found:?}");
        }
        // Units, rendered templates and Rust are not shell programs.
        assert!(found
            .iter()
            .all(|p| p.extension().is_none_or(|e| e != "rs" && e != "service")));
        let dir = tempfile::tempdir().unwrap();
        let ci = dir.path().join("ci");
        std::fs::create_dir_all(&ci).unwrap();
        for (name, text) in [
            ("env-bash", "#!/usr/bin/env bash\necho\n"),
            ("dash", "#! /bin/dash -e\n"),
            ("python", "#!/usr/bin/python3\nprint()\n"),
            ("plain", "echo\n"),
        ] {
            std::fs::write(ci.join(name), text).unwrap();
        }
        let names: Vec<_> = shell_programs(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["dash", "env-bash"]);
    }
}
