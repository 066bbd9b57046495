//! Counts of dropped datagrams and packets, reported once a second.
//!
//! Datagrams that anyone can send in any number are counted, not logged one by one: a log record per datagram
//! of a flood would cost more than answering it.

use std::net::IpAddr;
use std::sync::Arc;

use crate::keys;

#[derive(Default)]
pub(super) struct Drops {
    pub not_wireguard: u64,
    pub bad_mac: u64,
    pub cookies: u64,
    /// Handshake messages past the MAC checks over their source's bucket (`handshake_limit`).
    pub source_limited: u64,
    /// Handshake messages past the MAC checks over the bucket of all sources together.
    pub over_budget: u64,
    pub undecryptable: u64,
    pub unknown_peer: u64,
    pub last_unknown_peer: Option<[u8; 32]>,
    pub unknown_index: u64,
    pub invalid: u64,
    /// Packets whose inner source is outside the sending peer's AllowedIPs (cryptokey routing).
    pub foreign_source: u64,
    /// The last of them: the peer's public key and the source it claimed.
    pub last_foreign_source: Option<(Arc<str>, IpAddr)>,
    /// The same, from link-local or unspecified sources: a client's kernel sends router solicitations and
    /// multicast reports from those on its own, so they are no sign of a forgery or a misconfiguration.
    pub local_source: u64,
}

impl Drops {
    /// A packet from a peer whose source address is not one of the peer's. Returns whether its source was
    /// link-local or unspecified.
    pub fn foreign_source(&mut self, peer: &Arc<str>, src: IpAddr) -> bool {
        if is_local_source(src) {
            self.local_source += 1;
            true
        } else {
            self.foreign_source += 1;
            self.last_foreign_source = Some((peer.clone(), src));
            false
        }
    }

    /// One record for the period, if anything was dropped; then the counts start again.
    pub fn report(&mut self) {
        let drops = std::mem::take(self);
        if let Some(key) = drops.last_unknown_peer {
            log::info!(
                "{} handshake(s) by unknown peers, the last by {}",
                drops.unknown_peer,
                keys::encode(&key)
            );
        }
        if let Some((peer, src)) = drops.last_foreign_source {
            log::info!(
                "dropped {} packet(s) whose source address is not the sending peer's (not in its AllowedIPs), \
                 the last from {src} by peer {peer}",
                drops.foreign_source
            );
        }
        let counts = [
            (drops.cookies, "handshakes answered with a cookie (under load)"),
            (
                drops.source_limited,
                "handshakes over their source's limit (20 a second)",
            ),
            (
                drops.over_budget,
                "handshakes over the limit of all sources together",
            ),
            (drops.not_wireguard, "datagrams that are no WireGuard message"),
            (drops.bad_mac, "handshakes with a bad MAC"),
            (drops.undecryptable, "handshakes that do not decrypt"),
            (drops.unknown_index, "datagrams for an unknown receiver index"),
            (drops.invalid, "datagrams that do not authenticate"),
            (
                drops.local_source,
                "packets from link-local or unspecified addresses outside the peer's AllowedIPs",
            ),
        ];
        for (n, what) in counts {
            if n > 0 {
                log::debug!("in the last second: {n} {what}");
            }
        }
    }
}

fn is_local_source(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_unspecified() || a.is_link_local(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_unicast_link_local(),
    }
}
