//! The TCP/IP side of the server: one smoltcp TCP socket per connection, each in a socket set of its own, so a
//! packet costs a lookup and a poll of its own connection only, whatever the number of open connections.
//!
//! No I/O happens here: packets and Python's requests go in, and `Outputs` (packets for peers, events for
//! Python) come out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint};

use super::device::{VirtualDevice, MTU};
use super::fragments::{self, Reassembler};
use super::memory::{LazyMemory, MemoryPool};
use super::packet::{self, Inbound};
use super::udp_routes::UdpRoutes;
use crate::messages::{ConnectionId, NetworkToPython, PeerId, PeerInfo, PythonToNetwork};

/// Receive and send buffer of each connection, mapped on demand (`LazyMemory`): an idle connection pays for the
/// pages its data touched, not for these sizes. The receive buffer sets the largest TCP window and, above 64 KiB,
/// the window scale (smoltcp picks the smallest shift that covers the buffer: 5 for 1 MiB, a window in units of
/// 32 bytes). 1 MiB carries 20 MB/s at a 50 ms round trip. Larger is cheap in memory that is not touched, but
/// until a global budget bounds them, every connection whose handler does not read may fill its window: 1 MiB
/// bounds that, and 10,000 connections reserve 11 GB of address space (with the send buffer), not 80.
const RX_BUFFER: usize = 1 << 20;
/// The send buffer bounds what the stack has in flight. It stays at 64 KiB until the stack paces its segments and
/// recovers from several losses in a window: a larger one lets bursts leave that overflow the UDP buffers on the
/// way, and smoltcp then recovers by its retransmission timeout (a download on a 50 ms path got slower, not faster).
const TX_BUFFER: usize = 64 * 1024;

/// How many mappings of ended connections are kept for new ones, and how much of each buffer's start they keep
/// committed.
const POOLED_BUFFERS: usize = 64;
const POOL_KEEPS: usize = 64 * 1024;

/// How long emptied buffers stay committed before their pages go back to the kernel.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Python pauses writing when more than `WRITE_HIGH_WATER` bytes are not yet handed to the TCP stack, and
/// resumes at `WRITE_LOW_WATER`. The stack confirms (with `Drained`) whenever it has taken in a backlog of at least
/// `WRITE_LOW_WATER` bytes, so a paused Python always hears of it. Both sides use these constants.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;
pub const WRITE_LOW_WATER: usize = WRITE_HIGH_WATER / 4;

/// How long a connection that Python closed may wait for the client's FIN (the kernel's FIN-WAIT-2 timeout).
const LINGER: Duration = Duration::from_secs(60);

/// The stack's own addresses. They only give smoltcp a route for every destination; sockets answer from
/// whatever address the client asked for.
const OWN_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 8);
const OWN_V6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1);

