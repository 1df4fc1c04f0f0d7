//! One QEMU virtual machine: its command line, its process (in a process
//! group of its own, stopped when dropped and on Ctrl-C), its serial
//! console, and the KVM-to-TCG fallback.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::console::Console;
use super::frame::Mac;
use crate::interrupt::ChildGuard;

pub(crate) const QEMU: &str = "qemu-system-x86_64";
/// A 32-bit PC, for nodes that boot an i386 kernel (2.6.20-krg).
pub(crate) const QEMU_I386: &str = "qemu-system-i386";
/// OVMF as one file (code and variables), from Debian's ovmf package.
pub(crate) const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Accel {
    Tcg,
    Kvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Firmware {
    /// SeaBIOS, QEMU's default
    Bios,
    /// OVMF (UEFI)
    Uefi,
}

#[derive(Debug, Clone)]
pub(crate) enum Boot {
    Cdrom(PathBuf),
    /// A disk image on an emulated USB stick (xHCI), as `usb` writes one.
    UsbStick(PathBuf),
    Network,
    /// QEMU loads this kernel and initramfs itself, with this command line
    /// (the boot test's reference boot, reference.rs).
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

/// Which PC QEMU emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Machine {
    /// A 64-bit PC (node1, and nodes that boot a current amd64 kernel).
    Pc64,
    /// A 32-bit PC (nodes that boot the i386 Kerrighed kernel).
    Pc32,
}

impl Machine {
    pub(crate) fn program(self) -> &'static str {
        match self {
            Machine::Pc64 => QEMU,
            Machine::Pc32 => QEMU_I386,
        }
    }
}

/// TCG's translation cache, in MiB. QEMU's default (1 GiB) keeps every
/// block it ever translated until the guest writes to its page, and then
/// throws them out one by one: after node1's Linux frees its initramfs and
/// zeroes those pages for the page cache, that took 13 s of its boot (a
/// cache of 655,000 blocks; the first `mount` ran 8-10 s). A small cache
/// fills and is emptied whole, which costs little: node1 reached its
/// status line in 35-36 s instead of 47 (docs/bench.md, "The translation
/// cache"). 512 MiB never fills during a boot and is as slow as the default.
pub(crate) const TCG_TB_SIZE_MIB: u32 = 128;

/// What a VM is: everything its QEMU command line says.
#[derive(Debug, Clone)]
pub(crate) struct VmSpec {
    pub(crate) name: String,
    pub(crate) machine: Machine,
    pub(crate) memory_mib: u32,
    pub(crate) cpus: u32,
    pub(crate) firmware: Firmware,
    pub(crate) boot: Boot,
    /// QEMU's user-mode network (its own DHCP server, nothing reachable
    /// from the guest but the boot test's service: `restrict=on`).
    pub(crate) uplink: Option<Uplink>,
    /// The cluster NIC: (MAC, hub port to send to, port to receive on).
    pub(crate) cluster: (Mac, u16, u16),
}

/// A VM's NIC on QEMU's user-mode network.
#[derive(Debug, Clone)]
pub(crate) struct Uplink {
    pub(crate) mac: Mac,
    /// Every frame on it is recorded into this pcap file.
    pub(crate) pcap: PathBuf,
    /// The program QEMU runs for each connection to the uplink's
    /// service address (uplink.rs): the one place a guest can reach.
    pub(crate) service: PathBuf,
}

/// Where a VM's files are: build/qemu/<name>.{log,qemu.log,console}.
pub(crate) struct VmFiles {
    pub(crate) log: PathBuf,
    pub(crate) qemu_log: PathBuf,
    pub(crate) console: PathBuf,
}

impl VmFiles {
    pub(crate) fn new(dir: &Path, name: &str) -> VmFiles {
        let console = dir.join(format!("{name}.console"));
        // A Unix socket path has room for 107 bytes: fall back to /tmp.
        let console = if console.as_os_str().len() < 100 {
            console
        } else {
            std::env::temp_dir().join(format!("krgiso-{}-{name}.console", std::process::id()))
        };
        VmFiles {
            log: dir.join(format!("{name}.log")),
            qemu_log: dir.join(format!("{name}.qemu.log")),
            console,
        }
    }
}

