//! Unit tests of peers added and removed while the stack runs, and of the stack's statistics.

use std::net::SocketAddr;

use smoltcp::socket::tcp;

use super::super::*;
use super::{data, established, stack, Client, TestStack};
use crate::messages::{PeerStats, PythonToNetwork};
use crate::network::device::MTU;
use crate::network::packet;

/// A UDP datagram from a peer's client address.
fn udp_from(stack: &mut TestStack, peer: PeerId, src: &str, out: &mut Outputs) {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = "10.0.0.42:53".parse().unwrap();
    let mut packets = packet::udp_packets(src, dst, b"query", MTU, 1).unwrap();
    assert_eq!(packets.len(), 1);
    let p = packets.pop().unwrap();
    stack.receive(peer, "127.0.0.1:9".parse().unwrap(), p, out);
}

fn stats_of(stack: &mut TestStack, ids: &[PeerId]) -> Vec<PeerStats> {
    let mut stats: Vec<PeerStats> = ids
        .iter()
        .map(|&id| PeerStats {
            id,
            ..PeerStats::default()
        })
        .collect();
    stack.complete_stats(&mut stats);
    stats
}

/// A datagram from Python to `dst`, without naming a peer: the packets it makes and the peers they go to.
fn reply_to(stack: &mut TestStack, dst: &str) -> Vec<PeerId> {
    reply_to_peer(stack, dst, None)
}

fn reply_to_peer(stack: &mut TestStack, dst: &str, peer: Option<PeerId>) -> Vec<PeerId> {
    let mut out = Outputs::default();
    let msg = PythonToNetwork::SendDatagram {
        data: b"answer".to_vec(),
        src: "10.0.0.42:53".parse().unwrap(),
        dst: dst.parse().unwrap(),
        peer,
    };
    stack.handle(msg, &mut out);
    out.packets.iter().map(|(peer, _)| *peer).collect()
}

#[test]
fn removing_a_peer_resets_its_connections_and_forgets_its_routes() {
    let mut stack = stack();
    stack.add_peer(PeerInfo {
        id: 7,
        public_key: "key7".into(),
    });
    let mut a = Client::connect(0, "10.0.0.2:40000", "10.0.0.42:1234");
    let mut b = Client::connect(1, "10.0.0.3:40000", "10.0.0.42:1234");
    let id_a = established(&a.pump(&mut stack));
    established(&b.pump(&mut stack));
    let mut out = Outputs::default();
    udp_from(&mut stack, 0, "10.0.0.2:5353", &mut out);
    udp_from(&mut stack, 1, "10.0.0.3:5353", &mut out);
    assert_eq!(reply_to(&mut stack, "10.0.0.2:5353"), vec![0]);

    let mut out = Outputs::default();
    let now = stack.clock;
    stack.remove_peer(now, 0, &mut out);
    // Python hears of the reset; the client gets a RST.
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, NetworkToPython::ConnectionClosed { id, reset: true } if *id == id_a)),
        "{:?}",
        out.events
    );
    assert!(!out.packets.is_empty() && out.packets.iter().all(|(peer, _)| *peer == 0));
    a.take_all(stack.now(), out.packets);
    assert_eq!(a.socket().state(), tcp::State::Closed);
    assert_eq!(stack.connection_count(), 1);
    // Its UDP route is gone: a reply to its address reaches no one.
    assert!(reply_to(&mut stack, "10.0.0.2:5353").is_empty());
    assert_eq!(reply_to(&mut stack, "10.0.0.3:5353"), vec![1]);
    // What it still sends is dropped without an answer, even a SYN.
    let mut late = Client::connect(0, "10.0.0.2:40001", "10.0.0.42:1234");
    assert!(late.pump(&mut stack).is_empty());
    assert_eq!(stack.connection_count(), 1);
    // The other peer goes on.
    b.socket().send_slice(b"still here").unwrap();
    assert_eq!(data(&b.pump(&mut stack)), b"still here");
}

