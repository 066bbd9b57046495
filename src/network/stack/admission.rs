//! Admission: whether a SYN may open a connection.
//!
//! Each peer may hold `Limits::per_peer` connections and all peers together `Limits::total`, in whatever state
//! (half-open, open, closing, TIME-WAIT): a peer that sends SYNs to ever new destinations cannot take more than
//! its share of the server's memory, nor all of it with a few others. A SYN beyond a limit is dropped without an
//! answer, as a kernel drops a SYN when its listen queue is full: the client sends it again after its timeout,
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

/// How often refused SYNs are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) per_peer: usize,
    pub(super) total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_peer: MAX_CONNECTIONS_PER_PEER,
            total: MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Admission {
    pub(super) limits: Limits,
    /// Connections per peer, indexed by peer.
    held: Vec<usize>,
    total: usize,
    /// SYNs refused since the last log line, and when that was.
    refused: u64,
    logged_at: Option<Instant>,
}

impl Admission {
    /// Whether `peer` may open one more connection; a refusal is counted.
    pub(super) fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        let held = self.held.get(peer).copied().unwrap_or(0);
        if held < self.limits.per_peer && self.total < self.limits.total {
            return true;
        }
        self.refused += 1;
        if self.logged_at.is_none_or(|at| now >= at + LOG_EVERY.into()) {
            log::warn!(
                "dropped {} SYN(s) over the connection limits (last from peer {peer}, which holds {held} of \
                 {} connections; {} of {} held in all)",
                self.refused,
                self.limits.per_peer,
                self.total,
                self.limits.total,
            );
            self.refused = 0;
            self.logged_at = Some(now);
        }
        false
    }

    /// `peer` opened a connection.
    pub(super) fn opened(&mut self, peer: PeerId) {
        if self.held.len() <= peer {
            self.held.resize(peer + 1, 0);
        }
        self.held[peer] += 1;
        self.total += 1;
    }

    /// A connection of `peer` is gone.
    pub(super) fn closed(&mut self, peer: PeerId) {
        if let Some(held) = self.held.get_mut(peer) {
            *held = held.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
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

    #[test]
    fn each_peer_has_its_share_and_all_together_the_total() {
        let mut admission = Admission {
            limits: Limits {
                per_peer: 2,
                total: 3,
            },
            ..Admission::default()
        };
        let now = Instant::ZERO;
        for _ in 0..2 {
            assert!(admission.admit(0, now));
            admission.opened(0);
        }
        assert!(!admission.admit(0, now), "peer 0 is at its limit");
        assert!(admission.admit(1, now));
        admission.opened(1);
        assert!(!admission.admit(1, now), "all are at the total");
        admission.closed(0);
        assert!(admission.admit(0, now) && admission.admit(1, now));
        assert_eq!((admission.held(0), admission.held(1)), (1, 1));
    }
}