impl VmSpec {
    pub(crate) fn args(&self, accel: Accel, files: &VmFiles) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-accel".into(),
            match accel {
                Accel::Tcg => format!("tcg,tb-size={TCG_TB_SIZE_MIB}"),
                Accel::Kvm => "kvm".into(),
            },
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            // A guest that reboots or powers off ends its QEMU.
            "-no-reboot".into(),
            "-chardev".into(),
            format!(
                "socket,id=console,path={},server=on,wait=off,logfile={}",
                files.console.display(),
                files.log.display()
            ),
            "-serial".into(),
            "chardev:console".into(),
            // A hardware RNG, as the machines a VM stands for have (RDRAND,
            // a TPM): under TCG, without one, a fresh guest waits seconds
            // for entropy before its first ssh-keygen (14 s on a node).
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        if self.firmware == Firmware::Uefi {
            a.extend(["-bios".into(), OVMF.into()]);
        }
        match &self.boot {
            Boot::Cdrom(iso) => {
                let iso = iso.display();
                a.extend([
                    "-drive".into(),
                    format!("file={iso},media=cdrom,readonly=on,format=raw"),
                    "-boot".into(),
                    "d".into(),
                ]);
            }
            Boot::UsbStick(image) => {
                let image = image.display();
                a.extend([
                    "-device".into(),
                    "qemu-xhci,id=xhci".into(),
                    "-drive".into(),
                    format!("if=none,id=stick,format=raw,file={image}"),
                    "-device".into(),
                    "usb-storage,bus=xhci.0,drive=stick,bootindex=0".into(),
                ]);
            }
            Boot::Network => a.extend(["-boot".into(), "n".into()]),
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => a.extend([
                "-kernel".into(),
                kernel.display().to_string(),
                "-initrd".into(),
                initrd.display().to_string(),
                "-append".into(),
                append.clone(),
            ]),
        }
        if let Some(Uplink { mac, pcap, service }) = &self.uplink {
            let (address, port) = super::uplink::SERVICE;
            // QEMU's option syntax: a comma in a value is written twice.
            let service = service.display().to_string().replace(',', ",,");
            a.extend([
                "-netdev".into(),
                format!("user,id=uplink,restrict=on,guestfwd=tcp:{address}:{port}-cmd:{service}"),
                "-device".into(),
                format!("virtio-net-pci,netdev=uplink,mac={mac}"),
                "-object".into(),
                format!(
                    "filter-dump,id=uplink-dump,netdev=uplink,file={}",
                    pcap.display()
                ),
            ]);
        }
        let (mac, hub, port) = &self.cluster;
        // QEMU's network cards carry iPXE in their ROM, the EFI build as
        // well: OVMF would run it and skip the PXE step a UEFI PC goes
        // through. A UEFI node's card has no ROM, and one OVMF has a
        // driver for (virtio): OVMF's own PXE client boots it, asking for
        // iPXE's EFI build, as a PC's firmware does with its card's driver.
        let nic = match (&self.boot, self.firmware) {
            (Boot::Network, Firmware::Uefi) => {
                format!("virtio-net-pci,netdev=cluster,mac={mac},romfile=,bootindex=0")
            }
            _ => format!("e1000,netdev=cluster,mac={mac}"),
        };
        a.extend([
            "-netdev".into(),
            format!("socket,id=cluster,udp=127.0.0.1:{hub},localaddr=127.0.0.1:{port}"),
            "-device".into(),
            nic,
        ]);
        a
    }
}

/// A running VM.
pub(crate) struct Vm {
    pub(crate) spec: VmSpec,
    pub(crate) files: VmFiles,
    pub(crate) accel: Accel,
    pub(crate) started: Instant,
    pub(crate) console: Console,
    child: Child,
    _guard: ChildGuard,
}

