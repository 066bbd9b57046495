//! A TCP connection: its socket, what Python wrote that is not yet in the socket, and the steps that move it on,
//! which `Stack::service` runs in order.

use log::Level;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpListenEndpoint;

use super::autotune::{self, Autotune};
use super::lifecycle::Lifecycle;
use super::peers::PeerState;
use super::recovery::SeqTracker;
use super::release::{ReadPosition, WritePosition};
use super::{
    Flow, Outputs, ReadBudget, Stack, HANDSHAKE_TIMEOUT, INITIAL_SEND_BUFFER, KEEPALIVE, MIN_RTO, RX_BUFFER,
    SILENCE_TIMEOUT, WRITE_LOW_WATER,
};
use crate::messages::{ConnectionId, NetworkToPython, PeerId};
use crate::network::device::VirtualDevice;
use crate::network::memory::LazyMemory;

pub(super) struct Connection {
    pub(super) id: ConnectionId,
    pub(super) flow: Flow,
    /// The client's outer UDP endpoint when its SYN arrived (Python's `original_src`).
    pub(super) endpoint: SocketAddr,
    /// Borrows `memory`: declared first so that it is dropped first.
    pub(super) sockets: SocketSet<'static>,
    pub(super) handle: SocketHandle,
    /// How far the segments went, both ways.
    pub(super) seq: SeqTracker,
    /// The state at the end of the last poll, to tell a reset from an orderly close.
    last_state: tcp::State,
    /// What Python knows of the connection.
    pub(super) lifecycle: Lifecycle,
    /// Whether its SYN waits for Python's answer, or was answered with silence.
    pub(super) hold: Hold,
    /// Python wants data (asyncio's pause_reading / resume_reading).
    pub(super) reading: bool,
    /// Written by Python, not yet in the socket's send buffer.
    pub(super) pending: VecDeque<Vec<u8>>,
    pending_offset: usize,
    /// Bytes written by Python since the last `Drained`.
    pub(super) unconfirmed: usize,
    /// When the connection must be polled next.
    pub(super) deadline: Option<Instant>,
    /// The latest moment to wait for the client: to complete its handshake, or, once Python closed the
    /// connection, to close its side (see `timeouts`).
    pub(super) give_up_at: Option<Instant>,
    /// The send side's progress, while data waits for the client's acknowledgement (see `timeouts`).
    pub(super) progress: Option<super::timeouts::Progress>,
    /// Bytes put into the socket's send buffer so far.
    pub(super) enqueued: u64,
    /// Waits in `Stack::dirty` for `flush`.
    pub(super) dirty: bool,
    /// Waits in `ReadBudget::starved` for room in Python's queue.
    pub(super) starved: bool,
    /// The buffers hold pages that can be released once both are empty (at `release_at`).
    pub(super) committed: bool,
    pub(super) release_at: Option<Instant>,
    /// Bytes through both buffers when `release_at` was set.
    pub(super) release_mark: u64,
    /// The pages of both buffers: receive buffer first, then the send buffer.
    pub(super) memory: LazyMemory,
    /// The receive window, grown with what Python reads.
    pub(super) autotune: Autotune,
    /// How far Python read, for the pages it read past.
    pub(super) read_position: ReadPosition,
    /// How far the client acknowledged, for the pages of the send buffer behind it.
    pub(super) write_position: WritePosition,
}

/// A SYN that waits for Python (when the stack asks first, see `Stack::set_ask_first`): its socket sends no
/// SYN-ACK (smoltcp's `pause_synack`) and takes the SYN's retransmissions without a word.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum Hold {
    /// Never asked, or accepted: the handshake goes on.
    #[default]
    None,
    /// Python was asked; the SYN is kept for a RST or an ICMP error that answers it.
    Asked(Vec<u8>),
    /// Python answered with silence: nothing goes out until the handshake timeout forgets the connection.
    Silent,
}

impl Hold {
    /// The socket must send nothing.
    pub(super) fn holds(&self) -> bool {
        *self != Hold::None
    }
}

