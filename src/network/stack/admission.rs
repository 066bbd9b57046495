//! Admission: whether a SYN may open a connection.
//!
//! Each peer may hold `Limits::per_peer` connections and all peers together `Limits::total`, in whatever state
//! (half-open, open, closing, TIME-WAIT), and of them `Limits::half_open_per_peer` half-open (a kernel's SYN
//! backlog): a peer that sends SYNs to ever new destinations cannot take more than its share of the server's
//! memory, nor all of it with a few others, and a flood of SYNs that are never completed takes a fraction of it.
//! A SYN beyond the connection limits is dropped without an answer, as a kernel drops a SYN when its listen queue
//! is full: the client sends it again after its timeout, and gets its connection once room frees up (connections
//! end, half-open ones time out) rather than an error. A SYN beyond the half-open limit alone takes the place of
//! the peer's oldest half-open connection instead (`oldest_half_open`): a flood of SYNs that are never completed
//! (a scanner, a runaway retry loop) does not keep the same client from opening connections of its own, which
//! complete within a round trip. Refused SYNs are counted, and logged at most once a second.

use std::collections::VecDeque;
use std::time::Duration;

use smoltcp::time::Instant;

use crate::messages::{ConnectionId, PeerId};

/// How many connections one peer may hold. A peer may be a whole network behind a router, so this is generous:
/// 16,384 connections cost about 200 MB idle (12 KB each, see tests/test_memory.py).
pub const MAX_CONNECTIONS_PER_PEER: usize = 16_384;

/// How many connections all peers together may hold: four peers at their limit, or fewer where
/// `vm.max_map_count` does not leave a mapping for each (`Stack::fit_mappings`: the kernel's default of 65,530
/// leaves about 61,400).
pub const MAX_CONNECTIONS: usize = 65_536;

/// How many half-open connections (a SYN answered, the handshake not completed) one peer may hold, as a kernel's
/// `tcp_max_syn_backlog`: a client completes its handshakes within a round trip, so only a flood reaches this.
/// A half-open connection costs about 4.5 KB (its socket keeps the state of congestion control and loss
/// recovery), and no buffers until its handshake completes: 18 MB at the limit.
pub const MAX_HALF_OPEN_PER_PEER: usize = 4_096;

/// How often refused SYNs are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) per_peer: usize,
    pub(super) total: usize,
    pub(super) half_open_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_peer: MAX_CONNECTIONS_PER_PEER,
            total: MAX_CONNECTIONS,
            half_open_per_peer: MAX_HALF_OPEN_PER_PEER,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Admission {
    pub(super) limits: Limits,
    /// Connections per peer, indexed by peer, and how many of them are half-open.
    held: Vec<usize>,
    half_open: Vec<usize>,
    /// Each peer's connections in the order they opened, from the oldest: those still half-open among them
    /// (the others are skipped, and compacted away as they pile up).
    opened_ids: Vec<VecDeque<ConnectionId>>,
    total: usize,
    /// SYNs refused since the last log line, and when that was.
    refused: u64,
    logged_at: Option<Instant>,
}

