//! Packets from peers: reassembled if fragmented, parsed, and dispatched by protocol to a handler each.

use log::Level;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant as StdInstant;

use smoltcp::time::Instant;

use super::lifecycle::Lifecycle;
use super::{Flow, Outputs, Stack};
use crate::messages::{ConnectFailure, ConnectionId, NetworkToPython, PeerId};
use crate::network::fragments;
use crate::network::packet::{self, Inbound, Segment, Unreachable};

impl Stack {
    /// An IP packet from a peer, which it sent from its outer UDP endpoint `endpoint`.
    pub fn receive(
        &mut self,
        now: StdInstant,
        peer: PeerId,
        endpoint: SocketAddr,
        packet: Vec<u8>,
        out: &mut Outputs,
    ) {
        if !self.peers.contains_key(&peer) {
            return; // Removed: what it sent before is of no use now.
        }
        let Some(packet) = self.reassemble(now, peer, packet) else {
            return;
        };
        let inbound = match packet::parse(&packet) {
            Ok(inbound) => inbound,
            Err(e) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.malformed += 1;
                }
                crate::ratelog::note(Level::Debug, "malformed packets from peers dropped", || {
                    format!("dropped a packet from peer {peer}: {e}")
                });
                return;
            }
        };
        match inbound {
            Inbound::Ping {
                src,
                dst,
                ident,
                seq_no,
                data,
            } => self.receive_ping(peer, src, dst, ident, seq_no, data, out),
            Inbound::Udp { src, dst, payload } => self.receive_udp(peer, src, dst, payload, out),
            Inbound::Unreachable { why, src, dst } => {
                let flow = Flow {
                    peer,
                    client: dst,
                    destination: src,
                };
                self.receive_unreachable(flow, why, out)
            }
            Inbound::Tcp {
                src,
                dst,
                opens,
                segment,
            } => {
                let flow = Flow {
                    peer,
                    client: src,
                    destination: dst,
                };
                let now = self.clock(now);
                self.receive_tcp(now, flow, endpoint, opens, segment, packet, out)
            }
        }
    }

    /// The packet itself, or the whole packet once its last fragment arrived.
    fn reassemble(&mut self, now: StdInstant, peer: PeerId, packet: Vec<u8>) -> Option<Vec<u8>> {
        if fragments::is_fragment(&packet) {
            self.fragments.insert(peer, &packet, now)
        } else {
            Some(packet)
        }
    }

    /// A datagram goes straight to Python; its source is remembered so that replies reach this peer.
    fn receive_udp(
        &mut self,
        peer: PeerId,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        out: &mut Outputs,
    ) {
        self.udp_routes.insert(src, peer);
        // Packets are only taken from peers the stack knows.
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        out.events.push(NetworkToPython::Datagram {
            data: payload.to_vec(),
            src,
            dst,
            peer: state.info.clone(),
        });
    }

    /// A TCP segment goes to its connection (a SYN opens one); the connection is serviced at the next flush.
    #[allow(clippy::too_many_arguments)] // the parts of `Inbound::Tcp`, and where it came from
    fn receive_tcp(
        &mut self,
        now: Instant,
        flow: Flow,
        endpoint: SocketAddr,
        opens: bool,
        segment: Segment,
        packet: Vec<u8>,
        out: &mut Outputs,
    ) {
        if opens {
            self.retire_time_wait(&flow);
        }
        let id = match self.flows.get(&flow) {
            Some(&id) => id,
            None if opens && self.accepts => match self.open(now, flow, endpoint) {
                Some(id) => {
                    if self.ask_first {
                        self.ask(id, &packet, out);
                    }
                    id
                }
                None => return,
            },
            None => return self.reset_unknown(now, flow.peer, packet, out),
        };
        // Anything but the SYN may complete the handshake or carry data: the buffers come first.
        if !opens && !self.give_buffers(id) {
            return;
        }
        self.ingress(now, id, segment, packet, out);
        self.mark_dirty(id);
    }

    /// An ICMP error about a segment of the stack's: a connection Python opens that waits for its SYN-ACK fails
    /// with it, as a kernel's `connect` does; an established connection takes no notice (a soft error).
    fn receive_unreachable(&mut self, flow: Flow, why: Unreachable, out: &mut Outputs) {
        let Some(&id) = self.flows.get(&flow) else {
            return;
        };
        let Some(conn) = self.connections.get(&id) else {
            return;
        };
        if conn.outgoing && conn.lifecycle == Lifecycle::Connecting {
            out.events.push(NetworkToPython::ConnectFailed {
                id,
                reason: ConnectFailure::Unreachable(why),
            });
            self.forget(id);
        }
    }

    /// A segment that no connection takes: smoltcp answers it with a RST.
    pub(super) fn reset_unknown(&mut self, now: Instant, peer: PeerId, packet: Vec<u8>, out: &mut Outputs) {
        self.device.rx = Some(packet);
        self.iface.poll(now, &mut self.device, &mut self.no_sockets);
        out.packets.extend(self.device.tx.drain(..).map(|p| (peer, p)));
    }

    /// Feeds a segment to its connection's socket. (A repeat of data the socket acknowledged makes it resend
    /// what it sent since at once: the client did not get that acknowledgement, nor what went with it.)
    fn ingress(
        &mut self,
        now: Instant,
        id: ConnectionId,
        segment: Segment,
        packet: Vec<u8>,
        out: &mut Outputs,
    ) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if segment.has_data {
            conn.pages.committed = true;
        }
        self.device.rx = Some(packet);
        self.iface
            .poll_ingress_single(now, &mut self.device, &mut conn.sockets);
        self.device.rx = None;
        // Answers to segments the socket rejects (e.g. a RST for a bad ACK) go out at once.
        let peer = conn.flow.peer;
        out.packets.extend(self.device.tx.drain(..).map(|p| (peer, p)));
    }
}

impl Stack {
    /// An echo request to any address gets its reply, in fragments if it is larger than the tunnel's MTU.
    #[allow(clippy::too_many_arguments)]
    fn receive_ping(
        &mut self,
        peer: PeerId,
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        out: &mut Outputs,
    ) {
        if let Some(reply) = packet::echo_reply(src, dst, ident, seq_no, data) {
            let fragments = packet::fit_mtu(reply, self.mtu, self.fragment_ident());
            out.packets.extend(fragments.into_iter().map(|p| (peer, p)));
        }
    }
}
