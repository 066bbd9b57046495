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
use super::release::Pages;
use super::timeouts::Patience;
use super::{
    Flow, Outputs, ReadBudget, Stack, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, INITIAL_SEND_BUFFER, KEEPALIVE,
    MIN_RTO, RX_BUFFER, SILENCE_TIMEOUT, WRITE_LOW_WATER,
};
use crate::messages::{ConnectFailure, ConnectionId, NetworkToPython, PeerId};
use crate::network::device::VirtualDevice;
use crate::network::memory::LazyMemory;

pub(super) struct Connection {
    pub(super) id: ConnectionId,
    pub(super) flow: Flow,
    /// The client's outer UDP endpoint when its SYN arrived (Python's `original_src`).
    pub(super) endpoint: SocketAddr,
    /// Borrows `pages.memory`: declared first so that it is dropped first.
    pub(super) sockets: SocketSet<'static>,
    pub(super) handle: SocketHandle,
    /// The state at the end of the last poll, to tell a reset from an orderly close.
    last_state: tcp::State,
    /// Python opened it (`Stack::connect`): a failed handshake is reported.
    pub(super) outgoing: bool,
    /// What Python knows of the connection.
    pub(super) lifecycle: Lifecycle,
    /// Whether its SYN waits for Python's answer, or was answered with silence.
    pub(super) hold: Hold,
    /// Python wants data (asyncio's pause_reading / resume_reading).
    pub(super) reading: bool,
    /// Python's writes on their way into the socket.
    pub(super) outbox: Outbox,
    /// When the connection must be polled next.
    pub(super) deadline: Option<Instant>,
    /// How long the stack waits for the client (see `timeouts`).
    pub(super) patience: Patience,
    /// Waits in `Stack::dirty` for `flush`.
    pub(super) dirty: bool,
    /// Waits in `ReadBudget::starved` for room in Python's queue.
    pub(super) starved: bool,
    /// The buffers' memory, and what of it goes back to the kernel (see `release`). Declared after `sockets`,
    /// whose buffers borrow it, so that it is dropped after them.
    pub(super) pages: Pages,
    /// The receive window, grown with what Python reads, and the send limit (see `autotune`).
    pub(super) autotune: Autotune,
}

/// What Python wrote that is not yet in the socket's send buffer, and what was written so far.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pending: VecDeque<Vec<u8>>,
    /// How much of the first write is in the socket already.
    offset: usize,
    /// Bytes written by Python since the last `Drained`.
    unconfirmed: usize,
    /// Bytes put into the socket's send buffer so far.
    pub(super) enqueued: u64,
}

impl Outbox {
    /// A write of Python's.
    pub(super) fn push(&mut self, data: Vec<u8>) {
        self.unconfirmed += data.len();
        self.pending.push_back(data);
    }

