//! The limits on what a client can hold: connection caps, the handshake timeout, keepalive and the user timeout.

use std::net::SocketAddr;
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::*;
use crate::network::stack::admission::{Limits, MAX_CONNECTIONS, MAX_HALF_OPEN_PER_PEER};
use crate::network::stack::{HANDSHAKE_TIMEOUT, SILENCE_TIMEOUT, USER_TIMEOUT};

/// A SYN from `src` to `dst` (IPv4), as a client that never completes the handshake sends it.
fn syn(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1_000),
        ack_number: None,
        window_len: 64_000,
        window_scale: None,
        max_seg_size: Some(1_360),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut packet = vec![0; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut packet[..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut packet[ip.buffer_len()..]),
        &IpAddress::from(*src.ip()),
        &IpAddress::from(*dst.ip()),
        &caps,
    );
    packet
}

/// The `i`th of many destinations.
fn destination(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8 + 1, (i >> 8) as u8, i as u8], 443))
}

/// SYNs from `peer` to `count` new destinations; returns how many SYN-ACKs came back.
fn flood(stack: &mut TestStack, peer: PeerId, count: usize) -> usize {
    let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut out = Outputs::default();
    let mut answers = 0;
    for i in 0..count {
        stack.receive(peer, endpoint, syn(src, destination(i)), &mut out);
        if i % 256 == 255 || i == count - 1 {
            stack.flush(&mut out);
            answers += out.packets.len();
            out.packets.clear();
        }
    }
    assert!(out.events.is_empty(), "Python hears of no half-open connection");
    answers
}

/// Exchanges packets between the stack and the clients that are still there (each of its own peer) until all
/// is quiet; packets for any other peer are lost. Returns Python's events and how many packets were lost.
fn exchange(stack: &mut TestStack, clients: &mut [&mut Client]) -> (Vec<NetworkToPython>, usize) {
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (mut events, mut lost) = (vec![], 0);
    for _ in 0..10_000 {
        let now = stack.now();
        let mut out = Outputs::default();
        let mut quiet = true;
        for client in clients.iter_mut() {
            client.iface.poll(now, &mut client.device, &mut client.sockets);
            for p in client.device.tx.drain(..) {
                quiet = false;
                stack.receive(client.peer, endpoint, p, &mut out);
            }
        }
        stack.flush(&mut out);
        stack.poll_timers(&mut out);
        events.append(&mut out.events);
        if quiet && out.packets.is_empty() && !stack.follow_pacing() {
            return (events, lost);
        }
        for (peer, p) in out.packets {
            match clients.iter_mut().find(|c| c.peer == peer) {
                Some(client) => client.take(now, p),
                None => lost += 1,
            }
        }
    }
    panic!("no quiet moment after 10,000 rounds");
}

fn closed(events: &[NetworkToPython], id: ConnectionId) -> Option<bool> {
    events.iter().find_map(|e| match e {
        NetworkToPython::ConnectionClosed { id: i, reset } if *i == id => Some(*reset),
        _ => None,
    })
}

#[test]
fn a_syn_flood_from_one_peer_keeps_to_its_limit_and_leaves_room_for_another_and_for_itself() {
    let mut stack = stack();
    let answered = flood(&mut stack, 0, MAX_HALF_OPEN_PER_PEER + 500);
    assert_eq!(
        answered,
        MAX_HALF_OPEN_PER_PEER + 500,
        "SYNs beyond the limit of half-open connections take the place of the oldest"
    );
    assert_eq!(stack.connection_count(), MAX_HALF_OPEN_PER_PEER);
    assert_eq!(stack.admission.held(0), MAX_HALF_OPEN_PER_PEER);

    // Another peer connects, and its connection carries data.
    let mut other = Client::connect(1, "10.0.0.2:40000", "10.0.0.42:1234");
    established(&other.pump(&mut stack));
    other.socket().send_slice(b"still served").unwrap();
    assert_eq!(data(&other.pump(&mut stack)), b"still served");
    // The flooding peer's own connection completes at once too, and the flood goes on.
    let mut own = Client::connect(0, "10.0.0.1:40001", "10.0.0.42:1234");
    established(&own.pump(&mut stack));
    flood(&mut stack, 0, 1000);
    own.socket().send_slice(b"served during the flood").unwrap();
    assert_eq!(data(&own.pump(&mut stack)), b"served during the flood");
    assert_eq!(stack.connection_count(), MAX_HALF_OPEN_PER_PEER + 2);

    // The half-open ones go after the handshake timeout, the open ones stay.
    stack.advance(HANDSHAKE_TIMEOUT + Duration::from_secs(1));
    stack.poll_timers(&mut Outputs::default());
    assert_eq!(stack.connection_count(), 2);
}

