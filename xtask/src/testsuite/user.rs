//! `e2e-user`: the README's commands typed by a user who is not root, in a
//! checkout of their own. Two users are made for it and removed after it,
//! whatever happens: one that sudo will not serve, one that sudo serves
//! without a password (a rule in /etc/sudoers.d, removed too).
//!
//! - As either: `status` and `--dry-run build` work, with no root at all.
//! - Without sudo rights: `build` stops at once, before writing anything,
//!   with one line that says what is needed.
//! - With sudo rights: `build` says it runs again through sudo and does;
//!   the run as root keeps the pre-download directory given in the
//!   environment (which sudo drops) and the checkout's default build dir.
//!   It is made to stop at its first root-only work that can be seen: the
//!   linux tarball is taken from the pre-download directory into the
//!   download cache as root, then kerrighed's URL is refused and the build
//!   stops before any stage.
//!
//! The users run the checkout's built binary, as `cargo xtask` does after
//! compiling it: they have no Rust toolchain of their own (rustup is out
//! of reach here). The checkout is a copy in /tmp, where they can read it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::smoke::{check_shell, xtask_binary, Timings};
use crate::files;
use crate::host::{self, HostTool};
use crate::profile;
use crate::shell::StageShell;

const NO_SUDO: &str = "krgiso-e2e-nosudo";
const SUDOER: &str = "krgiso-e2e-sudo";
const SUDOERS_FILE: &str = "/etc/sudoers.d/krgiso-e2e-user";
const SCRATCH: &str = "/tmp/krgiso-e2e-user";

/// The two users, the sudoers rule and the scratch dir, removed on drop.
struct Users;

impl Users {
    fn make() -> Result<Users> {
        let users = Users;
        users.remove();
        for name in [NO_SUDO, SUDOER] {
            run(Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", SCRATCH])
                .args(["--shell", "/usr/sbin/nologin", name]))?;
        }
        fs::create_dir_all("/etc/sudoers.d")?;
        let rule = format!("{SUDOER} ALL=(root) NOPASSWD: ALL\n");
        files::write_atomic(Path::new(SUDOERS_FILE), rule.as_bytes())?;
        set_mode(Path::new(SUDOERS_FILE), 0o440)?;
        run(Command::new("visudo").args(["--check", "--file", SUDOERS_FILE]))?;
        Ok(users)
    }

    fn remove(&self) {
        let _ = fs::remove_file(SUDOERS_FILE);
        for name in [NO_SUDO, SUDOER] {
            let _ = Command::new("userdel").arg(name).output();
        }
        let _ = files::remove_tree(Path::new(SCRATCH));
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        self.remove();
    }
}

