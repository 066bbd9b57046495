//! Loss recovery of the stack's own data (crates/smoltcp/fork/README.md: loss recovery with SACK, and the tail loss probe): segments
//! lost in the tunnel are resent once each, and only they, on the client's acknowledgements or after a tail loss
//! probe, without waiting for a retransmission timeout; a reply lost with the acknowledgement of its request is
//! resent when the client repeats the request; the timeout's floor is Linux's.

use std::collections::BTreeSet;

use super::*;

/// The tunnel between the stack and one client, losing data segments of the stack's by their number in sending
/// order; what the client read.
struct LossyTunnel<F: Fn(usize) -> bool> {
    lost: F,
    /// Data segments the stack sent so far, and where each began.
    data_segments: usize,
    starts: BTreeSet<u32>,
    downloaded: Vec<u8>,
}

impl<F: Fn(usize) -> bool> LossyTunnel<F> {
    fn new(lost: F) -> Self {
        Self {
            lost,
            data_segments: 0,
            starts: BTreeSet::new(),
            downloaded: vec![],
        }
    }

    /// Delivers the stack's packets to the client (but the lost ones), lets it read, and hands its
    /// acknowledgements to the stack: the stack's answers, and whether the client had anything to send.
    fn exchange(
        &mut self,
        stack: &mut TestStack,
        client: &mut Client,
        to_client: Vec<Vec<u8>>,
    ) -> (Vec<Vec<u8>>, bool) {
        let now = stack.now();
        for p in to_client {
            let segment = packet::sent_segment(&p).unwrap();
            if segment.has_data {
                self.data_segments += 1;
                self.starts.insert(segment.seq);
                if (self.lost)(self.data_segments - 1) {
                    continue;
                }
            }
            client.take(now, p);
        }
        client.read_into(&mut self.downloaded);
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        let acks: Vec<_> = client.device.tx.drain(..).collect();
        let client_spoke = !acks.is_empty();
        let mut out = Outputs::default();
        for p in acks {
            stack.receive(0, "127.0.0.1:9".parse().unwrap(), p, &mut out);
        }
        stack.flush(&mut out);
        stack.poll_timers(&mut out);
        (out.packets.into_iter().map(|(_, p)| p).collect(), client_spoke)
    }
}

/// A connection on which Python wrote `download` at once: the packets of the stack's first flight.
fn write_at_once(stack: &mut TestStack, client: &mut Client, download: &[u8]) -> Vec<Vec<u8>> {
    // Every acknowledgement at once: nothing here needs the clock to move for the client.
    client.socket().set_ack_delay(None);
    let id = established(&client.pump(stack));
    let mut out = Outputs::default();
    stack.handle(
        PythonToNetwork::Write {
            id,
            data: download.to_vec(),
        },
        &mut out,
    );
    stack.flush(&mut out);
    out.packets.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn sack_recovery_of_several_losses_in_a_window_resends_only_the_lost_segments() {
    // The data segments of the first flight that the tunnel loses, in sending order.
    const LOSSES: &[usize] = &[4, 11, 19];
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    // Less than the send buffer, so that one flight carries it all.
    let download: Vec<u8> = (0..(INITIAL_SEND_BUFFER as u32 - 4096))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut to_client = write_at_once(&mut stack, &mut client, &download);
    let start = stack.clock;

    let mut tunnel = LossyTunnel::new(|i| LOSSES.contains(&i));
    for _ in 0..100 {
        if to_client.is_empty() {
            break;
        }
        to_client = tunnel.exchange(&mut stack, &mut client, to_client).0;
    }

    assert_eq!(tunnel.downloaded.len(), download.len(), "every byte arrived");
    assert!(tunnel.downloaded == download, "the download arrived intact");
    assert!(
        tunnel.starts.len() > LOSSES.iter().max().unwrap() + 3,
        "one flight: {} segments",
        tunnel.starts.len()
    );
    assert_eq!(
        tunnel.data_segments,
        tunnel.starts.len() + LOSSES.len(),
        "only the lost segments were sent again"
    );
    assert_eq!(
        stack.clock, start,
        "recovered without any timer: the clock never moved"
    );
    let (_, conn) = stack.connections.iter_mut().next().unwrap();
    assert_eq!(conn.socket().send_queue(), 0, "everything was acknowledged");
}

/// The tail of a flight lost in the tunnel: no later segment draws duplicate acknowledgements, so nothing shows
/// the loss but time. The stack probes after two round trips (crates/smoltcp/fork/README.md, the tail loss probe) with the
/// last segment; the client's SACK of it shows the holes below, which are resent at once: all of it long before
/// the 200 ms retransmission timeout.
#[test]
fn a_lost_tail_is_resent_after_a_probe_long_before_the_retransmission_timeout() {
    const LOST_TAIL: usize = 3;
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let download: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut to_client = write_at_once(&mut stack, &mut client, &download);
    let start = stack.clock;
    let flight = to_client
        .iter()
        .filter(|p| packet::sent_segment(p).unwrap().has_data)
        .count();
    assert!(flight > LOST_TAIL + 3, "one flight: {flight} segments");

    let mut tunnel = LossyTunnel::new(|i| (flight - LOST_TAIL..flight).contains(&i));
    while stack.clock < start + Duration::from_millis(190) && tunnel.downloaded.len() < download.len() {
        let (next, client_spoke) = tunnel.exchange(&mut stack, &mut client, to_client);
        to_client = next;
        if !client_spoke {
            // Quiet: let the clock run on, a millisecond at a time.
            stack.advance(Duration::from_millis(1));
        }
    }

    assert!(tunnel.downloaded == download, "the download arrived intact");
    assert_eq!(
        tunnel.data_segments,
        flight + LOST_TAIL,
        "only the lost segments were sent again"
    );
    let waited = stack.clock - start;
    assert!(
        waited < Duration::from_millis(100),
        "recovered {waited:?} after the flight, not after the timeout"
    );
}

/// A lost segment that no duplicate ACK reveals waits for the retransmission timeout: its floor is Linux's 200 ms,
/// not smoltcp's default of 1 s.
#[test]
fn connections_have_a_200_ms_floor_under_the_retransmission_timeout() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    let id = established(&client.pump(&mut stack));
    let socket = stack.connections.get_mut(&id).unwrap().socket();
    assert_eq!(socket.min_rto(), smoltcp::time::Duration::from_millis(200));
}