#[test]
fn all_peers_together_stop_at_the_total_limit() {
    let mut stack = stack();
    stack.admission.limits = Limits {
        per_peer: 10,
        total: 15,
        half_open_per_peer: 10,
    };
    assert_eq!(flood(&mut stack, 0, 20), 10);
    assert_eq!(flood(&mut stack, 1, 20), 5, "the total is reached");
    assert_eq!(stack.admission.held(1), 5);
}

#[test]
fn half_open_connections_are_dropped_after_the_handshake_timeout() {
    let mut stack = stack();
    assert_eq!(flood(&mut stack, 0, 3), 3);
    let mut synacks = 0;
    let mut out = Outputs::default();
    while stack.clock - stack.start < HANDSHAKE_TIMEOUT - Duration::from_secs(1) {
        stack.advance(Duration::from_millis(500));
        stack.poll_timers(&mut out);
        synacks += out.packets.drain(..).count();
    }
    assert_eq!(stack.connection_count(), 3, "the handshakes still have time");
    assert!(synacks >= 3 * 4, "lost SYN-ACKs are sent again: {synacks}");

    stack.advance(Duration::from_secs(2));
    stack.poll_timers(&mut out);
    assert_eq!(stack.connection_count(), 0, "half-open connections are dropped");
    assert!(out.packets.is_empty(), "without a word: {:?}", out.packets);
    assert!(out.events.is_empty(), "Python never heard of them");
    assert_eq!(stack.admission.held(0), 0);
    assert_eq!(stack.next_deadline(), None, "nothing is left to do");
}

#[test]
fn an_idle_connection_whose_client_vanished_ends_after_keepalive_probes() {
    let mut stack = stack();
    let mut gone = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let mut here = Client::connect(1, "10.0.0.2:40000", "10.0.0.42:1234");
    let gone_id = established(&gone.pump(&mut stack));
    let here_id = established(&here.pump(&mut stack));

    // The first client vanishes; the second stays, idle, and answers.
    let mut events = vec![];
    let mut probes = 0;
    while stack.clock - stack.start < SILENCE_TIMEOUT + Duration::from_secs(60) {
        stack.advance(Duration::from_secs(20));
        let (mut e, lost) = exchange(&mut stack, &mut [&mut here]);
        if closed(&e, gone_id).is_some() {
            let after = stack.clock - stack.start;
            assert!(after >= SILENCE_TIMEOUT, "closed after only {after:?}");
        }
        events.append(&mut e);
        probes += lost;
    }
    assert_eq!(closed(&events, gone_id), Some(true), "Python hears of a reset");
    assert!(probes >= 4, "the stack probed the client first: {probes} packets");
    assert_eq!(closed(&events, here_id), None, "a client that answers stays");
    assert_eq!(stack.connection_count(), 1);
    here.socket().send_slice(b"still here").unwrap();
    assert_eq!(data(&here.pump(&mut stack)), b"still here");
}