#[test]
fn a_reply_for_a_removed_peer_goes_to_no_other() {
    let mut stack = stack();
    let mut out = Outputs::default();
    udp_from(&mut stack, 0, "10.0.0.2:5353", &mut out);
    let now = stack.clock;
    stack.remove_peer(now, 0, &mut out);
    // Peer 1 is the only one left, and would get datagrams to addresses nobody sent from.
    assert!(reply_to_peer(&mut stack, "10.0.0.2:5353", Some(0)).is_empty());
    assert_eq!(reply_to(&mut stack, "10.0.0.9:1"), vec![1]);
}

/// Two peers of the 0.1.x form, which may use any address, sent from the same one: a reply that names no peer
/// could reach the wrong one, so it reaches none; one that names its peer reaches it.
#[test]
fn a_reply_to_an_address_two_peers_sent_from_must_name_its_peer() {
    let mut stack = stack();
    let mut out = Outputs::default();
    udp_from(&mut stack, 0, "10.0.0.2:5353", &mut out);
    assert_eq!(reply_to(&mut stack, "10.0.0.2:5353"), vec![0]);
    udp_from(&mut stack, 1, "10.0.0.2:5353", &mut out);
    assert!(reply_to(&mut stack, "10.0.0.2:5353").is_empty());
    assert_eq!(reply_to_peer(&mut stack, "10.0.0.2:5353", Some(0)), vec![0]);
    assert_eq!(reply_to_peer(&mut stack, "10.0.0.2:5353", Some(1)), vec![1]);
}

#[test]
fn a_peer_added_later_opens_connections_under_its_own_key() {
    let mut stack = stack();
    stack.add_peer(PeerInfo {
        id: 5,
        public_key: "key5".into(),
    });
    let mut c = Client::connect(5, "10.0.0.9:40000", "10.0.0.42:1234");
    let events = c.pump(&mut stack);
    established(&events); // checks that the event names key5
}

#[test]
fn statistics_count_each_peers_open_connections_and_udp_flows() {
    let mut stack = stack();
    let mut a1 = Client::connect(0, "10.0.0.2:40000", "10.0.0.42:1234");
    let mut a2 = Client::connect(0, "10.0.0.2:40001", "10.0.0.42:80");
    let mut b = Client::connect(1, "10.0.0.3:40000", "10.0.0.42:1234");
    established(&a1.pump(&mut stack));
    established(&a2.pump(&mut stack));
    established(&b.pump(&mut stack));
    let mut out = Outputs::default();
    for src in ["10.0.0.2:1", "10.0.0.2:2", "10.0.0.2:2", "10.0.0.2:3"] {
        udp_from(&mut stack, 0, src, &mut out);
    }
    stack.receive(1, "127.0.0.1:9".parse().unwrap(), vec![0x45, 0, 0], &mut out);

    let stats = stats_of(&mut stack, &[0, 1]);
    assert_eq!((stats[0].tcp_connections, stats[0].udp_flows), (2, 3));
    assert_eq!((stats[1].tcp_connections, stats[1].udp_flows), (1, 0));
    assert!(stats[0].drops.contains(&("malformed", 0)));
    assert!(stats[1].drops.contains(&("malformed", 1)));

    // A connection that ended is not open any more.
    b.socket().abort();
    b.pump(&mut stack);
    assert_eq!(stats_of(&mut stack, &[1])[0].tcp_connections, 0);
}

#[test]
fn statistics_count_each_peers_datagrams_dropped_at_the_queues() {
    let mut stack = stack();
    stack.count_queue_drop(0, QueueDrop::Python);
    stack.count_queue_drop(0, QueueDrop::Python);
    stack.count_queue_drop(1, QueueDrop::Tunnel);
    stack.count_queue_drop(7, QueueDrop::Tunnel); // a removed peer: nothing to count on
    let stats = stats_of(&mut stack, &[0, 1]);
    assert!(stats[0].drops.contains(&("python_queue", 2)));
    assert!(stats[0].drops.contains(&("tunnel_queue", 0)));
    assert!(stats[1].drops.contains(&("python_queue", 0)));
    assert!(stats[1].drops.contains(&("tunnel_queue", 1)));
}
