//! The reference boot: before node1, the same QEMU, machine, firmware and
//! kernel boot with nothing to run. Its kernel and initramfs are the
//! image's own (`/live` in the ISO), loaded by QEMU itself, with an init
//! that is not there: the kernel panics at once (`panic=-1` reboots, and
//! QEMU, run with `-no-reboot`, ends). From power-on to QEMU's end is a
//! bare boot of this machine in this run, and every boot time of the run
//! is also given as a multiple of it: seconds under TCG differ from
//! machine to machine (node1's status line came at 35 s on one and 49 s
//! on another), their ratio to a bare boot much less.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::vm::{Boot, Machine, VmSpec};
use super::{timing, Run, KERNEL_PANIC, NODE1_CLUSTER};

/// The init the reference boot is given: no such program.
const NO_INIT: &str = "/krgiso-reference-boot-ends-here";

/// How long a bare boot may take before the test gives up on it.
const BARE_BOOT_AT_MOST: Duration = Duration::from_secs(180);

/// What the report says of the reference boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReferenceBoot {
    /// Power-on to QEMU's end.
    pub(crate) seconds: f64,
    /// The kernel's banner (its first words).
    pub(crate) kernel: String,
}

/// The image's live kernel and initramfs, copied out of `iso` into `dir`.
fn live_kernel(iso: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let kernel = dir.join("reference-vmlinuz");
    let initrd = dir.join("reference-initrd.img");
    let out = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/live/vmlinuz"])
        .arg(&kernel)
        .args(["-extract", "/live/initrd.img"])
        .arg(&initrd)
        .output()
        .context("running xorriso to read the image's live kernel")?;
    if !out.status.success() || !kernel.is_file() || !initrd.is_file() {
        bail!(
            "could not copy /live/vmlinuz and /live/initrd.img out of {}: {}",
            iso.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((kernel, initrd))
}

impl Run<'_> {
    /// Boots the reference (see the module), alone, and times it.
    pub(super) fn boot_the_reference(&mut self) -> Result<ReferenceBoot> {
        let (kernel, initrd) = live_kernel(&self.test.iso, &self.test.dir)?;
        let port = self.hub.add_member()?;
        let spec = VmSpec {
            name: "reference".into(),
            machine: Machine::Pc64,
            memory_mib: timing::NODE1_MEMORY_MIB,
            cpus: timing::NODE1_CPUS,
            firmware: self.test.firmware,
            boot: Boot::Kernel {
                kernel,
                initrd,
                append: format!("console=ttyS0,115200 panic=-1 rdinit={NO_INIT}"),
            },
            uplink: None,
            cluster: (NODE1_CLUSTER, self.hub.port(), port),
        };
        let mut vm = super::vm::Vm::start(spec, self.accel, &self.test.dir)?;
        let give_up = Instant::now() + BARE_BOOT_AT_MOST;
        let seconds = loop {
            crate::interrupt::check()?;
            if vm.failure().is_some() {
                break vm.seconds();
            }
            if Instant::now() > give_up {
                vm.stop();
                bail!(
                    "the reference boot (node1's kernel with no init) did not end within {} s: see {}",
                    BARE_BOOT_AT_MOST.as_secs(),
                    vm.files.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // It must have been the kernel that ended it, at its init.
        vm.console.wait_a_little();
        let banner = vm.console.find(0, "Linux version");
        let panicked = vm.console.find(0, KERNEL_PANIC);
        let (Some(banner), Some(_)) = (banner, panicked) else {
            bail!(
                "the reference boot ended before its kernel gave up on its init (no banner or no panic on its console): see {}",
                vm.files.log.display()
            );
        };
        let kernel = super::milestone::first_words(&banner.line, 3);
        self.say(
            "reference",
            &format!("a bare boot of {kernel} (no init) took {seconds:.1} s: the run's boot times are also given as multiples of it"),
        );
        Ok(ReferenceBoot { seconds, kernel })
    }
}
