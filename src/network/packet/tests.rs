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

/// A SYN from `src` to `dst`, in either family.
fn syn(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1_000),
        ack_number: None,
        window_len: 64_000,
        window_scale: Some(7),
        max_seg_size: Some(1_360),
        sack_permitted: true,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let caps = ChecksumCapabilities::default();
    let (mut packet, header) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            let mut packet = vec![0; ip.buffer_len() + tcp.buffer_len()];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut packet[..]), &caps);
            (packet, ip.buffer_len())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            let mut packet = vec![0; ip.buffer_len() + tcp.buffer_len()];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut packet[..]));
            (packet, ip.buffer_len())
        }
        _ => panic!("one family"),
    };
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut packet[header..]),
        &src.ip().into(),
        &dst.ip().into(),
        &caps,
    );
    packet
}

#[test]
fn an_unreachable_destination_answers_a_syn_with_icmp_that_quotes_it() {
    let (src, dst) = (addr("10.0.0.2:40000"), addr("198.51.100.7:443"));
    let packet = syn(src, dst);
    for (why, code) in [
        (Unreachable::Network, Icmpv4DstUnreachable::NetUnreachable),
        (Unreachable::Host, Icmpv4DstUnreachable::HostUnreachable),
        (Unreachable::Prohibited, Icmpv4DstUnreachable::CommProhibited),
    ] {
        let answer = unreachable(&packet, why).unwrap();
        let ip = Ipv4Packet::new_checked(&answer[..]).unwrap();
        assert!(ip.verify_checksum());
        // From the address the client asked for, to the client.
        assert_eq!(
            (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr())),
            (dst.ip(), src.ip())
        );
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
            Icmpv4Repr::DstUnreachable { reason, header, data } => {
                assert_eq!(reason, code);
                assert_eq!((header.src_addr, header.dst_addr), (ip.dst_addr(), ip.src_addr()));
                assert_eq!(header.next_header, IpProtocol::Tcp);
                // The whole segment is quoted: the ports and the SYN's sequence number are what the client's
                // stack matches it with.
                assert_eq!(data, &packet[20..]);
                let tcp = TcpPacket::new_checked(data).unwrap();
                assert_eq!(
                    (tcp.src_port(), tcp.dst_port(), tcp.seq_number().0),
                    (40000, 443, 1_000)
                );
            }
            other => panic!("not a destination unreachable: {other:?}"),
        }
    }

    let (src, dst) = (addr("[fd00::2]:40000"), addr("[2001:db8::7]:443"));
    let packet = syn(src, dst);
    for (why, code) in [
        (Unreachable::Network, Icmpv6DstUnreachable::NoRoute),
        (Unreachable::Host, Icmpv6DstUnreachable::AddrUnreachable),
        (Unreachable::Prohibited, Icmpv6DstUnreachable::AdminProhibit),
    ] {
        let answer = unreachable(&packet, why).unwrap();
        let ip = Ipv6Packet::new_checked(&answer[..]).unwrap();
        assert_eq!(
            (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr())),
            (dst.ip(), src.ip())
        );
        assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        match Icmpv6Repr::parse(&s, &d, &icmp, &ChecksumCapabilities::default()).unwrap() {
            Icmpv6Repr::DstUnreachable { reason, header, data } => {
                assert_eq!(reason, code);
                assert_eq!((header.src_addr, header.dst_addr), (d, s));
                assert_eq!(header.next_header, IpProtocol::Tcp);
                assert_eq!(data, &packet[40..]);
            }
            other => panic!("not a destination unreachable: {other:?}"),
        }
    }

    assert_eq!(unreachable(&[], Unreachable::Host), None);
    assert_eq!(unreachable(&[0x45, 0, 0], Unreachable::Host), None);
}

#[test]
fn an_icmp_error_that_quotes_a_tcp_segment_names_its_ends_and_why() {
    for (src, dst) in [
        ("10.0.0.2:50000", "192.0.2.1:443"),
        ("[fd00::2]:50000", "[2001:db8::1]:443"),
    ] {
        for why in [Unreachable::Host, Unreachable::Network, Unreachable::Prohibited] {
            // The destination's error about the stack's SYN: from the destination, quoting the SYN.
            let error = unreachable(&syn(addr(src), addr(dst)), why).unwrap();
            match parse(&error).unwrap() {
                Inbound::Unreachable {
                    why: w,
                    src: s,
                    dst: d,
                } => {
                    assert_eq!((w, s, d), (why, addr(src), addr(dst)));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
