//! The messages that tasks send each other, one enum per direction.
//!
//! The WireGuard task and the network task run on the engine thread; Python calls in from its own thread. Events
//! for Python go through the queue in `events.rs`, whose wakeup socket tells Python's event loop when they wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::capture::Tap;
use crate::config::Peer;
use crate::network::packet::Unreachable;

pub use crate::ids::{ConnectionId, PeerId, RequestId, OUTGOING};

/// Who a connection or datagram belongs to, for Python: the peer's index and public key.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: PeerId,
    pub public_key: Arc<str>,
}

/// What a peer did, as `Server.peers()` reports it. The WireGuard task fills in its part (keys, endpoint,
/// traffic, its drops), the network task the rest (connections, flows, its drops).
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    pub id: PeerId,
    pub public_key: Arc<str>,
    pub allowed_ips: Vec<IpNet>,
    /// Where its last authenticated datagram came from.
    pub endpoint: Option<SocketAddr>,
    /// When its last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// WireGuard datagrams (UDP payload) from and to the peer, handshakes and keepalives included.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Its TCP connections open now.
    pub tcp_connections: usize,
    /// The UDP source addresses (address and port) it sent datagrams from lately.
    pub udp_flows: usize,
    /// Packets and datagrams of or for the peer that were dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
}

/// Requests of Python's that the WireGuard task handles first; their replies come back as
/// `NetworkToPython::Reply`, after everything the request caused (e.g. the closed connections of a removed peer).
#[derive(Debug)]
pub enum PythonToWireGuard {
    /// Add a peer (its values checked already; its addresses, against the other peers', by the WireGuard task):
    /// it may handshake at once.
    AddPeer { request: RequestId, peer: Peer },
    /// Remove a peer: its handshakes are refused from now on, its connections are reset.
    RemovePeer {
        request: RequestId,
        public_key: [u8; 32],
    },
    /// Every peer's statistics.
    Stats { request: RequestId },
}

#[derive(Debug)]
pub enum WireGuardToNetwork {
    /// A decrypted IP packet from a peer, received from its outer UDP endpoint `endpoint`.
    Packet {
        peer: PeerId,
        endpoint: SocketAddr,
        packet: Vec<u8>,
    },
    /// A new peer, before any packet of its, with the AllowedIPs it got (given, or the next free ones).
    PeerAdded {
        request: RequestId,
        info: PeerInfo,
        allowed_ips: Vec<IpNet>,
    },
    /// A peer is gone: no packet of its follows. Its connections are reset, then `ForgetPeer` goes back.
    PeerRemoved { request: RequestId, peer: PeerId },
    /// A reply for Python that the WireGuard task has already (a request that failed there).
    Reply { request: RequestId, reply: Reply },
    /// No handshake with the peer completed within WireGuard's 90 s of trying (its packets were dropped): the
    /// tunnel to it is down until a handshake succeeds again.
    HandshakeFailed { peer: PeerId, endpoint: SocketAddr },
    /// The WireGuard task's part of the statistics, for the network task to complete.
    Stats {
        request: RequestId,
        peers: Vec<PeerStats>,
    },
}

#[derive(Debug)]
pub enum NetworkToWireGuard {
    /// An IP packet to encrypt and send to a peer.
    Packet { peer: PeerId, packet: Vec<u8> },
    /// The last packets for a removed peer (the resets of its connections) went before this: its session can go.
    ForgetPeer { peer: PeerId },
}

