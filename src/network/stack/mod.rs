//! The TCP/IP side of the server: one smoltcp TCP socket per connection, each in a socket set of its own, so a
//! packet costs a lookup and a poll of its own connection only, whatever the number of open connections.
//!
//! No I/O happens here: packets and Python's requests go in, and `Outputs` (packets for peers, events for
//! Python) come out. Nor does the stack read the clock: every entry point takes the time (`now`) from its caller,
//! as smoltcp does, so that a test moves time by passing it.
//!
//! - `receive`: packets from peers, dispatched by protocol (ping, UDP, TCP).
//! - `requests`: Python's requests (answers to SYNs, writes, closes, flow control, datagrams).
//! - `connection`: a TCP connection and the steps that move it on (`Stack::service`).
//! - `lifecycle`: what Python knows of a connection, as a state machine.
//! - `peers`: the peers, added and removed while the server runs, and what is counted of each.
//! - `release`: giving an idle connection's buffer pages back.
//! - `autotune`: each connection's receive window, grown with its throughput, within a global budget.
//! - `timers`: when each connection needs a poll next.
//! - `admission`: how many connections each peer, and all together, may hold.
//! - `timeouts`: when the stack gives up on a client: a handshake never completed, a client gone silent, data
//!   left unacknowledged.

mod admission;
mod autotune;
mod connection;
#[cfg(test)]
mod invariants;
mod lifecycle;
mod peers;
mod receive;
mod release;
mod requests;
#[cfg(test)]
mod tests;
mod timeouts;
mod timers;

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr};

use super::device::VirtualDevice;
use super::fragments::Reassembler;
use super::memory::MemoryPool;
use super::udp_routes::UdpRoutes;
use crate::messages::{ConnectionId, NetworkToPython, PeerId, PeerInfo};
use admission::Admission;
use autotune::WindowBudget;
use connection::Connection;
use peers::PeerState;
pub use peers::QueueDrop;

/// Receive and send buffer of each connection, mapped on demand (`LazyMemory`): an idle connection pays for the
/// pages its data touched, not for these sizes. The receive buffer sets the largest TCP window and, above 64 KiB,
/// the window scale (smoltcp picks the smallest shift that covers the buffer: 7 for 4 MiB, a window in units of
/// 128 bytes). 4 MiB carries 80 MB/s at a 50 ms round trip, 20 MB/s at 200 ms. The window a connection
/// advertises starts at `INITIAL_WINDOW` and grows only as fast as Python reads (`autotune`), within
/// `WINDOW_BUDGET` for all connections together. A connection maps its buffers once its handshake completed
/// (a half-open one maps nothing: smoltcp answers its SYN with the window of the buffer it will get,
/// `plan_receive_buffer`), one mapping each, so the connections never outnumber `vm.max_map_count`
/// (`Stack::fit_mappings`). 10,000 connections reserve 82 GB of address space: the mappings are private and
/// writable, so with `vm.overcommit_memory` at 2 (strict accounting) the kernel counts them all and refuses new ones
/// when it runs out (the segment that completes a handshake is then dropped and logged); at 0 (the default
/// heuristic) or 1 only touched pages count. Window scaling needs the patched smoltcp
/// (crates/smoltcp/fork/README.md): the released one stalls a scaled connection under backpressure and loss.
const RX_BUFFER: usize = 4 << 20;
/// The receive window a connection starts with, and falls back to once idle (see `autotune`).
const INITIAL_WINDOW: usize = 64 * 1024;
/// How much memory the buffers of all connections together may commit before windows stop growing: each
/// connection that holds pages counts its window and its send buffer. Windows never shrink for it, and every
/// connection gets its first window, so many active connections can go beyond it by their first windows only.
const WINDOW_BUDGET: usize = 256 << 20;
/// The send buffer's mapping: what one connection may have in flight and queued at most. Like the receive
/// buffer, its pages are committed as data touches them; a connection takes in only `send_limit` of Python's
/// writes (see `autotune`), four congestion windows, and gives back the pages of data the client acknowledged
/// (see `release`). The patched smoltcp paces segments at the path's rate (BBR), so a window that large does not
/// leave as one burst.
const TX_BUFFER: usize = 4 << 20;
/// The send buffer a connection starts with, and falls back to once idle: as much as it takes in from Python
/// before the congestion window has grown. Also the floor under the congestion window (crates/smoltcp/fork/README.md).
const INITIAL_SEND_BUFFER: usize = 64 * 1024;

