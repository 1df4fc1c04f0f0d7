//! The build machine: are we root, are the tools there. On Debian as root,
//! missing tools are installed with apt-get (saying what); elsewhere the
//! error gives the exact line to run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use xshell::cmd;

use crate::shell::StageShell;

/// A program the pipeline runs on the host (or, given as an absolute path, a
/// file it reads, such as a keyring), and the Debian package that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTool {
    pub program: String,
    pub package: String,
}

impl HostTool {
    pub fn new(program: impl Into<String>, package: impl Into<String>) -> HostTool {
        HostTool {
            program: program.into(),
            package: package.into(),
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn ensure_root(stage: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!(
        "the {stage} stage must run as root (it creates root filesystems, chroots and mounts): run it with sudo, e.g. `sudo cargo xtask build`"
    )
}

/// Where a program would be found: `$PATH` plus the sbin directories, which
/// a non-root `$PATH` often lacks.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).exists().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn missing(tools: &[HostTool]) -> Vec<&HostTool> {
    let mut out: Vec<&HostTool> = Vec::new();
    for t in tools {
        if find_program(&t.program).is_none() && !out.iter().any(|o| o.program == t.program) {
            out.push(t);
        }
    }
    out
}

fn packages_of<'a>(tools: &[&'a HostTool]) -> Vec<&'a str> {
    let mut pkgs: Vec<&str> = tools.iter().map(|t| t.package.as_str()).collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    pkgs
}

pub fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && find_program("apt-get").is_some()
}

/// Makes sure every tool is there. With `install` on a Debian host as root,
/// missing ones are installed with apt-get; otherwise the error says how.
pub fn ensure_tools(tools: &[HostTool], install: bool, log: &Path) -> Result<()> {
    let missing = missing(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs = packages_of(&missing);
    let programs = missing_programs(tools);
    if !(install && is_root() && is_debian()) {
        bail!(
            "missing host tools: {}; install them with: sudo apt-get install -y {}",
            programs.join(", "),
            pkgs.join(" ")
        );
    }
    eprintln!(
        "==> host: installing {} (for {})",
        pkgs.join(" "),
        programs.join(", ")
    );
    apt_install(&pkgs, log)?;
    let still = missing_programs(tools);
    if !still.is_empty() {
        bail!(
            "apt-get installed {} but {} still not found; see {}",
            pkgs.join(" "),
            still.join(", "),
            log.display()
        );
    }
    Ok(())
}

fn missing_programs(tools: &[HostTool]) -> Vec<&str> {
    missing(tools).iter().map(|t| t.program.as_str()).collect()
}

/// `apt-get install`, with one `apt-get update` and a retry if the package
/// lists are missing or stale (a fresh machine or container has none).
pub fn apt_install(pkgs: &[&str], log: &Path) -> Result<()> {
    let s = StageShell::new("host", log, false)?;
    let sh = s.sh();
    sh.set_var("DEBIAN_FRONTEND", "noninteractive");
    let install = || {
        s.run(cmd!(
            sh,
            "apt-get install -y --no-install-recommends {pkgs...}"
        ))
    };
    if install().is_ok() {
        return Ok(());
    }
    s.step("apt-get update (package lists missing or stale)");
    s.run(cmd!(sh, "apt-get update"))
        .map_err(|e| e.context("apt-get update failed: is a Debian mirror reachable?"))?;
    install().map_err(|e| {
        e.context(format!(
            "could not install {} (see {})",
            pkgs.join(" "),
            log.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_real_programs_and_reports_missing_ones_with_their_package() {
        assert!(find_program("sh").is_some());
        let tools = [
            HostTool::new("sh", "dash"),
            HostTool::new("krgiso-no-such-tool", "krgiso-pkg-b"),
            HostTool::new("krgiso-no-such-tool", "krgiso-pkg-b"),
            HostTool::new("krgiso-other-missing", "krgiso-pkg-a"),
        ];
        let missing = missing(&tools);
        let programs: Vec<_> = missing.iter().map(|t| t.program.as_str()).collect();
        assert_eq!(programs, ["krgiso-no-such-tool", "krgiso-other-missing"]);
        assert_eq!(packages_of(&missing), ["krgiso-pkg-a", "krgiso-pkg-b"]);
    }

    #[test]
    fn without_install_the_error_gives_the_apt_line() {
        let tmp = tempfile::tempdir().unwrap();
        let tools = [HostTool::new("krgiso-no-such-tool", "krgiso-pkg")];
        let err = ensure_tools(&tools, false, &tmp.path().join("host.log"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing host tools: krgiso-no-such-tool")
                && err.contains("sudo apt-get install -y krgiso-pkg"),
            "{err}"
        );
    }
}
