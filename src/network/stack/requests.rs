//! Python's requests: writes, half-close, close, abort and flow control on a connection, and datagrams to send.

use log::Level;
use std::net::SocketAddr;
use std::time::Instant;

use super::connection::Hold;
use super::lifecycle::Lifecycle;
use super::{Flow, Outputs, Stack, LINGER};
use crate::messages::{ConnectFailure, ConnectionId, NetworkToPython, PeerId, PythonToNetwork, SynAnswer};
use crate::network::packet;

impl Stack {
    /// A request from Python.
    pub fn handle(&mut self, now: Instant, msg: PythonToNetwork, out: &mut Outputs) {
        let id = match msg {
            PythonToNetwork::SendDatagram { data, src, dst, peer } => {
                self.send_datagram(&data, src, dst, peer, out);
                return;
            }
            PythonToNetwork::ResumeStarved => {
                self.resume_starved();
                return;
            }
            PythonToNetwork::Answer { id, answer } => {
                self.answer(now, id, answer, out);
                return;
            }
            PythonToNetwork::Connect { id, peer, src, dst } => {
                self.open_outgoing(now, id, peer, src, dst, out);
                return;
            }
            PythonToNetwork::Capture(_) => unreachable!("the network task keeps the capture"),
            PythonToNetwork::Write { id, .. }
            | PythonToNetwork::WriteEof { id }
            | PythonToNetwork::Close { id }
            | PythonToNetwork::Abort { id }
            | PythonToNetwork::PauseReading { id }
            | PythonToNetwork::ResumeReading { id } => id,
        };
        let now = self.clock(now);
        let Some(conn) = self.connections.get_mut(&id) else {
            return; // Already gone; Python hears (or heard) of it through ConnectionClosed.
        };
        match msg {
            PythonToNetwork::Write { data, .. } => {
                if conn.lifecycle.takes_writes() && !data.is_empty() {
                    conn.outbox.push(data);
                }
            }
            PythonToNetwork::WriteEof { .. } => conn.lifecycle.request_fin(),
            PythonToNetwork::Close { .. } | PythonToNetwork::Abort { .. } => {
                // Python gives up on a connection before its handshake completed (a connect it cancelled, a SYN it
                // was asked about): it is half-open no more for admission, which cannot tell it once detached.
                if conn.lifecycle == Lifecycle::Connecting {
                    self.admission.handshake_over(conn.flow.peer);
                }
                conn.lifecycle.detach();
                match msg {
                    PythonToNetwork::Close { .. } => conn.patience.give_up_at = Some(now + LINGER.into()),
                    _ => conn.abort(),
                }
            }
            PythonToNetwork::PauseReading { .. } => conn.reading = false,
            PythonToNetwork::ResumeReading { .. } => conn.reading = true,
            PythonToNetwork::SendDatagram { .. }
            | PythonToNetwork::Connect { .. }
            | PythonToNetwork::Answer { .. }
            | PythonToNetwork::ResumeStarved
            | PythonToNetwork::Capture(_) => unreachable!(),
        }
        self.mark_dirty(id);
    }

