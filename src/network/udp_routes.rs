//! Which peer a client's UDP address was last seen from, so that a reply addressed by plain (host, port) reaches
//! the right peer. Bounded: every datagram from a new source port adds an entry, and a peer may use any number of
//! them, so old entries are forgotten in generations rather than kept forever.
//!
//! Peers configured without addresses may share one (the 0.1.x form of `start_server`): a client address that
//! more than one peer sent from names no peer, since a reply to it could reach the wrong one. Such a reply must
//! name its peer (Python's address of the datagram it answers does).

use std::collections::HashMap;
use std::mem;
use std::net::SocketAddr;

use crate::messages::PeerId;

/// Entries per generation; at most twice this many are kept.
const GENERATION: usize = 16_384;

/// Whom a client address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Peer(PeerId),
    /// More than one peer sent from it; the peer seen last is kept for the statistics.
    Shared(PeerId),
}

impl Route {
    fn peer(self) -> PeerId {
        match self {
            Route::Peer(peer) | Route::Shared(peer) => peer,
        }
    }
}

#[derive(Default)]
pub struct UdpRoutes {
    current: HashMap<SocketAddr, Route>,
    /// The generation before `current`; dropped whole when `current` fills up.
    previous: HashMap<SocketAddr, Route>,
}

impl UdpRoutes {
    pub fn insert(&mut self, client: SocketAddr, peer: PeerId) {
        let known = self.route(&client);
        if self.current.len() >= GENERATION && !self.current.contains_key(&client) {
            self.previous = mem::take(&mut self.current);
        }
        let route = match known {
            Some(Route::Peer(other)) if other == peer => Route::Peer(peer),
            None => Route::Peer(peer),
            Some(_) => Route::Shared(peer),
        };
        self.current.insert(client, route);
    }

    /// The peer a reply to `client` goes to: none if no peer, or more than one, sent from it.
    pub fn get(&self, client: &SocketAddr) -> Option<PeerId> {
        match self.route(client)? {
            Route::Peer(peer) => Some(peer),
            Route::Shared(_) => None,
        }
    }

    /// Whether more than one peer sent from `client`.
    pub fn is_shared(&self, client: &SocketAddr) -> bool {
        matches!(self.route(client), Some(Route::Shared(_)))
    }

    fn route(&self, client: &SocketAddr) -> Option<Route> {
        self.current
            .get(client)
            .or_else(|| self.previous.get(client))
            .copied()
    }

    /// Forgets every route to a peer (one that was removed): a walk, since removing a peer is rare.
    pub fn forget(&mut self, peer: PeerId) {
        self.current.retain(|_, r| r.peer() != peer);
        self.previous.retain(|_, r| r.peer() != peer);
    }

    /// How many client addresses each peer has routes for (a walk, for statistics).
    pub fn count_by_peer(&self) -> HashMap<PeerId, usize> {
        let mut counts = HashMap::new();
        // A client of the previous generation that is in the current one too counts there only, as `get` finds it.
        let shadowed = |client: &SocketAddr| self.current.contains_key(client);
        let previous = self.previous.iter().filter(|(c, _)| !shadowed(c));
        for (_, route) in self.current.iter().chain(previous) {
            *counts.entry(route.peer()).or_default() += 1;
        }
        counts
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Panics unless at most two generations are kept.
    #[cfg(test)]
    pub fn check(&self) {
        assert!(self.current.len() <= GENERATION && self.previous.len() <= GENERATION);
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
        routes.insert(addr(1), 3);
        assert_eq!(routes.get(&addr(1)), Some(3));
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
        assert!(routes.is_shared(&addr(1)), "two peers sent from addr(1)");
        assert_eq!(routes.get(&addr(2)), Some(0));
        assert!(!routes.count_by_peer().contains_key(&1));
    }

    #[test]
    fn an_address_that_two_peers_sent_from_names_neither() {
        let mut routes = UdpRoutes::default();
        routes.insert(addr(1), 3);
        routes.insert(addr(1), 4);
        assert_eq!(routes.get(&addr(1)), None, "a reply could reach the wrong peer");
        assert!(routes.is_shared(&addr(1)));
        // Still shared when the first peer sends again; another address is not.
        routes.insert(addr(1), 3);
        assert_eq!(routes.get(&addr(1)), None);
        routes.insert(addr(2), 4);
        assert_eq!(routes.get(&addr(2)), Some(4));
        // Once one of them is removed, the address is the other's again when it sends.
        routes.forget(3);
        routes.insert(addr(1), 4);
        assert_eq!(routes.get(&addr(1)), Some(4));
    }
}
