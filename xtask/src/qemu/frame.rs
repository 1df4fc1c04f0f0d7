//! The few packets the boot test watches for on a virtual wire (DHCP, TFTP
//! read requests), read out of raw Ethernet frames, and the pcap files the
//! wires are recorded in.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

pub(crate) const DHCP_ACK: u8 = 5;

/// What the test cares about in one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    /// A DHCP (BOOTP) message. `from_server` when sent from port 67.
    Dhcp {
        sender: Mac,
        from_server: bool,
        message: Option<u8>,
        client: Mac,
        your_address: Ipv4Addr,
    },
    /// A TFTP read request.
    TftpRead {
        sender: Mac,
        from: Ipv4Addr,
        file: String,
    },
    /// An HTTP GET to port 80 (the request line is in the frame's first
    /// segment).
    HttpGet {
        sender: Mac,
        from: Ipv4Addr,
        path: String,
    },
}

/// Reads a frame; `None` for anything that is not DHCP, a TFTP read or an
/// HTTP GET.
pub(crate) fn parse(frame: &[u8]) -> Option<Packet> {
    let sender = Mac(frame.get(6..12)?.try_into().ok()?);
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut ip = frame.get(14..)?;
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]);
        ip = ip.get(4..)?;
    }
    if ethertype != 0x0800 || ip.first()? >> 4 != 4 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let from = Ipv4Addr::new(*ip.get(12)?, *ip.get(13)?, *ip.get(14)?, *ip.get(15)?);
    match *ip.get(9)? {
        17 => udp(sender, from, ip.get(header..)?),
        6 => http_get(sender, from, ip.get(header..)?),
        _ => None,
    }
}

fn udp(sender: Mac, from: Ipv4Addr, udp: &[u8]) -> Option<Packet> {
    let source_port = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dest_port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let payload = udp.get(8..)?;
    match (source_port, dest_port) {
        (67, _) | (68, 67) => dhcp(sender, source_port == 67, payload),
        (_, 69) => tftp_read(sender, from, payload),
        _ => None,
    }
}

fn dhcp(sender: Mac, from_server: bool, bootp: &[u8]) -> Option<Packet> {
    let client = Mac(bootp.get(28..34)?.try_into().ok()?);
    let y = bootp.get(16..20)?;
    let your_address = Ipv4Addr::new(y[0], y[1], y[2], y[3]);
    let mut message = None;
    if bootp.get(236..240) == Some(&[99, 130, 83, 99]) {
        let mut options = &bootp[240..];
        while let [code, rest @ ..] = options {
            match code {
                0 => options = rest,
                255 => break,
                _ => {
                    let len = usize::from(*rest.first()?);
                    let value = rest.get(1..1 + len)?;
                    if *code == 53 {
                        message = value.first().copied();
                    }
                    options = &rest[1 + len..];
                }
            }
        }
    }
    Some(Packet::Dhcp {
        sender,
        from_server,
        message,
        client,
        your_address,
    })
}

fn http_get(sender: Mac, from: Ipv4Addr, tcp: &[u8]) -> Option<Packet> {
    let dest_port = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    let request = tcp.get(offset..)?.strip_prefix(b"GET ")?;
    if dest_port != 80 {
        return None;
    }
    let end = request.iter().position(|&b| b == b' ' || b == b'\r')?;
    Some(Packet::HttpGet {
        sender,
        from,
        path: String::from_utf8_lossy(&request[..end]).into_owned(),
    })
}

fn tftp_read(sender: Mac, from: Ipv4Addr, tftp: &[u8]) -> Option<Packet> {
    if tftp.get(..2)? != [0, 1] {
        return None;
    }
    let name = &tftp[2..];
    let end = name.iter().position(|&b| b == 0)?;
    Some(Packet::TftpRead {
        sender,
        from,
        file: String::from_utf8_lossy(&name[..end]).into_owned(),
    })
}

/// How much of each frame is recorded: every header the test reads, not
/// the bulk of TFTP and NFS transfers (a boot moves hundreds of MiB).
pub(crate) const SNAPLEN: usize = 512;