    /// Holds a new connection's SYN and asks Python about it (`set_ask_first`); `syn` is the SYN's packet.
    pub(super) fn ask(&mut self, id: ConnectionId, syn: &[u8], out: &mut Outputs) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let Some(peer) = self.peers.get(&conn.flow.peer) else {
            return;
        };
        conn.socket().pause_synack(true);
        conn.hold = Hold::Asked(syn.to_vec());
        out.events.push(NetworkToPython::ConnectionRequested {
            id,
            peer: peer.info.clone(),
            endpoint: conn.endpoint,
            src: conn.flow.client,
            dst: conn.flow.destination,
        });
    }

    /// Python's answer to a held SYN. Only the first answer counts; one for a connection that is gone (the
    /// client gave up, or the handshake timed out) is ignored.
    fn answer(&mut self, now: Instant, id: ConnectionId, answer: SynAnswer, out: &mut Outputs) {
        let now = self.clock(now);
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let syn = match std::mem::take(&mut conn.hold) {
            Hold::Asked(syn) => syn,
            other => {
                conn.hold = other;
                return;
            }
        };
        let peer = conn.flow.peer;
        match answer {
            SynAnswer::Accept => {
                conn.socket().pause_synack(false);
                self.mark_dirty(id);
            }
            SynAnswer::Silence => {
                conn.hold = Hold::Silent;
            }
            SynAnswer::Reset => {
                // As a closed port answers: the stack's answer to a segment that no connection takes.
                self.forget(id);
                self.reset_unknown(now, peer, syn, out);
            }
            SynAnswer::Unreachable(why) => {
                self.forget(id);
                match packet::unreachable(&syn, why) {
                    Some(p) => out.packets.push((peer, p)),
                    None => log::debug!("connection {id}: no ICMP error for its SYN"),
                }
            }
        }
    }

    /// Python opens a connection; a local port 0 is a free one of the ephemeral range.
    fn open_outgoing(
        &mut self,
        now: Instant,
        id: ConnectionId,
        peer: PeerId,
        src: SocketAddr,
        dst: SocketAddr,
        out: &mut Outputs,
    ) {
        let now = self.clock(now);
        let local = match src.port() {
            0 => self.free_port(peer, src, dst),
            _ => Some(src),
        };
        let result = match local {
            Some(_) if !self.peers.contains_key(&peer) => Err(ConnectFailure::NoRoom),
            Some(local) => self.connect(
                now,
                id,
                Flow {
                    peer,
                    client: dst,
                    destination: local,
                },
            ),
            None => Err(ConnectFailure::NoRoom),
        };
        if let Err(reason) = result {
            out.events.push(NetworkToPython::ConnectFailed { id, reason });
        }
    }

    /// A local port for a connection from `src`'s address to `dst` that no connection of the stack uses, from
    /// the ephemeral range (49152-65535, as IANA's), starting at a random one as kernels do.
    fn free_port(&mut self, peer: PeerId, src: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        const FIRST: u16 = 49152;
        const COUNT: u32 = 65536 - FIRST as u32;
        let start = self
            .next_port
            .wrapping_add(rand_core::RngCore::next_u32(&mut rand_core::OsRng))
            % COUNT;
        (0..COUNT).find_map(|i| {
            let port = FIRST + ((start + i) % COUNT) as u16;
            let local = SocketAddr::new(src.ip(), port);
            let flow = Flow {
                peer,
                client: dst,
                destination: local,
            };
            (!self.flows.contains_key(&flow)).then(|| {
                self.next_port = (start + i + 1) % COUNT;
                local
            })
        })
    }

    /// Python emptied its queue: the connections left unread for lack of room are read again.
    fn resume_starved(&mut self) {
        for id in std::mem::take(&mut self.budget.starved) {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.starved = false;
            }
            self.mark_dirty(id);
        }
    }

    fn send_datagram(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        peer: Option<PeerId>,
        out: &mut Outputs,
    ) {
        let peer = match peer {
            Some(peer) if self.peers.contains_key(&peer) => peer,
            // A reply meant for a removed peer reaches no one else.
            Some(peer) => {
                crate::ratelog::note(Level::Debug, "datagrams from Python dropped", || {
                    format!("dropped a datagram to {dst}: peer {peer} was removed")
                });
                return;
            }
            None => match self.udp_routes.get(&dst) {
                Some(peer) => peer,
                None if self.udp_routes.is_shared(&dst) => {
                    crate::ratelog::note(Level::Debug, "datagrams from Python dropped", || {
                        format!(
                            "dropped a datagram to {dst}: more than one peer sent from that address, and the \
                             datagram names none (answer with the address it came from)"
                        )
                    });
                    return;
                }
                None if self.peers.len() == 1 => *self.peers.keys().next().expect("one peer"),
                None => {
                    crate::ratelog::note(Level::Debug, "datagrams from Python dropped", || {
                        format!("dropped a datagram to {dst}: no peer sent from that address")
                    });
                    return;
                }
            },
        };
        match packet::udp_packets(src, dst, data, self.mtu, self.fragment_ident()) {
            Some(packets) => out.packets.extend(packets.into_iter().map(|p| (peer, p))),
            None => crate::ratelog::note(Level::Debug, "datagrams from Python dropped", || {
                format!("dropped a datagram from {src} to {dst}: address families differ or too large")
            }),
        }
    }
}
