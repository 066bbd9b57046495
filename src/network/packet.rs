//! Typed views of the IP packets that come out of the tunnel: just enough to route them to a connection, to
//! Python, or to the TCP stack, and to build the UDP packets that go back.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket, UdpRepr,
};

/// What the network task needs to know about a packet from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        /// A SYN without ACK: the only packet that may open a connection.
        opens: bool,
        segment: Segment,
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: &'a [u8],
    },
    /// An ICMP or ICMPv6 destination unreachable that quotes a TCP segment from `src` to `dst` (the stack's own
    /// segment: `src` is the stack's end).
    Unreachable {
        why: Unreachable,
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// An ICMP or ICMPv6 echo request, to any address.
    Ping {
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
}

/// Where a TCP segment lies in the client's sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    /// Sequence numbers it takes: data, SYN and FIN.
    pub len: u32,
    pub has_data: bool,
    /// The acknowledgement number, if the ACK flag is set.
    pub ack: Option<u32>,
}

impl Segment {
    /// The segment of a TCP packet whose buffer ends where its data ends.
    fn of(tcp: &TcpPacket<&[u8]>) -> Self {
        let data = tcp.payload().len();
        Segment {
            seq: tcp.seq_number().0 as u32,
            len: data as u32 + tcp.syn() as u32 + tcp.fin() as u32,
            has_data: data > 0,
            ack: tcp.ack().then_some(tcp.ack_number().0 as u32),
        }
    }

    pub fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// `a` comes after `b` in sequence space (RFC 793's comparison modulo 2^32).
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    #[error("truncated or malformed {0} packet")]
    Malformed(&'static str),
    #[error("fragmented packet")]
    Fragment,
    #[error("unsupported protocol {0}")]
    Unsupported(IpProtocol),
}

pub fn parse(packet: &[u8]) -> Result<Inbound<'_>, ParseError> {
    let (src, dst, protocol, payload): (IpAddr, IpAddr, _, &[u8]) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).map_err(|_| ParseError::Malformed("IPv4"))?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(ParseError::Fragment);
            }
            let header_len = ip.header_len() as usize;
            let total_len = ip.total_len() as usize;
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                ip.next_header(),
                &packet[header_len..total_len],
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).map_err(|_| ParseError::Malformed("IPv6"))?;
            let start = ip.header_len();
            let end = start + ip.payload_len() as usize;
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                ip.next_header(),
                &packet[start..end],
            )
        }
        _ => return Err(ParseError::NotIp),
    };
    match protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| ParseError::Malformed("TCP"))?;
            Ok(Inbound::Tcp {
                src: SocketAddr::new(src, tcp.src_port()),
                dst: SocketAddr::new(dst, tcp.dst_port()),
                opens: tcp.syn() && !tcp.ack(),
                segment: Segment::of(&tcp),
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| ParseError::Malformed("UDP"))?;
            Ok(Inbound::Udp {
                src: SocketAddr::new(src, udp.src_port()),
                dst: SocketAddr::new(dst, udp.dst_port()),
                payload: udp.payload(),
            })
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| ParseError::Malformed("ICMP"))?;
            match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::ignored()) {
                Ok(Icmpv4Repr::EchoRequest { ident, seq_no, data }) => Ok(Inbound::Ping {
                    src,
                    dst,
                    ident,
                    seq_no,
                    data,
                }),
                Ok(Icmpv4Repr::DstUnreachable { reason, header, data })
                    if header.next_header == IpProtocol::Tcp =>
                {
                    use Icmpv4DstUnreachable as Code;
                    let why = match reason {
                        Code::NetUnreachable | Code::DstNetUnknown | Code::NetUnreachToS => {
                            Unreachable::Network
                        }
                        Code::NetProhibited | Code::HostProhibited | Code::CommProhibited => {
                            Unreachable::Prohibited
                        }
                        _ => Unreachable::Host,
                    };
                    quoted(why, header.src_addr.into(), header.dst_addr.into(), data)
                }
                _ => Err(ParseError::Unsupported(protocol)),
            }
        }
        IpProtocol::Icmpv6 => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                return Err(ParseError::Malformed("ICMPv6"));
            };
            let icmp = Icmpv6Packet::new_checked(payload).map_err(|_| ParseError::Malformed("ICMPv6"))?;
            match Icmpv6Repr::parse(&s, &d, &icmp, &ChecksumCapabilities::ignored()) {
                Ok(Icmpv6Repr::EchoRequest { ident, seq_no, data }) => Ok(Inbound::Ping {
                    src,
                    dst,
                    ident,
                    seq_no,
                    data,
                }),
                Ok(Icmpv6Repr::DstUnreachable { reason, header, data })
                    if header.next_header == IpProtocol::Tcp =>
                {
                    use Icmpv6DstUnreachable as Code;
                    let why = match reason {
                        Code::NoRoute | Code::BeyondScope => Unreachable::Network,
                        Code::AdminProhibit | Code::FailedPolicy | Code::RejectRoute => {
                            Unreachable::Prohibited
                        }
                        _ => Unreachable::Host,
                    };
                    quoted(why, header.src_addr.into(), header.dst_addr.into(), data)
                }
                _ => Err(ParseError::Unsupported(protocol)),
            }
        }
        other => Err(ParseError::Unsupported(other)),
    }
}

