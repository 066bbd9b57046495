//! Connections that Python opens (the client's side): `PythonToNetwork::Connect`.

use super::*;
use crate::messages::{ConnectFailure, OUTGOING};

/// The other end: a smoltcp interface at `addr` with a listening socket if `listening`, else none (it answers
/// a SYN with a RST), wired to the stack by `exchange`.
struct Remote {
    iface: Interface,
    device: VirtualDevice,
    sockets: SocketSet<'static>,
    handle: Option<SocketHandle>,
}

impl Remote {
    fn new(addr: &str, listening: bool) -> Remote {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut device = VirtualDevice::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, Instant::ZERO);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::from(addr.ip()), 32)).unwrap());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => iface.routes_mut().add_default_ipv4_route(ip).unwrap(),
            std::net::IpAddr::V6(ip) => iface.routes_mut().add_default_ipv6_route(ip).unwrap(),
        };
        let mut sockets = SocketSet::new(vec![]);
        let handle = listening.then(|| {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 1 << 16]),
                tcp::SocketBuffer::new(vec![0; 1 << 16]),
            );
            socket.listen(addr.port()).unwrap();
            sockets.add(socket)
        });
        Remote {
            iface,
            device,
            sockets,
            handle,
        }
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(self.handle.expect("listening"))
    }

    /// Passes packets both ways until both sides are quiet; returns Python's events.
    fn exchange(&mut self, stack: &mut TestStack, out: &mut Outputs) -> Vec<NetworkToPython> {
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut events = std::mem::take(&mut out.events);
        for _ in 0..1000 {
            let now = stack.now();
            for (peer, p) in out.packets.drain(..) {
                assert_eq!(peer, 0);
                self.device.rx = Some(p);
                self.iface.poll(now, &mut self.device, &mut self.sockets);
            }
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let sent: Vec<_> = self.device.tx.drain(..).collect();
            for p in &sent {
                stack.receive(0, endpoint, p.clone(), out);
            }
            stack.flush(out);
            stack.poll_timers(out);
            events.append(&mut out.events);
            if sent.is_empty() && out.packets.is_empty() {
                return events;
            }
        }
        panic!("no quiet moment after 1,000 rounds");
    }
}

fn connect(stack: &mut TestStack, id: ConnectionId, src: &str, dst: &str, out: &mut Outputs) {
    stack.handle(
        PythonToNetwork::Connect {
            id,
            peer: 0,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        },
        out,
    );
    stack.flush(out);
}

#[test]
fn a_connection_python_opens_carries_data_both_ways_from_a_free_port() {
    for (src, dst) in [
        ("10.0.0.2:0", "192.0.2.1:80"),
        ("[fd00::2]:0", "[2001:db8::1]:443"),
    ] {
        let mut stack = stack();
        let mut remote = Remote::new(dst, true);
        let mut out = Outputs::default();
        let id = OUTGOING + 7;
        connect(&mut stack, id, src, dst, &mut out);
        let events = remote.exchange(&mut stack, &mut out);
        let (event_id, other_end, ours) = match &events[..] {
            [NetworkToPython::ConnectionEstablished { id, src, dst, .. }] => (*id, *src, *dst),
            e => panic!("unexpected {e:?}"),
        };
        assert_eq!(event_id, id);
        assert_eq!(other_end, dst.parse::<SocketAddr>().unwrap());
        let src: SocketAddr = src.parse().unwrap();
        assert_eq!(ours.ip(), src.ip());
        assert!(ours.port() >= 49152, "{ours}");

        stack.handle(
            PythonToNetwork::Write {
                id,
                data: b"request".to_vec(),
            },
            &mut out,
        );
        stack.flush(&mut out);
        remote.exchange(&mut stack, &mut out);
        let mut buf = [0u8; 16];
        let n = remote.socket().recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"request");
        remote.socket().send_slice(b"answer").unwrap();
        remote.socket().close();
        let events = remote.exchange(&mut stack, &mut out);
        assert_eq!(data(&events), b"answer");
        assert!(events
            .iter()
            .any(|e| matches!(e, NetworkToPython::Eof { id: i } if *i == id)));
    }
}

