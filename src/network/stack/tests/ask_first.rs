//! A stack that asks Python about each SYN first (`Stack::set_ask_first`): the client hears nothing until Python
//! answers, then what Python chose: the handshake, a RST, an ICMP destination-unreachable, or nothing at all.

use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet};

use super::*;
use crate::messages::SynAnswer;
use crate::network::packet::Unreachable;
use crate::network::stack::HANDSHAKE_TIMEOUT;

/// A stack that asks first, and a client whose SYN is held: its connection's id, and the events so far.
fn held(src: &str, dst: &str) -> (TestStack, Client, ConnectionId) {
    let mut stack = stack();
    stack.set_ask_first(true);
    let mut client = Client::connect(0, src, dst);
    let events = client.pump(&mut stack);
    let requested: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            NetworkToPython::ConnectionRequested {
                id,
                peer,
                src: s,
                dst: d,
                ..
            } => Some((*id, peer.id, s.to_string(), d.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(requested.len(), 1, "one question per SYN: {events:?}");
    let (id, peer, s, d) = requested[0].clone();
    assert_eq!((peer, s.as_str(), d.as_str()), (0, src, dst));
    assert_eq!(events.len(), 1, "nothing else: {events:?}");
    assert_eq!(
        client.socket().state(),
        tcp::State::SynSent,
        "no SYN-ACK while Python decides"
    );
    // The client sends its SYN again: still no answer, and no second question.
    for _ in 0..3 {
        stack.advance(Duration::from_secs(4));
        let events = client.pump(&mut stack);
        assert!(events.is_empty(), "nothing for a retransmitted SYN: {events:?}");
        assert_eq!(client.socket().state(), tcp::State::SynSent);
    }
    assert_eq!(stack.connection_count(), 1);
    (stack, client, id)
}

fn answer(stack: &mut TestStack, id: ConnectionId, answer: SynAnswer) -> Outputs {
    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::Answer { id, answer }, &mut out);
    stack.flush(&mut out);
    out
}

/// Hands the stack's packets to the client.
fn deliver(stack: &TestStack, client: &mut Client, out: Outputs) {
    client.take_all(stack.now(), out.packets);
}

#[test]
fn an_accepted_syn_gets_its_syn_ack_and_the_connection_is_established() {
    for (src, dst) in [
        ("10.0.0.1:40000", "198.51.100.7:443"),
        ("[fd00::1]:40000", "[2001:db8::7]:80"),
    ] {
        let (mut stack, mut client, id) = held(src, dst);
        let out = answer(&mut stack, id, SynAnswer::Accept);
        assert_eq!(out.packets.len(), 1, "the SYN-ACK");
        deliver(&stack, &mut client, out);
        let events = client.pump(&mut stack);
        assert_eq!(established(&events), id);
        assert_eq!(client.socket().state(), tcp::State::Established);
        client.socket().send_slice(b"hello").unwrap();
        assert_eq!(data(&client.pump(&mut stack)), b"hello");
        // A second answer changes nothing.
        let out = answer(&mut stack, id, SynAnswer::Reset);
        assert!(out.packets.is_empty());
        assert_eq!(client.socket().state(), tcp::State::Established);
    }
}

#[test]
fn a_reset_answer_closes_the_client_as_a_closed_port_does() {
    let (mut stack, mut client, id) = held("10.0.0.1:40000", "198.51.100.7:443");
    let out = answer(&mut stack, id, SynAnswer::Reset);
    assert_eq!(out.packets.len(), 1, "the RST");
    assert_eq!(stack.connection_count(), 0, "forgotten");
    deliver(&stack, &mut client, out);
    assert_eq!(client.socket().state(), tcp::State::Closed);
    assert!(client.pump(&mut stack).is_empty());
}

#[test]
fn an_unreachable_answer_is_an_icmp_error_quoting_the_syn() {
    for (why, code) in [
        (Unreachable::Host, Icmpv4DstUnreachable::HostUnreachable),
        (Unreachable::Network, Icmpv4DstUnreachable::NetUnreachable),
        (Unreachable::Prohibited, Icmpv4DstUnreachable::CommProhibited),
    ] {
        let (mut stack, _client, id) = held("10.0.0.1:40000", "198.51.100.7:443");
        let out = answer(&mut stack, id, SynAnswer::Unreachable(why));
        assert_eq!(stack.connection_count(), 0, "forgotten");
        assert_eq!(out.packets.len(), 1);
        let (peer, p) = &out.packets[0];
        assert_eq!(*peer, 0);
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(ip.dst_addr().to_string(), "10.0.0.1");
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
            Icmpv4Repr::DstUnreachable { reason, data, .. } => {
                assert_eq!(reason, code);
                let tcp = smoltcp::wire::TcpPacket::new_checked(data).unwrap();
                assert!(tcp.syn() && !tcp.ack());
                assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 443));
            }
            other => panic!("not a destination unreachable: {other:?}"),
        }
    }
}

#[test]
fn a_silent_answer_sends_nothing_until_the_handshake_times_out() {
    let (mut stack, mut client, id) = held("10.0.0.1:40000", "198.51.100.7:443");
    let out = answer(&mut stack, id, SynAnswer::Silence);
    assert!(out.packets.is_empty() && out.events.is_empty());
    // The client keeps trying; the stack keeps quiet, and the connection counts as half-open meanwhile.
    while stack.clock - stack.start < HANDSHAKE_TIMEOUT - Duration::from_secs(2) {
        stack.advance(Duration::from_secs(5));
        assert!(client.pump(&mut stack).is_empty());
        assert_eq!(client.socket().state(), tcp::State::SynSent);
        assert_eq!(stack.connection_count(), 1);
        assert_eq!(stack.admission.held(0), 1);
    }
    // An accept too late changes nothing either.
    let out = answer(&mut stack, id, SynAnswer::Accept);
    assert!(out.packets.is_empty());
    stack.advance(Duration::from_secs(10));
    stack.poll_timers(&mut Outputs::default());
    assert_eq!(stack.connection_count(), 0, "forgotten at the handshake timeout");
    assert_eq!(client.socket().state(), tcp::State::SynSent);
}

#[test]
fn a_stack_that_does_not_ask_answers_at_once() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:443");
    let events = client.pump(&mut stack);
    assert!(!events
        .iter()
        .any(|e| matches!(e, NetworkToPython::ConnectionRequested { .. })));
    established(&events);
}

#[test]
fn a_connection_python_closes_instead_of_answering_frees_its_half_open_place() {
    for close in [true, false] {
        let (mut stack, mut client, id) = held("10.0.0.1:5000", "10.0.0.42:80");
        stack.admission.limits.half_open_per_peer = 1;
        let mut out = Outputs::default();
        let request = if close {
            PythonToNetwork::Close { id }
        } else {
            PythonToNetwork::Abort { id }
        };
        stack.handle(request, &mut out);
        stack.flush(&mut out);
        client.pump(&mut stack);
        stack.check_invariants();
        // Another SYN of the peer's is asked about: the place is free again.
        let mut other = Client::connect(0, "10.0.0.1:5001", "10.0.0.42:80");
        let events = other.pump(&mut stack);
        assert!(
            matches!(events[..], [NetworkToPython::ConnectionRequested { .. }]),
            "{events:?}"
        );
        stack.check_invariants();
    }
}
