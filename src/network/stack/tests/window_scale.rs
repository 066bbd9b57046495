//! Window scaling under backpressure and loss: the case that stalled connections before smoltcp was patched
//! (crates/smoltcp/fork/README.md).

use std::time::Duration;

use super::*;
use crate::network::stack::{INITIAL_SEND_BUFFER, INITIAL_WINDOW};

/// Passes the client's SYN and the stack's SYN-ACK, checking that the stack offers window scaling; returns the
/// client's initial sequence number.
fn open_with_window_scale(stack: &mut TestStack, client: &mut Client) -> u32 {
    let now = stack.now();
    client.iface.poll(now, &mut client.device, &mut client.sockets);
    let syn = client.device.tx.pop().unwrap();
    let isn = packet::sent_segment(&syn).unwrap().seq;
    let mut out = Outputs::default();
    stack.receive(0, "127.0.0.1:9".parse().unwrap(), syn, &mut out);
    stack.flush(&mut out);
    let syn_ack = &out.packets[0].1;
    let syn_ack = smoltcp::wire::TcpPacket::new_checked(&syn_ack[20..]).unwrap();
    let scale = smoltcp::wire::TcpRepr::parse(
        &syn_ack,
        &IpAddress::v4(10, 0, 0, 42),
        &IpAddress::v4(10, 0, 0, 1),
        &smoltcp::phy::ChecksumCapabilities::default(),
    )
    .unwrap()
    .window_scale;
    assert!(scale.is_some_and(|s| s > 0), "window scaling offered: {scale:?}");
    client.take_all(now, out.packets);
    isn
}

/// The client's data that the tunnel loses, at these offsets: in the last flight before the window (the first
/// one, as the handler does not read) is full.
const LOSSES: &[usize] = &[INITIAL_WINDOW - 10_000];

/// A handler that reads only once its writes are drained (a proxy that pauses reading while its other side is
/// slow), on a connection with a scaled window and a tunnel that loses a segment while the window fills. The
/// segments after the gap are acknowledged at once, with the window rounded down to the scale: its right edge
/// moves left of where the client already sent, and the window closes with the client's sequence number beyond
/// it. The client's acknowledgements must count all the same, or the handler's writes never drain, it never
/// reads, and the connection stalls. The client behaves as a kernel's TCP does: it keeps its sequence number in
/// acknowledgements when the window shrank by less than a scale unit (Linux's `tcp_acceptable_seq`), so they
/// never become acceptable while the window stays closed.
#[test]
fn a_scaled_window_closed_by_a_handler_that_waits_for_its_writes_still_takes_acknowledgements() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let isn = open_with_window_scale(&mut stack, &mut client);
    let id = established(&client.pump(&mut stack));

    let download: Vec<u8> = (0..3 * INITIAL_SEND_BUFFER as u32)
        .map(|i| (i % 241) as u8)
        .collect();
    let upload: Vec<u8> = (0..16 * INITIAL_WINDOW as u32).map(|i| (i % 239) as u8).collect();
    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::PauseReading { id }, &mut out);
    stack.handle(
        PythonToNetwork::Write {
            id,
            data: download.clone(),
        },
        &mut out,
    );
    stack.flush(&mut out);
    let mut events = out.events;
    let mut to_client = out.packets;

    let (mut sent, mut drained, mut reading) = (0, 0, false);
    let (mut uploaded, mut downloaded) = (vec![], vec![]);
    // The tunnel loses the first copy of the segments that carry the bytes at `LOSSES`. The client's bare
    // acknowledgements carry the furthest sequence number it sent: this client goes back to the first
    // unacknowledged byte when it resends, a kernel's TCP does not.
    let mut losses = LOSSES.to_vec();
    let mut next = isn.wrapping_add(1);
    let mut tunnel = |p: Vec<u8>| {
        let segment = packet::sent_segment(&p).unwrap();
        if segment.len == 0 {
            return packet::bare_ack(&p, next, false).or(Some(p));
        }
        if packet::seq_after(segment.end(), next) {
            next = segment.end();
        }
        let start = segment.seq.wrapping_sub(isn + 1) as usize;
        let end = start + segment.len as usize;
        match losses.iter().position(|&at| start <= at && at < end) {
            Some(i) => {
                losses.swap_remove(i);
                None
            }
            None => Some(p),
        }
    };
    let start = stack.clock;
    for _ in 0..60 {
        let now = stack.now();
        client.take_all(now, std::mem::take(&mut to_client));
        sent += client.socket().send_slice(&upload[sent..]).unwrap();
        events.extend(client.pump_through(&mut stack, &mut tunnel));
        client.read_into(&mut downloaded);
        for event in events.drain(..) {
            match event {
                NetworkToPython::Drained { bytes, .. } => drained += bytes,
                NetworkToPython::Data { data, .. } => uploaded.extend(data),
                _ => {}
            }
        }
        let mut out = Outputs::default();
        if drained == download.len() && !reading {
            reading = true;
            assert!(
                stack.clock < start + Duration::from_secs(1),
                "drained only after a timeout"
            );
            stack.handle(PythonToNetwork::ResumeReading { id }, &mut out);
            stack.flush(&mut out);
        }
        if uploaded.len() == upload.len() && downloaded.len() == download.len() {
            break;
        }
        // Until the writes drained, short steps: delayed acknowledgements go out. Then longer ones, for the
        // client's own losses at the window's edge.
        stack.advance(Duration::from_millis(if reading { 250 } else { 20 }));
        stack.poll_timers(&mut out);
        events.extend(out.events);
        to_client.extend(out.packets);
    }
    assert!(reading, "the handler's writes never drained");
    assert_eq!(downloaded.len(), download.len());
    assert!(downloaded == download, "the download arrived intact");
    assert_eq!(uploaded.len(), upload.len());
    assert!(uploaded == upload, "the upload arrived intact");
}
