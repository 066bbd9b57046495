//! Admission: whether a SYN may open a connection.
//!
//! Each peer may hold `Limits::per_peer` connections and all peers together `Limits::total`, in whatever state
//! (half-open, open, closing, TIME-WAIT), and of them `Limits::half_open_per_peer` half-open (a kernel's SYN
//! backlog): a peer that sends SYNs to ever new destinations cannot take more than its share of the server's
//! memory, nor all of it with a few others, and a flood of SYNs that are never completed takes a fraction of it.
//! A SYN beyond a limit is dropped without an answer, as a kernel drops a SYN when its listen queue is full: the client sends it again after its timeout,
//! and gets its connection once room frees up (connections end, half-open ones time out) rather than an error.
//! Refused SYNs are counted, and logged at most once a second.

use std::time::Duration;

use smoltcp::time::Instant;

use crate::messages::PeerId;

/// How many connections one peer may hold. A peer may be a whole network behind a router, so this is generous:
/// 16,384 connections cost about 200 MB idle (12 KB each, see tests/test_memory.py).
pub const MAX_CONNECTIONS_PER_PEER: usize = 16_384;

/// How many connections all peers together may hold: four peers at their limit.
pub const MAX_CONNECTIONS: usize = 65_536;

/// How many half-open connections (a SYN answered, the handshake not completed) one peer may hold, as a kernel's
/// `tcp_max_syn_backlog`: a client completes its handshakes within a round trip, so only a flood reaches this.
/// A half-open connection costs about 4.5 KB (its socket keeps the state of congestion control and loss
/// recovery): 18 MB at the limit.
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

    /// `peer` opened a connection: it is half-open until `established`.
    pub(super) fn opened(&mut self, peer: PeerId) {
        if self.held.len() <= peer {
            self.held.resize(peer + 1, 0);
            self.half_open.resize(peer + 1, 0);
        }
        self.held[peer] += 1;
        self.half_open[peer] += 1;
        self.total += 1;
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

    /// A half-open connection of `peer` is half-open no more: it completed its handshake, or ended.
    fn handshake_over(&mut self, peer: PeerId) {
        if let Some(half_open) = self.half_open.get_mut(peer) {
            *half_open = half_open.saturating_sub(1);
        }
    }

    /// Connections `peer` holds.
    #[cfg(test)]
    pub(super) fn held(&self, peer: PeerId) -> usize {
        self.held.get(peer).copied().unwrap_or(0)
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
            admission.opened(0);
        }
        assert!(!admission.admit(0, now), "peer 0 is at its limit");
        assert!(admission.admit(1, now));
        admission.opened(1);
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
            admission.opened(0);
        }
        assert!(!admission.admit(0, now), "two handshakes are under way");
        admission.established(0);
        assert!(admission.admit(0, now), "one completed");
        admission.opened(0);
        admission.established(0);
        admission.established(0);
        // Three open connections, none half-open: two more may open, up to the peer's limit.
        for _ in 0..2 {
            assert!(admission.admit(0, now));
            admission.opened(0);
            admission.established(0);
        }
        assert!(!admission.admit(0, now), "the peer is at its limit");
        // An open connection ends: it was not half-open, and frees a place.
        admission.closed(0, false);
        assert!(admission.admit(0, now));
        assert_eq!(admission.held(0), 4);
    }
}