/// What a step of the stack produced.
#[derive(Debug, Default)]
pub struct Outputs {
    pub packets: Vec<(PeerId, Vec<u8>)>,
    pub events: Vec<NetworkToPython>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flow {
    peer: PeerId,
    client: SocketAddr,
    destination: SocketAddr,
}

struct Connection {
    flow: Flow,
    endpoint: SocketAddr,
    /// Borrows `memory`: declared first so that it is dropped first.
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    /// What the stack sent on this connection so far.
    sent: Sent,
    /// The state at the end of the last poll, to tell a reset from an orderly close.
    last_state: tcp::State,
    /// Python was told about the connection.
    announced: bool,
    /// Python wants data (asyncio's pause_reading / resume_reading).
    reading: bool,
    /// Written by Python, not yet in the socket's send buffer.
    pending: VecDeque<Vec<u8>>,
    pending_offset: usize,
    /// Bytes written by Python since the last `Drained`.
    unconfirmed: usize,
    /// Python asked for a FIN after its data.
    fin_requested: bool,
    /// Python closed the connection: it reads nothing more.
    python_closed: bool,
    eof_sent: bool,
    closed_sent: bool,
    /// When the connection must be polled next.
    deadline: Option<Instant>,
    /// Set when Python closed it: the latest moment to give up waiting for the client.
    linger_until: Option<Instant>,
    /// Waits in `Stack::dirty` for `flush`.
    dirty: bool,
    /// Waits in `Stack::starved` for room in Python's queue.
    starved: bool,
    /// The buffers hold pages that can be released once both are empty (at `release_at`).
    committed: bool,
    release_at: Option<Instant>,
    /// The pages of both buffers: receive buffer first, then the send buffer.
    memory: LazyMemory,
}

pub struct Stack {
    iface: Interface,
    device: VirtualDevice,
    peers: Vec<PeerInfo>,
    connections: HashMap<ConnectionId, Connection>,
    flows: HashMap<Flow, ConnectionId>,
    timers: BTreeSet<(Instant, ConnectionId)>,
    next_id: ConnectionId,
    /// For packets that belong to no connection: smoltcp answers them (with a RST) from an empty set.
    no_sockets: SocketSet<'static>,
    /// Which peer a client UDP address was last seen from, so replies reach the right peer.
    udp_routes: UdpRoutes,
    /// Connections touched since the last `flush`: each is serviced once per batch of packets and requests, so
    /// a burst yields one read and one acknowledgement rather than one per packet.
    dirty: Vec<ConnectionId>,
    fragments: Reassembler,
    /// Buffer memory of ended connections, for new ones.
    memory: MemoryPool,
    /// Bytes that may still be read for Python in this batch (room in Python's queue).
    read_budget: usize,
    /// Connections with data left unread because the budget ran out.
    starved: Vec<ConnectionId>,
    /// Identification of the next fragmented datagram.
    next_ident: u32,
    /// smoltcp counts time from here.
    epoch: std::time::Instant,
}

impl Stack {
    pub fn new(peers: Vec<PeerInfo>) -> Self {
        let mut device = VirtualDevice::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand_seed();
        let epoch = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut device, Instant::ZERO);
        iface.set_any_ip(true);
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(OWN_V4.into(), 32)).unwrap();
            addrs.push(IpCidr::new(OWN_V6.into(), 128)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(OWN_V4).unwrap();
        iface.routes_mut().add_default_ipv6_route(OWN_V6).unwrap();
        Stack {
            iface,
            device,
            peers,
            connections: HashMap::new(),
            flows: HashMap::new(),
            timers: BTreeSet::new(),
            next_id: 1,
            no_sockets: SocketSet::new(vec![]),
            udp_routes: UdpRoutes::default(),
            dirty: Vec::new(),
            fragments: Reassembler::default(),
            memory: MemoryPool::new(RX_BUFFER + TX_BUFFER, POOLED_BUFFERS),
            read_budget: usize::MAX,
            starved: Vec::new(),
            next_ident: 0,
            epoch,
        }
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn to_std(&self, instant: Instant) -> std::time::Instant {
        self.epoch + Duration::from_micros(instant.total_micros().max(0) as u64)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The earliest moment a connection needs a poll.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// An IP packet from a peer.
    pub fn receive(&mut self, peer: PeerId, endpoint: SocketAddr, packet: Vec<u8>, out: &mut Outputs) {
        let packet = if fragments::is_fragment(&packet) {
            match self.fragments.insert(peer, &packet, std::time::Instant::now()) {
                Some(whole) => whole,
                None => return,
            }
        } else {
            packet
        };
        let inbound = match packet::parse(&packet) {
            Ok(inbound) => inbound,
            Err(e) => {
                log::debug!("dropped a packet from peer {peer}: {e}");
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
            } => {
                if let Some(reply) = packet::echo_reply(src, dst, ident, seq_no, data) {
                    out.packets.push((peer, reply));
                }
            }
            Inbound::Udp { src, dst, payload } => {
                self.udp_routes.insert(src, peer);
                out.events.push(NetworkToPython::Datagram {
                    data: payload.to_vec(),
                    src,
                    dst,
                    peer,
                });
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
                if opens {
                    self.retire_time_wait(&flow);
                }
                let id = match self.flows.get(&flow) {
                    Some(&id) => id,
                    None if opens => match self.open(flow, endpoint) {
                        Some(id) => id,
                        None => return,
                    },
                    None => {
                        // smoltcp answers a segment that no socket takes with a RST.
                        let now = self.now();
                        self.device.rx = Some(packet);
                        self.iface.poll(now, &mut self.device, &mut self.no_sockets);
                        out.packets.extend(self.device.tx.drain(..).map(|p| (peer, p)));
                        return;
                    }
                };
                let now = self.now();
                if let Some(conn) = self.connections.get_mut(&id) {
                    if segment.has_data {
                        conn.committed = true;
                        conn.sent.receive(&segment);
                    }
                    let acks = conn.sent.lost_before(&segment).and_then(|seq| {
                        Some([
                            packet::bare_ack(&packet, seq, true)?,
                            packet::bare_ack(&packet, seq, false)?,
                        ])
                    });
                    self.device.rx = Some(packet);
                    self.iface
                        .poll_ingress_single(now, &mut self.device, &mut conn.sockets);
                    self.device.rx = None;
                    if let Some(acks) = acks {
                        resend_lost(&mut self.iface, &mut self.device, conn, acks, now);
                    }
                    // Answers to segments the socket rejects (e.g. a RST for a bad ACK) go out at once.
                    for p in self.device.tx.drain(..) {
                        conn.sent.record(&p);
                        out.packets.push((peer, p));
                    }
                }
                self.mark_dirty(id);
            }
        }
    }

    fn mark_dirty(&mut self, id: ConnectionId) {
        if let Some(conn) = self.connections.get_mut(&id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// How many bytes may be read for Python from now on.
    pub fn set_read_budget(&mut self, bytes: usize) {
        self.read_budget = bytes;
    }

    /// Whether connections wait for `resume_starved`.
    pub fn has_starved(&self) -> bool {
        !self.starved.is_empty()
    }

    /// Services every connection touched since the last flush. Call after each batch.
    pub fn flush(&mut self, out: &mut Outputs) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.dirty = false;
                self.service(id, out);
            }
        }
        // Reuse the allocation.
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn open(&mut self, flow: Flow, endpoint: SocketAddr) -> Option<ConnectionId> {
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
        if let Err(e) = socket.listen(IpListenEndpoint::from(flow.destination)) {
            log::debug!("dropped a SYN to {}: {e}", flow.destination);
            return None;
        }
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let id = self.next_id;
        self.next_id += 1;
        self.flows.insert(flow, id);
        self.connections.insert(
            id,
            Connection {
                flow,
                endpoint,
                sockets,
                handle,
                sent: Sent::default(),
                last_state: tcp::State::Listen,
                announced: false,
                reading: true,
                pending: VecDeque::new(),
                pending_offset: 0,
                unconfirmed: 0,
                fin_requested: false,
                python_closed: false,
                eof_sent: false,
                closed_sent: false,
                deadline: None,
                linger_until: None,
                dirty: false,
                starved: false,
                committed: false,
                release_at: None,
                memory,
            },
        );
        Some(id)
    }

    /// A request from Python.
    pub fn handle(&mut self, msg: PythonToNetwork, out: &mut Outputs) {
        let id = match msg {
            PythonToNetwork::SendDatagram { data, src, dst, peer } => {
                self.send_datagram(&data, src, dst, peer, out);
                return;
            }
            PythonToNetwork::ResumeStarved => {
                for id in std::mem::take(&mut self.starved) {
                    if let Some(conn) = self.connections.get_mut(&id) {
                        conn.starved = false;
                    }
                    self.mark_dirty(id);
                }
                return;
            }
            PythonToNetwork::Write { id, .. }
            | PythonToNetwork::WriteEof { id }
            | PythonToNetwork::Close { id }
            | PythonToNetwork::Abort { id }
            | PythonToNetwork::PauseReading { id }
            | PythonToNetwork::ResumeReading { id } => id,
        };
        let now = self.now();
        let Some(conn) = self.connections.get_mut(&id) else {
            return; // Already gone; Python hears (or heard) of it through ConnectionClosed.
        };
        match msg {
            PythonToNetwork::Write { data, .. } => {
                if !conn.fin_requested && !data.is_empty() {
                    conn.unconfirmed += data.len();
                    conn.pending.push_back(data);
                }
            }
            PythonToNetwork::WriteEof { .. } => conn.fin_requested = true,
            PythonToNetwork::Close { .. } => {
                conn.fin_requested = true;
                conn.python_closed = true;
                conn.closed_sent = true;
                conn.linger_until = Some(now + LINGER.into());
            }
            PythonToNetwork::Abort { .. } => {
                conn.python_closed = true;
                conn.closed_sent = true;
                conn.pending.clear();
                conn.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
            }
            PythonToNetwork::PauseReading { .. } => conn.reading = false,
            PythonToNetwork::ResumeReading { .. } => conn.reading = true,
            PythonToNetwork::SendDatagram { .. } | PythonToNetwork::ResumeStarved => unreachable!(),
        }
        self.mark_dirty(id);
    }

    fn send_datagram(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        peer: Option<PeerId>,
        out: &mut Outputs,
    ) {
        let peer = match peer
            .filter(|p| *p < self.peers.len())
            .or_else(|| self.udp_routes.get(&dst))
        {
            Some(peer) => peer,
            None if self.peers.len() == 1 => 0,
            None => {
                log::debug!("dropped a datagram to {dst}: no peer sent from that address");
                return;
            }
        };
        self.next_ident = self.next_ident.wrapping_add(1);
        match packet::udp_packets(src, dst, data, MTU, self.next_ident) {
            Some(packets) => out.packets.extend(packets.into_iter().map(|p| (peer, p))),
            None => {
                log::debug!("dropped a datagram from {src} to {dst}: address families differ or too large")
            }
        }
    }

    /// Polls the connections whose timers are due.
    pub fn poll_timers(&mut self, out: &mut Outputs) {
        let now = self.now();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.deadline = None;
                if conn.linger_until.is_some_and(|t| t <= now) {
                    log::debug!("connection {id}: the client did not close in time, resetting");
                    conn.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
                }
                self.service(id, out);
            }
        }
    }