impl Admission {
    /// Whether `peer` may open one more connection; a refusal is counted.
    pub(super) fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        let held = self.held.get(peer).copied().unwrap_or(0);
        let half_open = self.half_open.get(peer).copied().unwrap_or(0);
        if held < self.limits.per_peer
            && self.total < self.limits.total
            && half_open < self.limits.half_open_per_peer
        {
            return true;
        }
        self.refused += 1;
        if self.logged_at.is_none_or(|at| now >= at + LOG_EVERY.into()) {
            log::warn!(
                "dropped {} SYN(s) over the connection limits (last from peer {peer}, which holds {held} of \
                 {} connections, {half_open} of {} half-open; {} of {} held in all)",
                self.refused,
                self.limits.per_peer,
                self.limits.half_open_per_peer,
                self.total,
                self.limits.total,
            );
            self.refused = 0;
            self.logged_at = Some(now);
        }
        false
    }

    /// Whether `peer` holds as many half-open connections as it may, and room is left otherwise: a new SYN may
    /// take the place of its oldest half-open connection.
    pub(super) fn half_open_full(&self, peer: PeerId) -> bool {
        self.half_open.get(peer).copied().unwrap_or(0) >= self.limits.half_open_per_peer
            && self.held.get(peer).copied().unwrap_or(0) < self.limits.per_peer
            && self.total < self.limits.total
    }

    /// The next of `peer`'s connections in the order they opened, taken out: the caller skips those no longer
    /// half-open.
    pub(super) fn oldest_opened(&mut self, peer: PeerId) -> Option<ConnectionId> {
        self.opened_ids.get_mut(peer)?.pop_front()
    }

    /// `peer` opened connection `id`: it is half-open until `established`. The order of opening is compacted
    /// once those no longer half-open (`still_half_open` says) are more than those that are, so that it costs
    /// the same per connection however many a peer opens.
    pub(super) fn opened(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        still_half_open: impl Fn(ConnectionId) -> bool,
    ) {
        if self.held.len() <= peer {
            self.held.resize(peer + 1, 0);
            self.half_open.resize(peer + 1, 0);
            self.opened_ids.resize_with(peer + 1, VecDeque::new);
        }
        self.held[peer] += 1;
        self.half_open[peer] += 1;
        self.total += 1;
        let ids = &mut self.opened_ids[peer];
        ids.push_back(id);
        if ids.len() > 2 * self.half_open[peer] + 64 {
            ids.retain(|&id| still_half_open(id));
        }
    }

    /// A connection of `peer` completed its handshake.
    pub(super) fn established(&mut self, peer: PeerId) {
        self.handshake_over(peer);
    }

    /// A connection of `peer` is gone; `half_open`: it never completed its handshake.
    pub(super) fn closed(&mut self, peer: PeerId, half_open: bool) {
        if let Some(held) = self.held.get_mut(peer) {
            *held = held.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
        }
        if half_open {
            self.handshake_over(peer);
        }
    }

    /// A half-open connection of `peer` is half-open no more: it completed its handshake, ended, or Python gave
    /// up on it.
    pub(super) fn handshake_over(&mut self, peer: PeerId) {
        if let Some(half_open) = self.half_open.get_mut(peer) {
            *half_open = half_open.saturating_sub(1);
        }
    }

    /// Connections `peer` holds.
    #[cfg(test)]
    pub(super) fn held(&self, peer: PeerId) -> usize {
        self.held.get(peer).copied().unwrap_or(0)
    }

    /// Panics unless the counts are those of the connections the stack holds (`held`: each peer's connections
    /// and how many of them are half-open) and within the limits, and the order of opening within its bound.
    #[cfg(test)]
    pub(super) fn check(&self, held: &std::collections::HashMap<PeerId, (usize, usize)>) {
        let limits = self.limits;
        let peers = held.keys().map(|&p| p + 1).max().unwrap_or(0);
        for peer in 0..self.held.len().max(peers) {
            let (connections, half_open) = held.get(&peer).copied().unwrap_or((0, 0));
            assert_eq!(self.held(peer), connections, "connections of peer {peer}");
            assert_eq!(
                self.half_open.get(peer).copied().unwrap_or(0),
                half_open,
                "half-open of peer {peer}"
            );
            assert!(connections <= limits.per_peer && half_open <= limits.half_open_per_peer);
            let kept = self.opened_ids.get(peer).map_or(0, |ids| ids.len());
            assert!(
                kept <= 2 * limits.half_open_per_peer + 65,
                "{kept} kept in the order of opening"
            );
        }
        let total: usize = held.values().map(|&(n, _)| n).sum();
        assert_eq!(self.total, total);
        assert!(total <= limits.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_limits(per_peer: usize, total: usize, half_open_per_peer: usize) -> Admission {
        Admission {
            limits: Limits {
                per_peer,
                total,
                half_open_per_peer,
            },
            ..Admission::default()
        }
    }

    #[test]
    fn each_peer_has_its_share_and_all_together_the_total() {
        let mut admission = with_limits(2, 3, 2);
        let now = Instant::ZERO;
        for _ in 0..2 {
            assert!(admission.admit(0, now));
            admission.opened(0, 101, |_| true);
        }
        assert!(!admission.admit(0, now), "peer 0 is at its limit");
        assert!(admission.admit(1, now));
        admission.opened(1, 102, |_| true);
        assert!(!admission.admit(1, now), "all are at the total");
        admission.closed(0, true);
        assert!(admission.admit(0, now) && admission.admit(1, now));
        assert_eq!((admission.held(0), admission.held(1)), (1, 1));
    }

    #[test]
    fn half_open_connections_have_a_limit_of_their_own() {
        let mut admission = with_limits(5, 10, 2);
        let now = Instant::ZERO;
        for _ in 0..2 {
            assert!(admission.admit(0, now));
            admission.opened(0, 103, |_| true);
        }
        assert!(!admission.admit(0, now), "two handshakes are under way");
        admission.established(0);
        assert!(admission.admit(0, now), "one completed");
        admission.opened(0, 104, |_| true);
        admission.established(0);
        admission.established(0);
        // Three open connections, none half-open: two more may open, up to the peer's limit.
        for _ in 0..2 {
            assert!(admission.admit(0, now));
            admission.opened(0, 105, |_| true);
            admission.established(0);
        }
        assert!(!admission.admit(0, now), "the peer is at its limit");
        // An open connection ends: it was not half-open, and frees a place.
        admission.closed(0, false);
        assert!(admission.admit(0, now));
        assert_eq!(admission.held(0), 4);
    }

    #[test]
    fn the_order_of_opening_is_kept_and_costs_what_the_half_open_connections_do() {
        let mut admission = with_limits(1000, 1000, 2);
        // 200 connections, all but the last two complete their handshakes at once.
        for id in 0..200 {
            admission.opened(0, id, |id| id >= 198);
            if id < 198 {
                admission.established(0);
            }
        }
        assert!(admission.half_open_full(0));
        let order: Vec<_> = std::iter::from_fn(|| admission.oldest_opened(0)).collect();
        assert!(order.len() <= 2 * 2 + 64 + 1, "{} kept", order.len());
        assert_eq!(order[order.len() - 2..], [198, 199]);
    }
}