/// How many mappings of ended connections are kept for new ones.
const POOLED_BUFFERS: usize = 64;

/// How long emptied buffers stay committed before their pages go back to the kernel.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Python pauses writing when more than `WRITE_HIGH_WATER` bytes are not yet handed to the TCP stack, and
/// resumes at `WRITE_LOW_WATER`. The stack confirms (with `Drained`) whenever it has taken in a backlog of at least
/// `WRITE_LOW_WATER` bytes, so a paused Python always hears of it. Both sides use these constants.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;
pub const WRITE_LOW_WATER: usize = WRITE_HIGH_WATER / 4;

/// How long a connection that Python closed may wait for the client's FIN (the kernel's FIN-WAIT-2 timeout).
const LINGER: Duration = Duration::from_secs(60);

/// How long a connection may stay half-open: one whose client does not complete the handshake this long after
/// its SYN is dropped, without a word, as a kernel drops it after its 5 SYN-ACK retransmissions (1 + 2 + 4 + 8 +
/// 16 s, then 32 s more for an answer). A SYN-ACK that the tunnel lost is sent again meanwhile.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(63);

/// How long a connection that Python opens waits for the other end's SYN-ACK: as long as Linux's default six
/// SYN retransmissions take (1 + 2 + 4 + 8 + 16 + 32 + 64 s), then `ConnectFailed` (ETIMEDOUT).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(127);

/// An open connection on which the client said nothing for this long gets a keepalive probe, and another each
/// time this passes again without an answer. Rare enough not to wake a phone's radio for every idle connection
/// (a kernel waits two hours, where keepalive is asked for at all), often enough that a vanished client's
/// connections do not hold memory for long.
const KEEPALIVE: Duration = Duration::from_secs(600);

/// The longest silence of a client on an open connection: four keepalive probes went unanswered. Then the
/// connection is reset (Python hears `ConnectionClosed` with `reset`, as of a kernel's ETIMEDOUT).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(4 * 600);
/// The floor of the retransmission timeout: 200 ms, as Linux's, not RFC 6298's 1 s (smoltcp's default).
const MIN_RTO: Duration = Duration::from_millis(200);

/// The longest time data may wait unacknowledged, a client that keeps its window closed included: then the
/// connection is reset, as a kernel with TCP_USER_TIMEOUT resets it.
const USER_TIMEOUT: Duration = Duration::from_secs(300);

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

/// A TCP connection as the client sees it: the same addresses from two peers are two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flow {
    peer: PeerId,
    client: SocketAddr,
    destination: SocketAddr,
}

/// How much may still be read for Python in this batch, and who was left unread for lack of it.
#[derive(Debug)]
struct ReadBudget {
    /// Bytes that may still be read (room in Python's queue).
    bytes: usize,
    /// Connections with data left unread because the budget ran out; they wait for `ResumeStarved`.
    starved: Vec<ConnectionId>,
}

pub struct Stack {
    iface: Interface,
    device: VirtualDevice,
    peers: HashMap<PeerId, PeerState>,
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
    /// What the buffers of all connections may commit, and how much of it they do.
    window_budget: WindowBudget,
    budget: ReadBudget,
    /// How many connections each peer holds, and whether it may open another.
    admission: Admission,
    /// Identification of the next fragmented datagram.
    next_ident: u32,
    /// The largest packet it sends: datagrams and echo replies are fragmented to it.
    mtu: usize,
    /// Python decides on each SYN before the client gets an answer (`NetworkToPython::ConnectionRequested`).
    ask_first: bool,
    /// SYNs open connections (a server); otherwise they get a RST, as from a host where nothing listens (the
    /// client, whose connections Python opens).
    accepts: bool,
    /// Where the search for a free local port goes on (`free_port`).
    next_port: u32,
    /// smoltcp counts time from here.
    epoch: StdInstant,
}

