//! Working inside a root filesystem: the mounts a chroot needs, undone on
//! drop, on error, on panic and on Ctrl-C; commands run in it with a clean
//! environment (under `setarch i686` for an i386 root on an x86_64 host);
//! and, for a run that was killed, finding and releasing what it left.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd};

use crate::files;
use crate::interrupt::Cleanup;
use crate::shell::{self, StageShell, Stopped};

/// One mount a chroot needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountSpec {
    /// A kernel file system (`proc`, `sysfs`) at `target`.
    Fs {
        fstype: &'static str,
        target: PathBuf,
    },
    /// `source` bind-mounted at `target`.
    Bind { source: PathBuf, target: PathBuf },
    /// A read-only overlayfs of `layers` (the first on top) at `target`.
    Overlay {
        layers: Vec<PathBuf>,
        target: PathBuf,
    },
}

impl MountSpec {
    pub(crate) fn target(&self) -> &Path {
        match self {
            MountSpec::Fs { target, .. }
            | MountSpec::Bind { target, .. }
            | MountSpec::Overlay { target, .. } => target,
        }
    }
}

/// Mounting and unmounting: the real system calls, or a stand-in in tests.
pub(crate) trait MountOps: Send + Sync {
    fn mount(&self, spec: &MountSpec) -> io::Result<()>;
    /// `lazy` detaches now and cleans up when the mount is no longer busy.
    fn unmount(&self, target: &Path, lazy: bool) -> io::Result<()>;
}

/// mount(2) and umount2(2).
pub(crate) struct SystemMounts;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains a NUL byte"))
}

