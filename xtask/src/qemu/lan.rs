//! A LAN that is not node1's, on the cluster link: a network namespace
//! joined to the hub by a tap device, with a DHCP server of its own
//! (dnsmasq, no PXE), as an office or home LAN has. node1 must see it and
//! only proxy: nodes take their address from this server and their boot
//! files from node1. The namespace is also a host of that LAN that never
//! PXE-booted: its NFS mount of the nodes' root must be refused.
//!
//! Everything stays on this machine: the namespace has no route out, and
//! the hub only talks to ports on 127.0.0.1.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::frame::Mac;
use super::hub::Hub;
use crate::host::{self, HostTool};
use crate::profile::DhcpRange;

/// The LAN's DHCP server: its MAC on the link, its address. The LAN is a
/// /16, as many offices' are: its addresses need not share a /24, and two
/// of them can end in the same octet (a Kerrighed node's id, `--id-clash`).
pub(crate) const LAN_SERVER: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0xfe, 0x01]);
const LAN_ADDRESS: &str = "192.168.77.1/16";
const LAN_NETMASK: &str = "255.255.0.0";

/// What the LAN's server hands out to whoever asks.
pub(crate) const LAN_RANGE: DhcpRange = DhcpRange {
    start: Ipv4Addr::new(192, 168, 77, 100),
    end: Ipv4Addr::new(192, 168, 77, 150),
};

/// The address the LAN's server keeps for node1: the range's first.
pub(crate) const NODE1_ADDRESS: Ipv4Addr = LAN_RANGE.start;

/// The address the LAN's server keeps for node `n` (2, 3, ...): in its
/// range, above node1's.
pub(crate) fn address_of_node(n: u32) -> Ipv4Addr {
    let [a, b, c, first] = LAN_RANGE.start.octets();
    Ipv4Addr::new(
        a,
        b,
        c,
        first
            .saturating_add(20)
            .saturating_add(u8::try_from(n).unwrap_or(u8::MAX)),
    )
}

/// An address of the LAN in the /24 after `address`'s, ending in the same
/// octet: a Kerrighed node there has `address`'s id.
pub(crate) fn same_octet_next_24(address: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = address.octets();
    Ipv4Addr::new(a, b, c.wrapping_add(1), d)
}

/// The tap device's name inside the namespace.
const TAP: &str = "lan0";

/// The host tools the LAN needs: its DHCP server and an NFS client that
/// runs in user space (this machine's kernel may have none).
pub(crate) fn tools() -> Vec<HostTool> {
    vec![
        HostTool::new("dnsmasq", "dnsmasq-base"),
        HostTool::new("nfs-ls", "libnfs-utils"),
        HostTool::new("curl", "curl"),
    ]
}

/// The running LAN: deleted, with its server, however the test ends.
pub(crate) struct ForeignLan {
    netns: String,
    pid_file: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ForeignLan {
    /// Joins a new namespace to `hub` and starts its DHCP server; its log
    /// and leases go to `dir`. `reserved` MACs get the address next to
    /// them: iPXE does not start over after a NAK, and a server that
    /// offers one free address to two nodes booting at once NAKs one.
    pub(crate) fn start(hub: &Hub, dir: &Path, reserved: &[(Mac, Ipv4Addr)]) -> Result<ForeignLan> {
        let netns = format!("krgiso-lan-{}", std::process::id());
        let mut lan = ForeignLan {
            netns: netns.clone(),
            pid_file: dir.join("lan-dhcp.pid"),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        remove_stale_lans();
        ip(&["netns", "add", &netns])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let tap = host::in_netns(&netns, open_tap)??;
        let mac = LAN_SERVER.to_string();
        ip(&["-n", &netns, "link", "set", TAP, "address", &mac, "up"])?;
        ip(&["-n", &netns, "addr", "add", LAN_ADDRESS, "dev", TAP])?;
        lan.bridge(hub, tap)?;
        let range = format!(
            "--dhcp-range={},{},{LAN_NETMASK},1h",
            LAN_RANGE.start, LAN_RANGE.end
        );
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "dnsmasq",
                "--conf-file=/dev/null",
                "--port=0",
            ])
            .arg(format!("--interface={TAP}"))
            .args(["--bind-interfaces", &range, "--log-dhcp"])
            .args(
                reserved
                    .iter()
                    .map(|(mac, ip)| format!("--dhcp-host={mac},{ip}")),
            )
            .arg(format!(
                "--log-facility={}",
                dir.join("lan-dhcp.log").display()
            ))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join("lan-dhcp.leases").display()
            ))
            .arg(format!("--pid-file={}", lan.pid_file.display()))
            .output()
            .context("running dnsmasq for the LAN's DHCP server")?;
        if !out.status.success() {
            bail!(
                "the LAN's DHCP server (dnsmasq) did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(lan)
    }

    /// Repeats frames between the tap and the hub, as one more VM would.
    fn bridge(&mut self, hub: &Hub, tap: File) -> Result<()> {
        let port = hub.add_member()?;
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("binding 127.0.0.1:{port} for the LAN"))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let hub_port = hub.port();
        let (to_hub, from_hub) = (socket.try_clone()?, socket);
        let (mut tap_in, mut tap_out) = (tap.try_clone()?, tap);
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::SeqCst) {
                if !readable(&tap_in, 200) {
                    continue;
                }
                match tap_in.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = to_hub.send_to(&buf[..n], (Ipv4Addr::LOCALHOST, hub_port));
                    }
                    _ => break, // the device is gone
                }
            }
        }));
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, _)) = from_hub.recv_from(&mut buf) {
                    let _ = tap_out.write(&buf[..n]);
                }
            }
        }));
        Ok(())
    }

    /// Runs `program` with `args` in the LAN's namespace: whether it
    /// succeeded, and what it printed (stdout and stderr).
    pub(crate) fn run(&self, program: &str, args: &[&str]) -> Result<(bool, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} on the LAN"))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), said))
    }
}

impl Drop for ForeignLan {
    fn drop(&mut self) {
        host::stop_daemon(&self.pid_file);
        self.stop.store(true, Ordering::SeqCst);
        let _ = ip(&["netns", "del", &self.netns]);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Deletes the LANs of earlier runs that were killed before they could
/// (their process is gone): a namespace holds its tap and dnsmasq.
fn remove_stale_lans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
    {
        let Some(pid) = name.strip_prefix("krgiso-lan-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip")
                .args(["netns", "pids", &name])
                .output()
                .map(|out| {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: a process left in our own stale namespace.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                });
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A tap device, made in the calling thread's network namespace: raw
/// Ethernet frames, no packet-information header.
fn open_tap() -> Result<File> {
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (the tun module) for the LAN's tap device")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _rest: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    req.name[..TAP.len()].copy_from_slice(TAP.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is
    // laid out as, on a descriptor of /dev/net/tun that `tun` holds open.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        bail!(
            "making the LAN's tap device: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(tun)
}

/// Whether `file` has data to read within `ms` milliseconds.
fn readable(file: &File, ms: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, for a descriptor `file` holds open.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}
