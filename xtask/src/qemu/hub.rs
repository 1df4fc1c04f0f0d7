//! The cluster link: an Ethernet hub on 127.0.0.1. Each VM's cluster NIC is
//! a QEMU UDP socket netdev that sends its frames to the hub's port and
//! receives on a port of its own; the hub repeats every frame to every other
//! VM, records it in a pcap file and reports the DHCP and TFTP packets it
//! saw. Nothing leaves loopback: the hub only talks to ports it handed out.

use std::fs::File;
use std::io::BufWriter;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::frame::{self, Packet, PcapWriter};
use crate::interrupt::lock;

/// A packet seen on the link.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) packet: Packet,
}

pub(crate) struct Hub {
    port: u16,
    members: Arc<Mutex<Vec<u16>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    /// Starts the hub on a free port of 127.0.0.1, recording into `pcap`.
    pub(crate) fn start(pcap: &Path) -> Result<Hub> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .context("could not open a UDP port on 127.0.0.1 for the cluster link")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let port = socket.local_addr()?.port();
        let file = File::create(pcap).with_context(|| format!("creating {}", pcap.display()))?;
        let mut record = PcapWriter::new(BufWriter::new(file))?;
        let members: Arc<Mutex<Vec<u16>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (members, seen, stop) = (members.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let SocketAddr::V4(from) = from else { continue };
                    let to: Vec<u16> = {
                        let m = lock(&members);
                        if *from.ip() != Ipv4Addr::LOCALHOST || !m.contains(&from.port()) {
                            continue; // not one of our VMs
                        }
                        m.iter().copied().filter(|&p| p != from.port()).collect()
                    };
                    let frame = &buf[..len];
                    for port in to {
                        // A VM that is gone or not up yet just misses the frame.
                        let _ = socket.send_to(frame, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                    }
                    let _ = record.frame(frame);
                    if let Some(packet) = frame::parse(frame) {
                        lock(&seen).push(Seen { packet });
                    }
                }
            })
        };
        Ok(Hub {
            port,
            members,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// The port the VMs send to.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A port on 127.0.0.1 for one more VM to receive on.
    pub(crate) fn add_member(&self) -> Result<u16> {
        // Ask the kernel for a free port, then let it go for QEMU to bind.
        let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .context("could not find a free UDP port on 127.0.0.1")?;
        let port = probe.local_addr()?.port();
        drop(probe);
        lock(&self.members).push(port);
        Ok(port)
    }

    /// Every DHCP and TFTP packet seen so far, oldest first.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::frame::tests::{bootp, udp_frame, NODE1, NODE2};
    use crate::qemu::frame::DHCP_ACK;

    #[test]
    fn repeats_frames_to_the_other_members_only_and_reports_dhcp() {
        let dir = tempfile::tempdir().unwrap();
        let pcap = dir.path().join("link.pcap");
        let hub = Hub::start(&pcap).unwrap();
        let vm = |port: u16| {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        };
        let (a, b, c) = (
            vm(hub.add_member().unwrap()),
            vm(hub.add_member().unwrap()),
            vm(hub.add_member().unwrap()),
        );
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        stranger
            .send_to(b"not a member", (Ipv4Addr::LOCALHOST, hub.port()))
            .unwrap();
        let ack = udp_frame(
            NODE1,
            Ipv4Addr::new(10, 77, 0, 1),
            (67, 68),
            &bootp(2, NODE2, Ipv4Addr::new(10, 77, 0, 150), DHCP_ACK),
        );
        a.send_to(&ack, (Ipv4Addr::LOCALHOST, hub.port())).unwrap();
        let mut buf = [0u8; 2048];
        for other in [&b, &c] {
            let (n, _) = other.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &ack[..], "the first frame they get is a's");
        }
        a.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(a.recv_from(&mut buf).is_err(), "a got its own frame back");
        let seen = hub.seen();
        assert_eq!(seen.len(), 1);
        assert!(matches!(
            seen[0].packet,
            Packet::Dhcp {
                message: Some(DHCP_ACK),
                ..
            }
        ));
        drop(hub);
        let recorded = std::fs::read(&pcap).unwrap();
        assert_eq!(frame::pcap_frames(&recorded).unwrap(), vec![&ack[..]]);
    }
}
