//! The numbers that name peers, connections and requests, wherever they travel: in messages between the
//! tasks, in captures, in the stack's tables.

/// A peer's number, handed out by the WireGuard task as peers are added: never given twice, so it names one
/// peer for the server's life, even after that peer was removed.
pub type PeerId = usize;

/// Numbers a request of Python's; its reply carries it back.
pub type RequestId = u64;

/// A TCP connection, numbered by the network task; those that Python opens (`PythonToNetwork::Connect`) by
/// Python, from `OUTGOING` on, so that the two never meet.
pub type ConnectionId = u64;

/// The first id of the connections that Python opens.
pub const OUTGOING: ConnectionId = 1 << 62;