#[test]
fn a_reply_lost_in_the_tunnel_is_resent_each_time_the_client_repeats_its_request() {
    for (src, dst) in [
        ("10.0.0.1:40000", "10.0.0.42:1234"),
        ("[fd00::1]:40000", "[fd00::42]:1234"),
    ] {
        let mut stack = stack();
        let mut client = Client::connect(0, src, dst);
        let id = established(&client.pump(&mut stack));
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();

        // The stack acknowledges the request with Python's reply, which the tunnel loses.
        let (request, out) = request_and_reply(&mut stack, &mut client, id);
        assert_eq!(data(&out.events), b"request");
        assert_eq!(out.packets.len(), 1, "the reply went out");

        // Long before the stack's retransmission timer, the client repeats its request (on its own timer, after
        // 200 ms): the reply is sent again at once. The first resend is lost too; the second arrives.
        for attempt in 0..2 {
            stack.advance(Duration::from_millis(200));
            let now = stack.now();
            let mut out = Outputs::default();
            stack.receive(0, endpoint, request.clone(), &mut out);
            stack.flush(&mut out);
            assert!(
                out.events.is_empty(),
                "Python does not get the request again: {:?}",
                out.events
            );
            let resent = out
                .packets
                .iter()
                .filter(|(_, p)| packet::sent_segment(p).unwrap().has_data)
                .count();
            assert_eq!(resent, 1, "attempt {attempt}: the reply was sent again");
            if attempt == 1 {
                client.take_all(now, out.packets);
            }
        }
        let mut buf = [0u8; 16];
        let n = client.socket().recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"reply");
    }
}

#[test]
fn a_repeated_request_whose_reply_arrived_resends_nothing() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let id = established(&client.pump(&mut stack));
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (request, out) = request_and_reply(&mut stack, &mut client, id);
    let reply_end = out
        .packets
        .iter()
        .filter_map(|(_, p)| packet::sent_segment(p).filter(|s| s.has_data))
        .next_back()
        .unwrap()
        .end();
    client.socket().set_ack_delay(None);
    client.take_all(stack.now(), out.packets);
    client.pump(&mut stack); // the reply arrived and is acknowledged at once

    // The client resends its request (say its timer fired early), now acknowledging the reply.
    let mut request = request;
    request[28..32].copy_from_slice(&reply_end.to_be_bytes());
    let mut out = Outputs::default();
    stack.receive(0, endpoint, request, &mut out);
    stack.flush(&mut out);
    let data_segments = out
        .packets
        .iter()
        .filter(|(_, p)| packet::sent_segment(p).unwrap().has_data)
        .count();
    assert_eq!(data_segments, 0, "only an acknowledgement answers a stale repeat");
}