    /// Resets every connection (server shutdown).
    pub fn abort_all(&mut self, out: &mut Outputs) {
        let ids: Vec<_> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.pending.clear();
                conn.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
            }
            self.service(id, out);
        }
    }

    /// Moves everything that can move on one connection: the packet in the device, Python's writes, data for
    /// Python, FIN, and the packets that result. Then reschedules its timer or forgets it.
    fn service(&mut self, id: ConnectionId, out: &mut Outputs) {
        let now = self.now();
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
        let state = socket.state();

        if !conn.announced
            && !conn.python_closed
            && matches!(state, tcp::State::Established | tcp::State::CloseWait)
        {
            conn.announced = true;
            out.events.push(NetworkToPython::ConnectionEstablished {
                id,
                peer: self.peers[conn.flow.peer].clone(),
                endpoint: conn.endpoint,
                src: conn.flow.client,
                dst: conn.flow.destination,
            });
        }

        // Python's writes into the send buffer, then FIN once they are all in.
        while let Some(front) = conn.pending.front() {
            match socket.send_slice(&front[conn.pending_offset..]) {
                Ok(n) if n > 0 => {
                    conn.committed = true;
                    conn.pending_offset += n;
                    if conn.pending_offset == front.len() {
                        conn.pending.pop_front();
                        conn.pending_offset = 0;
                    }
                }
                _ => break,
            }
        }
        if conn.pending.is_empty() {
            if conn.fin_requested {
                socket.close();
            }
            if conn.unconfirmed >= WRITE_LOW_WATER && conn.announced && !conn.python_closed {
                out.events.push(NetworkToPython::Drained {
                    id,
                    bytes: conn.unconfirmed,
                });
                conn.unconfirmed = 0;
            }
        }

        // Data for Python, if it wants some and has room; after it closed, data is read and dropped to keep the
        // window open.
        if conn.announced && (conn.reading || conn.python_closed) && socket.can_recv() {
            let limit = if conn.python_closed {
                usize::MAX
            } else {
                self.read_budget
            };
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
            if !conn.python_closed {
                self.read_budget -= data.len();
                if socket.can_recv() && !conn.starved {
                    conn.starved = true;
                    self.starved.push(id);
                }
                if !data.is_empty() {
                    out.events.push(NetworkToPython::Data { id, data });
                }
            }
        }

        let state = socket.state();
        if conn.announced
            && !conn.eof_sent
            && !conn.python_closed
            && socket.recv_queue() == 0
            && fin_received(state)
        {
            conn.eof_sent = true;
            out.events.push(NetworkToPython::Eof { id });
        }

        loop {
            let result = self.iface.poll_egress(now, &mut self.device, &mut conn.sockets);
            if result == smoltcp::iface::PollResult::None {
                break;
            }
        }
        let peer = conn.flow.peer;
        for p in self.device.tx.drain(..) {
            conn.sent.record(&p);
            out.packets.push((peer, p));
        }

        let state = conn.sockets.get_mut::<tcp::Socket>(conn.handle).state();
        let gone = state == tcp::State::Closed
            || (state == tcp::State::Listen && conn.last_state != tcp::State::Listen);
        if !conn.closed_sent && conn.announced && (gone || state == tcp::State::TimeWait) {
            conn.closed_sent = true;
            let reset = gone && !orderly_end(conn.last_state);
            out.events.push(NetworkToPython::ConnectionClosed { id, reset });
        }
        conn.last_state = state;

        if gone {
            self.forget(id);
            return;
        }
        let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
        // Out-of-order data waits in the receive buffer beyond what `recv_queue` counts: its pages are kept.
        if conn.committed
            && socket.send_queue() == 0
            && conn.pending.is_empty()
            && socket.recv_queue() == 0
            && !conn.sent.awaits_retransmission()
        {
            match conn.release_at {
                Some(at) if at <= now => {
                    conn.memory.release(0, RX_BUFFER + TX_BUFFER);
                    conn.committed = false;
                    conn.release_at = None;
                }
                Some(_) => {}
                None => conn.release_at = Some(now + RELEASE_AFTER.into()),
            }
        } else {
            conn.release_at = None;
        }
        let mut next = self.iface.poll_at(now, &conn.sockets);
        for at in [conn.linger_until, conn.release_at].into_iter().flatten() {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if next != conn.deadline {
            if let Some(old) = conn.deadline {
                self.timers.remove(&(old, id));
            }
            if let Some(new) = next {
                self.timers.insert((new, id));
            }
            conn.deadline = next;
        }
    }

    /// A new SYN for a flow whose last connection waits in TIME-WAIT starts a new connection, as kernels accept
    /// one (RFC 6191): the old one has exchanged both FINs, and a client that reuses its port (a fixed source
    /// port, or many connections to one destination) must not be left without an answer.
    fn retire_time_wait(&mut self, flow: &Flow) {
        let Some(&id) = self.flows.get(flow) else {
            return;
        };
        if let Some(conn) = self.connections.get_mut(&id) {
            if conn.sockets.get_mut::<tcp::Socket>(conn.handle).state() == tcp::State::TimeWait {
                log::debug!("connection {id}: a new SYN ends its TIME-WAIT");
                self.forget(id);
            }
        }
    }

    fn forget(&mut self, id: ConnectionId) {
        if let Some(conn) = self.connections.remove(&id) {
            self.flows.remove(&conn.flow);
            if let Some(at) = conn.deadline {
                self.timers.remove(&(at, id));
            }
            let Connection {
                sockets,
                memory,
                committed,
                ..
            } = conn;
            // The socket's buffers borrow the memory: they go first.
            drop(sockets);
            if committed {
                // A pooled mapping keeps the pages a short connection touches, not all a long one did.
                memory.release(POOL_KEEPS, RX_BUFFER - POOL_KEEPS);
                memory.release(RX_BUFFER + POOL_KEEPS, TX_BUFFER - POOL_KEEPS);
            }
            self.memory.give(memory);
        }
    }
}

