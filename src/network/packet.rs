//! Typed views of the IP packets that come out of the tunnel: just enough to route them to a connection, to
//! Python, or to the TCP stack, and to build the UDP packets that go back.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
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
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: &'a [u8],
    },
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
        other => Err(ParseError::Unsupported(other)),
    }
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
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_packets_round_trip_in_both_families() {
        for (src, dst) in [
            (addr("10.0.0.42:53"), addr("10.0.0.1:5000")),
            (addr("[2001:db8::7]:53"), addr("[fd00::1]:5000")),
        ] {
            let packet = udp(src, dst, b"hello").unwrap();
            assert_eq!(
                parse(&packet),
                Ok(Inbound::Udp {
                    src,
                    dst,
                    payload: b"hello"
                })
            );
            // The checksum is right: smoltcp's own parser verifies it.
            let payload = &packet[if src.is_ipv4() { 20 } else { 40 }..];
            let u = UdpPacket::new_checked(payload).unwrap();
            assert!(u.verify_checksum(&src.ip().into(), &dst.ip().into()));
        }
        assert!(udp(addr("10.0.0.1:1"), addr("[::1]:1"), b"").is_none());
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert_eq!(parse(&[]), Err(ParseError::NotIp));
        assert_eq!(parse(&[0x45, 0, 0]), Err(ParseError::Malformed("IPv4")));
        assert_eq!(parse(&[0x60; 10]), Err(ParseError::Malformed("IPv6")));
        // A valid IPv4 header announcing TCP, with a truncated TCP header.
        let mut p = udp(addr("10.0.0.1:1"), addr("10.0.0.2:2"), b"").unwrap();
        p[9] = 6;
        assert_eq!(parse(&p), Err(ParseError::Malformed("TCP")));
        // An IPv4 fragment.
        let mut p = udp(addr("10.0.0.1:1"), addr("10.0.0.2:2"), b"x").unwrap();
        p[6] = 0x20;
        assert_eq!(parse(&p), Err(ParseError::Fragment));
    }
}
