//! The messages that tasks send each other, one enum per direction.
//!
//! The WireGuard task and the network task run on the engine thread; Python calls in from its own thread. Events
//! for Python go through the queue in `events.rs`, whose wakeup socket tells Python's event loop when they wait.

use std::net::SocketAddr;
use std::sync::Arc;

/// Index of a peer in the server's configuration; stable for the server's life.
pub type PeerId = usize;

/// A TCP connection, numbered by the network task.
pub type ConnectionId = u64;

/// Who a connection or datagram belongs to, for Python: the peer's index and public key.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: PeerId,
    pub public_key: Arc<str>,
}

#[derive(Debug)]
pub enum WireGuardToNetwork {
    /// A decrypted IP packet from a peer, received from its outer UDP endpoint `endpoint`.
    Packet {
        peer: PeerId,
        endpoint: SocketAddr,
        packet: Vec<u8>,
    },
}

#[derive(Debug)]
pub enum NetworkToWireGuard {
    /// An IP packet to encrypt and send to a peer.
    Packet { peer: PeerId, packet: Vec<u8> },
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
    /// Python emptied its queue: read the connections that were left unread for lack of room.
    ResumeStarved,
}

#[derive(Debug)]
pub enum NetworkToPython {
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
    /// The connection is gone; `reset` tells an abort by the peer (or a timeout) from an orderly close.
    ConnectionClosed {
        id: ConnectionId,
        reset: bool,
    },
    Datagram {
        data: Vec<u8>,
        src: SocketAddr,
        dst: SocketAddr,
        peer: PeerId,
    },
    /// Every task ended: the server is closed. `error` says why, if it was not asked to close: a task failed.
    ServerClosed {
        error: Option<String>,
    },
}