impl MountOps for SystemMounts {
    fn mount(&self, spec: &MountSpec) -> io::Result<()> {
        let (source, fstype, flags, data) = match spec {
            MountSpec::Fs { fstype, .. } => {
                (CString::new(*fstype)?, CString::new(*fstype)?, 0, None)
            }
            MountSpec::Bind { source, .. } => {
                (c_path(source)?, CString::new("none")?, libc::MS_BIND, None)
            }
            MountSpec::Overlay { layers, .. } => {
                let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
                if lower.iter().any(|l| l.contains([':', ','])) {
                    return Err(io::Error::other("a layer's path contains ':' or ','"));
                }
                let data = CString::new(format!("lowerdir={}", lower.join(":")))?;
                (
                    CString::new("krgiso")?,
                    CString::new("overlay")?,
                    libc::MS_RDONLY,
                    Some(data),
                )
            }
        };
        let target = c_path(spec.target())?;
        let data_ptr = data
            .as_ref()
            .map_or(std::ptr::null(), |d| d.as_ptr().cast());
        // SAFETY: valid NUL-terminated strings; data is overlayfs's option text or null.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data_ptr,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn unmount(&self, target: &Path, lazy: bool) -> io::Result<()> {
        let target = c_path(target)?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Unmounts, falling back to a lazy unmount when the mount is busy.
/// Returns a line describing what happened, for the log.
pub(crate) fn release(ops: &dyn MountOps, target: &Path) -> String {
    match ops.unmount(target, false) {
        Ok(()) => format!("unmounted {}", target.display()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            format!("{} was not mounted", target.display())
        }
        Err(e) => match ops.unmount(target, true) {
            Ok(()) => format!("unmounted {} lazily ({e})", target.display()),
            Err(e2) => format!(
                "warning: could not unmount {}: {e}; lazily: {e2}",
                target.display()
            ),
        },
    }
}

/// What a guard must undo.
#[derive(Default)]
struct Undo {
    mounted: Vec<PathBuf>,
    /// Files put in place for the build, and what was there before (None: nothing).
    replaced: Vec<(PathBuf, Option<Saved>)>,
    /// Where `replaced` is also written, before each file is put in place,
    /// so that a run killed with SIGKILL is undone by the next one.
    journal: Option<PathBuf>,
    log: Vec<String>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum Saved {
    File(Vec<u8>, u32),
    Symlink(PathBuf),
}

/// The journal of the files a chroot into `root` put in place: beside the
/// root, so that it goes with it (`roots/.nodes.chroot-journal`).
fn journal_of(root: &Path) -> Option<PathBuf> {
    let name = root.file_name()?.to_str()?;
    Some(root.with_file_name(format!(".{name}{JOURNAL_SUFFIX}")))
}

const JOURNAL_SUFFIX: &str = ".chroot-journal";

/// The root a journal belongs to.
fn root_of(journal: &Path) -> Option<PathBuf> {
    let name = journal.file_name()?.to_str()?;
    let root = name.strip_prefix('.')?.strip_suffix(JOURNAL_SUFFIX)?;
    Some(journal.with_file_name(root))
}

/// Puts back, in reverse order, what a journal says was in its root
/// before a killed run put its files there; then removes the journal.
/// Returns one line per file restored.
fn replay(journal: &Path) -> Result<Vec<String>> {
    let text = fs::read(journal).with_context(|| format!("reading {}", journal.display()))?;
    let entries: Vec<(PathBuf, Option<Saved>)> = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a chroot journal", journal.display()))?;
    let mut done = Vec::new();
    if let Some(root) = root_of(journal).filter(|r| r.is_dir()) {
        for (path, saved) in entries.into_iter().rev() {
            // Only ever inside the root the journal is named after.
            if !path.starts_with(&root) || path.components().any(|c| c.as_os_str() == "..") {
                continue;
            }
            restore(&path, saved).with_context(|| format!("restoring {}", path.display()))?;
            done.push(format!("restored {}, left by a killed run", path.display()));
        }
    }
    fs::remove_file(journal).with_context(|| format!("removing {}", journal.display()))?;
    Ok(done)
}

fn save(path: &Path) -> io::Result<Option<Saved>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(Some(Saved::Symlink(fs::read_link(path)?))),
        Ok(m) => Ok(Some(Saved::File(fs::read(path)?, m.permissions().mode()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn restore(path: &Path, saved: Option<Saved>) -> io::Result<()> {
    let _ = fs::remove_file(path);
    match saved {
        None => Ok(()),
        Some(Saved::Symlink(target)) => std::os::unix::fs::symlink(target, path),
        Some(Saved::File(bytes, mode)) => {
            fs::write(path, bytes)?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
        }
    }
}

impl Undo {
    fn run(&mut self, ops: &dyn MountOps) {
        while let Some(target) = self.mounted.pop() {
            let line = release(ops, &target);
            self.log.push(line);
        }
        let mut restored = true;
        while let Some((path, saved)) = self.replaced.pop() {
            if let Err(e) = restore(&path, saved) {
                restored = false;
                self.log.push(format!(
                    "warning: could not restore {}: {e}",
                    path.display()
                ));
            }
        }
        // Kept if something could not be restored: the next run tries again.
        if let Some(journal) = self.journal.take().filter(|_| restored) {
            let _ = fs::remove_file(journal);
        }
    }
}

/// The mounts and files a chroot into `root` needs, undone when dropped.
pub(crate) struct ChrootMounts {
    undo: Arc<Mutex<Undo>>,
    _cleanup: Cleanup,
}

/// An extra bind mount: a host directory seen at `inside` (absolute, in the root).
#[derive(Debug, Clone)]
pub(crate) struct ExtraBind {
    pub(crate) host: PathBuf,
    pub(crate) inside: PathBuf,
}

impl ChrootMounts {
    /// Mounts proc, sys, dev, dev/pts and `extra`, copies the host's
    /// resolv.conf in and a policy-rc.d that keeps daemons from starting.
    /// If any step fails, what was done is undone before the error returns.
    pub(crate) fn set_up(
        root: &Path,
        extra: &[ExtraBind],
        ops: Arc<dyn MountOps>,
    ) -> Result<ChrootMounts> {
        let undo = Arc::new(Mutex::new(Undo {
            journal: journal_of(root),
            ..Undo::default()
        }));
        let (u, o) = (undo.clone(), ops.clone());
        let cleanup = Cleanup::register(
            format!("unmount the chroot {}", root.display()),
            move || {
                let mut undo = crate::interrupt::lock(&u);
                undo.run(o.as_ref());
            },
        );
        let guard = ChrootMounts {
            undo,
            _cleanup: cleanup,
        };
        let mut specs = vec![
            MountSpec::Fs {
                fstype: "proc",
                target: root.join("proc"),
            },
            MountSpec::Fs {
                fstype: "sysfs",
                target: root.join("sys"),
            },
            MountSpec::Bind {
                source: "/dev".into(),
                target: root.join("dev"),
            },
            MountSpec::Bind {
                source: "/dev/pts".into(),
                target: root.join("dev/pts"),
            },
        ];
        for bind in extra {
            let inside = bind.inside.strip_prefix("/").unwrap_or(&bind.inside);
            specs.push(MountSpec::Bind {
                source: bind.host.clone(),
                target: root.join(inside),
            });
        }
        for spec in &specs {
            let target = spec.target();
            mount_point(root, target)?;
            ops.mount(spec)
                .with_context(|| format!("mounting {spec:?}"))?;
            guard.lock().mounted.push(target.to_owned());
        }
        guard.put_file(
            &root.join("etc/resolv.conf"),
            &fs::read("/etc/resolv.conf").unwrap_or_default(),
            0o644,
        )?;
        guard.put_file(
            &root.join("usr/sbin/policy-rc.d"),
            b"#!/bin/sh\n# krgiso: no daemons start while the root is built\nexit 101\n",
            0o755,
        )?;
        Ok(guard)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Undo> {
        crate::interrupt::lock(&self.undo)
    }

    /// Puts a file in place for the build; what was there comes back on drop.
    fn put_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        let saved = save(path).with_context(|| format!("reading {}", path.display()))?;
        {
            let mut undo = self.lock();
            undo.replaced.push((path.to_owned(), saved));
            if let Some(journal) = &undo.journal {
                let json =
                    serde_json::to_vec(&undo.replaced).context("encoding the chroot journal")?;
                files::write_atomic(journal, &json)?;
            }
        }
        let _ = fs::remove_file(path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))
    }
}

/// A mount point must be a real directory inside the root: never a symlink
/// that would put the mount somewhere on the host.
fn mount_point(root: &Path, target: &Path) -> Result<()> {
    let rel = target
        .strip_prefix(root)
        .with_context(|| format!("{} is outside {}", target.display(), root.display()))?;
    let mut at = root.to_owned();
    for part in rel.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                bail!("refusing to mount on {}: it is a symlink", at.display())
            }
            Ok(m) if !m.is_dir() => bail!("refusing to mount on {}: not a directory", at.display()),
            Ok(_) => {}
            Err(_) => fs::create_dir(&at).with_context(|| format!("creating {}", at.display()))?,
        }
    }
    Ok(())
}

/// A root to run commands in, with its mounts held for as long as it lives.
pub(crate) struct Chroot<'a> {
    pub(crate) root: PathBuf,
    shell: &'a StageShell,
    /// An i386 root on an x86_64 host: commands run under `setarch i686`.
    linux32: bool,
    /// Variables set for every command, over the clean defaults.
    env: Vec<(String, String)>,
    /// Undone when the last [`Chroot`] sharing them goes.
    mounts: Arc<ChrootMounts>,
}

/// Work for [`Chroot::at_once`] on a branch: the chroot it is given runs
/// its commands in the branch's shell.
pub(crate) type Side<'s> = Box<dyn FnOnce(&Chroot) -> Result<()> + Send + 's>;

/// A [`Chroot`] handed to another thread: its root, settings and mounts,
/// without the shell that runs its commands (see [`Chroot::share`]).
pub(crate) struct SharedChroot {
    root: PathBuf,
    linux32: bool,
    env: Vec<(String, String)>,
    mounts: Arc<ChrootMounts>,
}

impl SharedChroot {
    /// The chroot again, its commands run by `shell`.
    pub(crate) fn with_shell(self, shell: &StageShell) -> Chroot<'_> {
        Chroot {
            root: self.root,
            shell,
            linux32: self.linux32,
            env: self.env,
            mounts: self.mounts,
        }
    }
}

