//! The peers the stack knows, as they come and go while the server runs, and what it counts of each.
//!
//! A peer is looked up by its id (a hash map; ids are never reused), once per packet. Removing a peer resets
//! its connections and forgets its UDP routes and partial datagrams: nothing of it is left behind.

use std::collections::HashMap;
use std::time::Instant as StdInstant;

use smoltcp::socket::tcp;

use super::{Outputs, Stack};
use crate::messages::{PeerId, PeerInfo, PeerStats};

/// A peer as the stack knows it.
#[derive(Debug)]
pub(super) struct PeerState {
    pub(super) info: PeerInfo,
    /// Packets that did not parse.
    pub(super) malformed: u64,
    /// Its datagrams dropped at the queue to Python, and datagrams for it dropped at the queue to the WireGuard
    /// task: the peer was over its share, or the queue full.
    pub(super) python_queue: u64,
    pub(super) tunnel_queue: u64,
}

impl PeerState {
    fn new(info: PeerInfo) -> Self {
        PeerState {
            info,
            malformed: 0,
            python_queue: 0,
            tunnel_queue: 0,
        }
    }
}

/// Which queue dropped a peer's datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueDrop {
    /// The queue of datagrams waiting for Python.
    Python,
    /// The queue of packets waiting for the WireGuard task.
    Tunnel,
}

/// The stack's table of peers, from the peers a server starts with.
pub(super) fn table(peers: Vec<PeerInfo>) -> HashMap<PeerId, PeerState> {
    peers
        .into_iter()
        .map(|info| (info.id, PeerState::new(info)))
        .collect()
}

impl Stack {
    /// Counts a datagram of or for `peer` that a queue between the tasks dropped.
    pub fn count_queue_drop(&mut self, peer: PeerId, queue: QueueDrop) {
        if let Some(state) = self.peers.get_mut(&peer) {
            match queue {
                QueueDrop::Python => state.python_queue += 1,
                QueueDrop::Tunnel => state.tunnel_queue += 1,
            }
        }
    }

    /// A peer added while the server runs; its packets follow.
    pub fn add_peer(&mut self, info: PeerInfo) {
        self.peers.insert(info.id, PeerState::new(info));
    }

    /// A peer removed while the server runs: its connections are reset (Python hears of it as a reset, the
    /// client gets a RST if its session still works), its UDP routes and partial datagrams are forgotten.
    /// Packets that still name it are dropped.
    pub fn remove_peer(&mut self, now: StdInstant, peer: PeerId, out: &mut Outputs) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        let now = self.clock(now);
        // Removing a peer is rare: a walk over the connections is cheaper than a list per peer kept always.
        let ids: Vec<_> = self
            .connections
            .values()
            .filter(|c| c.flow.peer == peer)
            .map(|c| c.id)
            .collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.abort();
            }
            self.service(id, now, out);
        }
        self.udp_routes.forget(peer);
        self.fragments.forget(peer);
    }

    /// Adds the stack's part to the statistics the WireGuard task gathered: open connections, UDP flows and
    /// the stack's drops. Walks every connection and route once.
    pub fn complete_stats(&mut self, stats: &mut [PeerStats]) {
        let mut connections: HashMap<PeerId, usize> = HashMap::new();
        for conn in self.connections.values_mut() {
            if is_open(conn.socket().state()) {
                *connections.entry(conn.flow.peer).or_default() += 1;
            }
        }
        let flows = self.udp_routes.count_by_peer();
        for s in stats {
            s.tcp_connections = connections.get(&s.id).copied().unwrap_or(0);
            s.udp_flows = flows.get(&s.id).copied().unwrap_or(0);
            let state = self.peers.get(&s.id);
            s.drops.push(("malformed", state.map_or(0, |p| p.malformed)));
            s.drops
                .push(("python_queue", state.map_or(0, |p| p.python_queue)));
            s.drops
                .push(("tunnel_queue", state.map_or(0, |p| p.tunnel_queue)));
        }
    }
}

/// Open: the handshake completed and the connection has not ended both ways (TIME-WAIT, CLOSED).
fn is_open(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::Listen | tcp::State::SynReceived | tcp::State::TimeWait | tcp::State::Closed
    )
}