/// The TCP segment an ICMP error quotes, by its ports (the first four bytes of its header).
fn quoted(why: Unreachable, src: IpAddr, dst: IpAddr, data: &[u8]) -> Result<Inbound<'_>, ParseError> {
    let [a, b, c, d, ..] = *data else {
        return Err(ParseError::Malformed("ICMP error"));
    };
    Ok(Inbound::Unreachable {
        why,
        src: SocketAddr::new(src, u16::from_be_bytes([a, b])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([c, d])),
    })
}

/// The segment in a TCP packet that the stack built (an IPv4 or IPv6 header without options or extensions).
pub fn sent_segment(packet: &[u8]) -> Option<Segment> {
    let ip_header_len = match packet.first().map(|b| b >> 4) {
        Some(4) => ((packet[0] & 0x0f) as usize) * 4,
        Some(6) => 40,
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(packet.get(ip_header_len..)?).ok()?;
    Some(Segment::of(&tcp))
}

/// A copy of a client's TCP packet reduced to a bare acknowledgement with sequence number `seq`: the same
/// addresses, ports, acknowledgement number, window and options (with `flip_window`, a window that differs in
/// its lowest bit), no data and no other flags. `None` for a closed window, and for anything else than an
/// unfragmented TCP packet without IPv6 extension headers. Tests make a client's acknowledgements with it.
#[cfg(test)]
pub fn bare_ack(packet: &[u8], seq: u32, flip_window: bool) -> Option<Vec<u8>> {
    let (ip_header_len, src, dst): (usize, IpAddress, IpAddress) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            (
                ip.header_len() as usize,
                ip.src_addr().into(),
                ip.dst_addr().into(),
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (ip.header_len(), ip.src_addr().into(), ip.dst_addr().into())
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(packet.get(ip_header_len..)?).ok()?;
    if !tcp.ack() || tcp.window_len() == 0 {
        return None;
    }
    let len = ip_header_len + tcp.header_len() as usize;
    let mut ack = packet[..len].to_vec();
    if matches!(src, IpAddress::Ipv6(_)) {
        let mut ip = Ipv6Packet::new_unchecked(&mut ack);
        ip.set_payload_len((len - ip_header_len) as u16);
    } else {
        let mut ip = Ipv4Packet::new_unchecked(&mut ack);
        ip.set_total_len(len as u16);
        ip.fill_checksum();
    }
    let mut tcp = TcpPacket::new_unchecked(&mut ack[ip_header_len..]);
    tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(seq as i32));
    tcp.set_syn(false);
    tcp.set_fin(false);
    tcp.set_rst(false);
    tcp.set_psh(false);
    tcp.set_urg(false);
    if flip_window {
        tcp.set_window_len(tcp.window_len() ^ 1);
    }
    tcp.fill_checksum(&src, &dst);
    Some(ack)
}

/// The echo reply to an echo request: from the address that was pinged, with the same identifier, sequence
/// number and data.
pub fn echo_reply(
    request_src: IpAddr,
    request_dst: IpAddr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match (request_dst, request_src) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let icmp = Icmpv4Repr::EchoReply { ident, seq_no, data };
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Icmp,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut packet = vec![0; ip.buffer_len() + icmp.buffer_len()];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut packet), &caps);
            icmp.emit(
                &mut Icmpv4Packet::new_unchecked(&mut packet[ip.buffer_len()..]),
                &caps,
            );
            Some(packet)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let icmp = Icmpv6Repr::EchoReply { ident, seq_no, data };
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut packet = vec![0; ip.buffer_len() + icmp.buffer_len()];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut packet));
            icmp.emit(
                &s,
                &d,
                &mut Icmpv6Packet::new_unchecked(&mut packet[ip.buffer_len()..]),
                &caps,
            );
            Some(packet)
        }
        _ => None,
    }
}

