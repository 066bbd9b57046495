//! The server's configuration: its key, listen port and tunnel settings, and the peers allowed in.
//!
//! Keys are kept as base64 text, as WireGuard configuration files write them. A configuration is read and written
//! as JSON (`to_json`, `from_json`) or as a WireGuard configuration file in wg-quick's format (`to_wg_quick`,
//! `from_wg_quick`, see `wg_quick`); both carry the same data, so each converts to the other without loss.
//! `validate` checks every value, so that a bad one is reported with the name of its field before anything starts.
//!
//! Tunnel addresses: the server's `address` (by default 10.0.0.1/16 and fd00::1/64) names the tunnel's networks,
//! one per address family. A peer added without addresses gets host number n of each: 10.0.0.n/32 and
//! fd00::n/128 (n written in hex there, as IPv6 addresses are), for the lowest n ≥ 1 whose addresses are all
//! free. Taken are the server's own addresses, the DNS addresses and every peer's AllowedIPs; so with the
//! defaults the peers get 10.0.0.2 and fd00::2, 10.0.0.3 and fd00::3, and so on.

mod allocator;
mod client;
mod values;
mod wg_quick;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys;
use allocator::Allocator;
pub use client::ClientOptions;
#[cfg(feature = "python")]
pub(crate) use values::parse_endpoint;
use values::{check_dns_entry, join, key_error, parse_mtu};
pub(crate) use values::{check_mtu, parse_dns, parse_nets};

/// The server's tunnel addresses of a new configuration.
pub const DEFAULT_ADDRESS: [&str; 2] = ["10.0.0.1/16", "fd00::1/64"];
/// The resolver addresses that a new configuration gives its clients; the `forward` command answers there.
pub const DEFAULT_DNS: [&str; 2] = ["10.0.0.53", "fd00::53"];
/// The tunnel MTU of client configurations, WireGuard's usual one.
pub const DEFAULT_MTU: u16 = 1420;
/// The smallest MTU accepted: the smallest datagram every IPv4 host must take.
pub const MIN_MTU: u16 = 576;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    /// The UDP port the server listens on; 0 lets the system pick one.
    pub listen_port: u16,
    pub private_key: String,
    /// The server's own tunnel addresses, with their networks' prefix lengths ([Interface] Address). New peers
    /// get their addresses in these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<IpNet>,
    /// What client configurations name as their resolvers ([Interface] DNS): IP addresses, or search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// The tunnel MTU that client configurations name ([Interface] MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub public_key: String,
    /// Known when the server generated the peer's key, so that a client config can be printed for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<String>,
    /// The peer's tunnel addresses (AllowedIPs): the Address of its client configuration, and the only source
    /// addresses the server accepts from it. Empty: any (a peer of JSON from earlier versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between the keepalives the server sends the peer; `None` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
    /// Where the peer is reached (`host:port`): in a client's configuration, the server it dials. A server
    /// learns its peers' endpoints from their handshakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Peer {
    pub fn from_private_key(field: &str, private_key: &str) -> Result<Self> {
        Ok(Peer {
            public_key: keys::public_of(field, private_key)?,
            private_key: Some(private_key.trim().to_string()),
            ..Peer::default()
        })
    }
}

/// A value of a configuration, for error messages: JSON names it by its path, a file by its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    PrivateKey,
    Dns,
    Mtu,
    PeerPublicKey(usize),
    PeerPrivateKey(usize),
    PeerPresharedKey(usize),
    PeerAllowedIps(usize),
    PeerKeepalive(usize),
}

impl Field {
    fn json_name(self) -> String {
        match self {
            Field::PrivateKey => "server_private_key".into(),
            Field::Dns => "dns".into(),
            Field::Mtu => "mtu".into(),
            Field::PeerPublicKey(i) => format!("peers[{i}].public_key"),
            Field::PeerPrivateKey(i) => format!("peers[{i}].private_key"),
            Field::PeerPresharedKey(i) => format!("peers[{i}].preshared_key"),
            Field::PeerAllowedIps(i) => format!("peers[{i}].allowed_ips"),
            Field::PeerKeepalive(i) => format!("peers[{i}].persistent_keepalive"),
        }
    }
}

fn default_address() -> Vec<IpNet> {
    DEFAULT_ADDRESS
        .iter()
        .map(|a| a.parse().expect("a valid default"))
        .collect()
}

impl Configuration {
    /// A configuration with the default tunnel settings and no peers.
    fn empty(listen_port: u16, private_key: String) -> Self {
        Configuration {
            listen_port,
            private_key,
            address: default_address(),
            dns: DEFAULT_DNS.iter().map(|d| d.to_string()).collect(),
            mtu: Some(DEFAULT_MTU),
            peers: vec![],
        }
    }