impl Stack {
    /// A connection for a SYN, listening on the destination the client asked for.
    pub(super) fn open(&mut self, now: Instant, flow: Flow, endpoint: SocketAddr) -> Option<ConnectionId> {
        if self.admission.half_open_full(flow.peer) {
            self.evict_oldest_half_open(flow.peer);
        }
        if !self.admission.admit(flow.peer, now) {
            return None;
        }
        let mut memory = match self.memory.take() {
            Ok(memory) => memory,
            Err(e) => {
                log::warn!(
                    "dropped a SYN to {}: no memory for buffers: {e}",
                    flow.destination
                );
                return None;
            }
        };
        // SAFETY: the slices live in the connection's socket set, which is dropped before `memory`.
        let (rx, tx) = unsafe { memory.split(RX_BUFFER) };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // Like asyncio's transports (TCP_NODELAY): a write goes out at once.
        socket.set_nagle_enabled(false);
        // A client that vanished, or stops acknowledging, does not hold the connection forever.
        socket.set_keep_alive(Some(KEEPALIVE.into()));
        // The path's rate, measured, not a window cut at every loss: random losses (radio links) cost little.
        socket.set_congestion_control(tcp::CongestionControl::Bbr);
        // Never less in flight than the fixed 64 KiB window of the earlier releases (the first round trip).
        socket.set_min_congestion_window(INITIAL_SEND_BUFFER);
        socket.set_timeout(Some(SILENCE_TIMEOUT.into()));
        // As Linux: a lost tail of a flight on a path of 20-200 ms waits 200 ms for its timeout, not 1 s.
        socket.set_min_rto(MIN_RTO.into());
        autotune::start(&mut socket);
        if let Err(e) = socket.listen(IpListenEndpoint::from(flow.destination)) {
            crate::ratelog::note(Level::Debug, "SYNs dropped", || {
                format!("dropped a SYN to {}: {e}", flow.destination)
            });
            return None;
        }
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let id = self.next_id;
        self.next_id += 1;
        self.flows.insert(flow, id);
        let connections = &self.connections;
        self.admission.opened(flow.peer, id, |id| {
            connections
                .get(&id)
                .is_some_and(|c| c.lifecycle == Lifecycle::Connecting)
        });
        self.connections.insert(
            id,
            Connection {
                id,
                flow,
                endpoint,
                sockets,
                handle,
                seq: SeqTracker::default(),
                last_state: tcp::State::Listen,
                lifecycle: Lifecycle::Connecting,
                hold: Hold::None,
                reading: true,
                pending: VecDeque::new(),
                pending_offset: 0,
                unconfirmed: 0,
                deadline: None,
                give_up_at: Some(now + HANDSHAKE_TIMEOUT.into()),
                progress: None,
                enqueued: 0,
                dirty: false,
                starved: false,
                committed: false,
                release_at: None,
                release_mark: 0,
                memory,
                autotune: Autotune::new(now),
                read_position: ReadPosition::default(),
                write_position: WritePosition::default(),
            },
        );
        Some(id)
    }

    /// Makes room for a SYN of `peer`, which holds as many half-open connections as it may: its oldest one goes,
    /// without a word (a flood's SYN, most likely, whose source never answers; a client whose handshake took
    /// longer than the flood needed to open as many gets a RST for its ACK, and connects again).
    fn evict_oldest_half_open(&mut self, peer: PeerId) {
        while let Some(id) = self.admission.oldest_opened(peer) {
            if self
                .connections
                .get(&id)
                .is_some_and(|c| c.lifecycle == Lifecycle::Connecting)
            {
                crate::ratelog::note(
                    Level::Debug,
                    "half-open connections that made room for new SYNs",
                    || {
                        format!("connection {id}: the oldest half-open connection of peer {peer} made room for a new SYN")
                    },
                );
                self.forget(id);
                return;
            }
        }
    }