pub(crate) fn unprivileged(project: &Path) -> Result<Timings> {
    let s = check_shell(project, "e2e-user")?;
    host::ensure_tools(
        &[
            HostTool::new("sudo", "sudo"),
            HostTool::new("visudo", "sudo"),
            HostTool::new("useradd", "passwd"),
            HostTool::new("runuser", "util-linux"),
        ],
        true,
        &project.join("build/logs/host.log"),
    )?;
    s.step("two users made for the test: one sudo will not serve, one it serves");
    let _users = Users::make()?;
    fs::create_dir_all(SCRATCH)?;
    set_mode(Path::new(SCRATCH), 0o755)?;
    let mut timings = Vec::new();

    for user in [NO_SUDO, SUDOER] {
        let checkout = checkout_for(project, user)?;
        s.step(&format!(
            "{user}: status and --dry-run build, no root needed"
        ));
        let out = as_user(&s, user, &checkout, &[], &["status"])?;
        let (stdout, stderr) = text(&out);
        ensure!(out.status.success(), "`status` as {user} failed:\n{stderr}");
        ensure!(
            stdout.contains(&format!("profile {}", profile::DEFAULT))
                && stdout.lines().filter(|l| l.contains("never built")).count() == 4,
            "`status` as {user} does not show the default profile with four stages never built:\n{stdout}"
        );
        let out = as_user(&s, user, &checkout, &[], &["--dry-run", "build"])?;
        let (stdout, stderr) = text(&out);
        ensure!(
            out.status.success() && stdout.contains("nothing was run (--dry-run)"),
            "`--dry-run build` as {user} failed:\n{stdout}{stderr}"
        );
    }

    s.step("without sudo rights: `build` stops at once with one line, having written nothing");
    let checkout = checkout_for(project, NO_SUDO)?;
    let listing = |dir: &Path| {
        let mut paths = files::walk(dir);
        paths.sort();
        paths
    };
    let before = listing(&checkout);
    let t = Instant::now();
    let out = as_user(&s, NO_SUDO, &checkout, &[], &["build"])?;
    let secs = t.elapsed().as_secs_f64();
    timings.push(("build without sudo rights (refused)".to_owned(), secs));
    let (stdout, stderr) = text(&out);
    ensure!(
        !out.status.success(),
        "`build` as {NO_SUDO} succeeded:\n{stdout}{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        errors.len() == 1
            && errors[0].starts_with("error: the packages stage must run as root")
            && errors[0].contains(&format!("sudo will not run it for {NO_SUDO}"))
            && errors[0].contains(&format!("adduser {NO_SUDO} sudo")),
        "`build` as {NO_SUDO} did not end with one line naming what is needed:\n{stderr}"
    );
    ensure!(secs < 15.0, "`build` as {NO_SUDO} took {secs:.0} s to stop");
    ensure!(
        listing(&checkout) == before,
        "`build` as {NO_SUDO} wrote into its checkout before stopping"
    );

    s.step("with sudo rights: `build` runs again as root, keeping the pre-download directory");
    let checkout = checkout_for(project, SUDOER)?;
    let (profile, sources) = local_build(&checkout)?;
    let profile = profile.display().to_string();
    let t = Instant::now();
    let out = as_user(
        &s,
        SUDOER,
        &checkout,
        &[(crate::fetch::SOURCES_DIR_ENV, &sources)],
        &["--profile", &profile, "build"],
    )?;
    timings.push((
        "build through sudo, up to its sources".to_owned(),
        t.elapsed().as_secs_f64(),
    ));
    let (stdout, stderr) = text(&out);
    let said = format!("{stdout}{stderr}");
    ensure!(
        !out.status.success(),
        "the sudo user's build was meant to stop at kerrighed's refused URL:\n{said}"
    );
    for what in [
        "must run as root".to_owned(),
        "running it again as root: sudo".to_owned(),
        format!("linux-2.6.20.tar.bz2 from {}", sources.display()),
        "could not get kerrighed-2.4.4.tar.gz".to_owned(),
        "no stage was started".to_owned(),
    ] {
        ensure!(
            said.contains(&what),
            "the sudo user's build does not say {what:?}:\n{said}"
        );
    }
    let cached = checkout.join("downloads/linux-2.6.20.tar.bz2");
    let owner = fs::metadata(&cached)
        .with_context(|| format!("the run as root left no {}", cached.display()))?
        .uid();
    ensure!(
        owner == 0,
        "{} belongs to uid {owner}, not root",
        cached.display()
    );
    ensure!(
        !checkout.join("build/stamps").exists() && !checkout.join("build/roots").exists(),
        "a stage ran"
    );
    Ok(timings)
}

