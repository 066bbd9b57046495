//! What the clients and Python know: each client's flows and sessions, Python's connections.

use super::*;

/// What a client knows of a TCP flow: the sequence numbers each side expects next.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FlowState {
    pub(super) client_next: u32,
    pub(super) stack_next: Option<u32>,
}

pub(super) struct Client {
    pub(super) tunn: Tunn,
    pub(super) home: SocketAddr,
    pub(super) config: PeerConfig,
    /// Its peer's id at the server, while the server has it.
    pub(super) peer: Option<PeerId>,
    /// What the server may deliver of the packets it encrypted (`as_delivered`).
    pub(super) sent: HashSet<Vec<u8>>,
    /// Packets the stack sent it that it has not decrypted yet.
    pub(super) expected: Vec<Vec<u8>>,
    /// TCP flows (its side, the remote side), and the payload bytes it sent on each.
    pub(super) flows: BTreeMap<(SocketAddr, SocketAddr), FlowState>,
    pub(super) tcp_bytes: HashMap<(SocketAddr, SocketAddr), usize>,
    /// SYNs it sent (its side, the remote side), datagrams (source, destination, payload) and echo requests.
    pub(super) syns: HashSet<(SocketAddr, SocketAddr)>,
    pub(super) udp: HashSet<(SocketAddr, SocketAddr, Vec<u8>)>,
    pub(super) pings: HashSet<(IpAddr, IpAddr, u16, u16, Vec<u8>)>,
    /// It sent fragments with bytes overwritten: what they reassemble to is not known, so its datagrams and
    /// echo replies are not checked against what it sent.
    pub(super) loose: bool,
    /// The stack's fragments to it.
    pub(super) reassembler: Reassembler,
    pub(super) next_ident: u32,
}

impl Client {
    /// Notes what a packet it sends carries, as the stack reads it.
    pub(super) fn note(&mut self, p: &[u8]) {
        match packet::parse(p) {
            Ok(Inbound::Tcp {
                src,
                dst,
                opens,
                segment,
            }) => {
                if opens {
                    self.syns.insert((src, dst));
                }
                *self.tcp_bytes.entry((src, dst)).or_default() += segment.len as usize;
            }
            Ok(Inbound::Udp { src, dst, payload }) => {
                self.udp.insert((src, dst, payload.to_vec()));
            }
            Ok(Inbound::Ping {
                src,
                dst,
                ident,
                seq_no,
                data,
            }) => {
                self.pings.insert((src, dst, ident, seq_no, data.to_vec()));
            }
            // An ICMP error a client sends about the stack's segments: the stack checks it against its flows.
            Ok(Inbound::Unreachable { .. }) | Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Python's side.

/// What Python knows of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// `ConnectionRequested`, not answered yet.
    Requested,
    /// Accepted: `ConnectionEstablished` may follow.
    Accepted,
    /// Python opened it (`Connect`): `ConnectionEstablished` or `ConnectFailed` follows.
    Connecting,
    Open,
    /// `ConnectionClosed` without reset, maybe in TIME-WAIT: it came after every byte and EOF; nothing follows.
    Ended,
    /// Nothing may follow: reset, refused, failed, or Python closed or aborted it.
    Gone,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) state: State,
    pub(super) peer: PeerId,
    /// The client's side and the remote side.
    pub(super) flow: (SocketAddr, SocketAddr),
    pub(super) eof: bool,
    pub(super) written: usize,
    pub(super) drained: usize,
}

pub(super) struct Python {
    pub(super) ask_first: bool,
    pub(super) conns: BTreeMap<ConnectionId, Conn>,
    /// Room in Python's queue: the read budget given before each flush.
    pub(super) room: usize,
    pub(super) capacity: usize,
    pub(super) next_outgoing: ConnectionId,
    /// Datagrams it received (source, destination, peer), to answer; datagrams it sent.
    pub(super) received: Vec<(SocketAddr, SocketAddr, PeerId)>,
    pub(super) sent: HashSet<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Data read per flow of a peer's client (client index, client side, remote side).
    pub(super) read: HashMap<(usize, SocketAddr, SocketAddr), usize>,
}
