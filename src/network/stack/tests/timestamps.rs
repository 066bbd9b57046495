//! TCP timestamps (RFC 7323), as a kernel's TCP negotiates them: a client that offers them gets its TSvals echoed
//! and TSvals of the stack's clock; a client that does not offer them gets none.

use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Ipv4Packet, TcpPacket, TcpRepr, TcpTimestampRepr};

use super::*;

/// The timestamps option of a TCP packet over IPv4.
fn timestamp(packet: &[u8]) -> Option<TcpTimestampRepr> {
    let ip = Ipv4Packet::new_checked(packet).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
    TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::default())
        .unwrap()
        .timestamp
}

/// Passes the client's SYN and the stack's SYN-ACK (checked with `check`), then completes the handshake.
fn open(
    stack: &mut TestStack,
    client: &mut Client,
    check: impl FnOnce(Option<TcpTimestampRepr>, Option<TcpTimestampRepr>),
) -> ConnectionId {
    let now = stack.now();
    client.iface.poll(now, &mut client.device, &mut client.sockets);
    let syn = client.device.tx.pop().unwrap();
    let offer = timestamp(&syn);
    let mut out = Outputs::default();
    stack.receive(client.peer, "127.0.0.1:9".parse().unwrap(), syn, &mut out);
    stack.flush(&mut out);
    assert_eq!(out.packets.len(), 1, "a SYN-ACK");
    check(offer, timestamp(&out.packets[0].1));
    client.take_all(now, out.packets);
    established(&client.pump(stack))
}

#[test]
fn a_client_that_offers_timestamps_gets_its_tsvals_echoed() {
    let mut stack = stack();
    let mut client = Client::connect_with(0, "10.0.0.1:40000", "10.0.0.42:1234", |socket| {
        socket.set_tsval_from_clock(true)
    });
    let mut syn_ack = None;
    let id = open(&mut stack, &mut client, |offer, answer| {
        let offer = offer.expect("the client offers timestamps");
        assert_eq!(offer.tsecr, 0);
        let answer = answer.expect("the SYN-ACK carries timestamps");
        assert_eq!(answer.tsecr, offer.tsval, "the SYN-ACK echoes the SYN's TSval");
        syn_ack = Some(answer);
    });
    let syn_ack = syn_ack.unwrap();
    assert!(stack
        .connections
        .get_mut(&id)
        .unwrap()
        .socket()
        .timestamp_enabled());

    // 250 ms later the client sends a request, and Python answers at once: the stack's segment echoes the
    // request's TSval, and its own TSval moved on with the stack's clock, in milliseconds.
    stack.advance(Duration::from_millis(250));
    let (request, out) = request_and_reply(&mut stack, &mut client, id);
    let request = timestamp(&request).expect("the client's segments carry timestamps");
    let replies: Vec<_> = out.packets.iter().map(|(_, p)| timestamp(p)).collect();
    assert!(!replies.is_empty());
    for reply in replies {
        let reply = reply.expect("the stack's segments carry timestamps");
        assert_eq!(reply.tsecr, request.tsval, "TS.Recent is the request's TSval");
        assert_eq!(reply.tsval.wrapping_sub(syn_ack.tsval), 250);
    }
}

#[test]
fn a_client_without_timestamps_gets_none() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let id = open(&mut stack, &mut client, |offer, answer| {
        assert_eq!(offer, None);
        assert_eq!(answer, None, "no timestamps in the SYN-ACK");
    });
    assert!(!stack
        .connections
        .get_mut(&id)
        .unwrap()
        .socket()
        .timestamp_enabled());
    let (_, out) = request_and_reply(&mut stack, &mut client, id);
    assert!(!out.packets.is_empty());
    for (_, p) in &out.packets {
        assert_eq!(timestamp(p), None);
    }
}