    /// Moves everything that can move on one connection: Python's writes, data for Python, FIN, and the packets
    /// that result. Then reschedules its timer or forgets it.
    pub(super) fn service(&mut self, id: ConnectionId, now: Instant, out: &mut Outputs) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if conn.announce(&self.peers, out) {
            self.admission.established(conn.flow.peer);
        }
        conn.choose_pacing();
        conn.tune_send_buffer(&self.window_budget);
        conn.fill_send_buffer(out);
        conn.release_sent_chunks();
        conn.deliver(&mut self.budget, out);
        conn.tune_window(now, &self.window_budget);
        conn.release_read_chunks();
        conn.report_eof(out);
        conn.transmit(&mut self.iface, &mut self.device, now, out);
        if conn.report_close(out) {
            self.forget(id);
            return;
        }
        conn.release_pages(now);
        conn.account(&mut self.window_budget);
        conn.watch_progress(now);
        conn.reschedule(&mut self.iface, now, &mut self.timers);
    }

    /// A new SYN for a flow whose last connection waits in TIME-WAIT starts a new connection, as kernels accept
    /// one (RFC 6191): the old one has exchanged both FINs, and a client that reuses its port (a fixed source
    /// port, or many connections to one destination) must not be left without an answer.
    pub(super) fn retire_time_wait(&mut self, flow: &Flow) {
        let Some(&id) = self.flows.get(flow) else {
            return;
        };
        if let Some(conn) = self.connections.get_mut(&id) {
            if conn.socket().state() == tcp::State::TimeWait {
                crate::ratelog::note(Level::Debug, "TIME-WAITs ended by a new SYN", || {
                    format!("connection {id}: a new SYN ends its TIME-WAIT")
                });
                self.forget(id);
            }
        }
    }

    pub(super) fn forget(&mut self, id: ConnectionId) {
        if let Some(conn) = self.connections.remove(&id) {
            self.flows.remove(&conn.flow);
            let half_open = conn.lifecycle == Lifecycle::Connecting;
            self.admission.closed(conn.flow.peer, half_open);
            self.window_budget.used -= conn.autotune.charged;
            if let Some(at) = conn.deadline {
                self.timers.remove(&(at, id));
            }
            let Connection { sockets, memory, .. } = conn;
            // The socket's buffers borrow the memory: they go first.
            drop(sockets);
            self.memory.give(memory);
            // After a flood, the tables give back the room its connections took (a map never shrinks on its
            // own): a quarter full, they shrink to half, which costs a walk per halving of the count.
            if self.connections.capacity() > 4 * self.connections.len() + 1024 {
                self.connections.shrink_to(2 * self.connections.len());
                self.flows.shrink_to(2 * self.flows.len());
                // And the allocator gives back the pages of their sockets, which it keeps otherwise.
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: malloc_trim only returns free memory to the system.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        }
    }
}