/// Writes frames to a pcap file (link type Ethernet), as they pass.
pub(crate) struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    pub(crate) fn new(mut out: W) -> std::io::Result<PcapWriter<W>> {
        let mut header = Vec::with_capacity(24);
        header.extend(0xa1b2_c3d4u32.to_le_bytes());
        header.extend(2u16.to_le_bytes());
        header.extend(4u16.to_le_bytes());
        header.extend(0i32.to_le_bytes());
        header.extend(0u32.to_le_bytes());
        header.extend((SNAPLEN as u32).to_le_bytes());
        header.extend(1u32.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out })
    }

    pub(crate) fn frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let kept = &frame[..frame.len().min(SNAPLEN)];
        let mut record = Vec::with_capacity(16 + kept.len());
        record.extend(u32::try_from(now.as_secs()).unwrap_or(0).to_le_bytes());
        record.extend(now.subsec_micros().to_le_bytes());
        record.extend(u32::try_from(kept.len()).unwrap_or(0).to_le_bytes());
        record.extend(u32::try_from(frame.len()).unwrap_or(u32::MAX).to_le_bytes());
        record.extend(kept);
        self.out.write_all(&record)?;
        self.out.flush()
    }
}

/// The frames in a pcap file (either byte order, micro- or nanosecond).
/// A record cut short at the end (the writer still running) is left out.
pub(crate) fn pcap_frames(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let Some(magic) = bytes.get(..4) else {
        bail!("not a pcap file: {} bytes", bytes.len());
    };
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        let v = if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        };
        usize::try_from(v).ok()
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while let Some(captured) = word(at + 8) {
        let Some(frame) = bytes.get(at + 16..at + 16 + captured) else {
            break;
        };
        frames.push(frame);
        at += 16 + captured;
    }
    Ok(frames)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 frame from `from` to `to` around `l4`, a
    /// transport header and its payload.
    fn ip_frame(sender: Mac, (from, to): (Ipv4Addr, Ipv4Addr), protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(sender.0);
        f.extend([0x08, 0x00, 0x45, 0]);
        f.extend(u16::try_from(20 + l4.len()).unwrap().to_be_bytes());
        f.extend([0, 0, 0, 0, 64, protocol, 0, 0]);
        f.extend(from.octets());
        f.extend(to.octets());
        f.extend(l4);
        f
    }

    /// An Ethernet + IPv4 + UDP broadcast around `payload`.
    pub(crate) fn udp_frame(
        sender: Mac,
        from: Ipv4Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut udp = Vec::new();
        udp.extend(ports.0.to_be_bytes());
        udp.extend(ports.1.to_be_bytes());
        udp.extend(u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        udp.extend([0, 0]);
        udp.extend(payload);
        ip_frame(sender, (from, Ipv4Addr::BROADCAST), 17, &udp)
    }

    /// An Ethernet + IPv4 + TCP frame to node1 (a 20-byte header with 12
    /// bytes of options, as Linux sends) around `payload`.
    pub(crate) fn tcp_frame(
        sender: Mac,
        from: Ipv4Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend(ports.0.to_be_bytes());
        tcp.extend(ports.1.to_be_bytes());
        tcp.extend([0u8; 8]);
        tcp.extend([8 << 4, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        tcp.extend(payload);
        ip_frame(sender, (from, Ipv4Addr::new(10, 77, 0, 1)), 6, &tcp)
    }

    /// A BOOTP message with the DHCP message-type option (and a padding
    /// byte and a hostname option before it, as real servers send).
    pub(crate) fn bootp(op: u8, client: Mac, yiaddr: Ipv4Addr, message: u8) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = op;
        b[16..20].copy_from_slice(&yiaddr.octets());
        b[28..34].copy_from_slice(&client.0);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend([0, 12, 3, b'n', b'o', b'd', 53, 1, message, 255]);
        b
    }

    pub(crate) const NODE1: Mac = Mac([0x52, 0x54, 0, 0x77, 0, 1]);
    pub(crate) const NODE2: Mac = Mac([0x52, 0x54, 0, 0x77, 0, 0x12]);

    #[test]
    fn reads_a_dhcp_ack_from_the_server() {
        let lease = Ipv4Addr::new(10, 77, 0, 150);
        let frame = udp_frame(
            NODE1,
            Ipv4Addr::new(10, 77, 0, 1),
            (67, 68),
            &bootp(2, NODE2, lease, DHCP_ACK),
        );
        assert_eq!(
            parse(&frame),
            Some(Packet::Dhcp {
                sender: NODE1,
                from_server: true,
                message: Some(DHCP_ACK),
                client: NODE2,
                your_address: lease,
            })
        );
    }

    #[test]
    fn a_client_request_is_not_from_a_server() {
        let frame = udp_frame(
            NODE2,
            Ipv4Addr::UNSPECIFIED,
            (68, 67),
            &bootp(1, NODE2, Ipv4Addr::UNSPECIFIED, 1),
        );
        let Some(Packet::Dhcp {
            from_server,
            message,
            ..
        }) = parse(&frame)
        else {
            panic!("not read as DHCP: {frame:02x?}");
        };
        assert!(!from_server);
        assert_eq!(message, Some(1));
    }

    #[test]
    fn reads_the_file_of_a_tftp_read_request() {
        let mut rrq = vec![0, 1];
        rrq.extend(b"pxelinux.cfg/01-52-54-00-77-00-12\0octet\0");
        let from = Ipv4Addr::new(10, 77, 0, 150);
        let frame = udp_frame(NODE2, from, (49152, 69), &rrq);
        assert_eq!(
            parse(&frame),
            Some(Packet::TftpRead {
                sender: NODE2,
                from,
                file: "pxelinux.cfg/01-52-54-00-77-00-12".into()
            })
        );
        // A TFTP data packet (opcode 3) to port 69 is not a read request.
        let mut data = vec![0, 3, 0, 1];
        data.extend([0u8; 16]);
        assert_eq!(parse(&udp_frame(NODE2, from, (49152, 69), &data)), None);
    }

    #[test]
    fn reads_the_path_of_an_http_get() {
        let from = Ipv4Addr::new(10, 77, 0, 150);
        let get = b"GET /vmlinuz-6.1.0-50-amd64 HTTP/1.0\r\nHost: 10.77.0.1\r\n\r\n";
        assert_eq!(
            parse(&tcp_frame(NODE2, from, (49153, 80), get)),
            Some(Packet::HttpGet {
                sender: NODE2,
                from,
                path: "/vmlinuz-6.1.0-50-amd64".into()
            })
        );
        // The answer, another port, a bare ACK and a POST are not GETs.
        let reply = b"HTTP/1.0 200 OK\r\n\r\nGET /x HTTP/1.0";
        assert_eq!(parse(&tcp_frame(NODE1, from, (80, 49153), reply)), None);
        assert_eq!(parse(&tcp_frame(NODE2, from, (49153, 8080), get)), None);
        assert_eq!(parse(&tcp_frame(NODE2, from, (49153, 80), b"")), None);
        assert_eq!(
            parse(&tcp_frame(NODE2, from, (49153, 80), b"POST / HTTP/1.0\r\n")),
            None
        );
        // A request line cut off by the snap length has no end: not read.
        assert_eq!(
            parse(&tcp_frame(NODE2, from, (49153, 80), b"GET /vmlin")),
            None
        );
    }

    #[test]
    fn other_traffic_and_short_frames_are_ignored() {
        let dns = udp_frame(NODE2, Ipv4Addr::new(10, 77, 0, 150), (5353, 53), b"x");
        assert_eq!(parse(&dns), None);
        let ack = udp_frame(
            NODE1,
            Ipv4Addr::new(10, 77, 0, 1),
            (67, 68),
            &bootp(2, NODE2, Ipv4Addr::new(10, 77, 0, 150), DHCP_ACK),
        );
        for cut in [0, 5, 13, 20, 40, 45, 60] {
            assert_eq!(parse(&ack[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn pcap_round_trip_drops_a_record_cut_short() {
        let a = udp_frame(NODE1, Ipv4Addr::new(10, 77, 0, 1), (67, 68), b"first");
        let b = udp_frame(NODE2, Ipv4Addr::new(10, 77, 0, 2), (68, 67), b"second");
        let mut file = Vec::new();
        {
            let mut w = PcapWriter::new(&mut file).unwrap();
            w.frame(&a).unwrap();
            w.frame(&b).unwrap();
        }
        assert_eq!(pcap_frames(&file).unwrap(), vec![&a[..], &b[..]]);
        let cut = &file[..file.len() - 3];
        assert_eq!(pcap_frames(cut).unwrap(), vec![&a[..]]);
        assert!(pcap_frames(b"GIF89a").is_err());
    }

    #[test]
    fn pcap_keeps_only_the_head_of_a_big_frame() {
        let big = udp_frame(
            NODE1,
            Ipv4Addr::new(10, 77, 0, 1),
            (2049, 800),
            &[7u8; 9000],
        );
        let mut file = Vec::new();
        PcapWriter::new(&mut file).unwrap().frame(&big).unwrap();
        assert_eq!(pcap_frames(&file).unwrap(), vec![&big[..SNAPLEN]]);
    }

    #[test]
    fn reads_a_big_endian_pcap() {
        let a = udp_frame(NODE1, Ipv4Addr::new(10, 77, 0, 1), (67, 68), b"x");
        let mut file = vec![0xa1, 0xb2, 0xc3, 0xd4];
        file.extend([0u8; 20]);
        file.extend([0u8; 8]);
        let len = u32::try_from(a.len()).unwrap().to_be_bytes();
        file.extend(len);
        file.extend(len);
        file.extend(&a);
        assert_eq!(pcap_frames(&file).unwrap(), vec![&a[..]]);
    }
}
