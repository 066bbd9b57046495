//! Loss recovery beyond smoltcp's own: what went each way on a connection, and the early resend of a reply that
//! the tunnel lost.

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use crate::network::device::VirtualDevice;
use crate::network::packet::{self, Segment};

/// How far the segments on a connection went, in both sequence spaces: the stack's segments (their ends, and the
/// acknowledgement they carried) and the client's data.
#[derive(Debug, Default)]
pub(super) struct SeqTracker {
    /// The last acknowledgement number the stack sent: the client's data up to here was received.
    acked: Option<u32>,
    /// The end of the furthest segment the stack sent.
    pub(super) sent_end: Option<u32>,
    /// The end of the furthest segment with data received from the client.
    received_end: Option<u32>,
}

impl SeqTracker {
    /// A packet the stack sends on the connection.
    pub(super) fn sent(&mut self, packet: &[u8]) {
        let Some(segment) = packet::sent_segment(packet) else {
            return;
        };
        if segment.ack.is_some() {
            self.acked = segment.ack;
        }
        furthest(&mut self.sent_end, segment.end());
    }

    /// A segment with data from the client.
    pub(super) fn received(&mut self, segment: &Segment) {
        furthest(&mut self.received_end, segment.end());
    }

    /// The client sent data beyond what the stack acknowledged: the stack may hold it out of order (or dropped
    /// it), and waits for the client to fill the gap.
    pub(super) fn awaits_retransmission(&self) -> bool {
        self.received_end
            .is_some_and(|end| self.acked.is_none_or(|ack| packet::seq_after(end, ack)))
    }

    /// For a client's segment that repeats data the stack acknowledged while the client has not acknowledged all
    /// the stack sent: the sequence number the stack expects next. The client resends because it did not get
    /// the acknowledgement, so the stack's segments since then were lost.
    pub(super) fn lost_before(&self, segment: &Segment) -> Option<u32> {
        let (ack, end, client_ack) = (self.acked?, self.sent_end?, segment.ack?);
        let repeated = segment.has_data && !packet::seq_after(segment.end(), ack);
        (repeated && packet::seq_after(end, client_ack)).then_some(ack)
    }
}

/// Moves `end` on to `to` if `to` lies beyond it in sequence space.
fn furthest(end: &mut Option<u32>, to: u32) {
    if end.is_none_or(|end| packet::seq_after(to, end)) {
        *end = Some(to);
    }
}

/// The client sent again data that the stack had acknowledged: it did not receive that acknowledgement, so it did
/// not receive the segment that carried it either. The stack resends its oldest unacknowledged segment now
/// instead of waiting for its retransmission timer (its tail loss probe, one per flight, may be spent already).
/// smoltcp offers no call for that, but it retransmits on the third duplicate acknowledgement, and the client's
/// segment stands for one: the bare acknowledgements fed to it here are that segment without its data, at the
/// current sequence number. The first one differs in its window, so that the count of duplicates starts afresh.
/// If the stack is in loss recovery already, the same acknowledgements resend the reply once its last resend is
/// older than a round trip (smoltcp-rack-tlp.patch): a reply lost twice is resent twice.
pub(super) fn resend_lost(
    iface: &mut Interface,
    device: &mut VirtualDevice,
    (sockets, handle): (&mut SocketSet<'static>, SocketHandle),
    [nudged, ack]: [Vec<u8>; 2],
    now: Instant,
) {
    let socket = sockets.get_mut::<tcp::Socket>(handle);
    let has_data_in_flight = socket.send_queue() > 0
        && matches!(
            socket.state(),
            tcp::State::Established
                | tcp::State::CloseWait
                | tcp::State::FinWait1
                | tcp::State::Closing
                | tcp::State::LastAck
        );
    if !has_data_in_flight {
        return;
    }
    for packet in [nudged, ack.clone(), ack.clone(), ack.clone(), ack] {
        device.rx = Some(packet);
        iface.poll_ingress_single(now, device, sockets);
    }
    device.rx = None;
}