#[test]
fn a_client_that_keeps_its_window_closed_is_reset_at_the_user_timeout() {
    let mut stack = stack();
    let mut stuck = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let mut slow = Client::connect(1, "10.0.0.2:40000", "10.0.0.42:1234");
    let stuck_id = established(&stuck.pump(&mut stack));
    let slow_id = established(&slow.pump(&mut stack));

    // Python sends each more than the clients' receive buffers (1 MiB) hold; neither reads.
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let mut out = Outputs::default();
    for id in [stuck_id, slow_id] {
        let data = payload.clone();
        stack.handle(PythonToNetwork::Write { id, data }, &mut out);
    }
    stack.flush(&mut out);
    for (peer, p) in out.packets {
        let client = if peer == 0 { &mut stuck } else { &mut slow };
        client.take(stack.now(), p);
    }

    // The slow client reads what it has at 200 s, then stops again; both answer every probe.
    let mut received = vec![];
    let mut events = vec![];
    let mut read = false;
    while stack.clock - stack.start < USER_TIMEOUT + Duration::from_secs(120) {
        stack.advance(Duration::from_secs(5));
        if !read && stack.clock - stack.start >= Duration::from_secs(200) {
            read = true;
            while let Ok(chunk) = slow.socket().recv(|b| (b.len(), b.to_vec())) {
                if chunk.is_empty() {
                    break;
                }
                received.extend(chunk);
            }
        }
        let (mut e, lost) = exchange(&mut stack, &mut [&mut stuck, &mut slow]);
        assert_eq!(lost, 0);
        if closed(&e, stuck_id).is_some() {
            let after = stack.clock - stack.start;
            assert!(after >= USER_TIMEOUT, "reset after only {after:?}");
        }
        events.append(&mut e);
    }
    assert_eq!(closed(&events, stuck_id), Some(true), "Python hears of a reset");
    assert_eq!(
        closed(&events, slow_id),
        None,
        "the slow client moved on within the timeout"
    );

    // The slow client reads on: everything arrives.
    for _ in 0..100 {
        while let Ok(chunk) = slow.socket().recv(|b| (b.len(), b.to_vec())) {
            if chunk.is_empty() {
                break;
            }
            received.extend(chunk);
        }
        if received.len() == payload.len() {
            break;
        }
        exchange(&mut stack, &mut [&mut slow]);
    }
    assert!(
        received == payload,
        "{} of {} bytes",
        received.len(),
        payload.len()
    );
}

/// A SYN maps no buffer: the connection gets its buffers with the segment that completes the handshake, and a
/// SYN flood holds none.
#[test]
fn half_open_connections_map_no_buffers() {
    let mut stack = stack();
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    client
        .iface
        .poll(stack.now(), &mut client.device, &mut client.sockets);
    let syn = client.device.tx.drain(..).next().expect("a SYN");
    let mut out = Outputs::default();
    stack.receive(0, endpoint, syn, &mut out);
    stack.flush(&mut out);
    assert_eq!(out.packets.len(), 1, "a SYN-ACK");
    let conn = stack.connections.values().next().unwrap();
    assert!(conn.pages.memory.is_none(), "a half-open connection maps nothing");
    // The SYN-ACK offers the window scale of the whole buffer (7 for 4 MiB) and the first window.
    client.take_all(stack.now(), out.packets);
    let id = established(&client.pump(&mut stack));
    assert!(stack.connections[&id].pages.memory.is_some());
    client.socket().send_slice(&[1; 100_000]).unwrap();
    assert_eq!(data(&client.pump(&mut stack)).len(), 100_000);
}

#[test]
fn connections_never_outnumber_the_mappings_a_process_may_have() {
    let mut stack = stack();
    assert_eq!(stack.fit_mappings(1 << 20, 4096), MAX_CONNECTIONS, "room for all");
    assert_eq!(stack.fit_mappings(65_530, 4096), 65_530 - 4096 - POOLED_BUFFERS);
    assert_eq!(stack.admission.limits.total, 65_530 - 4096 - POOLED_BUFFERS);
}