impl Connection {
    pub(super) fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(self.handle)
    }

    /// Resets the connection now; Python's unsent writes are dropped.
    pub(super) fn abort(&mut self) {
        self.pending.clear();
        self.socket().abort();
    }

    /// Tells Python of the connection once the handshake is done; returns whether it did now.
    fn announce(&mut self, peers: &HashMap<PeerId, PeerState>, out: &mut Outputs) -> bool {
        let state = self.socket().state();
        if self.lifecycle == Lifecycle::Connecting
            && matches!(state, tcp::State::Established | tcp::State::CloseWait)
        {
            // A removed peer's connections were reset with it: none of them gets this far.
            let Some(peer) = peers.get(&self.flow.peer) else {
                return false;
            };
            self.lifecycle.announce();
            self.give_up_at = None;
            out.events.push(NetworkToPython::ConnectionEstablished {
                id: self.id,
                peer: peer.info.clone(),
                endpoint: self.endpoint,
                src: self.flow.client,
                dst: self.flow.destination,
            });
            return true;
        }
        false
    }

    /// Python's writes into the send buffer, up to its limit, then FIN once they are all in; confirms what was
    /// taken in.
    fn fill_send_buffer(&mut self, out: &mut Outputs) {
        let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
        while let Some(front) = self.pending.front() {
            let room = self.autotune.send_limit.saturating_sub(socket.send_queue());
            let end = front.len().min(self.pending_offset + room);
            if socket.send_queue() == 0 && end > self.pending_offset {
                // The empty ring starts again at its beginning.
                self.write_position.restart(self.enqueued, &self.memory);
            }
            match socket.send_slice(&front[self.pending_offset..end]) {
                Ok(n) if n > 0 => {
                    self.committed = true;
                    self.enqueued += n as u64;
                    self.write_position.wrote(self.enqueued);
                    self.pending_offset += n;
                    if self.pending_offset == front.len() {
                        self.pending.pop_front();
                        self.pending_offset = 0;
                    }
                }
                _ => break,
            }
        }
        if !self.pending.is_empty() {
            return;
        }
        if self.lifecycle.fin_requested() {
            socket.close();
        }
        if self.unconfirmed >= WRITE_LOW_WATER && self.lifecycle.python_listens() {
            out.events.push(NetworkToPython::Drained {
                id: self.id,
                bytes: self.unconfirmed,
            });
            self.unconfirmed = 0;
        }
    }

    /// Data for Python, if it wants some and has room; after it closed, data is read and dropped to keep the
    /// window open.
    fn deliver(&mut self, budget: &mut ReadBudget, out: &mut Outputs) {
        let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
        let detached = self.lifecycle == Lifecycle::Detached;
        let wanted = (self.lifecycle.python_listens() && self.reading) || detached;
        if !(wanted && socket.can_recv()) {
            return;
        }
        let limit = if detached { usize::MAX } else { budget.bytes };
        let mut data = Vec::with_capacity(socket.recv_queue().min(limit));
        while data.len() < limit {
            let room = limit - data.len();
            match socket.recv(|buf| {
                let n = buf.len().min(room);
                data.extend_from_slice(&buf[..n]);
                (n, n)
            }) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        self.read_position.dequeued += data.len() as u64;
        if detached {
            return;
        }
        budget.bytes -= data.len();
        self.autotune.read(data.len());
        if socket.can_recv() && !self.starved {
            self.starved = true;
            budget.starved.push(self.id);
        }
        if !data.is_empty() {
            out.events.push(NetworkToPython::Data { id: self.id, data });
        }
    }

    /// EOF for Python once it read everything before the client's FIN.
    fn report_eof(&mut self, out: &mut Outputs) {
        let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
        if self.lifecycle.eof_due() && socket.recv_queue() == 0 && fin_received(socket.state()) {
            self.lifecycle.report_eof();
            out.events.push(NetworkToPython::Eof { id: self.id });
        }
    }

    /// The packets the socket has to send.
    fn transmit(
        &mut self,
        iface: &mut Interface,
        device: &mut VirtualDevice,
        now: Instant,
        out: &mut Outputs,
    ) {
        while iface.poll_egress(now, device, &mut self.sockets) != PollResult::None {}
        let peer = self.flow.peer;
        for p in device.tx.drain(..) {
            self.seq.sent(&p);
            self.autotune.sent(&p, now);
            out.packets.push((peer, p));
        }
    }

    /// Tells Python when the connection ended. Returns whether it is gone and can be forgotten.
    fn report_close(&mut self, out: &mut Outputs) -> bool {
        let state = self.socket().state();
        let gone = state == tcp::State::Closed
            || (state == tcp::State::Listen && self.last_state != tcp::State::Listen);
        if matches!(self.lifecycle, Lifecycle::Open { .. }) && (gone || state == tcp::State::TimeWait) {
            self.lifecycle.end();
            let reset = gone && !orderly_end(self.last_state);
            out.events
                .push(NetworkToPython::ConnectionClosed { id: self.id, reset });
        }
        self.last_state = state;
        gone
    }
}

/// The client's FIN arrived.
fn fin_received(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

/// Reaching CLOSED from these states is the normal end of a connection; from any other it was reset.
fn orderly_end(last: tcp::State) -> bool {
    matches!(
        last,
        tcp::State::LastAck | tcp::State::TimeWait | tcp::State::Closing
    )
}