/// What QEMU says on stderr when KVM cannot run the guest here.
const KVM_FAILURES: &[&str] = &[
    "KVM internal error",
    "failed to initialize kvm",
    "Could not access KVM kernel module",
    "kvm run failed",
];

impl Vm {
    pub(crate) fn start(spec: VmSpec, accel: Accel, dir: &Path) -> Result<Vm> {
        let files = VmFiles::new(dir, &spec.name);
        let qemu = spec.machine.program();
        let _ = fs::remove_file(&files.console);
        let mut stderr = File::create(&files.qemu_log)
            .with_context(|| format!("creating {}", files.qemu_log.display()))?;
        let args = spec.args(accel, &files);
        writeln!(stderr, "{qemu} {}", args.join(" "))?;
        let child = Command::new(qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            // Its own process group: a Ctrl-C in the terminal reaches the
            // harness, which stops the VMs in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {qemu} for {}", spec.name))?;
        let guard = ChildGuard::new(child.id());
        let started = Instant::now();
        let mut vm_child = child;
        let console = match Console::connect(&files.console, Duration::from_secs(20)) {
            Ok(c) => c,
            Err(e) => {
                let _ = vm_child.kill();
                let _ = vm_child.wait();
                let said = fs::read_to_string(&files.qemu_log).unwrap_or_default();
                return Err(e.context(format!(
                    "QEMU for {} did not come up; it said:\n{}",
                    spec.name,
                    said.trim()
                )));
            }
        };
        Ok(Vm {
            spec,
            files,
            accel,
            started,
            console,
            child: vm_child,
            _guard: guard,
        })
    }

    /// Seconds since this VM was powered on.
    pub(crate) fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// `Some(reason)` once QEMU has exited or stopped the guest.
    pub(crate) fn failure(&mut self) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(format!("QEMU exited ({status}){}", self.qemu_said()));
        }
        if self.accel == Accel::Kvm {
            let said = fs::read_to_string(&self.files.qemu_log).unwrap_or_default();
            if KVM_FAILURES.iter().any(|f| said.contains(f)) {
                return Some(format!("KVM failed{}", self.qemu_said()));
            }
        }
        None
    }

    /// Whether QEMU crashed (see [`is_crash`]).
    pub(crate) fn crashed(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(status)) if is_crash(status))
    }

    fn qemu_said(&self) -> String {
        let said = fs::read_to_string(&self.files.qemu_log).unwrap_or_default();
        let lines: Vec<&str> = said.lines().skip(1).collect();
        if lines.is_empty() {
            String::new()
        } else {
            let tail = &lines[lines.len().saturating_sub(5)..];
            format!(": {}", tail.join(" / "))
        }
    }

    /// Kills QEMU at once (SIGKILL), as a power cut: the guest's memory,
    /// with whatever it had not written to its disks, is gone.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the VM: SIGTERM (QEMU shuts down cleanly), SIGKILL after 5 s.
    pub(crate) fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our child's process id.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.files.console);
    }
}

