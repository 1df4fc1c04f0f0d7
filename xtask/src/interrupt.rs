//! Ctrl-C: the first one stops the running command and lets the stage unwind
//! (its cleanups run as their guards drop, no stamp is written, exit 130); a
//! second one kills what is left, runs every registered cleanup and exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The error a stage returns when the user interrupted it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

pub const EXIT_CODE: u8 = 130;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// A registered cleanup: its id, what it undoes, and the action.
type Registered = (u64, String, Box<dyn FnOnce() + Send>);
static CLEANUPS: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Installs the Ctrl-C (and SIGTERM) handler. Call once, from `main`.
pub fn install() {
    let result = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: killing commands and cleaning up now");
            signal_children(libc::SIGKILL);
            run_all_cleanups();
            std::process::exit(i32::from(EXIT_CODE));
        }
        eprintln!(
            "\ninterrupted: stopping the running command and cleaning up (Ctrl-C again to force)"
        );
        signal_children(libc::SIGTERM);
    });
    if let Err(e) = result {
        eprintln!(
            "warning: cannot handle Ctrl-C ({e}); an interrupted run may leave mounts behind"
        );
    }
}

pub(crate) fn is_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once the user pressed Ctrl-C: call between steps.
pub(crate) fn check() -> Result<(), Interrupted> {
    if is_interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Marks a child process group as running, so Ctrl-C reaches it. Children run
/// in their own process group: the signal reaches their descendants too.
pub(crate) struct ChildGuard(i32);

impl ChildGuard {
    pub(crate) fn new(pgid: u32) -> ChildGuard {
        let pgid = pgid as i32;
        lock(&CHILDREN).push(pgid);
        if is_interrupted() {
            // Started as Ctrl-C arrived: do not let it run on.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
        }
        ChildGuard(pgid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        lock(&CHILDREN).retain(|&p| p != self.0);
    }
}

fn signal_children(signal: i32) {
    for &pgid in lock(&CHILDREN).iter() {
        // SAFETY: kill(2) with a negative pid signals that process group.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Something that must be undone (an unmount, a temporary file): runs when
/// the guard drops, or from the Ctrl-C handler if the process is forced out.
#[must_use = "the cleanup runs when this guard is dropped"]
pub struct Cleanup {
    id: u64,
}

impl Cleanup {
    pub fn register(what: impl Into<String>, action: impl FnOnce() + Send + 'static) -> Cleanup {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        lock(&CLEANUPS).push((id, what.into(), Box::new(action)));
        Cleanup { id }
    }

    /// The work is done another way: forget the action without running it.
    pub(crate) fn dismiss(self) {
        take(self.id);
        std::mem::forget(self);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((_, _, action)) = take(self.id) {
            action();
        }
    }
}

fn take(id: u64) -> Option<Registered> {
    let mut list = lock(&CLEANUPS);
    let i = list.iter().position(|(i, _, _)| *i == id)?;
    Some(list.remove(i))
}

/// Runs every registered cleanup, newest first. Each runs at most once.
pub(crate) fn run_all_cleanups() {
    loop {
        // Take one at a time: an action may itself register or drop guards.
        let Some((_, what, action)) = lock(&CLEANUPS).pop() else {
            return;
        };
        eprintln!("cleanup: {what}");
        action();
    }
}

/// Names of the cleanups still registered.
#[cfg(test)]
fn pending_cleanups() -> Vec<String> {
    lock(&CLEANUPS).iter().map(|(_, w, _)| w.clone()).collect()
}

/// Locks `m`, poisoned or not: a panic while holding the lock leaves plain
/// data behind, so keep going.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn cleanup_runs_once_on_drop_and_not_after_dismiss() {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let guard = Cleanup::register("test: drop", move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert!(pending_cleanups().iter().any(|w| w == "test: drop"));
        drop(guard);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!pending_cleanups().iter().any(|w| w == "test: drop"));

        let r = ran.clone();
        let guard = Cleanup::register("test: dismissed", move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        guard.dismiss();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!pending_cleanups().iter().any(|w| w == "test: dismissed"));
    }

    #[test]
    fn cleanup_runs_when_a_panic_unwinds_past_it() {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let result = std::panic::catch_unwind(move || {
            let _guard = Cleanup::register("test: panic", move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            panic!("stage blew up");
        });
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