#[derive(Debug)]
pub enum PythonToNetwork {
    Write {
        id: ConnectionId,
        data: Vec<u8>,
    },
    /// Send FIN once everything written went out; keep reading.
    WriteEof {
        id: ConnectionId,
    },
    /// Send FIN once everything written went out; Python reads no more.
    Close {
        id: ConnectionId,
    },
    /// Reset the connection now.
    Abort {
        id: ConnectionId,
    },
    PauseReading {
        id: ConnectionId,
    },
    ResumeReading {
        id: ConnectionId,
    },
    SendDatagram {
        data: Vec<u8>,
        src: SocketAddr,
        dst: SocketAddr,
        /// The peer to send to; if not known, the last peer that sent from `dst`.
        peer: Option<PeerId>,
    },
    /// Open a connection to `dst` through the tunnel to `peer`, from `src` (port 0: a free port is picked),
    /// as a client: `ConnectionEstablished` with this `id` follows once the handshake completes, or
    /// `ConnectFailed`. Python numbers these connections itself (`OUTGOING`), so that it knows the id at once.
    Connect {
        id: ConnectionId,
        peer: PeerId,
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// Python's answer to `ConnectionRequested`.
    Answer {
        id: ConnectionId,
        answer: SynAnswer,
    },
    /// Python emptied its queue: read the connections that were left unread for lack of room.
    ResumeStarved,
    /// Start copying every packet to and from peers to a capture (`Some`, replacing any other), or stop (`None`):
    /// the network task drops the tap, and its writer finishes the file.
    Capture(Option<Tap>),
}

impl PythonToNetwork {
    /// The bytes of data it carries, as its queue's budget counts them (`budget`).
    pub fn queued_bytes(&self) -> usize {
        match self {
            PythonToNetwork::Write { data, .. } | PythonToNetwork::SendDatagram { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// What a client gets for its SYN, once Python decided (when the server asks it, see `ConnectionRequested`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynAnswer {
    /// The SYN-ACK: the handshake goes on, and `ConnectionEstablished` follows once it completes.
    Accept,
    /// A RST, as from a port that nothing listens on.
    Reset,
    /// An ICMP destination-unreachable message that quotes the SYN.
    Unreachable(Unreachable),
    /// Nothing, to this SYN or its retransmissions, until the handshake timeout forgets the connection, as a
    /// destination that drops packets answers.
    Silence,
}

/// Why a connection that Python opened failed, as a kernel's `connect` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// A RST answered the SYN (ECONNREFUSED).
    Refused,
    /// No answer to the SYN and its retransmissions (ETIMEDOUT).
    TimedOut,
    /// An ICMP destination unreachable answered the SYN (EHOSTUNREACH, ENETUNREACH, or for a prohibition
    /// EHOSTUNREACH over IPv4 and EACCES over IPv6, as Linux reports them).
    Unreachable(Unreachable),
    /// No room for another connection, no free local port, or the local port named is in use to that destination
    /// (EADDRNOTAVAIL).
    NoRoom,
}

#[derive(Debug)]
pub enum NetworkToPython {
    /// A SYN arrived, and the server was started to ask Python first: no SYN-ACK goes out until Python answers
    /// with `PythonToNetwork::Answer`. Sent once per connection (not for the SYN's retransmissions).
    ConnectionRequested {
        id: ConnectionId,
        peer: PeerInfo,
        /// The client's outer UDP endpoint when its SYN arrived.
        endpoint: SocketAddr,
        /// The client's address inside the tunnel.
        src: SocketAddr,
        /// The destination the client asked for.
        dst: SocketAddr,
    },
    /// A TCP handshake completed: a new connection for the handler.
    ConnectionEstablished {
        id: ConnectionId,
        peer: PeerInfo,
        /// The client's outer UDP endpoint when its SYN arrived (Python's `original_src`).
        endpoint: SocketAddr,
        /// The client's address inside the tunnel.
        src: SocketAddr,
        /// The destination the client asked for.
        dst: SocketAddr,
    },
    Data {
        id: ConnectionId,
        data: Vec<u8>,
    },
    /// The client sent FIN: reads return EOF after the data before it.
    Eof {
        id: ConnectionId,
    },
    /// `bytes` that Python wrote have been handed to the TCP stack, so Python may write more.
    Drained {
        id: ConnectionId,
        bytes: usize,
    },
    /// A connection that Python opened (`PythonToNetwork::Connect`) did not get established.
    ConnectFailed {
        id: ConnectionId,
        reason: ConnectFailure,
    },
    /// No handshake with the peer completed within WireGuard's 90 s of trying: packets for it were dropped.
    HandshakeFailed {
        peer: PeerInfo,
        /// Where the handshakes were sent.
        endpoint: SocketAddr,
    },
    /// The connection is gone; `reset` tells an abort by the peer (or a timeout) from an orderly close.
    ConnectionClosed {
        id: ConnectionId,
        reset: bool,
    },
    /// A UDP datagram from a peer (its id for the way back, its key for Python's logs and shares).
    Datagram {
        data: Vec<u8>,
        src: SocketAddr,
        dst: SocketAddr,
        peer: PeerInfo,
    },
    /// The answer to a request of Python's.
    Reply {
        request: RequestId,
        reply: Reply,
    },
    /// Every task ended: the server is closed. `error` says why, if it was not asked to close: a task failed.
    ServerClosed {
        error: Option<String>,
    },
}

#[derive(Debug)]
pub enum Reply {
    /// The request was carried out.
    Done,
    /// A peer was added, with these AllowedIPs.
    Added(Vec<IpNet>),
    Stats(Vec<PeerStats>),
    /// The request was refused: a `ValueError` with this message.
    Failed(String),
}