/// How far the stack's segments on a connection went, in both sequence spaces, and how far the client's data
/// went.
#[derive(Debug, Default)]
struct Sent {
    /// The last acknowledgement number sent: the client's data up to here was received.
    ack: Option<u32>,
    /// The end of the furthest segment sent.
    end: Option<u32>,
    /// The end of the furthest segment with data received from the client.
    received_end: Option<u32>,
}

impl Sent {
    fn record(&mut self, packet: &[u8]) {
        let Some(segment) = packet::sent_segment(packet) else {
            return;
        };
        if segment.ack.is_some() {
            self.ack = segment.ack;
        }
        furthest(&mut self.end, segment.end());
    }

    fn receive(&mut self, segment: &packet::Segment) {
        furthest(&mut self.received_end, segment.end());
    }

    /// The client sent data beyond what the stack acknowledged: the stack may hold it out of order (or dropped
    /// it), and waits for the client to fill the gap.
    fn awaits_retransmission(&self) -> bool {
        self.received_end
            .is_some_and(|end| self.ack.is_none_or(|ack| packet::seq_after(end, ack)))
    }

    /// For a client's segment that repeats data the stack acknowledged while the client has not acknowledged all
    /// the stack sent: the sequence number the stack expects next. The client resends because it did not get
    /// the acknowledgement, so the stack's segments since then were lost.
    fn lost_before(&self, segment: &packet::Segment) -> Option<u32> {
        let (ack, end, client_ack) = (self.ack?, self.end?, segment.ack?);
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
/// instead of waiting for its retransmission timer (smoltcp's minimum is 1 s; a kernel would have sent a tail
/// loss probe long before). smoltcp offers no call for that, but it retransmits on the third duplicate
/// acknowledgement, and the client's segment stands for one: the bare acknowledgements fed to it here are that
/// segment without its data, at the current sequence number. smoltcp counts duplicates until an acknowledgement
/// changes something, and retransmits only when the count reaches three exactly; so the first one fed differs
/// in its window, and the next one (back to the client's window) starts the count afresh: a reply lost twice
/// is resent twice.
fn resend_lost(
    iface: &mut Interface,
    device: &mut VirtualDevice,
    conn: &mut Connection,
    [nudged, ack]: [Vec<u8>; 2],
    now: Instant,
) {
    let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
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
        iface.poll_ingress_single(now, device, &mut conn.sockets);
    }
    device.rx = None;
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

fn rand_seed() -> u64 {
    let mut seed = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    u64::from_le_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::IpAddress;

    /// A TCP client made of a smoltcp socket of its own, wired to the stack under test.
    struct Client {
        iface: Interface,
        device: VirtualDevice,
        sockets: SocketSet<'static>,
        handle: SocketHandle,
        peer: PeerId,
    }

    impl Client {
        fn connect(peer: PeerId, src: &str, dst: &str) -> Client {
            let src: SocketAddr = src.parse().unwrap();
            let dst: SocketAddr = dst.parse().unwrap();
            let mut device = VirtualDevice::default();
            let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, Instant::ZERO);
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::from(src.ip()), 32)).unwrap();
            });
            match src.ip() {
                std::net::IpAddr::V4(ip) => iface.routes_mut().add_default_ipv4_route(ip).unwrap(),
                std::net::IpAddr::V6(ip) => iface.routes_mut().add_default_ipv6_route(ip).unwrap(),
            };
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 1 << 20]),
                tcp::SocketBuffer::new(vec![0; 1 << 20]),
            );
            socket.set_nagle_enabled(false);
            socket.connect(iface.context(), dst, src.port()).unwrap();
            let mut sockets = SocketSet::new(vec![]);
            let handle = sockets.add(socket);
            Client {
                iface,
                device,
                sockets,
                handle,
                peer,
            }
        }

        fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut(self.handle)
        }

        /// Exchanges packets between client and stack until neither has more to say; returns Python's events.
        fn pump(&mut self, stack: &mut Stack) -> Vec<NetworkToPython> {
            self.pump_through(stack, Some)
        }

        /// `pump`, with a tunnel that may lose or change the client's packets.
        fn pump_through(
            &mut self,
            stack: &mut Stack,
            mut tunnel: impl FnMut(Vec<u8>) -> Option<Vec<u8>>,
        ) -> Vec<NetworkToPython> {
            let mut events = vec![];
            let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
            for _ in 0..10_000 {
                let now = stack.now();
                self.iface.poll(now, &mut self.device, &mut self.sockets);
                let mut out = Outputs::default();
                let sent: Vec<_> = self.device.tx.drain(..).collect();
                for p in sent.iter().filter_map(|p| tunnel(p.clone())) {
                    stack.receive(self.peer, endpoint, p, &mut out);
                }
                stack.flush(&mut out);
                stack.poll_timers(&mut out);
                events.append(&mut out.events);
                if sent.is_empty() && out.packets.is_empty() {
                    return events;
                }
                for (peer, p) in out.packets {
                    assert_eq!(peer, self.peer, "a packet went to the wrong peer");
                    self.device.rx = Some(p);
                    self.iface.poll(now, &mut self.device, &mut self.sockets);
                }
            }
            panic!("no quiet moment after 10,000 rounds");
        }
    }

    fn stack() -> Stack {
        let peers = (0..2)
            .map(|id| PeerInfo {
                id,
                public_key: format!("key{id}").into(),
            })
            .collect();
        Stack::new(peers)
    }

    fn established(events: &[NetworkToPython]) -> ConnectionId {
        match events
            .iter()
            .find(|e| matches!(e, NetworkToPython::ConnectionEstablished { .. }))
        {
            Some(NetworkToPython::ConnectionEstablished { id, peer, .. }) => {
                assert_eq!(peer.public_key.as_ref(), format!("key{}", peer.id));
                *id
            }
            _ => panic!("no connection in {events:?}"),
        }
    }

    fn data(events: &[NetworkToPython]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                NetworkToPython::Data { data, .. } => Some(data.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn connections_to_any_address_carry_data_both_ways_and_half_close() {
        for (src, dst) in [
            ("10.0.0.1:40000", "198.51.100.7:443"),
            ("[fd00::1]:40000", "[2001:db8::7]:80"),
        ] {
            let mut stack = stack();
            let mut client = Client::connect(0, src, dst);
            let events = client.pump(&mut stack);
            let id = established(&events);
            match &events[0] {
                NetworkToPython::ConnectionEstablished { src: s, dst: d, .. } => {
                    assert_eq!((s.to_string(), d.to_string()), (src.to_string(), dst.to_string()));
                }
                e => panic!("unexpected {e:?}"),
            }

            // 300 KB from the client, more than the window: it arrives whole and in order.
            let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let mut received = vec![];
            let mut sent = 0;
            while received.len() < payload.len() {
                sent += client.socket().send_slice(&payload[sent..]).unwrap();
                received.extend(data(&client.pump(&mut stack)));
            }
            assert_eq!(received, payload);

            // Python answers, then half-closes: the client reads it all, then EOF.
            let mut out = Outputs::default();
            stack.handle(
                PythonToNetwork::Write {
                    id,
                    data: b"hello".to_vec(),
                },
                &mut out,
            );
            stack.handle(PythonToNetwork::WriteEof { id }, &mut out);
            stack.flush(&mut out);
            for (_, p) in out.packets {
                client.device.rx = Some(p);
                client
                    .iface
                    .poll(stack.now(), &mut client.device, &mut client.sockets);
            }
            client.pump(&mut stack);
            let mut buf = [0u8; 16];
            let n = client.socket().recv_slice(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert!(!client.socket().may_recv(), "the client saw the FIN");

            // The client still sends after Python's FIN; then closes: Python gets the data, then EOF.
            client.socket().send_slice(b"bye").unwrap();
            client.socket().close();
            let events = client.pump(&mut stack);
            assert_eq!(data(&events), b"bye");
            assert!(events
                .iter()
                .any(|e| matches!(e, NetworkToPython::Eof { id: i } if *i == id)));
            assert!(events
                .iter()
                .any(|e| matches!(e, NetworkToPython::ConnectionClosed { id: i, reset: false } if *i == id)));
        }
    }

    /// The client sends "request", kept as a packet so that a test can send it again; Python answers "reply".
    /// Returns the request and what the stack put out.
    fn request_and_reply(stack: &mut Stack, client: &mut Client, id: ConnectionId) -> (Vec<u8>, Outputs) {
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
        client.socket().send_slice(b"request").unwrap();
        let now = stack.now();
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        let request = client.device.tx.pop().unwrap();
        let mut out = Outputs::default();
        stack.receive(client.peer, endpoint, request.clone(), &mut out);
        stack.flush(&mut out);
        stack.handle(
            PythonToNetwork::Write {
                id,
                data: b"reply".to_vec(),
            },
            &mut out,
        );
        stack.flush(&mut out);
        (request, out)
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
            let now = stack.now();

            // Long before the stack's retransmission timer, the client repeats its request: the reply is sent
            // again at once. The first resend is lost too; the second arrives.
            for attempt in 0..2 {
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
                    for (_, p) in out.packets {
                        client.device.rx = Some(p);
                        client.iface.poll(now, &mut client.device, &mut client.sockets);
                    }
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
        client.socket().set_ack_delay(None);
        for (_, p) in out.packets {
            client.device.rx = Some(p);
            client
                .iface
                .poll(stack.now(), &mut client.device, &mut client.sockets);
        }
        client.pump(&mut stack); // the reply arrived and is acknowledged at once

        // The client resends its request (say its timer fired early), now acknowledging the reply.
        let mut request = request;
        let acked = stack.connections[&id].sent.end.unwrap();
        request[28..32].copy_from_slice(&acked.to_be_bytes());
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

    /// Lets the stack's clock run on, in steps as long as idle buffers wait before they are released (a delayed
    /// acknowledgement goes out in the first), servicing what is due.
    fn idle(stack: &mut Stack) {
        for _ in 0..3 {
            stack.epoch -= RELEASE_AFTER + Duration::from_millis(10);
            stack.poll_timers(&mut Outputs::default());
        }
    }

    #[test]
    fn an_idle_connection_gives_its_pages_back_but_keeps_data_that_arrived_out_of_order() {
        let mut stack = stack();
        let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let id = established(&client.pump(&mut stack));
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();

        client.socket().send_slice(b"first").unwrap();
        assert_eq!(data(&client.pump(&mut stack)), b"first");
        assert!(stack.connections[&id].committed);
        idle(&mut stack);
        assert!(
            !stack.connections[&id].committed,
            "Python read all, nothing to send: released"
        );

        // The tunnel loses a segment and delivers the next: the stack holds that one beyond a gap.
        let mut segments = vec![];
        for text in [b"lost ", b"later"] {
            client.socket().send_slice(text).unwrap();
            let now = stack.now();
            client.iface.poll(now, &mut client.device, &mut client.sockets);
            segments.push(client.device.tx.pop().unwrap());
        }
        let mut out = Outputs::default();
        stack.receive(0, endpoint, segments[1].clone(), &mut out);
        stack.flush(&mut out);
        assert!(data(&out.events).is_empty());
        idle(&mut stack);
        assert!(
            stack.connections[&id].committed,
            "out-of-order data keeps its pages"
        );

        // The client retransmits the lost segment: both arrive whole, in order.
        let mut out = Outputs::default();
        stack.receive(0, endpoint, segments[0].clone(), &mut out);
        stack.flush(&mut out);
        assert_eq!(data(&out.events), b"lost later");
        idle(&mut stack);
        assert!(!stack.connections[&id].committed);
    }

    #[test]
    fn a_client_reset_is_reported_as_such() {
        let mut stack = stack();
        let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let id = established(&client.pump(&mut stack));
        client.socket().abort();
        let events = client.pump(&mut stack);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, NetworkToPython::ConnectionClosed { id: i, reset: true } if *i == id)),
            "{events:?}"
        );
        assert_eq!(stack.connection_count(), 0);
    }

    #[test]
    fn python_close_flushes_before_fin() {
        let mut stack = stack();
        let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let id = established(&client.pump(&mut stack));
        let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        let mut out = Outputs::default();
        stack.handle(
            PythonToNetwork::Write {
                id,
                data: payload.clone(),
            },
            &mut out,
        );
        stack.handle(PythonToNetwork::Close { id }, &mut out);
        stack.flush(&mut out);
        for (_, p) in out.packets {
            client.device.rx = Some(p);
            client
                .iface
                .poll(stack.now(), &mut client.device, &mut client.sockets);
        }
        let mut received = vec![];
        for _ in 0..1000 {
            while let Ok(n) = client.socket().recv(|b| (b.len(), b.to_vec())) {
                if n.is_empty() {
                    break;
                }
                received.extend(n);
            }
            if !client.socket().may_recv() {
                break;
            }
            client.pump(&mut stack);
        }
        assert_eq!(received.len(), payload.len());
        assert_eq!(received, payload);
        assert_eq!(client.socket().state(), tcp::State::CloseWait, "FIN, not RST");
    }

    #[test]
    fn reading_stops_at_the_budget_and_resumes_when_python_caught_up() {
        let mut stack = stack();
        let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        established(&client.pump(&mut stack));
        let payload: Vec<u8> = (0..(2 * RX_BUFFER + 100_000) as u32)
            .map(|i| (i % 249) as u8)
            .collect();
        stack.set_read_budget(10_000);
        let mut sent = 0;
        let mut received = vec![];
        for _ in 0..20 {
            sent += client.socket().send_slice(&payload[sent..]).unwrap();
            stack.set_read_budget(10_000usize.saturating_sub(received.len()));
            received.extend(data(&client.pump(&mut stack)));
        }
        assert_eq!(received.len(), 10_000, "no more than the budget is read");
        assert!(stack.has_starved());
        // The window closed: the client holds the rest.
        assert!(client.socket().send_queue() > 0);

        stack.set_read_budget(usize::MAX);
        let mut out = Outputs::default();
        stack.handle(PythonToNetwork::ResumeStarved, &mut out);
        stack.flush(&mut out);
        received.extend(data(&out.events));
        for (_, p) in out.packets {
            client.device.rx = Some(p);
            client
                .iface
                .poll(stack.now(), &mut client.device, &mut client.sockets);
        }
        while received.len() < payload.len() {
            sent += client.socket().send_slice(&payload[sent..]).unwrap();
            received.extend(data(&client.pump(&mut stack)));
        }
        assert_eq!(received, payload);
        assert!(!stack.has_starved());
    }

    /// Passes the client's SYN and the stack's SYN-ACK, checking that the stack offers window scaling; returns the
    /// client's initial sequence number.
    fn open_with_window_scale(stack: &mut Stack, client: &mut Client) -> u32 {
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
        for (_, p) in out.packets {
            client.device.rx = Some(p);
            client.iface.poll(now, &mut client.device, &mut client.sockets);
        }
        isn
    }

    /// The client's data that the tunnel loses, at these offsets: in the last flight before the window is full.
    const LOSSES: &[usize] = &[RX_BUFFER - 60_000];

    /// A handler that reads only once its writes are drained (a proxy that pauses reading while its other side is
    /// slow), on a connection with a scaled window and a tunnel that loses a segment while the window fills. The
    /// segments after the gap are acknowledged at once, with the window rounded down to the scale: its right edge
    /// moves left of where the client already sent, and the window closes with the client's sequence number
    /// beyond it. The client's acknowledgements must count all the same, or the handler's writes never drain, it
    /// never reads, and the connection stalls. The client behaves as a kernel's TCP does: it keeps its sequence
    /// number in acknowledgements when the window shrank by less than a scale unit (Linux's
    /// `tcp_acceptable_seq`), so they never become acceptable while the window stays closed.
    #[test]
    fn a_scaled_window_closed_by_a_handler_that_waits_for_its_writes_still_takes_acknowledgements() {
        let mut stack = stack();
        let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let isn = open_with_window_scale(&mut stack, &mut client);
        let id = established(&client.pump(&mut stack));

        let download: Vec<u8> = (0..3 * TX_BUFFER as u32).map(|i| (i % 241) as u8).collect();
        let upload: Vec<u8> = (0..3 * RX_BUFFER as u32).map(|i| (i % 239) as u8).collect();
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
        let start = stack.epoch.elapsed();
        let mut clock = start;
        for _ in 0..60 {
            for (_, p) in to_client.drain(..) {
                client.device.rx = Some(p);
                let now = stack.now();
                client.iface.poll(now, &mut client.device, &mut client.sockets);
            }
            sent += client.socket().send_slice(&upload[sent..]).unwrap();
            events.extend(client.pump_through(&mut stack, &mut tunnel));
            while let Ok(chunk) = client.socket().recv(|b| (b.len(), b.to_vec())) {
                if chunk.is_empty() {
                    break;
                }
                downloaded.extend(chunk);
            }
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
                    clock < start + Duration::from_secs(1),
                    "drained only after a timeout"
                );
                stack.handle(PythonToNetwork::ResumeReading { id }, &mut out);
                stack.flush(&mut out);
            }
            if uploaded.len() == upload.len() && downloaded.len() == download.len() {
                break;
            }
            // Until the writes drained: delayed acknowledgements go out, retransmission timers (1 s at least) do
            // not fire. Then timers too, for the client's own losses at the window's edge.
            clock += Duration::from_millis(if reading { 250 } else { 20 });
            stack.epoch = std::time::Instant::now() - clock;
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

    #[test]
    fn two_peers_with_one_address_are_kept_apart() {
        let mut stack = stack();
        let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let mut b = Client::connect(1, "10.0.0.1:40000", "10.0.0.42:1234");
        let id_a = established(&a.pump(&mut stack));
        let id_b = established(&b.pump(&mut stack));
        assert_ne!(id_a, id_b);
        a.socket().send_slice(b"from a").unwrap();
        b.socket().send_slice(b"from b").unwrap();
        assert_eq!(data(&a.pump(&mut stack)), b"from a");
        assert_eq!(data(&b.pump(&mut stack)), b"from b");
    }

    #[test]
    fn a_new_syn_reopens_a_flow_in_time_wait() {
        let mut stack = stack();
        let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let first = established(&a.pump(&mut stack));
        // The server closes first, so its side of the flow waits in TIME-WAIT.
        let mut out = Outputs::default();
        stack.handle(PythonToNetwork::Close { id: first }, &mut out);
        stack.flush(&mut out);
        for (_, p) in out.packets {
            a.device.rx = Some(p);
            let now = stack.now();
            a.iface.poll(now, &mut a.device, &mut a.sockets);
        }
        a.pump(&mut stack);
        a.socket().close();
        a.pump(&mut stack);
        assert_eq!(a.socket().state(), tcp::State::Closed);
        assert_eq!(stack.connection_count(), 1, "the server's side is in TIME-WAIT");

        // The client connects again from the same port at once.
        let mut b = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        let second = established(&b.pump(&mut stack));
        assert_ne!(first, second);
        b.socket().send_slice(b"again").unwrap();
        assert_eq!(data(&b.pump(&mut stack)), b"again");
    }

    #[test]
    fn segments_of_unknown_connections_get_a_reset() {
        let mut stack = stack();
        let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
        established(&a.pump(&mut stack));
        // The same connection seen from another peer is unknown there: the stack resets it.
        a.peer = 1;
        a.socket().send_slice(b"x").unwrap();
        a.pump(&mut stack);
        assert_eq!(a.socket().state(), tcp::State::Closed);
    }
}