    /// Writes wait for room in the socket.
    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }
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
        // No buffers until the handshake completes (`give_buffers`): a SYN flood costs the sockets' state only.
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(Vec::new()),
            tcp::SocketBuffer::new(Vec::new()),
        );
        configure(&mut socket);
        socket.plan_receive_buffer(RX_BUFFER);
        if let Err(e) = socket.listen(IpListenEndpoint::from(flow.destination)) {
            crate::ratelog::note(Level::Debug, "SYNs dropped", || {
                format!("dropped a SYN to {}: {e}", flow.destination)
            });
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let give_up_at = now + HANDSHAKE_TIMEOUT.into();
        self.insert(id, flow, endpoint, socket, None, give_up_at, now);
        Some(id)
    }

    /// A connection that Python opens, numbered `id` by Python: a SYN from `flow.destination` (our side) to
    /// `flow.client` (the other end). `ConnectionEstablished` follows the handshake, or `ConnectFailed`. A flow
    /// that a connection holds already (Python named a local port in use) fails, as a kernel's `connect` does.
    pub(super) fn connect(
        &mut self,
        now: Instant,
        id: ConnectionId,
        flow: Flow,
    ) -> Result<(), ConnectFailure> {
        if self.connections.contains_key(&id)
            || self.flows.contains_key(&flow)
            || !self.admission.admit(flow.peer, now)
        {
            return Err(ConnectFailure::NoRoom);
        }
        let (mut socket, memory) = self.new_socket().map_err(|e| {
            log::warn!("could not connect to {}: no memory for buffers: {e}", flow.client);
            ConnectFailure::NoRoom
        })?;
        if let Err(e) = socket.connect(self.iface.context(), flow.client, flow.destination) {
            log::debug!(
                "could not connect from {} to {}: {e}",
                flow.destination,
                flow.client
            );
            return Err(ConnectFailure::NoRoom);
        }
        // Python's end: the tunnel's endpoint is the peer's, which the WireGuard task knows.
        let endpoint = flow.client;
        self.insert(
            id,
            flow,
            endpoint,
            socket,
            Some(memory),
            now + CONNECT_TIMEOUT.into(),
            now,
        );
        if let Some(conn) = self.connections.get_mut(&id) {
            conn.outgoing = true;
            conn.last_state = tcp::State::SynSent;
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// A socket with the stack's settings, and the memory its buffers live in.
    fn new_socket(&mut self) -> std::io::Result<(tcp::Socket<'static>, LazyMemory)> {
        let mut memory = self.memory.take()?;
        // SAFETY: the slices live in the connection's socket set, which is dropped before `memory`.
        let (rx, tx) = unsafe { memory.split(RX_BUFFER) };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        configure(&mut socket);
        Ok((socket, memory))
    }

    /// Gives a connection that was opened without buffers (a SYN's, see `open`) its buffers, before the segment
    /// that completes its handshake (or any segment but its SYN) reaches it. Returns whether it has them.
    pub(super) fn give_buffers(&mut self, id: ConnectionId) -> bool {
        let Some(conn) = self.connections.get_mut(&id) else {
            return false;
        };
        if conn.pages.memory.is_some() {
            return true;
        }
        let mut memory = match self.memory.take() {
            Ok(memory) => memory,
            Err(e) => {
                crate::ratelog::note(Level::Warn, "segments dropped for lack of buffer memory", || {
                    format!("connection {id}: dropped a segment, no memory for buffers: {e}")
                });
                return false;
            }
        };
        // SAFETY: the slices live in the connection's socket set, which is dropped before `pages`.
        let (rx, tx) = unsafe { memory.split(RX_BUFFER) };
        let given = conn
            .socket()
            .set_buffers(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        if given.is_err() {
            // Cannot be: a socket without buffers holds no data. The segment is dropped; the client resends it.
            self.memory.give(memory);
            return false;
        }
        conn.pages.memory = Some(memory);
        true
    }

    /// Keeps a new connection, half-open until `give_up_at`.
    #[allow(clippy::too_many_arguments)] // the parts of a connection that differ between the two ways of opening
    fn insert(
        &mut self,
        id: ConnectionId,
        flow: Flow,
        endpoint: SocketAddr,
        socket: tcp::Socket<'static>,
        memory: Option<LazyMemory>,
        give_up_at: Instant,
        now: Instant,
    ) {
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
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
                last_state: tcp::State::Listen,
                outgoing: false,
                lifecycle: Lifecycle::Connecting,
                hold: Hold::None,
                reading: true,
                outbox: Outbox::default(),
                deadline: None,
                patience: Patience::until(give_up_at),
                dirty: false,
                starved: false,
                pages: Pages::new(memory),
                autotune: Autotune::new(now),
            },
        );
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
        let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
        conn.autotune.choose_pacing(socket);
        let writes_wait = conn.outbox.waiting();
        conn.autotune
            .tune_send_buffer(id, &self.window_budget, socket, writes_wait);
        conn.fill_send_buffer(out);
        let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
        let acked = conn.outbox.enqueued - socket.send_queue() as u64;
        conn.pages.release_sent_chunks(acked, conn.outbox.enqueued);
        conn.deliver(&mut self.budget, out);
        let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
        conn.autotune.tune_window(id, now, &self.window_budget, socket);
        conn.pages.release_read_chunks(conn.autotune.window);
        conn.report_eof(out);
        conn.transmit(&mut self.iface, &mut self.device, now, out);
        if conn.report_close(out) {
            self.forget(id);
            return;
        }
        conn.release_pages(now);
        conn.autotune
            .account(&mut self.window_budget, conn.pages.committed);
        let queued = conn.socket().send_queue() as u64;
        conn.patience.watch_progress(queued, conn.outbox.enqueued, now);
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
            let Connection { sockets, pages, .. } = conn;
            // The socket's buffers borrow the memory: they go first.
            drop(sockets);
            if let Some(memory) = pages.memory {
                self.memory.give(memory);
            }
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

    /// Resets the connection now; Python's unsent writes and what it did not read are dropped.
    pub(super) fn abort(&mut self) {
        self.outbox.pending.clear();
        self.socket().abort();
        // Ended by a reset, whatever state it was in (TIME-WAIT with data unread among them).
        self.last_state = tcp::State::Closed;
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
            self.patience.give_up_at = None;
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
        let outbox = &mut self.outbox;
        while let Some(front) = outbox.pending.front() {
            let room = self.autotune.send_limit.saturating_sub(socket.send_queue());
            let end = front.len().min(outbox.offset + room);
            // The empty ring starts again at its beginning.
            let restart = socket.send_queue() == 0;
            match socket.send_slice(&front[outbox.offset..end]) {
                Ok(n) if n > 0 => {
                    outbox.enqueued += n as u64;
                    self.pages.wrote(outbox.enqueued, n, restart);
                    outbox.offset += n;
                    if outbox.offset == front.len() {
                        outbox.pending.pop_front();
                        outbox.offset = 0;
                    }
                }
                _ => break,
            }
        }
        if outbox.waiting() {
            return;
        }
        if self.lifecycle.fin_requested() {
            socket.close();
        }
        if outbox.unconfirmed >= WRITE_LOW_WATER && self.lifecycle.python_listens() {
            out.events.push(NetworkToPython::Drained {
                id: self.id,
                bytes: outbox.unconfirmed,
            });
            outbox.unconfirmed = 0;
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
        self.pages.read.dequeued += data.len() as u64;
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
        out.packets.extend(device.tx.drain(..).map(|p| (peer, p)));
    }

    /// Tells Python when the connection ended, once it has read every byte that arrived before the end, and EOF
    /// after them when the end was orderly: ConnectionClosed is the last it hears of a connection, as a kernel's
    /// socket gives every byte it received before reporting the close. Until then the connection is kept, even
    /// with its socket closed. Returns whether it is gone and can be forgotten.
    fn report_close(&mut self, out: &mut Outputs) -> bool {
        let state = self.socket().state();
        let gone = state == tcp::State::Closed
            || (state == tcp::State::Listen && self.last_state != tcp::State::Listen);
        if self.outgoing && self.lifecycle == Lifecycle::Connecting && gone {
            // A RST answered the SYN; Python hears of it once (the connection is forgotten now).
            out.events.push(NetworkToPython::ConnectFailed {
                id: self.id,
                reason: ConnectFailure::Refused,
            });
        }
        if matches!(self.lifecycle, Lifecycle::Open { .. }) && (gone || state == tcp::State::TimeWait) {
            let reset = gone && !orderly_end(self.last_state);
            if !reset && self.socket().recv_queue() > 0 {
                // After an orderly end, Python reads first (it paused reading, or its budget ran out). A closed
                // socket keeps the state it closed from, which tells the end was orderly. A reset drops what
                // was not read.
                if !gone {
                    self.last_state = state;
                }
                return false;
            }
            if !reset && self.lifecycle.eof_due() {
                self.lifecycle.report_eof();
                out.events.push(NetworkToPython::Eof { id: self.id });
            }
            self.lifecycle.end();
            out.events
                .push(NetworkToPython::ConnectionClosed { id: self.id, reset });
        }
        self.last_state = state;
        gone
    }
}

impl Connection {
    /// Releases the buffers' pages once the connection stayed idle (see `Pages::release_if_idle`), and starts it
    /// again from the first window then. Out-of-order data waits in the receive buffer beyond what `recv_queue`
    /// counts: while the client may fill a gap, the pages are kept.
    fn release_pages(&mut self, now: Instant) {
        let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
        let idle = socket.send_queue() == 0
            && socket.recv_queue() == 0
            && !self.outbox.waiting()
            && !socket.has_data_out_of_order();
        let moved = self.pages.read.dequeued + self.outbox.enqueued;
        if self.pages.release_if_idle(now, idle, moved, self.autotune.window) {
            self.autotune.reset(now, socket);
        }
    }
}

/// The stack's settings of every socket.
fn configure(socket: &mut tcp::Socket<'static>) {
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
    // Timestamps (RFC 7323), as a kernel negotiates them: a round-trip sample from every ACK, retransmissions
    // included, and old duplicates dropped (PAWS). TSvals are the stack's clock (the `now` it is given, in ms since
    // its epoch) plus an offset smoltcp draws for each connection from the interface's random numbers: no clock is
    // read here, and a TSval tells nothing of when the stack started.
    socket.set_tsval_from_clock(true);
    autotune::start(socket);
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
