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

mod wg_quick;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys;

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
    /// The peer's tunnel addresses (AllowedIPs): the Address of its client configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between the keepalives the server sends the peer; `None` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
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

/// What a client configuration says besides its keys; see `Configuration::client_configs`.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The client's tunnel addresses; `None`: each peer's own AllowedIPs.
    pub address: Option<String>,
    /// What the client routes into the tunnel.
    pub allowed_ips: String,
    /// The server's address as the client reaches it.
    pub endpoint: String,
    /// The client's resolvers, comma-separated, "" for none; `None`: the configuration's DNS.
    pub dns: Option<String>,
    /// The client's MTU, 0 for none; `None`: the configuration's MTU, or `DEFAULT_MTU`.
    pub mtu: Option<u16>,
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

/// The reason a key does not decode.
fn key_error(text: &str) -> Option<String> {
    match keys::decode("", text) {
        Ok(_) => None,
        Err(Error::InvalidKey { reason, .. }) => Some(reason),
        Err(e) => Some(e.to_string()),
    }
}

/// A resolver address or search domain, as wg-quick takes them.
pub(crate) fn is_dns_entry(entry: &str) -> bool {
    entry.parse::<IpAddr>().is_ok()
        || (!entry.is_empty()
            && entry.len() <= 253
            && entry.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }))
}

fn parse_nets(text: &str) -> std::result::Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_net)
        .collect()
}

/// An address with or without a prefix length (without: a single host).
pub(crate) fn parse_net(text: &str) -> std::result::Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or network (like 10.0.0.2/32)"))
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
}

fn default_address() -> Vec<IpNet> {
    DEFAULT_ADDRESS
        .iter()
        .map(|a| a.parse().expect("a valid default"))
        .collect()
}

/// Hands out tunnel addresses to new peers; see the module's documentation.
struct Allocator {
    /// One network per address family.
    networks: Vec<IpNet>,
    hosts: HashSet<IpAddr>,
    /// Taken networks that are more than one host.
    ranges: Vec<IpNet>,
    next: u128,
}

impl Allocator {
    fn new(config: &Configuration) -> Self {
        let server = if config.address.is_empty() {
            default_address()
        } else {
            config.address.clone()
        };
        let mut networks: Vec<IpNet> = vec![];
        for net in &server {
            if !networks
                .iter()
                .any(|n| n.addr().is_ipv4() == net.addr().is_ipv4())
            {
                networks.push(net.trunc());
            }
        }
        let mut hosts: HashSet<IpAddr> = server.iter().map(IpNet::addr).collect();
        hosts.extend(config.dns.iter().filter_map(|d| d.parse::<IpAddr>().ok()));
        let mut ranges = vec![];
        for net in config.peers.iter().flat_map(|p| &p.allowed_ips) {
            if net.prefix_len() == net.max_prefix_len() {
                hosts.insert(net.addr());
            } else {
                ranges.push(net.trunc());
            }
        }
        Allocator {
            networks,
            hosts,
            ranges,
            next: 1,
        }
    }

    /// Host numbers of a network are below this: IPv4 keeps the last address for broadcast.
    fn host_limit(net: &IpNet) -> u128 {
        let bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
        match net {
            IpNet::V4(_) => size.saturating_sub(1),
            IpNet::V6(_) => size,
        }
    }

    fn host(net: &IpNet, n: u128) -> IpAddr {
        match net {
            IpNet::V4(v4) => IpAddr::V4((u32::from(v4.network()) + n as u32).into()),
            IpNet::V6(v6) => IpAddr::V6((u128::from(v6.network()) + n).into()),
        }
    }

    fn is_free(&self, addr: IpAddr) -> bool {
        !self.hosts.contains(&addr) && !self.ranges.iter().any(|r| r.contains(&addr))
    }

