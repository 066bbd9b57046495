//! Packets a client builds, and the checks of what the stack sends back.

use super::*;

/// A TCP segment with any flags and options and a valid checksum.
#[derive(Debug, Clone)]
pub(super) struct Tcp {
    pub(super) seq: u32,
    pub(super) ack: u32,
    /// FIN 1, SYN 2, RST 4, PSH 8, ACK 16, and the others.
    pub(super) flags: u8,
    pub(super) window: u16,
    /// Padded with zeros to a multiple of 4 bytes, at most 40.
    pub(super) options: Vec<u8>,
    pub(super) payload_len: usize,
}

impl Tcp {
    pub(super) fn len(&self) -> u32 {
        self.payload_len as u32 + (self.flags & 1) as u32 + (self.flags >> 1 & 1) as u32
    }

    pub(super) fn packet(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let mut options = self.options.clone();
        options.truncate(40);
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header_len = 20 + options.len();
        let mut tcp = vec![0; header_len];
        tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
        tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = ((header_len / 4) as u8) << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
        tcp[20..].copy_from_slice(&options);
        // A pattern of the sequence number, so that data is not all alike.
        tcp.extend((0..self.payload_len).map(|i| self.seq.wrapping_add(i as u32) as u8));
        let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
        TcpPacket::new_unchecked(&mut tcp).fill_checksum(&s, &d);
        ip(src.ip(), dst.ip(), 6, &tcp)
    }
}

/// An ICMP(v6) echo request.
pub(super) fn echo_request(src: IpAddr, dst: IpAddr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let icmp = Icmpv4Repr::EchoRequest { ident, seq_no, data };
            let mut body = vec![0; icmp.buffer_len()];
            icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut body), &caps);
            ip(src, dst, 1, &body)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let icmp = Icmpv6Repr::EchoRequest { ident, seq_no, data };
            let mut body = vec![0; icmp.buffer_len()];
            icmp.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(&mut body), &caps);
            ip(src, dst, 58, &body)
        }
        _ => unreachable!("addresses of one family"),
    }
}

/// What the server delivers of a packet a client encrypts: boringtun cuts it to the length its IP header gives,
/// and drops it if that is longer than the packet (or the header is not there).
pub(super) fn as_delivered(p: &[u8]) -> Option<Vec<u8>> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => u16::from_be_bytes([p[2], p[3]]) as usize,
        6 if p.len() >= 40 => 40 + u16::from_be_bytes([p[4], p[5]]) as usize,
        _ => return None,
    };
    (len <= p.len()).then(|| p[..len].to_vec())
}

// ---------------------------------------------------------------------------------------------------------------
// Packets the stack sends: valid, and what they carry.

/// What an unfragmented packet from the stack is.
#[derive(Debug)]
pub(super) enum Sent {
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        /// The sequence number after it.
        end: u32,
        rst: bool,
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    EchoReply {
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: Vec<u8>,
    },
    /// An ICMP error (destination unreachable) that answers a SYN.
    IcmpError,
}

/// Checks a packet the stack sent: a valid IP header whose length is the packet's, and (unless it is a fragment)
/// a valid TCP, UDP or ICMP message. Returns what it is, or `None` for a fragment.
pub(super) fn check_sent(p: &[u8]) -> Option<Sent> {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(p).expect("a valid IPv4 header");
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            assert_eq!(ip.total_len() as usize, p.len(), "IPv4 total length");
            if ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let payload = &p[ip.header_len() as usize..];
            let (src, dst) = (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr()));
            Some(check_transport(src, dst, ip.next_header(), payload))
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(p).expect("a valid IPv6 header");
            assert_eq!(40 + ip.payload_len() as usize, p.len(), "IPv6 payload length");
            if u8::from(ip.next_header()) == fragments::IPV6_FRAGMENT {
                return None;
            }
            let (src, dst) = (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr()));
            Some(check_transport(src, dst, ip.next_header(), &p[40..]))
        }
        _ => panic!("the stack sent something else than IP: {p:?}"),
    }
}

pub(super) fn check_transport(src: IpAddr, dst: IpAddr, protocol: IpProtocol, payload: &[u8]) -> Sent {
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    let caps = ChecksumCapabilities::default();
    match protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).expect("a valid TCP header");
            assert!(tcp.verify_checksum(&s, &d), "TCP checksum");
            let len = tcp.payload().len() as u32 + tcp.syn() as u32 + tcp.fin() as u32;
            let seq = tcp.seq_number().0 as u32;
            Sent::Tcp {
                src: SocketAddr::new(src, tcp.src_port()),
                dst: SocketAddr::new(dst, tcp.dst_port()),
                end: seq.wrapping_add(len),
                rst: tcp.rst(),
            }
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).expect("a valid UDP header");
            assert_eq!(udp.len() as usize, payload.len(), "UDP length");
            assert!(udp.verify_checksum(&s, &d), "UDP checksum");
            Sent::Udp {
                src: SocketAddr::new(src, udp.src_port()),
                dst: SocketAddr::new(dst, udp.dst_port()),
                data: udp.payload().to_vec(),
            }
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).expect("a valid ICMP header");
            assert!(icmp.verify_checksum(), "ICMP checksum");
            match Icmpv4Repr::parse(&icmp, &caps) {
                Ok(Icmpv4Repr::EchoReply { ident, seq_no, data }) => Sent::EchoReply {
                    src,
                    dst,
                    ident,
                    seq_no,
                    data: data.to_vec(),
                },
                // Its quote is cut short of the packet its header describes, which smoltcp's parser does not
                // take: the type is enough.
                _ if icmp.msg_type() == smoltcp::wire::Icmpv4Message::DstUnreachable => Sent::IcmpError,
                other => panic!("the stack sent ICMP {other:?}"),
            }
        }
        IpProtocol::Icmpv6 => {
            let icmp = Icmpv6Packet::new_checked(payload).expect("a valid ICMPv6 header");
            let (IpAddr::V6(s6), IpAddr::V6(d6)) = (src, dst) else {
                panic!("ICMPv6 over IPv4")
            };
            assert!(icmp.verify_checksum(&s6, &d6), "ICMPv6 checksum");
            match Icmpv6Repr::parse(&s6, &d6, &icmp, &caps) {
                Ok(Icmpv6Repr::EchoReply { ident, seq_no, data }) => Sent::EchoReply {
                    src,
                    dst,
                    ident,
                    seq_no,
                    data: data.to_vec(),
                },
                // As for ICMP: a quote cut to fit 1280 bytes.
                _ if icmp.msg_type() == smoltcp::wire::Icmpv6Message::DstUnreachable => Sent::IcmpError,
                other => panic!("the stack sent ICMPv6 {other:?}"),
            }
        }
        other => panic!("the stack sent protocol {other}"),
    }
}
