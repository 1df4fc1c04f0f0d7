//! The build machine: are we root, are the tools there. On Debian as root,
//! missing tools are installed with apt-get (saying what); elsewhere the
//! error gives the exact line to run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::shell::StageShell;

/// A program the pipeline runs on the host (or, given as an absolute path, a
/// file it reads, such as a keyring), and the Debian package that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTool {
    pub(crate) program: String,
    pub(crate) package: String,
}

impl HostTool {
    pub(crate) fn new(program: impl Into<String>, package: impl Into<String>) -> HostTool {
        HostTool {
            program: program.into(),
            package: package.into(),
        }
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command reached work that only root may do, as another user. Nothing
/// has been written yet: the command line turns it into a run of the same
/// command through sudo ([`run_again_as_root`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NeedsRoot {
    /// What needs it, in the user's words: "the packages stage", "`usb`".
    pub(crate) what: String,
    /// Why, in a few words.
    pub(crate) why: &'static str,
    /// Arguments to add to the command line when it runs again as root,
    /// so that it goes on where this run stopped (`test --from PART`).
    pub(crate) resume: Vec<String>,
}

impl std::fmt::Display for NeedsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must run as root ({})", self.what, self.why)
    }
}

impl std::error::Error for NeedsRoot {}

/// Stops with [`NeedsRoot`] unless this process is root.
pub(crate) fn require_root(what: impl Into<String>, why: &'static str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    Err(NeedsRoot {
        what: what.into(),
        why,
        resume: Vec::new(),
    }
    .into())
}

pub(crate) fn ensure_root(stage: &str) -> Result<()> {
    require_root(
        format!("the {stage} stage"),
        "it creates root file systems, chroots and mounts",
    )
}

/// Runs this program again as root through sudo, with `args` (the command
/// line as typed, the pre-download directory made explicit), and never
/// returns on success: sudo's process takes this one's place, its exit
/// code is the command's. Debian's sudo resets `$PATH`, so `sudo cargo
/// xtask` cannot find a rustup cargo; this runs the built binary itself.
/// Says so on stderr first. A user sudo will not serve gets one line
/// naming what is needed.
pub(crate) fn run_again_as_root(needs: &NeedsRoot, args: &[std::ffi::OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let user = std::env::var("USER").unwrap_or_else(|_| "this user".to_owned());
    let Some(sudo) = find_program("sudo") else {
        bail!(
            "{needs}, and sudo is not installed: run it as root (`su -`, then the same command), \
or install sudo and give {user} the right to use it (`adduser {user} sudo` as root)"
        );
    };
    let exe = this_program().map_err(|e| {
        anyhow::anyhow!("{needs}, and this program cannot find itself to run again: {e}")
    })?;
    // Asks for the password here (on the terminal), or learns that sudo
    // will not serve this user, before anything else is said.
    let check = Command::new(&sudo)
        .args(["-v", "-p", "[sudo] password for %p (krgiso needs root): "])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| anyhow::anyhow!("{needs}, and running {} failed: {e}", sudo.display()))?;
    if !check.status.success() {
        let said = String::from_utf8_lossy(&check.stderr);
        let said = said
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no reason given");
        bail!(
            "{needs}, and sudo will not run it for {user} ({said}): run it as root, or as a user \
that may use sudo (`adduser {user} sudo` as root), from a terminal where sudo can ask for the password"
        );
    }
    eprintln!(
        "krgiso: {needs}: running it again as root: sudo {} {}",
        exe.display(),
        shown(args)
    );
    let err = Command::new(&sudo).arg("--").arg(&exe).args(args).exec();
    bail!(
        "{needs}, and running it through {} failed: {err}",
        sudo.display()
    )
}

/// This program's file. When cargo has rebuilt it while it ran, the kernel
/// names the old one "PATH (deleted)": PATH is the new build, the one to run.
pub(crate) fn this_program() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let shown = exe.to_string_lossy();
    Ok(match shown.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// A command line as a person would type it again.
fn shown(args: &[std::ffi::OsString]) -> String {
    args.iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a program would be found: `$PATH` plus the sbin directories, which
/// a non-root `$PATH` often lacks.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
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

pub(crate) fn missing(tools: &[HostTool]) -> Vec<&HostTool> {
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

pub(crate) fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && find_program("apt-get").is_some()
}

/// Makes sure every tool is there. With `install` on a Debian host as root,
/// missing ones are installed with apt-get; otherwise the error says how.
pub(crate) fn ensure_tools(tools: &[HostTool], install: bool, log: &Path) -> Result<()> {
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
pub(crate) fn apt_install(pkgs: &[&str], log: &Path) -> Result<()> {
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

/// Runs `f` on a thread of its own inside network namespace `ns` (setns
/// moves only the calling thread): the sockets it makes stay in `ns`.
pub(crate) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns with a namespace file this thread holds open;
        // it changes this thread's network namespace only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns into {ns}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in a network namespace panicked"))?
}

/// Sends SIGTERM to the daemon `pid_file` names, if it names one.
pub(crate) fn stop_daemon(pid_file: &Path) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) on the daemon the caller started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_is_shown_as_it_would_be_typed() {
        let args: Vec<std::ffi::OsString> = ["--profile", "my profile.toml", "build", "it's"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(shown(&args), "--profile 'my profile.toml' build 'it'\\''s'");
    }

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
