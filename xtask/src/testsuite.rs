//! `cargo xtask test`: the whole test suite, in the order CI runs it, with
//! the time each part took. Installs what it needs first.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::e2e;
use crate::host;
use crate::shell::StageShell;

/// One part of the suite.
struct Part {
    name: &'static str,
    args: &'static [&'static str],
}

const PARTS: &[Part] = &[
    Part {
        name: "fmt",
        args: &["fmt", "--all", "--", "--check"],
    },
    Part {
        name: "clippy",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Part {
        name: "cargo test",
        args: &["test", "--workspace"],
    },
];

pub fn run(project: &Path, dry_run: bool) -> Result<()> {
    if dry_run {
        println!("cargo xtask test would run:");
        for part in PARTS {
            println!("  {:<11} cargo {}", part.name, part.args.join(" "));
        }
        println!("  e2e         the smoke profile's packages stage for real (root, Debian mirror)");
        return Ok(());
    }
    let log = project.join("build/logs/test.log");
    let s = StageShell::new("test", &log, true)?;
    let sh = s.sh();
    sh.change_dir(project);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    ensure_rust_components(&s, &cargo)?;

    let started = Instant::now();
    let mut rows: Vec<(String, f64, bool)> = Vec::new();
    let mut failed = None;
    for part in PARTS {
        s.step(part.name);
        let t = Instant::now();
        let args = part.args;
        let result = s.run(cmd!(sh, "{cargo} {args...}"));
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
    if failed.is_none() {
        // The end-to-end part: real stages, as root, against a Debian mirror.
        // Not root is a failure, never a silent skip.
        s.step("end to end: the smoke profile's packages stage");
        let t = Instant::now();
        let result = if host::is_root() {
            e2e::packages(project)
        } else {
            Err(anyhow::anyhow!(
                "the end-to-end part needs root (debootstrap, chroot, mounts): run `sudo cargo xtask test`"
            ))
        };
        match result {
            Ok(timings) => {
                rows.extend(
                    timings
                        .into_iter()
                        .map(|(what, secs)| (format!("  {what}"), secs, true)),
                );
                rows.push(("e2e packages".to_owned(), t.elapsed().as_secs_f64(), true));
            }
            Err(e) => {
                rows.push(("e2e packages".to_owned(), t.elapsed().as_secs_f64(), false));
                failed = Some(("e2e packages", e));
            }
        }
    }
    s.finish();
    println!();
    println!("{:<44} {:>9}  result", "part", "seconds");
    for (name, secs, ok) in &rows {
        println!(
            "{name:<44} {secs:>9.1}  {}",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    println!("{:<44} {:>9.1}", "total", started.elapsed().as_secs_f64());
    if let Some((name, err)) = failed {
        return Err(err.context(format!("test part `{name}` failed")));
    }
    Ok(())
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
