//! One krgiso run at a time per build dir.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::layout::Layout;

/// One krgiso at a time per build dir: `build/.lock`, held with flock(2).
pub(super) struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    pub(super) fn acquire(layout: &Layout) -> Result<BuildLock> {
        use std::os::fd::AsRawFd;
        let build = &layout.build;
        fs::create_dir_all(build)
            .with_context(|| format!("creating the build dir {}", build.display()))?;
        let path = layout.lock();
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A lock let go a moment ago can still be held for a few
        // milliseconds by a child forked meanwhile (it holds a copy of the
        // descriptor until it execs): give that time to pass. A run that
        // really holds the lock holds it far longer.
        let deadline = Instant::now() + Duration::from_secs(2);
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if Instant::now() > deadline {
                bail!(
                    "another krgiso run is using the build dir {}: wait for it to finish (or stop it)",
                    build.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(BuildLock { _file: file })
    }
}