impl<'a> Chroot<'a> {
    pub(crate) fn enter(
        root: &Path,
        arch: &str,
        extra: &[ExtraBind],
        shell: &'a StageShell,
    ) -> Result<Chroot<'a>> {
        let linux32 = needs_linux32(arch)?;
        let mounts = ChrootMounts::set_up(root, extra, Arc::new(SystemMounts))?;
        shell.note(&format!(
            "chroot {} set up (proc, sys, dev, dev/pts{})",
            root.display(),
            if extra.is_empty() { "" } else { ", caches" }
        ));
        Ok(Chroot {
            root: root.to_owned(),
            shell,
            linux32,
            env: Vec::new(),
            mounts: Arc::new(mounts),
        })
    }

    /// The same chroot for a branch on another thread (one shell runs
    /// commands on one thread): the mounts stay until both are dropped.
    pub(crate) fn share(&self) -> SharedChroot {
        SharedChroot {
            root: self.root.clone(),
            linux32: self.linux32,
            env: self.env.clone(),
            mounts: Arc::clone(&self.mounts),
        }
    }

    /// The shell this chroot's commands run in (a branch's, on a branch).
    pub(crate) fn shell(&self) -> &'a StageShell {
        self.shell
    }

    /// `main` on this thread, and each of `sides` at the same time on a
    /// branch of its own (its name marks its log lines and its spinner),
    /// in this same root. One that fails stops the others; the result is
    /// the first failure ([`shell::first_failure`]).
    pub(crate) fn at_once(
        &self,
        sides: Vec<(&str, Side<'_>)>,
        main: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut branches = Vec::new();
        for (name, side) in sides {
            branches.push((self.shell.branch(name)?, self.share(), side));
        }
        std::thread::scope(|scope| {
            let running: Vec<_> = branches
                .into_iter()
                .map(|(branch, shared, side)| {
                    scope.spawn(move || {
                        let chroot = shared.with_shell(&branch);
                        let result = side(&chroot);
                        if result.as_ref().is_err_and(|e| !e.is::<Stopped>()) {
                            branch.stop_branches();
                        }
                        result
                    })
                })
                .collect();
            let main = main();
            if main.as_ref().is_err_and(|e| !e.is::<Stopped>()) {
                self.shell.stop_branches();
            }
            let mut results = vec![main];
            for side in running {
                results.push(
                    side.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("a branch of this stage panicked"))
                    }),
                );
            }
            shell::first_failure(results)
        })
    }

    /// Sets `key` for every later command (a `PATH` here replaces the default).
    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// `args` run inside the root, with a clean environment and no prompts.
    pub(crate) fn cmd(&self, args: &[&str]) -> Cmd<'a> {
        let sh = self.shell.sh();
        let root = &self.root;
        let base = if self.linux32 {
            cmd!(sh, "setarch i686 chroot {root} {args...}")
        } else {
            cmd!(sh, "chroot {root} {args...}")
        };
        let base = base
            .env_clear()
            .env("PATH", CHROOT_PATH)
            .env("HOME", "/root")
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("DEBCONF_NONINTERACTIVE_SEEN", "true");
        self.env.iter().fold(base, |cmd, (k, v)| cmd.env(k, v))
    }

    /// `args` run in directory `dir` inside the root. With `answer_defaults`
    /// their standard input is endless empty lines (`yes "" |`), so a
    /// `make oldconfig` takes every default instead of waiting for a person.
    pub(crate) fn cmd_in(&self, dir: &str, args: &[&str], answer_defaults: bool) -> Cmd<'a> {
        let script = if answer_defaults {
            "cd \"$1\" && shift && yes '' | \"$@\""
        } else {
            "cd \"$1\" && shift && exec \"$@\""
        };
        let mut full = vec!["sh", "-c", script, "sh", dir];
        full.extend_from_slice(args);
        self.cmd(&full)
    }

    pub(crate) fn run(&self, args: &[&str]) -> Result<()> {
        self.shell.run(self.cmd(args))
    }

    pub(crate) fn read(&self, args: &[&str]) -> Result<String> {
        self.shell.read(self.cmd(args))
    }
}

