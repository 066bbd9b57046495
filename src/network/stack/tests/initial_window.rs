//! The first flight of a connection: at least the ten segments of RFC 6928's initial window go out within the
//! round trip the handshake measured, as a kernel's would, so that a short transfer is not held back by pacing
//! or a small window before any acknowledgement arrived.

use std::time::Duration;

use super::*;
use crate::network::packet;

/// The segments with data among `out`'s packets.
fn data_segments(out: &Outputs) -> usize {
    out.packets
        .iter()
        .filter(|(_, p)| packet::sent_segment(p).is_some_and(|s| s.has_data))
        .count()
}

#[test]
fn the_first_flight_is_at_least_ten_segments_within_the_round_trip_of_the_handshake() {
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for rtt_ms in [10, 50, 200] {
        let rtt = Duration::from_millis(rtt_ms);
        let mut stack = stack();
        let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");

        // The SYN; its SYN-ACK reaches the client, whose ACK comes back a round trip after the SYN-ACK left.
        let now = stack.now();
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        let syn = client.device.tx.pop().unwrap();
        let mut out = Outputs::default();
        stack.receive(client.peer, endpoint, syn, &mut out);
        stack.flush(&mut out);
        assert_eq!(out.packets.len(), 1, "a SYN-ACK");
        stack.advance(rtt);
        let now = stack.now();
        client.take_all(now, out.packets);
        let ack = client.device.tx.pop().expect("the client's ACK");
        let mut out = Outputs::default();
        stack.receive(client.peer, endpoint, ack, &mut out);
        stack.flush(&mut out);
        let id = established(&out.events);

        // Python answers at once with more than any initial window; no acknowledgement comes for a round trip.
        stack.handle(
            PythonToNetwork::Write {
                id,
                data: vec![7; 200_000],
            },
            &mut out,
        );
        stack.flush(&mut out);
        let mut sent = data_segments(&out);
        let end = stack.clock + rtt;
        while let Some(at) = stack.next_deadline().filter(|&at| at < end) {
            stack.clock = stack.clock.max(at) + Duration::from_micros(1);
            let mut out = Outputs::default();
            stack.poll_timers(&mut out);
            stack.flush(&mut out);
            sent += data_segments(&out);
        }
        assert!(
            sent >= 10,
            "{sent} segments in the first round trip of {rtt_ms} ms, not the 10 of RFC 6928"
        );
    }
}