impl Stack {
    /// A stack for these peers; `now` is when it starts.
    pub fn new(peers: Vec<PeerInfo>, now: StdInstant) -> Self {
        Stack::with_mtu(peers, now, super::device::MTU)
    }

    /// A stack whose packets are at most `mtu` bytes (a client's configured MTU).
    pub fn with_mtu(peers: Vec<PeerInfo>, now: StdInstant, mtu: usize) -> Self {
        let mut device = VirtualDevice {
            mtu,
            ..VirtualDevice::default()
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand_seed();
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
            peers: peers::table(peers),
            connections: HashMap::new(),
            flows: HashMap::new(),
            timers: BTreeSet::new(),
            next_id: 1,
            no_sockets: SocketSet::new(vec![]),
            udp_routes: UdpRoutes::default(),
            dirty: Vec::new(),
            fragments: Reassembler::default(),
            memory: MemoryPool::new(RX_BUFFER + TX_BUFFER, POOLED_BUFFERS),
            window_budget: WindowBudget {
                limit: WINDOW_BUDGET,
                used: 0,
            },
            budget: ReadBudget {
                bytes: usize::MAX,
                starved: Vec::new(),
            },
            admission: Admission::default(),
            next_ident: 0,
            mtu,
            ask_first: false,
            accepts: true,
            next_port: 0,
            epoch: now,
        }
    }

    /// A moment in smoltcp's time.
    fn clock(&self, now: StdInstant) -> Instant {
        Instant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    /// A moment of smoltcp's time as the caller's.
    fn unclock(&self, instant: Instant) -> StdInstant {
        self.epoch + Duration::from_micros(instant.total_micros().max(0) as u64)
    }

    /// The identification of the next datagram this stack fragments.
    fn fragment_ident(&mut self) -> u32 {
        self.next_ident = self.next_ident.wrapping_add(1);
        self.next_ident
    }

    /// Whether a SYN waits for Python's answer (`ConnectionRequested`, then `PythonToNetwork::Answer`) before
    /// the client gets a SYN-ACK, a RST, an ICMP error or nothing; otherwise every SYN gets its SYN-ACK at once.
    pub fn set_ask_first(&mut self, ask: bool) {
        self.ask_first = ask;
    }

    /// Lowers the limit on all connections together, if need be, so that their mappings (one each, and those the
    /// pool keeps) stay below `max_map_count` mappings, the process's limit (`vm.max_map_count`), with `reserved`
    /// of them left for everything else. Returns the limit.
    pub fn fit_mappings(&mut self, max_map_count: usize, reserved: usize) -> usize {
        let room = max_map_count.saturating_sub(reserved + POOLED_BUFFERS);
        let limits = &mut self.admission.limits;
        limits.total = limits.total.min(room);
        limits.total
    }

    /// Whether SYNs open connections (the server), or get a RST (the client: Python opens its connections).
    pub fn set_accepts(&mut self, accepts: bool) {
        self.accepts = accepts;
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn peer(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peers.get(&peer).map(|state| &state.info)
    }

    /// How many bytes may be read for Python from now on.
    pub fn set_read_budget(&mut self, bytes: usize) {
        self.budget.bytes = bytes;
    }

    /// Whether connections wait for `resume_starved`.
    pub fn has_starved(&self) -> bool {
        !self.budget.starved.is_empty()
    }

    fn mark_dirty(&mut self, id: ConnectionId) {
        if let Some(conn) = self.connections.get_mut(&id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Services every connection touched since the last flush. Call after each batch.
    pub fn flush(&mut self, now: StdInstant, out: &mut Outputs) {
        let now = self.clock(now);
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.dirty = false;
                self.service(id, now, out);
            }
        }
        // Reuse the allocation.
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Resets every connection (server shutdown).
    pub fn abort_all(&mut self, now: StdInstant, out: &mut Outputs) {
        let now = self.clock(now);
        let ids: Vec<_> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.abort();
            }
            self.service(id, now, out);
        }
    }
}

fn rand_seed() -> u64 {
    let mut seed = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    u64::from_le_bytes(seed)
}