    /// Fresh keys for the server and `peers` clients, each with its own tunnel addresses.
    pub fn generate(listen_port: u16, peers: usize) -> Result<Self> {
        let peers = (0..peers)
            .map(|_| Peer::from_private_key("peer private key", &keys::generate()))
            .collect::<Result<_>>()?;
        let mut config = Configuration::empty(listen_port, keys::generate());
        config.add_peers("peers", peers)?;
        Ok(config)
    }

    pub fn custom(
        listen_port: u16,
        server_private_key: &str,
        client_private_keys: &[String],
    ) -> Result<Self> {
        let peers = client_private_keys
            .iter()
            .enumerate()
            .map(|(i, key)| Peer::from_private_key(&format!("client_private_keys[{i}]"), key))
            .collect::<Result<_>>()?;
        let mut config = Configuration::empty(listen_port, server_private_key.trim().to_string());
        config.add_peers("client_private_keys", peers)?;
        Ok(config)
    }

    /// The configuration of the 0.1.x call form, `start_server(host, port, private_key, peer_public_keys,
    /// ...)`: the peers have no AllowedIPs, so each may use any tunnel address (the network stack keeps peers
    /// that use the same one apart), and the server has no tunnel address of its own to reserve: mitmproxy 9's
    /// clients use 10.0.0.1, the server's address in a generated configuration. Errors name the call's
    /// arguments.
    pub fn from_keys(listen_port: u16, private_key: &str, peer_public_keys: &[String]) -> Result<Self> {
        keys::decode("private_key", private_key)?;
        let peers = peer_public_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                keys::decode(&format!("peer_public_keys[{i}]"), key)?;
                Ok(Peer {
                    public_key: key.trim().to_string(),
                    ..Peer::default()
                })
            })
            .collect::<Result<_>>()?;
        let config = Configuration {
            listen_port,
            private_key: private_key.trim().to_string(),
            peers,
            ..Configuration::default()
        };
        config.check().map_err(|(field, reason)| match field {
            Field::PeerPublicKey(i) => Error::config(format!("peer_public_keys[{i}]"), reason),
            field => Error::config(field.json_name(), reason),
        })?;
        Ok(config)
    }

    /// Adds peers, giving tunnel addresses to those without; `field` names them in errors.
    fn add_peers(&mut self, field: &str, peers: Vec<Peer>) -> Result<()> {
        let mut allocator = Allocator::new(self);
        let first = self.peers.len();
        for mut peer in peers {
            if peer.allowed_ips.is_empty() {
                peer.allowed_ips = allocator.next().map_err(|reason| Error::config(field, reason))?;
            }
            self.peers.push(peer);
        }
        self.check_from(first)
            .map_err(|(field, reason)| Error::config(field.json_name(), reason))
    }

    /// Adds a peer; one without AllowedIPs gets the next free tunnel addresses. Returns the peer as added.
    pub fn add_peer(&mut self, peer: Peer) -> Result<&Peer> {
        let key = keys::decode("public_key", &peer.public_key)?;
        if self.position(&key).is_some() {
            return Err(Error::config(
                "public_key",
                format!(
                    "the configuration has a peer with this key already: {}",
                    peer.public_key
                ),
            ));
        }
        let before = self.peers.len();
        if let Err(e) = self.add_peers("peer", vec![peer]) {
            self.peers.truncate(before);
            return Err(e);
        }
        Ok(&self.peers[before])
    }

    /// Removes the peer with this public key and returns it.
    pub fn remove_peer(&mut self, public_key: &str) -> Result<Peer> {
        let key = keys::decode("public_key", public_key)?;
        let i = self.position(&key).ok_or_else(|| {
            Error::config(
                "public_key",
                format!("the configuration has no peer {}", public_key.trim()),
            )
        })?;
        Ok(self.peers.remove(i))
    }

    fn position(&self, key: &[u8; 32]) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| keys::decode("", &p.public_key).is_ok_and(|k| &k == key))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a configuration always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Configuration =
            serde_json::from_str(text).map_err(|e| Error::config("configuration JSON", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as a WireGuard configuration file.
    pub fn to_wg_quick(&self) -> String {
        wg_quick::write(self)
    }

    /// Reads a WireGuard configuration file; errors name `file`, the line and the field.
    pub fn from_wg_quick(text: &str, file: &str) -> Result<Self> {
        wg_quick::parse(text, file, wg_quick::Side::Server)
    }

    /// Reads a client's WireGuard configuration file: its key and tunnel addresses, and one peer, the server,
    /// with its Endpoint. Errors name `file`, the line and the field.
    pub fn from_client_wg_quick(text: &str, file: &str) -> Result<Self> {
        wg_quick::parse(text, file, wg_quick::Side::Client)
    }

    /// Reads the file at once, then parses what was read.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        Configuration::from_bytes(bytes, &path.display().to_string())
    }

    /// A WireGuard configuration file's contents, which must be UTF-8; errors name `name`.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        let text = String::from_utf8(bytes).map_err(|e| Error::InvalidFile {
            file: name.to_owned(),
            line: Some(wg_quick::line_of(e.as_bytes(), e.utf8_error().valid_up_to())),
            field: "text".into(),
            reason: "not UTF-8 text".into(),
        })?;
        Configuration::from_wg_quick(&text, name)
    }

    /// Writes the file as a whole (a new file, then renamed over the old one), readable by its owner only: it
    /// holds private keys. The new file is created afresh: a file or a link left where it is made (by a crash,
    /// or by someone else in a shared folder) is replaced, never written through.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let name = path
            .file_name()
            .ok_or_else(|| Error::config("path", format!("{} names no file", path.display())))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(".tmp");
        let temp = path.with_file_name(temp_name);
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let result = options.open(&temp).and_then(|mut file| {
            file.write_all(self.to_wg_quick().as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = result.and_then(|()| std::fs::rename(&temp, path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
        Ok(())
    }

    /// Checks every value, names the field of the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.check()
            .map_err(|(field, reason)| Error::config(field.json_name(), reason))
    }

    /// The first bad value, with the reason.
    pub(crate) fn check(&self) -> std::result::Result<(), (Field, String)> {
        self.check_from(0)
    }

    /// The first bad value, checking the peers' own keys from peer `first` on only (deriving a public key costs).
    fn check_from(&self, first: usize) -> std::result::Result<(), (Field, String)> {
        if let Some(reason) = key_error(&self.private_key) {
            return Err((Field::PrivateKey, reason));
        }
        if let Some(reason) = self.dns.iter().find_map(|d| check_dns_entry(d).err()) {
            return Err((Field::Dns, reason));
        }
        if let Some(Err(reason)) = self.mtu.map(|m| check_mtu(m.into())) {
            return Err((Field::Mtu, reason));
        }
        let mut seen = HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let public = keys::decode("", &peer.public_key).map_err(|_| {
                (
                    Field::PeerPublicKey(i),
                    key_error(&peer.public_key).unwrap_or_default(),
                )
            })?;
            if !seen.insert(public) {
                return Err((Field::PeerPublicKey(i), "the same peer is listed twice".into()));
            }
            if i < first {
                continue;
            }
            if let Some(private) = &peer.private_key {
                let derived = keys::public_of("", private)
                    .map_err(|_| (Field::PeerPrivateKey(i), key_error(private).unwrap_or_default()))?;
                if keys::decode("", &derived).ok() != Some(public) {
                    return Err((
                        Field::PeerPrivateKey(i),
                        "does not belong to the peer's public key".into(),
                    ));
                }
            }
            if let Some(psk) = &peer.preshared_key {
                if let Some(reason) = key_error(psk) {
                    return Err((Field::PeerPresharedKey(i), reason));
                }
            }
            if peer.persistent_keepalive == Some(0) {
                return Err((Field::PeerKeepalive(i), "0 means none: leave it out".into()));
            }
        }
        self.check_allowed_ips()
    }

    /// No address may be routed to two peers: replies would reach only one of them.
    fn check_allowed_ips(&self) -> std::result::Result<(), (Field, String)> {
        let mut hosts: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut ranges: Vec<(IpNet, usize)> = vec![];
        // Named at the later peer: that is the one being added, or further down the file.
        let overlap = |(i, a): (usize, IpNet), (j, b): (usize, IpNet)| {
            let ((first, first_net), (second, second_net)) =
                if i < j { ((i, a), (j, b)) } else { ((j, b), (i, a)) };
            (
                Field::PeerAllowedIps(second),
                format!(
                    "{second_net} overlaps {first_net}, of peer {}",
                    self.peers[first].public_key
                ),
            )
        };
        for (i, peer) in self.peers.iter().enumerate() {
            for net in &peer.allowed_ips {
                if net.prefix_len() == net.max_prefix_len() {
                    match hosts.insert(net.addr(), i) {
                        Some(j) if j != i => return Err(overlap((i, *net), (j, *net))),
                        _ => {}
                    }
                } else {
                    ranges.push((*net, i));
                }
            }
        }
        for (k, (range, i)) in ranges.iter().enumerate() {
            for (other, j) in &ranges[k + 1..] {
                if i != j && (range.contains(other) || other.contains(range)) {
                    return Err(overlap((*i, *range), (*j, *other)));
                }
            }
            for (addr, j) in &hosts {
                if i != j && range.trunc().contains(addr) {
                    return Err(overlap((*i, *range), (*j, IpNet::from(*addr))));
                }
            }
        }
        Ok(())
    }

    pub fn server_public_key(&self) -> Result<String> {
        keys::public_of("server_private_key", &self.private_key)
    }
}

#[cfg(test)]
mod tests;
