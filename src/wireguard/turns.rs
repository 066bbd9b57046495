//! The packets the network task hands over, taken in turns by peer: a peer whose packets wait by the thousand (a
//! flood that Python relays into the tunnel) does not make another peer's packet wait behind all of them, as one
//! queue in order would. Each peer's packets keep their order, and so does a `ForgetPeer` after its packets.

use std::collections::{HashMap, VecDeque};

use crate::messages::{NetworkToWireGuard, PeerId};

#[derive(Debug, Default)]
pub struct Turns {
    queues: HashMap<PeerId, VecDeque<NetworkToWireGuard>>,
    /// The peers with packets waiting, in the order of their next turn.
    order: VecDeque<PeerId>,
}

impl Turns {
    pub fn push(&mut self, msg: NetworkToWireGuard) {
        let peer = match &msg {
            NetworkToWireGuard::Packet { peer, .. } | NetworkToWireGuard::ForgetPeer { peer } => *peer,
        };
        let queue = self.queues.entry(peer).or_default();
        if queue.is_empty() {
            self.order.push_back(peer);
        }
        queue.push_back(msg);
    }

    /// The next peer's first message; that peer's turn comes again after every other waiting peer's. A peer's
    /// queue is kept while it is empty (no allocation per packet), until its `ForgetPeer`, the last message of it.
    pub fn pop(&mut self) -> Option<NetworkToWireGuard> {
        let peer = self.order.pop_front()?;
        let queue = self.queues.get_mut(&peer)?;
        let msg = queue.pop_front()?;
        if !queue.is_empty() {
            self.order.push_back(peer);
        } else if matches!(msg, NetworkToWireGuard::ForgetPeer { .. }) {
            self.queues.remove(&peer);
        }
        Some(msg)
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(peer: PeerId, n: u8) -> NetworkToWireGuard {
        NetworkToWireGuard::Packet {
            peer,
            packet: vec![n],
        }
    }

    fn taken(turns: &mut Turns) -> Vec<(PeerId, Option<u8>)> {
        std::iter::from_fn(|| turns.pop())
            .map(|msg| match msg {
                NetworkToWireGuard::Packet { peer, packet } => (peer, Some(packet[0])),
                NetworkToWireGuard::ForgetPeer { peer } => (peer, None),
            })
            .collect()
    }

    #[test]
    fn a_peer_with_one_packet_waits_for_one_of_a_flooding_peers_not_for_all() {
        let mut turns = Turns::default();
        for n in 0..1000 {
            turns.push(packet(1, (n % 250) as u8));
        }
        turns.push(packet(2, 7));
        let order = taken(&mut turns);
        assert_eq!(order.len(), 1001);
        assert_eq!(order[..3], [(1, Some(0)), (2, Some(7)), (1, Some(1))]);
        assert!(turns.is_empty());
    }

    #[test]
    fn each_peers_packets_keep_their_order_and_forgetting_comes_after_them() {
        let mut turns = Turns::default();
        turns.push(packet(1, 1));
        turns.push(packet(2, 1));
        turns.push(packet(1, 2));
        turns.push(NetworkToWireGuard::ForgetPeer { peer: 1 });
        turns.push(packet(2, 2));
        assert_eq!(
            taken(&mut turns),
            [(1, Some(1)), (2, Some(1)), (1, Some(2)), (2, Some(2)), (1, None)]
        );
        assert!(turns.is_empty());
        // A forgotten peer's queue is gone; a peer's emptied queue waits for its next packet.
        assert_eq!(turns.queues.keys().collect::<Vec<_>>(), [&2]);
        turns.push(packet(2, 3));
        assert_eq!(taken(&mut turns), [(2, Some(3))]);
    }
}