/// The `PATH` commands in a root get.
pub(crate) const CHROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether an `arch` root needs `setarch i686` here, or cannot run at all.
pub(crate) fn needs_linux32(arch: &str) -> Result<bool> {
    let host = std::env::consts::ARCH;
    let native = match host {
        "x86_64" => "amd64",
        "x86" => "i386",
        "aarch64" => "arm64",
        other => other,
    };
    if arch == native {
        return Ok(false);
    }
    if host == "x86_64" && arch == "i386" {
        return Ok(true);
    }
    bail!("a {arch} root cannot run on this {native} machine: build it on a {arch} host (or an amd64 one for i386)")
}

/// Processes whose root directory is inside `dir`: what a killed run left
/// running in its chroots.
pub(crate) fn processes_rooted_in(dir: &Path) -> Vec<i32> {
    let Ok(dir) = files::absolute(dir) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/root"))
                .is_ok_and(|r| r.starts_with(&dir) && r != Path::new("/"))
        })
        .collect()
}

/// Releases what a killed run left under `dir`: kills processes still
/// running in its chroots, then unmounts everything mounted under it,
/// deepest first (lazily when busy). Returns what it did, one line each.
pub(crate) fn release_stale(dir: &Path, ops: &dyn MountOps) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let pids = processes_rooted_in(dir);
    for &pid in &pids {
        // SAFETY: signalling a process we found rooted in our build dir.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        done.push(format!(
            "killed process {pid}, left running in a chroot under {}",
            dir.display()
        ));
    }
    if !pids.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for target in files::mounts_under(dir)? {
        done.push(release(ops, &target));
    }
    let left = files::mounts_under(dir)?;
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "could not release the mounts a killed run left: {} (try `umount -R` on them)",
            list.join(", ")
        );
    }
    // The files its chroots put in place (resolv.conf, policy-rc.d): their
    // journals sit beside the roots, which are at most one level down.
    let near = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.is_symlink());
    let candidates = std::iter::once(dir.to_owned()).chain(near);
    for parent in candidates {
        for entry in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let path = entry.path();
            if root_of(&path).is_some() && path.is_file() {
                done.extend(replay(&path)?);
            }
        }
    }
    Ok(done)
}

