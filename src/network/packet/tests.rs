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
fn echo_requests_are_answered_from_the_pinged_address() {
    for (client, target) in [("10.0.0.1", "198.51.100.9"), ("fd00::1", "2001:db8::9")] {
        let (client, target): (IpAddr, IpAddr) = (client.parse().unwrap(), target.parse().unwrap());
        // A request is a reply with the roles swapped and another type: build one with the same code.
        let mut request = echo_reply(target, client, 7, 3, b"ping").unwrap();
        let header = if client.is_ipv4() { 20 } else { 40 };
        request[header] = if client.is_ipv4() { 8 } else { 128 };
        assert_eq!(
            parse(&request),
            Ok(Inbound::Ping {
                src: client,
                dst: target,
                ident: 7,
                seq_no: 3,
                data: b"ping"
            })
        );
        let reply = echo_reply(client, target, 7, 3, b"ping").unwrap();
        let caps = ChecksumCapabilities::default();
        match (client, target) {
            (IpAddr::V4(c), IpAddr::V4(t)) => {
                let ip = Ipv4Packet::new_checked(&reply[..]).unwrap();
                assert_eq!((ip.src_addr(), ip.dst_addr()), (t, c));
                let icmp = Icmpv4Packet::new_checked(&reply[20..]).unwrap();
                assert_eq!(
                    Icmpv4Repr::parse(&icmp, &caps).unwrap(),
                    Icmpv4Repr::EchoReply {
                        ident: 7,
                        seq_no: 3,
                        data: b"ping"
                    }
                );
            }
            (IpAddr::V6(c), IpAddr::V6(t)) => {
                let icmp = Icmpv6Packet::new_checked(&reply[40..]).unwrap();
                assert_eq!(
                    Icmpv6Repr::parse(&t, &c, &icmp, &caps).unwrap(),
                    Icmpv6Repr::EchoReply {
                        ident: 7,
                        seq_no: 3,
                        data: b"ping"
                    }
                );
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn small_datagrams_are_not_fragmented() {
    let packets = udp_packets(addr("10.0.0.42:53"), addr("10.0.0.1:5000"), &[1; 1000], 1420, 1).unwrap();
    assert_eq!(packets.len(), 1);
}

/// The largest echo request a client can send (a reassembled `ping -s 65500`, or `-s 65507` over IPv4)
/// is answered in fragments of at most the MTU that reassemble into the whole reply.
#[test]
fn the_largest_echo_replies_are_fragmented_to_the_mtu() {
    use crate::network::fragments::{is_fragment, Reassembler};
    for (client, target, size) in [
        ("10.0.0.1", "198.51.100.9", 65507),
        ("fd00::1", "2001:db8::9", 65500),
    ] {
        let (client, target): (IpAddr, IpAddr) = (client.parse().unwrap(), target.parse().unwrap());
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let reply = echo_reply(client, target, 7, 3, &data).unwrap();
        let fragments = fit_mtu(reply.clone(), 1420, 99);
        assert!(fragments.len() > 40);
        assert!(fragments.iter().all(|f| f.len() <= 1420 && is_fragment(f)));
        let mut reassembler = Reassembler::default();
        let now = std::time::Instant::now();
        let whole: Vec<_> = fragments
            .iter()
            .filter_map(|f| reassembler.insert(0, f, now))
            .collect();
        assert_eq!(whole.len(), 1);
        let header = if client.is_ipv4() { 20 } else { 40 };
        assert_eq!(whole[0][header..], reply[header..]);
    }
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
