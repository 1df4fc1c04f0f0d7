//! `cargo xtask test`: the whole test suite, in the order CI runs it, with
//! the time each part took. Installs what it needs first.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::cmd;

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
        return Ok(());
    }
    let log = project.join("build/logs/test.log");
    let s = StageShell::new("test", &log, true)?;
    let sh = s.sh();
    sh.change_dir(project);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    ensure_rust_components(&s, &cargo)?;

    let started = Instant::now();
    let mut rows: Vec<(&str, f64, bool)> = Vec::new();
    let mut failed = None;
    for part in PARTS {
        s.step(part.name);
        let t = Instant::now();
        let args = part.args;
        let result = s.run(cmd!(sh, "{cargo} {args...}"));
        let ok = result.is_ok();
        rows.push((part.name, t.elapsed().as_secs_f64(), ok));
        if let Err(e) = result {
            failed = Some((part.name, e));
            break;
        }
    }
    s.finish();
    println!();
    println!("{:<12} {:>9}  result", "part", "seconds");
    for (name, secs, ok) in &rows {
        println!(
            "{name:<12} {secs:>9.1}  {}",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    println!("{:<12} {:>9.1}", "total", started.elapsed().as_secs_f64());
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
