//! What each peer did, counted on the peer's own struct as datagrams pass (a few additions each), and read out
//! for `Server.peers()`.

use std::time::{Instant, SystemTime};

use crate::messages::PeerStats;

/// The counts of one peer; they only grow.
#[derive(Debug, Default, Clone)]
pub(super) struct Counters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Decrypted packets whose source address is outside the peer's AllowedIPs (cryptokey routing).
    pub allowed_ips: u64,
    /// The same from link-local or unspecified sources, which a client's kernel sends on its own (router
    /// solicitations, multicast reports): no sign of a forgery or a misconfiguration.
    pub local_source: u64,
    /// Datagrams with the peer's receiver index that do not authenticate.
    pub invalid: u64,
    /// Data messages whose counter was seen before (replays, or duplicates of the network).
    pub replayed: u64,
    /// Packets for the peer while it had no endpoint yet (it never connected).
    pub no_session: u64,
    /// Packets for the peer too large to encrypt.
    pub too_large: u64,
    /// When its last handshake completed.
    pub last_handshake: Option<Instant>,
}

impl Counters {
    pub fn received(&mut self, bytes: usize) {
        self.rx_bytes += bytes as u64;
        self.rx_packets += 1;
    }

    pub fn sent(&mut self, bytes: usize) {
        self.tx_bytes += bytes as u64;
        self.tx_packets += 1;
    }

    /// Writes the counts into `stats`; `now` and `wall` are the same moment by the two clocks.
    pub fn fill(&self, stats: &mut PeerStats, now: Instant, wall: SystemTime) {
        stats.rx_bytes = self.rx_bytes;
        stats.rx_packets = self.rx_packets;
        stats.tx_bytes = self.tx_bytes;
        stats.tx_packets = self.tx_packets;
        stats.last_handshake = self
            .last_handshake
            .and_then(|at| wall.checked_sub(now.saturating_duration_since(at)));
        stats.drops.extend([
            ("allowed_ips", self.allowed_ips),
            ("local_source", self.local_source),
            ("invalid", self.invalid),
            ("replayed", self.replayed),
            ("no_session", self.no_session),
            ("too_large", self.too_large),
        ]);
    }
}