    fn next(&mut self) -> std::result::Result<Vec<IpNet>, String> {
        let limit = self.networks.iter().map(Self::host_limit).min().unwrap_or(0);
        while self.next < limit {
            let n = self.next;
            self.next += 1;
            let addrs: Vec<IpAddr> = self.networks.iter().map(|net| Self::host(net, n)).collect();
            if addrs.iter().all(|a| self.is_free(*a)) {
                self.hosts.extend(&addrs);
                return Ok(addrs.into_iter().map(IpNet::from).collect());
            }
        }
        Err(format!("no free tunnel address left in {}", join(&self.networks)))
    }
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
        wg_quick::parse(text, file)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        let name = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| Error::InvalidFile {
            file: name.clone(),
            line: Some(wg_quick::line_of(e.as_bytes(), e.utf8_error().valid_up_to())),
            field: "text".into(),
            reason: "not UTF-8 text".into(),
        })?;
        Configuration::from_wg_quick(&text, &name)
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
        if let Some(entry) = self.dns.iter().find(|d| !is_dns_entry(d)) {
            return Err((
                Field::Dns,
                format!("{entry:?} is neither an IP address nor a domain"),
            ));
        }
        if let Some(mtu) = self.mtu.filter(|m| *m < MIN_MTU) {
            return Err((Field::Mtu, format!("{mtu} is not an MTU ({MIN_MTU} to 65535)")));
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

    /// One client configuration text per peer, in the format WireGuard clients import.
    pub fn client_configs(&self, options: &ClientOptions) -> Result<Vec<String>> {
        let server_public_key = self.server_public_key()?;
        let dns = match &options.dns {
            Some(dns) => dns.clone(),
            None => self.dns.join(", "),
        };
        let mtu = options.mtu.or(self.mtu).unwrap_or(DEFAULT_MTU);
        self.peers
            .iter()
            .map(|peer| {
                let mut text = String::from("[Interface]\n");
                match &peer.private_key {
                    Some(key) => text += &format!("PrivateKey = {key}\n"),
                    None => text += "# PrivateKey = (the device's own key)\n",
                }
                let address = match &options.address {
                    Some(address) => address.clone(),
                    None if peer.allowed_ips.is_empty() => {
                        return Err(Error::config(
                            "address",
                            format!(
                                "peer {} has no tunnel address (AllowedIPs): give one",
                                peer.public_key
                            ),
                        ))
                    }
                    None => join(&peer.allowed_ips),
                };
                text += &format!("Address = {address}\n");
                if !dns.trim().is_empty() {
                    text += &format!("DNS = {dns}\n");
                }
                if mtu != 0 {
                    text += &format!("MTU = {mtu}\n");
                }
                text += &format!("\n[Peer]\nPublicKey = {server_public_key}\n");
                if let Some(key) = &peer.preshared_key {
                    text += &format!("PresharedKey = {key}\n");
                }
                text += &format!(
                    "AllowedIPs = {}\nEndpoint = {}\n",
                    options.allowed_ips, options.endpoint
                );
                Ok(text)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ClientOptions {
        ClientOptions {
            allowed_ips: "0.0.0.0/0".into(),
            endpoint: "192.0.2.1:51820".into(),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn json_round_trips() {
        let config = Configuration::generate(51820, 3).unwrap();
        let back = Configuration::from_json(&config.to_json()).unwrap();
        assert_eq!(config, back);
        assert_eq!(back.peers.len(), 3);
    }

    #[test]
    fn json_of_earlier_versions_still_reads() {
        let server = keys::generate();
        let client = keys::generate();
        let json = format!(
            r#"{{"listen_port": 51820, "private_key": "{server}", "peers": [{{"public_key": "{}"}}]}}"#,
            keys::public_of("", &client).unwrap()
        );
        let config = Configuration::from_json(&json).unwrap();
        assert!(config.address.is_empty() && config.peers[0].allowed_ips.is_empty());
    }

    #[test]
    fn custom_derives_public_keys() {
        let client = keys::generate();
        let config = Configuration::custom(1, &keys::generate(), std::slice::from_ref(&client)).unwrap();
        assert_eq!(config.peers[0].public_key, keys::public_of("", &client).unwrap());
    }

    #[test]
    fn peers_given_by_key_alone_may_use_any_address() {
        let keys_of_peers: Vec<String> = (0..2)
            .map(|_| keys::public_of("", &keys::generate()).unwrap())
            .collect();
        let config = Configuration::from_keys(51820, &keys::generate(), &keys_of_peers).unwrap();
        assert_eq!(config.listen_port, 51820);
        assert!(config.address.is_empty(), "no tunnel address is the server's");
        assert!(config.peers.iter().all(|p| p.allowed_ips.is_empty()));
        let listed: Vec<&String> = config.peers.iter().map(|p| &p.public_key).collect();
        assert_eq!(listed, keys_of_peers.iter().collect::<Vec<_>>());
        assert_eq!(Configuration::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn keys_of_the_old_call_form_are_named_by_its_arguments() {
        let peer = keys::public_of("", &keys::generate()).unwrap();
        let err = Configuration::from_keys(1, "nope", std::slice::from_ref(&peer)).unwrap_err();
        assert!(err.to_string().starts_with("invalid private_key: "), "{err}");
        let peers = [peer.clone(), "x".into()];
        let err = Configuration::from_keys(1, &keys::generate(), &peers).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid peer_public_keys[1]: "),
            "{err}"
        );
        let peers = [peer.clone(), format!(" {peer}\n")];
        let err = Configuration::from_keys(1, &keys::generate(), &peers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid peer_public_keys[1]: the same peer is listed twice"
        );
    }

    #[test]
    fn bad_keys_name_their_field() {
        let err = Configuration::custom(1, "nope", &[]).unwrap_err();
        assert!(err.to_string().contains("server_private_key"), "{err}");
        let err = Configuration::custom(1, &keys::generate(), &["x".into()]).unwrap_err();
        assert!(err.to_string().contains("client_private_keys[0]"), "{err}");
    }

    #[test]
    fn duplicate_and_mismatched_peers_are_rejected() {
        let mut config = Configuration::generate(1, 2).unwrap();
        config.peers[1].public_key = config.peers[0].public_key.clone();
        assert!(config.validate().unwrap_err().to_string().contains("peers[1]"));
        let json = config
            .to_json()
            .replace("\"listen_port\": 1", "\"listen_port\": 70000");
        assert!(Configuration::from_json(&json).is_err());
    }

    #[test]
    fn peers_get_consecutive_addresses_of_both_families() {
        let config = Configuration::generate(1, 3).unwrap();
        let addresses: Vec<String> = config.peers.iter().map(|p| join(&p.allowed_ips)).collect();
        assert_eq!(
            addresses,
            [
                "10.0.0.2/32, fd00::2/128",
                "10.0.0.3/32, fd00::3/128",
                "10.0.0.4/32, fd00::4/128"
            ]
        );
    }

    #[test]
    fn addresses_skip_taken_ones_and_reuse_freed_ones() {
        let mut config = Configuration::generate(1, 60).unwrap();
        let all: HashSet<String> = config
            .peers
            .iter()
            .map(|p| p.allowed_ips[0].to_string())
            .collect();
        assert_eq!(all.len(), 60);
        assert!(!all.contains("10.0.0.53/32"), "the DNS address is not handed out");
        assert!(!all.contains("10.0.0.83/32"), "nor the host number of fd00::53");
        let removed = config.peers[2].public_key.clone();
        config.remove_peer(&removed).unwrap();
        let peer = Peer::from_private_key("k", &keys::generate()).unwrap();
        let added = config.add_peer(peer).unwrap();
        assert_eq!(join(&added.allowed_ips), "10.0.0.4/32, fd00::4/128");
    }

    #[test]
    fn addresses_follow_the_servers_networks() {
        let mut config = Configuration::generate(1, 0).unwrap();
        config.address = vec!["192.168.7.1/24".parse().unwrap()];
        for _ in 0..253 {
            let peer = Peer::from_private_key("k", &keys::generate()).unwrap();
            config.add_peer(peer).unwrap();
        }
        assert_eq!(
            config.peers[0].allowed_ips,
            ["192.168.7.2/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(config.peers[252].allowed_ips[0].to_string(), "192.168.7.254/32");
        let peer = Peer::from_private_key("k", &keys::generate()).unwrap();
        let err = config.add_peer(peer).unwrap_err().to_string();
        assert!(err.contains("no free tunnel address"), "{err}");
        assert_eq!(config.peers.len(), 253);
    }

    #[test]
    fn overlapping_allowed_ips_are_rejected() {
        let mut config = Configuration::generate(1, 2).unwrap();
        config.peers[1].allowed_ips = vec!["10.0.0.0/24".parse().unwrap()];
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("peers[1].allowed_ips") && err.contains("10.0.0.0/24"),
            "{err}"
        );
    }

    #[test]
    fn client_configs_name_server_key_address_dns_and_endpoint() {
        let config = Configuration::generate(51820, 2).unwrap();
        let texts = config.client_configs(&options()).unwrap();
        assert_eq!(texts.len(), 2);
        for (text, peer) in texts.iter().zip(&config.peers) {
            assert!(text.contains(peer.private_key.as_ref().unwrap()));
            assert!(text.contains(&config.server_public_key().unwrap()));
            assert!(text.contains(&format!("Address = {}\n", join(&peer.allowed_ips))));
            assert!(text.contains("DNS = 10.0.0.53, fd00::53\nMTU = 1420\n"));
            assert!(text.contains("Endpoint = 192.0.2.1:51820"));
        }
        let texts = config
            .client_configs(&ClientOptions {
                address: Some("10.9.9.9/32".into()),
                dns: Some(String::new()),
                mtu: Some(0),
                ..options()
            })
            .unwrap();
        assert!(texts[0].contains("Address = 10.9.9.9/32\n"));
        assert!(!texts[0].contains("DNS") && !texts[0].contains("MTU"));
    }
}
