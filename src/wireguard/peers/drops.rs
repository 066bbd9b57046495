//! Counts of dropped datagrams and packets, reported once a second.
//!
//! Datagrams that anyone can send in any number are counted, not logged one by one: a log record per datagram
//! of a flood would cost more than answering it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use log::Level;

use crate::keys;

#[derive(Default)]
pub(super) struct Drops {
    pub not_wireguard: u64,
    /// Handshake messages whose MAC1 is not for this server's public key.
    pub bad_mac: u64,
    /// Where the last of them came from.
    pub last_bad_mac: Option<SocketAddr>,
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

    /// One record for the period, if anything was dropped; then the counts start again. `server` is this
    /// server's public key, for the hints.
    pub fn report(&mut self, server: &str) {
        for (level, line) in std::mem::take(self).lines(server) {
            log::log!(level, "{line}");
        }
    }

    /// The records of `report`: what was dropped and, where a client's configuration is the likely cause,
    /// what to change.
    pub fn lines(&self, server: &str) -> Vec<(Level, String)> {
        let mut lines = vec![];
        if let Some(key) = self.last_unknown_peer {
            let key = keys::encode(&key);
            lines.push((
                Level::Info,
                format!(
                    "{} handshake(s) by unknown peers, the last by {key}: if that is a client of yours, add \
                     a [Peer] with PublicKey = {key} to the --conf file and send SIGHUP",
                    self.unknown_peer,
                ),
            ));
        }
        if let Some(src) = self.last_bad_mac {
            lines.push((
                Level::Info,
                format!(
                    "{} handshake(s) not meant for this server (bad MAC1), the last from {src}: the client \
                     may hold the wrong server PublicKey (this server's is {server})",
                    self.bad_mac,
                ),
            ));
        }
        if let Some((peer, src)) = &self.last_foreign_source {
            lines.push((
                Level::Info,
                format!(
                    "dropped {} packet(s) whose source address is not the sending peer's (not in its \
                     AllowedIPs), the last from {src} by peer {peer}",
                    self.foreign_source
                ),
            ));
        }
        let counts = [
            (self.cookies, "handshakes answered with a cookie (under load)"),
            (
                self.source_limited,
                "handshakes over their source's limit (20 a second)",
            ),
            (
                self.over_budget,
                "handshakes over the limit of all sources together",
            ),
            (self.not_wireguard, "datagrams that are no WireGuard message"),
            (self.undecryptable, "handshakes that do not decrypt"),
            (self.unknown_index, "datagrams for an unknown receiver index"),
            (self.invalid, "datagrams that do not authenticate"),
            (
                self.local_source,
                "packets from link-local or unspecified addresses outside the peer's AllowedIPs",
            ),
        ];
        for (n, what) in counts {
            if n > 0 {
                lines.push((Level::Debug, format!("in the last second: {n} {what}")));
            }
        }
        lines
    }
}

fn is_local_source(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_unspecified() || a.is_link_local(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "c2VydmVyIHB1YmxpYyBrZXkgLS0gMzIgYnl0ZXMgISE=";

    #[test]
    fn a_wrong_server_key_and_an_unknown_peer_are_reported_with_a_hint() {
        let drops = Drops {
            bad_mac: 3,
            last_bad_mac: Some("192.0.2.7:40000".parse().unwrap()),
            unknown_peer: 2,
            last_unknown_peer: Some([7; 32]),
            ..Drops::default()
        };
        let lines = drops.lines(SERVER);
        let key = keys::encode(&[7; 32]);
        assert_eq!(
            lines,
            [
                (
                    Level::Info,
                    format!(
                        "2 handshake(s) by unknown peers, the last by {key}: if that is a client of yours, \
                         add a [Peer] with PublicKey = {key} to the --conf file and send SIGHUP"
                    )
                ),
                (
                    Level::Info,
                    format!(
                        "3 handshake(s) not meant for this server (bad MAC1), the last from \
                         192.0.2.7:40000: the client may hold the wrong server PublicKey (this server's \
                         is {SERVER})"
                    )
                ),
            ]
        );
    }

    #[test]
    fn nothing_dropped_is_nothing_reported() {
        assert!(Drops::default().lines(SERVER).is_empty());
    }
}
