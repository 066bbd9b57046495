//! Which peer a client's UDP address was last seen from, so that a reply addressed by plain (host, port) reaches
//! the right peer. Bounded: every datagram from a new source port adds an entry, and a peer may use any number of
//! them, so old entries are forgotten in generations rather than kept forever.

use std::collections::HashMap;
use std::mem;
use std::net::SocketAddr;

use crate::messages::PeerId;

/// Entries per generation; at most twice this many are kept.
const GENERATION: usize = 16_384;

#[derive(Default)]
pub struct UdpRoutes {
    current: HashMap<SocketAddr, PeerId>,
    /// The generation before `current`; dropped whole when `current` fills up.
    previous: HashMap<SocketAddr, PeerId>,
}

impl UdpRoutes {
    pub fn insert(&mut self, client: SocketAddr, peer: PeerId) {
        if self.current.len() >= GENERATION && !self.current.contains_key(&client) {
            self.previous = mem::take(&mut self.current);
        }
        self.current.insert(client, peer);
    }

    pub fn get(&self, client: &SocketAddr) -> Option<PeerId> {
        self.current
            .get(client)
            .or_else(|| self.previous.get(client))
            .copied()
    }

    /// Forgets every route to a peer (one that was removed): a walk, since removing a peer is rare.
    pub fn forget(&mut self, peer: PeerId) {
        self.current.retain(|_, p| *p != peer);
        self.previous.retain(|_, p| *p != peer);
    }

    /// How many client addresses each peer has routes for (a walk, for statistics).
    pub fn count_by_peer(&self) -> HashMap<PeerId, usize> {
        let mut counts = HashMap::new();
        // A client of the previous generation that is in the current one too counts there only, as `get` finds it.
        let shadowed = |client: &SocketAddr| self.current.contains_key(client);
        let previous = self.previous.iter().filter(|(c, _)| !shadowed(c));
        for (_, &peer) in self.current.iter().chain(previous) {
            *counts.entry(peer).or_default() += 1;
        }
        counts
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u32) -> SocketAddr {
        SocketAddr::from(([10, 0, (port >> 16) as u8, 1], port as u16))
    }

    #[test]
    fn recent_clients_are_found_and_old_ones_forgotten() {
        let mut routes = UdpRoutes::default();
        routes.insert(addr(1), 3);
        assert_eq!(routes.get(&addr(1)), Some(3));
        routes.insert(addr(1), 4);
        assert_eq!(routes.get(&addr(1)), Some(4), "the latest peer wins");
        for port in 2..=(3 * GENERATION as u32) {
            routes.insert(addr(port), 0);
            assert!(routes.len() <= 2 * GENERATION);
        }
        assert_eq!(routes.get(&addr(1)), None);
        assert_eq!(routes.get(&addr(3 * GENERATION as u32)), Some(0));
        // The last full generation is still known.
        assert_eq!(routes.get(&addr(2 * GENERATION as u32)), Some(0));
    }

    #[test]
    fn a_removed_peers_routes_go_and_each_peer_counts_its_own() {
        let mut routes = UdpRoutes::default();
        for port in 1..=GENERATION as u32 + 2 {
            routes.insert(addr(port), (port % 2) as usize);
        }
        // addr(1) lives in the previous generation and in the current one, for another peer now.
        routes.insert(addr(1), 7);
        let counts = routes.count_by_peer();
        assert_eq!(counts[&7], 1);
        assert_eq!(counts[&0] + counts[&1] + counts[&7], GENERATION + 2);
        routes.forget(1);
        assert!(routes.get(&addr(3)).is_none());
        assert_eq!(routes.get(&addr(1)), Some(7));
        assert_eq!(routes.get(&addr(2)), Some(0));
        assert!(!routes.count_by_peer().contains_key(&1));
    }
}