/// A read-only overlayfs view of `layers` stacked in order (the first on
/// top), unmounted when dropped, on error, panic or Ctrl-C. How the iso
/// stage sees a root with the node1 stage's layer over it, without copying.
pub(crate) struct Stack {
    pub(crate) target: PathBuf,
    _cleanup: Cleanup,
}

impl Stack {
    pub(crate) fn mount(layers: &[&Path], target: &Path) -> Result<Stack> {
        fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
        let spec = MountSpec::Overlay {
            layers: layers.iter().map(|l| l.to_path_buf()).collect(),
            target: target.to_owned(),
        };
        SystemMounts
            .mount(&spec)
            .with_context(|| format!("stacking {:?} at {}", layers, target.display()))?;
        let t = target.to_owned();
        let cleanup = Cleanup::register(format!("unmount {}", target.display()), move || {
            let _ = release(&SystemMounts, &t);
        });
        Ok(Stack {
            target: target.to_owned(),
            _cleanup: cleanup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what would have been mounted; fails where told to.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail_mount: Option<&'static str>,
        busy: bool,
    }

    impl MountOps for Recorder {
        fn mount(&self, spec: &MountSpec) -> io::Result<()> {
            let name = spec
                .target()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if self.fail_mount == Some(name.as_str()) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            self.calls.lock().unwrap().push(format!("mount {name}"));
            Ok(())
        }
        fn unmount(&self, target: &Path, lazy: bool) -> io::Result<()> {
            let name = target.file_name().unwrap().to_string_lossy().into_owned();
            if self.busy && !lazy {
                self.calls.lock().unwrap().push(format!("busy {name}"));
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            let verb = if lazy { "lazy-unmount" } else { "unmount" };
            self.calls.lock().unwrap().push(format!("{verb} {name}"));
            Ok(())
        }
    }

    fn calls(r: &Recorder) -> Vec<String> {
        r.calls.lock().unwrap().clone()
    }

    fn root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
        t
    }

    #[test]
    fn what_a_killed_run_put_in_a_root_is_put_back_by_the_next_one() {
        let build = tempfile::tempdir().unwrap();
        let root = build.path().join("roots/nodes");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/resolv.conf"), "").unwrap();
        let journal = build.path().join("roots/.nodes.chroot-journal");
        let r = Arc::new(Recorder::default());
        let guard = ChrootMounts::set_up(&root, &[], r.clone()).unwrap();
        let written = fs::read(&journal).expect("the journal is written before the files");
        let (resolv, policy) = (
            fs::read(root.join("etc/resolv.conf")).unwrap(),
            fs::read(root.join("usr/sbin/policy-rc.d")).unwrap(),
        );
        drop(guard);
        assert!(
            !journal.exists(),
            "a chroot that ends well leaves no journal"
        );

        // As SIGKILL leaves it: the files in place, the journal beside.
        fs::write(root.join("etc/resolv.conf"), &resolv).unwrap();
        fs::write(root.join("usr/sbin/policy-rc.d"), &policy).unwrap();
        fs::write(&journal, &written).unwrap();
        let done = release_stale(build.path(), r.as_ref()).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
        assert!(!root.join("usr/sbin/policy-rc.d").exists());
        assert!(!journal.exists());

        // A journal whose root is gone (a partial output removed) just goes.
        fs::write(
            build.path().join("roots/..gone.partial.chroot-journal"),
            &written,
        )
        .unwrap();
        assert!(release_stale(build.path(), r.as_ref()).unwrap().is_empty());
        assert!(!build
            .path()
            .join("roots/..gone.partial.chroot-journal")
            .exists());
    }

    #[test]
    fn mounts_in_order_and_undoes_everything_in_reverse_on_drop() {
        let t = root();
        let r = Arc::new(Recorder::default());
        let cache = ExtraBind {
            host: "/var/cache/krgiso-debs".into(),
            inside: "/var/cache/apt/archives".into(),
        };
        let guard = ChrootMounts::set_up(t.path(), &[cache], r.clone()).unwrap();
        assert_eq!(
            calls(&r),
            [
                "mount proc",
                "mount sys",
                "mount dev",
                "mount pts",
                "mount archives"
            ]
        );
        assert!(
            t.path().join("var/cache/apt/archives").is_dir(),
            "mount points are created"
        );
        let policy = t.path().join("usr/sbin/policy-rc.d");
        assert_eq!(mode_of(&policy) & 0o777, 0o755);
        assert!(fs::read_to_string(&policy).unwrap().contains("exit 101"));
        assert_ne!(
            fs::read_to_string(t.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        drop(guard);
        assert_eq!(
            calls(&r)[5..],
            [
                "unmount archives",
                "unmount pts",
                "unmount dev",
                "unmount sys",
                "unmount proc"
            ]
        );
        assert!(!policy.exists(), "policy-rc.d is removed");
        assert_eq!(
            fs::read_to_string(t.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode()
    }

    #[test]
    fn a_failed_mount_undoes_the_ones_before_it() {
        let t = root();
        let r = Arc::new(Recorder {
            fail_mount: Some("dev"),
            ..Recorder::default()
        });
        let err = ChrootMounts::set_up(t.path(), &[], r.clone())
            .err()
            .expect("dev fails");
        assert!(
            format!("{err:#}").contains("Operation not permitted"),
            "{err:#}"
        );
        assert_eq!(
            calls(&r),
            ["mount proc", "mount sys", "unmount sys", "unmount proc"]
        );
        assert_eq!(
            fs::read_to_string(t.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
    }

    #[test]
    fn a_panic_inside_the_chroot_still_unmounts() {
        let t = root();
        let r = Arc::new(Recorder::default());
        let (path, rr) = (t.path().to_owned(), r.clone());
        let result = std::panic::catch_unwind(move || {
            let _guard = ChrootMounts::set_up(&path, &[], rr).unwrap();
            panic!("apt exploded");
        });
        assert!(result.is_err());
        assert_eq!(
            calls(&r)[4..],
            ["unmount pts", "unmount dev", "unmount sys", "unmount proc"]
        );
    }

    #[test]
    fn a_busy_mount_is_unmounted_lazily() {
        let t = root();
        let r = Arc::new(Recorder {
            busy: true,
            ..Recorder::default()
        });
        let guard = ChrootMounts::set_up(t.path(), &[], r.clone()).unwrap();
        drop(guard);
        assert_eq!(calls(&r)[4..6], ["busy pts", "lazy-unmount pts"]);
        assert_eq!(calls(&r).len(), 12);
    }

    #[test]
    fn a_symlinked_mount_point_is_refused() {
        let t = root();
        std::os::unix::fs::symlink("/etc", t.path().join("proc")).unwrap();
        let r = Arc::new(Recorder::default());
        let err = ChrootMounts::set_up(t.path(), &[], r.clone())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("it is a symlink"), "{err}");
        assert!(calls(&r).is_empty());
    }

    #[test]
    fn only_i386_runs_foreign_on_x86_64() {
        if std::env::consts::ARCH == "x86_64" {
            assert!(!needs_linux32("amd64").unwrap());
            assert!(needs_linux32("i386").unwrap());
            assert!(needs_linux32("arm64")
                .unwrap_err()
                .to_string()
                .contains("cannot run"));
        }
    }
}