/// A process that died of a fault signal, not of one sent to stop it
/// (Ctrl-C, the test's own SIGTERM or SIGKILL) nor by exiting.
fn is_crash(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    const FAULTS: [i32; 5] = [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGABRT,
        libc::SIGFPE,
    ];
    status.signal().is_some_and(|s| FAULTS.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_signal_is_a_crash_and_a_stop_is_not() {
        let died = |how: &str| Command::new("sh").args(["-c", how]).status().unwrap();
        assert!(is_crash(died("kill -SEGV $$")));
        assert!(is_crash(died("kill -ABRT $$")));
        assert!(!is_crash(died("kill -TERM $$")));
        assert!(!is_crash(died("kill -INT $$")));
        assert!(!is_crash(died("kill -KILL $$")));
        assert!(!is_crash(died("exit 1")));
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "node1".into(),
            machine: Machine::Pc64,
            memory_mib: 2048,
            cpus: 2,
            firmware: Firmware::Bios,
            boot: Boot::Cdrom("/b/out/k.iso".into()),
            uplink: Some(Uplink {
                mac: Mac([0x52, 0x54, 0, 0x77, 0xff, 1]),
                pcap: "/b/q/up.pcap".into(),
                service: "/b/q,x/uplink-service".into(),
            }),
            cluster: (Mac([0x52, 0x54, 0, 0x77, 0, 1]), 40000, 40001),
        }
    }

    #[test]
    fn node1_has_a_restricted_uplink_and_the_cluster_nic_on_loopback() {
        let files = VmFiles::new(Path::new("/b/q"), "node1");
        let line = spec().args(Accel::Tcg, &files).join(" ");
        assert!(line.contains("-accel tcg,tb-size="), "{line}");
        // Small enough to fill during a boot (512 MiB does not, and is as
        // slow as QEMU's 1 GiB default).
        let tb: u32 = line
            .split("tb-size=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("tb-size in MiB");
        assert!((16..512).contains(&tb), "{line}");
        // Nothing reachable but the boot test's service.
        assert!(
            line.contains(
                "user,id=uplink,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:/b/q,,x/uplink-service "
            ),
            "{line}"
        );
        assert!(line.contains("virtio-net-pci,netdev=uplink,mac=52:54:00:77:ff:01"));
        assert!(line.contains("-device virtio-rng-pci"), "{line}");
        assert!(line.contains("filter-dump,id=uplink-dump,netdev=uplink,file=/b/q/up.pcap"));
        assert!(line.contains("socket,id=cluster,udp=127.0.0.1:40000,localaddr=127.0.0.1:40001"));
        assert!(line.contains("e1000,netdev=cluster,mac=52:54:00:77:00:01"));
        assert!(line.contains("path=/b/q/node1.console,server=on,wait=off,logfile=/b/q/node1.log"));
        assert!(line.contains("media=cdrom"));
        assert!(!line.contains("-bios"));
    }

    #[test]
    fn a_pxe_node_has_no_uplink_and_uefi_adds_ovmf() {
        let mut s = spec();
        s.uplink = None;
        s.boot = Boot::Network;
        s.firmware = Firmware::Uefi;
        let files = VmFiles::new(Path::new("/b/q"), "node2");
        let line = s.args(Accel::Kvm, &files).join(" ");
        assert!(!line.contains("user,"), "{line}");
        assert!(line.contains("-boot n"));
        assert!(line.contains("-accel kvm "), "{line}");
        assert!(!line.contains("tb-size"), "{line}");
        assert!(line.contains(&format!("-bios {OVMF}")));
        // No iPXE ROM on its card: OVMF's own PXE client must boot it.
        assert!(
            line.contains(
                "virtio-net-pci,netdev=cluster,mac=52:54:00:77:00:01,romfile=,bootindex=0"
            ),
            "{line}"
        );
        assert!(!line.contains("e1000"), "{line}");
    }

    #[test]
    fn a_usb_stick_is_the_first_boot_device() {
        let mut s = spec();
        s.boot = Boot::UsbStick("/b/stick.img".into());
        let line = s
            .args(Accel::Tcg, &VmFiles::new(Path::new("/b/q"), "node1"))
            .join(" ");
        assert!(
            line.contains("-drive if=none,id=stick,format=raw,file=/b/stick.img"),
            "{line}"
        );
        assert!(
            line.contains("usb-storage,bus=xhci.0,drive=stick,bootindex=0"),
            "{line}"
        );
        assert!(!line.contains("media=cdrom"), "{line}");
    }

    #[test]
    fn a_long_build_dir_puts_the_console_socket_in_tmp() {
        let long = Path::new("/x").join("d".repeat(120));
        let files = VmFiles::new(&long, "node1");
        assert!(files.console.starts_with(std::env::temp_dir()));
        assert!(files.log.starts_with(&long));
    }
}