#[test]
fn a_rst_for_the_syn_is_a_refused_connection_and_nothing_is_left() {
    let mut stack = stack();
    let mut remote = Remote::new("192.0.2.1:80", false);
    let mut out = Outputs::default();
    connect(&mut stack, OUTGOING, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    let events = remote.exchange(&mut stack, &mut out);
    assert!(
        matches!(
            events[..],
            [NetworkToPython::ConnectFailed {
                id: OUTGOING,
                reason: ConnectFailure::Refused
            }]
        ),
        "{events:?}"
    );
    assert_eq!(stack.connection_count(), 0);
}

#[test]
fn a_syn_that_nobody_answers_times_out_as_a_kernels_does() {
    let mut stack = stack();
    let mut out = Outputs::default();
    connect(&mut stack, OUTGOING, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    let mut syns = out.packets.len();
    out.packets.clear();
    let mut failed = vec![];
    for _ in 0..200 {
        stack.advance(Duration::from_secs(1));
        stack.poll_timers(&mut out);
        syns += out.packets.drain(..).count();
        failed.append(&mut out.events);
        if !failed.is_empty() {
            break;
        }
    }
    let waited = stack.clock - stack.start;
    assert!(
        matches!(
            failed[..],
            [NetworkToPython::ConnectFailed {
                reason: ConnectFailure::TimedOut,
                ..
            }]
        ),
        "{failed:?}"
    );
    assert_eq!(waited, CONNECT_TIMEOUT);
    assert!(syns >= 5, "the SYN was sent {syns} times");
    assert_eq!(stack.connection_count(), 0);
}

#[test]
fn a_client_answers_syns_with_a_rst() {
    let mut stack = stack();
    stack.set_accepts(false);
    let mut client = Client::connect(0, "192.0.2.1:5555", "10.0.0.2:80");
    let events = client.pump(&mut stack);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(client.socket().state(), tcp::State::Closed);
    assert_eq!(stack.connection_count(), 0);
}

#[test]
fn ports_in_use_to_the_same_destination_are_skipped() {
    let mut stack = stack();
    let mut out = Outputs::default();
    let mut ports = std::collections::HashSet::new();
    for i in 0..50 {
        connect(&mut stack, OUTGOING + i, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    }
    for conn in stack.connections.values() {
        assert!(ports.insert(conn.flow.destination.port()));
    }
    assert_eq!(ports.len(), 50);
}

#[test]
fn a_clients_mtu_bounds_its_segments_and_datagrams() {
    let peers = vec![PeerInfo {
        id: 0,
        public_key: "key0".into(),
    }];
    let start = StdInstant::now();
    let mut stack = TestStack {
        stack: Stack::with_mtu(peers, start, 1280),
        start,
        clock: start,
    };
    let mut remote = Remote::new("192.0.2.1:80", true);
    let mut out = Outputs::default();
    connect(&mut stack, OUTGOING, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    let syn = out.packets[0].1.clone();
    let ip = smoltcp::wire::Ipv4Packet::new_checked(&syn[..]).unwrap();
    let tcp = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
    let repr = smoltcp::wire::TcpRepr::parse(
        &tcp,
        &ip.src_addr().into(),
        &ip.dst_addr().into(),
        &smoltcp::phy::ChecksumCapabilities::ignored(),
    )
    .unwrap();
    assert_eq!(repr.max_seg_size, Some(1280 - 40));
    remote.exchange(&mut stack, &mut out);
    stack.handle(
        PythonToNetwork::Write {
            id: OUTGOING,
            data: vec![7; 20_000],
        },
        &mut out,
    );
    stack.flush(&mut out);
    assert!(!out.packets.is_empty());
    assert!(out.packets.iter().all(|(_, p)| p.len() <= 1280));
    out.packets.clear();
    stack.handle(
        PythonToNetwork::SendDatagram {
            data: vec![1; 3000],
            src: "10.0.0.2:5000".parse().unwrap(),
            dst: "192.0.2.1:53".parse().unwrap(),
            peer: Some(0),
        },
        &mut out,
    );
    assert!(out.packets.len() >= 3);
    assert!(out.packets.iter().all(|(_, p)| p.len() <= 1280));
}

/// A connection Python opens times its round trip from its SYN to the SYN-ACK, as the stack's own connections
/// do from their SYN-ACK: its window grows with the path, and its segments are paced on a long one.
#[test]
fn a_connection_python_opens_knows_its_round_trip_from_the_handshake() {
    let mut stack = stack();
    let mut remote = Remote::new("192.0.2.1:80", true);
    let mut out = Outputs::default();
    connect(&mut stack, OUTGOING, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    stack.advance(Duration::from_millis(50));
    remote.exchange(&mut stack, &mut out);
    let socket = stack.connections.get_mut(&OUTGOING).unwrap().socket();
    assert_eq!(socket.min_rtt(), Some(smoltcp::time::Duration::from_millis(50)));
}

#[test]
fn a_connection_to_a_flow_in_use_fails_and_leaves_the_other_alone() {
    // Python names the local port; a connection (Python's own, or a client's) holds the same flow already.
    let mut stack = stack();
    let mut remote = Remote::new("192.0.2.1:80", true);
    let mut out = Outputs::default();
    connect(&mut stack, OUTGOING, "10.0.0.2:5000", "192.0.2.1:80", &mut out);
    connect(
        &mut stack,
        OUTGOING + 1,
        "10.0.0.2:5000",
        "192.0.2.1:80",
        &mut out,
    );
    stack.check_invariants();
    let events = remote.exchange(&mut stack, &mut out);
    let [NetworkToPython::ConnectFailed {
        id: failed,
        reason: ConnectFailure::NoRoom,
    }, NetworkToPython::ConnectionEstablished { id: established, .. }] = events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!((failed, established), (OUTGOING + 1, OUTGOING));
    stack.check_invariants();
    assert_eq!(stack.connection_count(), 1);
}

#[test]
fn a_connection_python_gives_up_on_frees_its_half_open_place() {
    // The client's open_connection, cancelled during the handshake, aborts its connection.
    let mut stack = stack();
    stack.admission.limits.half_open_per_peer = 1;
    let mut out = Outputs::default();
    connect(&mut stack, OUTGOING, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    stack.handle(PythonToNetwork::Abort { id: OUTGOING }, &mut out);
    stack.flush(&mut out);
    stack.check_invariants();
    assert_eq!(stack.connection_count(), 0);
    out = Outputs::default();
    let mut remote = Remote::new("192.0.2.1:80", true);
    connect(&mut stack, OUTGOING + 1, "10.0.0.2:0", "192.0.2.1:80", &mut out);
    let events = remote.exchange(&mut stack, &mut out);
    let [NetworkToPython::ConnectionEstablished { id, .. }] = events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(id, OUTGOING + 1);
    stack.check_invariants();
}