/// A copy of the checkout for `user`, owned by it: what `cargo xtask`
/// reads (profiles, overlay, kernel files, the crate's manifest) and the
/// binary it built, at `target/debug/xtask`.
fn checkout_for(project: &Path, user: &str) -> Result<PathBuf> {
    let checkout = Path::new(SCRATCH).join(user).join("krgiso");
    if checkout.join("target/debug/xtask").is_file() {
        return Ok(checkout);
    }
    for dir in ["profiles", "overlay", "kernel-configs", "kernel-patches"] {
        files::copy_tree(&project.join(dir), &checkout.join(dir))?;
    }
    fs::create_dir_all(checkout.join("xtask"))?;
    fs::copy(
        project.join("xtask/Cargo.toml"),
        checkout.join("xtask/Cargo.toml"),
    )?;
    fs::create_dir_all(checkout.join("target/debug"))?;
    fs::copy(xtask_binary()?, checkout.join("target/debug/xtask"))?;
    run(Command::new("chown")
        .args(["-R", &format!("{user}:")])
        .arg(checkout.parent().context("no parent")?))?;
    Ok(checkout)
}

/// The default profile with node1's, the nodes' and the build root's
/// mirror a `file://` one that has the suite (the mirror check passes with
/// no network), the sources pinned to small stand-in tarballs whose URLs
/// are refused, and a pre-download directory that holds linux's only.
fn local_build(checkout: &Path) -> Result<(PathBuf, PathBuf)> {
    let base = checkout.parent().context("no parent")?;
    let mirror = base.join("mirror");
    fs::create_dir_all(mirror.join("dists/bookworm"))?;
    fs::write(mirror.join("dists/bookworm/Release"), "Suite: bookworm\n")?;
    let sources = base.join("sources");
    fs::create_dir_all(&sources)?;
    let linux = b"stand-in linux tarball\n".repeat(64);
    let krg = b"stand-in kerrighed tarball\n".repeat(64);
    fs::write(sources.join("linux-2.6.20.tar.bz2"), &linux)?;
    let real = profile::resolve(profile::DEFAULT, checkout)?;
    let text = crate::testsuite::http::with_sources_refused(&fs::read_to_string(&real)?)?;
    let (real_linux, real_krg) = {
        let p = profile::Profile::load(&real)?;
        let pin = |n: &str| {
            p.source(n)
                .and_then(|s| s.sha256.clone())
                .unwrap_or_default()
        };
        (pin("linux"), pin("kerrighed"))
    };
    let mut edited = Vec::new();
    for line in text.lines() {
        edited.push(if line.trim().starts_with("mirror = ") {
            format!("mirror = \"file://{}\"", mirror.display())
        } else {
            line.replace(&real_linux, &crate::bytes::sha256_hex(&linux))
                .replace(&real_krg, &crate::bytes::sha256_hex(&krg))
        });
    }
    let profile = base.join("local.toml");
    fs::write(&profile, edited.join("\n") + "\n")?;
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(base))?;
    Ok((profile, sources))
}

/// The checkout's binary run as `user` in the checkout, with a clean
/// environment (a login's: HOME, USER, PATH) plus `env`.
/// What it printed goes to the part's log.
fn as_user(
    s: &StageShell,
    user: &str,
    checkout: &Path,
    env: &[(&str, &Path)],
    args: &[&str],
) -> Result<Output> {
    let mut command = Command::new("runuser");
    command
        .args(["-u", user, "--", "env", "-i"])
        .arg(format!(
            "HOME={}",
            checkout.parent().context("no parent")?.display()
        ))
        .arg(format!("USER={user}"))
        .arg("PATH=/usr/local/bin:/usr/bin:/bin")
        .arg("LANG=C.UTF-8");
    for (key, value) in env {
        command.arg(format!("{key}={}", value.display()));
    }
    command
        .arg(checkout.join("target/debug/xtask"))
        .args(args)
        .current_dir(checkout)
        .stdin(std::process::Stdio::null());
    let out = command
        .output()
        .with_context(|| format!("running xtask as {user}"))?;
    let (stdout, stderr) = text(&out);
    s.note(&format!(
        "$ {user}: cargo xtask {} ({})\n{stdout}{stderr}",
        args.join(" "),
        out.status
    ));
    Ok(out)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(command: &mut Command) -> Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