/// Whether a packet built by the stack is a TCP segment (which is never fragmented).
pub fn is_tcp(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(9) == Some(&6),
        Some(6) => packet.get(6) == Some(&6),
        _ => false,
    }
}

/// Why a destination is unreachable, as an ICMP destination-unreachable message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No route to the host (ICMPv4 code 1, ICMPv6 code 3: address unreachable).
    Host,
    /// No route to its network (ICMPv4 code 0, ICMPv6 code 0: no route to destination).
    Network,
    /// A policy refuses it (ICMPv4 code 13, ICMPv6 code 1: communication administratively prohibited).
    Prohibited,
}

/// How much of the offending packet an ICMPv4 error quotes at most: the message stays within the 576 bytes
/// every host takes (RFC 1812, 4.3.2.3). ICMPv6 errors stay within the minimum MTU of 1280 (RFC 4443), which
/// smoltcp's `Icmpv6Repr` enforces itself.
const ICMPV4_QUOTE: usize = 576 - 20 - 8 - 20;

/// The ICMP destination-unreachable message that answers `packet` (an IPv4 or IPv6 packet from a client, as
/// `parse` takes it), quoting its header and the start of its payload, so that the client's stack finds the
/// connection it concerns. It comes from the address `packet` was sent to: the client routes that address
/// through the tunnel, so its WireGuard accepts a packet from it. `None` if `packet` is not one `parse` reads.
pub fn unreachable(packet: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            let payload = packet.get(ip.header_len() as usize..ip.total_len() as usize)?;
            let quoted = Ipv4Repr {
                src_addr: ip.src_addr(),
                dst_addr: ip.dst_addr(),
                next_header: ip.next_header(),
                payload_len: payload.len(),
                hop_limit: ip.hop_limit(),
            };
            let reason = match why {
                Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                Unreachable::Network => Icmpv4DstUnreachable::NetUnreachable,
                Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason,
                header: quoted,
                data: &payload[..payload.len().min(ICMPV4_QUOTE)],
            };
            let outer = Ipv4Repr {
                src_addr: ip.dst_addr(),
                dst_addr: ip.src_addr(),
                next_header: IpProtocol::Icmp,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut out = vec![0; outer.buffer_len() + icmp.buffer_len()];
            outer.emit(&mut Ipv4Packet::new_unchecked(&mut out), &caps);
            icmp.emit(
                &mut Icmpv4Packet::new_unchecked(&mut out[outer.buffer_len()..]),
                &caps,
            );
            Some(out)
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            let start = ip.header_len();
            let payload = packet.get(start..start + ip.payload_len() as usize)?;
            let quoted = Ipv6Repr {
                src_addr: ip.src_addr(),
                dst_addr: ip.dst_addr(),
                next_header: ip.next_header(),
                payload_len: payload.len(),
                hop_limit: ip.hop_limit(),
            };
            let reason = match why {
                Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                Unreachable::Network => Icmpv6DstUnreachable::NoRoute,
                Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
            };
            let icmp = Icmpv6Repr::DstUnreachable {
                reason,
                header: quoted,
                data: payload,
            };
            let (src, dst) = (ip.dst_addr(), ip.src_addr());
            let outer = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut out = vec![0; outer.buffer_len() + icmp.buffer_len()];
            outer.emit(&mut Ipv6Packet::new_unchecked(&mut out));
            icmp.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut out[outer.buffer_len()..]),
                &caps,
            );
            Some(out)
        }
        _ => None,
    }
}

