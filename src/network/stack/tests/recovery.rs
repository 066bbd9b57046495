//! Loss recovery of the stack's own data (patches/README.md, smoltcp-sack-recovery): several segments of one
//! flight lost in the tunnel are resent once each, and only they, on the client's acknowledgements, without
//! waiting for a retransmission timeout.

use std::collections::BTreeSet;

use super::*;

/// The indices, in sending order, of the data segments of the first flight that the tunnel loses.
const LOSSES: &[usize] = &[4, 11, 19];

#[test]
fn sack_recovery_of_several_losses_in_a_window_resends_only_the_lost_segments() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    // Every acknowledgement at once: nothing here needs the clock to move.
    client.socket().set_ack_delay(None);
    let id = established(&client.pump(&mut stack));
    let start = stack.clock;

    // Less than the send buffer, so that one flight carries it all.
    let download: Vec<u8> = (0..(INITIAL_SEND_BUFFER as u32 - 4096))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut out = Outputs::default();
    stack.handle(
        PythonToNetwork::Write {
            id,
            data: download.clone(),
        },
        &mut out,
    );
    stack.flush(&mut out);

    let (mut data_segments, mut starts) = (0, BTreeSet::new());
    let mut to_client: Vec<Vec<u8>> = out.packets.into_iter().map(|(_, p)| p).collect();
    let mut downloaded = vec![];
    for _ in 0..100 {
        if to_client.is_empty() {
            break;
        }
        let now = stack.now();
        for p in to_client.drain(..) {
            let segment = packet::sent_segment(&p).unwrap();
            if segment.has_data {
                data_segments += 1;
                starts.insert(segment.seq);
                if LOSSES.contains(&(data_segments - 1)) {
                    continue;
                }
            }
            client.device.rx = Some(p);
            client.iface.poll(now, &mut client.device, &mut client.sockets);
        }
        while let Ok(chunk) = client.socket().recv(|b| (b.len(), b.to_vec())) {
            if chunk.is_empty() {
                break;
            }
            downloaded.extend(chunk);
        }
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        let mut out = Outputs::default();
        for p in client.device.tx.drain(..) {
            stack.receive(0, "127.0.0.1:9".parse().unwrap(), p, &mut out);
        }
        stack.flush(&mut out);
        stack.poll_timers(&mut out);
        to_client.extend(out.packets.into_iter().map(|(_, p)| p));
    }

    assert_eq!(downloaded.len(), download.len(), "every byte arrived");
    assert!(downloaded == download, "the download arrived intact");
    assert!(
        starts.len() > LOSSES.iter().max().unwrap() + 3,
        "one flight: {} segments",
        starts.len()
    );
    assert_eq!(
        data_segments,
        starts.len() + LOSSES.len(),
        "only the lost segments were sent again"
    );
    assert_eq!(
        stack.clock, start,
        "recovered without any timer: the clock never moved"
    );
    let conn = stack.connections.get_mut(&id).unwrap();
    assert_eq!(conn.socket().send_queue(), 0, "everything was acknowledged");
}

/// The tail of a flight lost in the tunnel: no later segment draws duplicate acknowledgements, so nothing shows
/// the loss but time. The stack probes after two round trips (patches/README.md, smoltcp-rack-tlp) with the
/// last segment; the client's SACK of it shows the holes below, which are resent at once: all of it long before
/// the 200 ms retransmission timeout.
#[test]
fn a_lost_tail_is_resent_after_a_probe_long_before_the_retransmission_timeout() {
    const LOST_TAIL: usize = 3;
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    client.socket().set_ack_delay(None);
    let id = established(&client.pump(&mut stack));
    let start = stack.clock;

    let download: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut out = Outputs::default();
    stack.handle(
        PythonToNetwork::Write {
            id,
            data: download.clone(),
        },
        &mut out,
    );
    stack.flush(&mut out);
    let mut to_client: Vec<Vec<u8>> = out.packets.into_iter().map(|(_, p)| p).collect();
    let flight = to_client
        .iter()
        .filter(|p| packet::sent_segment(p).unwrap().has_data)
        .count();
    assert!(flight > LOST_TAIL + 3, "one flight: {flight} segments");

    let (mut data_segments, mut downloaded) = (0, vec![]);
    while stack.clock < start + Duration::from_millis(190) && downloaded.len() < download.len() {
        let now = stack.now();
        for p in to_client.drain(..) {
            if packet::sent_segment(&p).unwrap().has_data {
                data_segments += 1;
                if (flight - LOST_TAIL..flight).contains(&(data_segments - 1)) {
                    continue;
                }
            }
            client.device.rx = Some(p);
            client.iface.poll(now, &mut client.device, &mut client.sockets);
        }
        while let Ok(chunk) = client.socket().recv(|b| (b.len(), b.to_vec())) {
            if chunk.is_empty() {
                break;
            }
            downloaded.extend(chunk);
        }
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        let mut out = Outputs::default();
        let acks: Vec<_> = client.device.tx.drain(..).collect();
        if acks.is_empty() {
            // Quiet: let the clock run on, a millisecond at a time.
            stack.advance(Duration::from_millis(1));
        }
        for p in acks {
            stack.receive(0, "127.0.0.1:9".parse().unwrap(), p, &mut out);
        }
        stack.flush(&mut out);
        stack.poll_timers(&mut out);
        to_client.extend(out.packets.into_iter().map(|(_, p)| p));
    }

    assert!(downloaded == download, "the download arrived intact");
    assert_eq!(
        data_segments,
        flight + LOST_TAIL,
        "only the lost segments were sent again"
    );
    let waited = stack.clock - start;
    assert!(
        waited < Duration::from_millis(100),
        "recovered {waited:?} after the flight, not after the timeout"
    );
}