/// A UDP datagram as packets of at most `mtu` bytes: one packet, or fragments with identification `ident`.
pub fn udp_packets(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    mtu: usize,
    ident: u32,
) -> Option<Vec<Vec<u8>>> {
    if payload.len() > 65535 - 48 {
        return None;
    }
    Some(fit_mtu(udp(src, dst, payload)?, mtu, ident))
}

/// A packet built here (an IPv4 header without options, or an IPv6 header without extensions) as packets of at
/// most `mtu` bytes: itself, or its fragments with identification `ident`. Every packet the server makes up
/// goes through here or is smaller than the MTU by construction: a packet larger than the tunnel's MTU would
/// not reach the client, and one larger than a WireGuard datagram cannot even be encrypted.
pub fn fit_mtu(packet: Vec<u8>, mtu: usize, ident: u32) -> Vec<Vec<u8>> {
    if packet.len() <= mtu {
        return vec![packet];
    }
    if packet[0] >> 4 == 4 {
        fragment_v4(&packet, mtu, ident as u16)
    } else {
        fragment_v6(&packet, mtu, ident)
    }
}

fn fragment_v4(packet: &[u8], mtu: usize, ident: u16) -> Vec<Vec<u8>> {
    const HEADER: usize = 20; // `udp` writes no options
    let chunk = (mtu - HEADER) / 8 * 8;
    let payload = &packet[HEADER..];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, data)| {
            let mut fragment = Vec::with_capacity(HEADER + data.len());
            fragment.extend_from_slice(&packet[..HEADER]);
            fragment.extend_from_slice(data);
            let mut ip = Ipv4Packet::new_unchecked(&mut fragment);
            ip.set_total_len((HEADER + data.len()) as u16);
            ip.set_ident(ident);
            ip.set_frag_offset((i * chunk) as u16);
            ip.set_more_frags((i + 1) * chunk < payload.len());
            ip.fill_checksum();
            fragment
        })
        .collect()
}

fn fragment_v6(packet: &[u8], mtu: usize, ident: u32) -> Vec<Vec<u8>> {
    const HEADER: usize = 40;
    const FRAGMENT_HEADER: usize = 8;
    let chunk = (mtu - HEADER - FRAGMENT_HEADER) / 8 * 8;
    let next_header = packet[6];
    let payload = &packet[HEADER..];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, data)| {
            let mut fragment = Vec::with_capacity(HEADER + FRAGMENT_HEADER + data.len());
            fragment.extend_from_slice(&packet[..HEADER]);
            fragment[4..6].copy_from_slice(&((FRAGMENT_HEADER + data.len()) as u16).to_be_bytes());
            fragment[6] = super::fragments::IPV6_FRAGMENT;
            let more = (i + 1) * chunk < payload.len();
            let field = (i * chunk) as u16 | more as u16;
            fragment.extend_from_slice(&[next_header, 0]);
            fragment.extend_from_slice(&field.to_be_bytes());
            fragment.extend_from_slice(&ident.to_be_bytes());
            fragment.extend_from_slice(data);
            fragment
        })
        .collect()
}

/// Builds a UDP packet; `None` when the addresses are of different families.
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    const UDP_HEADER: usize = 8;
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let udp_len = UDP_HEADER + payload.len();
    let caps = ChecksumCapabilities::default();
    let (mut packet, ip_header_len, src_addr, dst_addr) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_len,
                hop_limit: 64,
            };
            let mut packet = vec![0; ip.buffer_len() + udp_len];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut packet), &caps);
            (packet, ip.buffer_len(), IpAddress::Ipv4(s), IpAddress::Ipv4(d))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_len,
                hop_limit: 64,
            };
            let mut packet = vec![0; ip.buffer_len() + udp_len];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut packet));
            (packet, ip.buffer_len(), IpAddress::Ipv6(s), IpAddress::Ipv6(d))
        }
        _ => return None,
    };
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut packet[ip_header_len..]),
        &src_addr,
        &dst_addr,
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &caps,
    );
    Some(packet)
}

#[cfg(test)]
mod tests;
