//! WireGuard configuration files in wg-quick's format: the server's, and a client's (`Side::Client`).
//!
//! `[Interface]`: PrivateKey, ListenPort, Address, DNS, MTU. `[Peer]`, once for each peer: PublicKey,
//! PresharedKey, AllowedIPs, PersistentKeepalive, and in a client's file Endpoint (the server it dials). As with wg-quick, section and key names are case-insensitive,
//! `#` starts a comment, and Address, DNS and AllowedIPs are comma-separated lists that may take several lines.
//! A comment `# PrivateKey = <key>` in a `[Peer]` section keeps the client's key when the server generated it,
//! so that its client configuration can be printed again; WireGuard's own tools skip it as a comment.
//!
//! Any other key, a single value given twice and a bad value are errors that name the file, line and field.
//! Other comments and the layout are not kept: `write` writes the same data the same way every time.

use super::*;

/// The keys of a file, the one place that spells their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Setting {
    PrivateKey,
    ListenPort,
    Address,
    Dns,
    Mtu,
    PublicKey,
    PresharedKey,
    AllowedIps,
    PersistentKeepalive,
    Endpoint,
}

impl Setting {
    const INTERFACE: [Setting; 5] = [
        Setting::PrivateKey,
        Setting::ListenPort,
        Setting::Address,
        Setting::Dns,
        Setting::Mtu,
    ];
    /// A peer's private key is not among them: it is written as a comment (see the module's documentation).
    const PEER: [Setting; 4] = [
        Setting::PublicKey,
        Setting::PresharedKey,
        Setting::AllowedIps,
        Setting::PersistentKeepalive,
    ];

    /// A client's [Peer] (the server) has its Endpoint too.
    const CLIENT_PEER: [Setting; 5] = [
        Setting::PublicKey,
        Setting::PresharedKey,
        Setting::AllowedIps,
        Setting::PersistentKeepalive,
        Setting::Endpoint,
    ];

    fn name(self) -> &'static str {
        match self {
            Setting::Endpoint => "Endpoint",
            Setting::PrivateKey => "PrivateKey",
            Setting::ListenPort => "ListenPort",
            Setting::Address => "Address",
            Setting::Dns => "DNS",
            Setting::Mtu => "MTU",
            Setting::PublicKey => "PublicKey",
            Setting::PresharedKey => "PresharedKey",
            Setting::AllowedIps => "AllowedIPs",
            Setting::PersistentKeepalive => "PersistentKeepalive",
        }
    }

    /// The key that `text` names, ignoring case, among `known`.
    fn find(known: &[Setting], text: &str) -> Option<Setting> {
        known
            .iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(text))
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
/// wg-quick keys that set up a kernel interface or dial out, which this server has no use for.
const UNSUPPORTED_KEYS: [(&str, &str); 8] = [
    ("Table", "routes"),
    ("FwMark", "packet marks"),
    ("SaveConfig", "saving the running configuration"),
    ("PreUp", "commands"),
    ("PostUp", "commands"),
    ("PreDown", "commands"),
    ("PostDown", "commands"),
    (
        "Endpoint",
        "dialing out: the server learns each peer's endpoint from its handshakes",
    ),
];

/// The line (1-based) that holds byte `offset` of `text`.
pub(super) fn line_of(text: &[u8], offset: usize) -> usize {
    1 + text[..offset].iter().filter(|b| **b == b'\n').count()
}

/// Where each value of a file was given (line numbers), for errors found once the file is read.
#[derive(Default)]
struct Lines {
    interface: Option<usize>,
    values: HashMap<Setting, usize>,
    peers: Vec<PeerLines>,
}

#[derive(Default)]
struct PeerLines {
    header: usize,
    values: HashMap<Setting, usize>,
}

enum Section {
    None,
    Interface,
    Peer,
}

/// Whose file it is: the server's, whose peers dial in, or a client's, whose one peer is the server it dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Server,
    Client,
}

struct Parser<'a> {
    file: &'a str,
    side: Side,
    config: Configuration,
    lines: Lines,
    section: Section,
}

impl Parser<'_> {
    fn error(&self, line: Option<usize>, field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidFile {
            file: self.file.to_string(),
            line,
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn line(&mut self, n: usize, raw: &str) -> Result<()> {
        let (content, comment) = match raw.split_once('#') {
            Some((content, comment)) => (content.trim(), Some(comment)),
            None => (raw.trim(), None),
        };
        if content.is_empty() {
            if let (Section::Peer, Some(comment)) = (&self.section, comment) {
                self.private_key_comment(n, comment)?;
            }
            return Ok(());
        }
        if let Some(header) = content.strip_prefix('[') {
            return self.header(n, content, header);
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(self.error(
                Some(n),
                content,
                "expected a `Setting = value` line or a [Section]",
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match self.section {
            Section::None => Err(self.error(Some(n), key, "comes before the [Interface] section")),
            Section::Interface => self.interface_value(n, key, value),
            Section::Peer => self.peer_value(n, key, value),
        }
    }

    fn header(&mut self, n: usize, content: &str, header: &str) -> Result<()> {
        let Some(name) = header.strip_suffix(']') else {
            return Err(self.error(
                Some(n),
                content,
                "a section header is written [Interface] or [Peer]",
            ));
        };
        if name.trim().eq_ignore_ascii_case("Interface") {
            if let Some(first) = self.lines.interface {
                return Err(self.error(
                    Some(n),
                    "[Interface]",
                    format!("a second [Interface] section (the first is on line {first})"),
                ));
            }
            self.lines.interface = Some(n);
            self.section = Section::Interface;
        } else if name.trim().eq_ignore_ascii_case("Peer") {
            self.config.peers.push(Peer::default());
            self.lines.peers.push(PeerLines {
                header: n,
                ..PeerLines::default()
            });
            self.section = Section::Peer;
        } else {
            return Err(self.error(
                Some(n),
                content,
                "unknown section: a file has one [Interface] section and a [Peer] section for each peer",
            ));
        }
        Ok(())
    }

    /// The key among `known`; an error for any other key.
    fn known_key(&self, n: usize, key: &str, known: &[Setting], section: &str) -> Result<Setting> {
        if let Some(key) = Setting::find(known, key) {
            return Ok(key);
        }
        let reason = match UNSUPPORTED_KEYS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some((_, what)) => format!("not supported: this user-space server does no {what}"),
            None => format!("unknown field in [{section}] (known: {})", join(known)),
        };
        Err(self.error(Some(n), key, reason))
    }

    /// Records where a single value is given; an error if it was given before.
    fn once(&self, values: &mut HashMap<Setting, usize>, n: usize, key: Setting) -> Result<()> {
        match values.insert(key, n) {
            Some(first) => Err(self.error(
                Some(n),
                key.name(),
                format!("given twice (first on line {first})"),
            )),
            None => Ok(()),
        }
    }

    fn non_empty<'v>(&self, n: usize, key: Setting, value: &'v str) -> Result<&'v str> {
        if value.is_empty() {
            return Err(self.error(Some(n), key.name(), "no value"));
        }
        Ok(value)
    }

    fn nets(&self, n: usize, key: Setting, value: &str) -> Result<Vec<IpNet>> {
        parse_nets(value).map_err(|reason| self.error(Some(n), key.name(), reason))
    }

    fn interface_value(&mut self, n: usize, key: &str, value: &str) -> Result<()> {
        let name = self.known_key(n, key, &Setting::INTERFACE, "Interface")?;
        let mut values = std::mem::take(&mut self.lines.values);
        let result = self.set_interface_value(&mut values, n, name, value);
        self.lines.values = values;
        result
    }

    fn set_interface_value(
        &mut self,
        values: &mut HashMap<Setting, usize>,
        n: usize,
        name: Setting,
        value: &str,
    ) -> Result<()> {
        match name {
            Setting::PrivateKey => {
                self.once(values, n, name)?;
                self.config.private_key = self.non_empty(n, name, value)?.to_string();
            }
            Setting::ListenPort => {
                self.once(values, n, name)?;
                self.config.listen_port = value.parse().map_err(|_| {
                    self.error(
                        Some(n),
                        name.name(),
                        format!("{value:?} is not a port (0 to 65535)"),
                    )
                })?;
            }
            Setting::Address => {
                values.entry(name).or_insert(n);
                let nets = self.nets(n, name, value)?;
                self.config.address.extend(nets);
            }
            Setting::Dns => {
                values.entry(name).or_insert(n);
                let entries = parse_dns(value).map_err(|reason| self.error(Some(n), name.name(), reason))?;
                self.config.dns.extend(entries);
            }
            Setting::Mtu => {
                self.once(values, n, name)?;
                let mtu = parse_mtu(value).map_err(|reason| self.error(Some(n), name.name(), reason))?;
                self.config.mtu = Some(mtu);
            }
            _ => unreachable!("every key of Setting::INTERFACE is handled"),
        }
        Ok(())
    }

    fn peer_value(&mut self, n: usize, key: &str, value: &str) -> Result<()> {
        let known: &[Setting] = match self.side {
            Side::Server => &Setting::PEER,
            Side::Client => &Setting::CLIENT_PEER,
        };
        let name = self.known_key(n, key, known, "Peer")?;
        let mut lines = self.lines.peers.pop().expect("in a [Peer] section");
        let mut peer = self.config.peers.pop().expect("in a [Peer] section");
        let result = self.set_peer_value(&mut lines.values, &mut peer, n, name, value);
        self.lines.peers.push(lines);
        self.config.peers.push(peer);
        result
    }

    fn set_peer_value(
        &self,
        values: &mut HashMap<Setting, usize>,
        peer: &mut Peer,
        n: usize,
        name: Setting,
        value: &str,
    ) -> Result<()> {
        match name {
            Setting::PublicKey => {
                self.once(values, n, name)?;
                peer.public_key = self.non_empty(n, name, value)?.to_string();
            }
            Setting::PresharedKey => {
                self.once(values, n, name)?;
                peer.preshared_key = Some(self.non_empty(n, name, value)?.to_string());
            }
            Setting::AllowedIps => {
                values.entry(name).or_insert(n);
                peer.allowed_ips.extend(self.nets(n, name, value)?);
            }
            Setting::PersistentKeepalive => {
                self.once(values, n, name)?;
                peer.persistent_keepalive = match value {
                    v if v.eq_ignore_ascii_case("off") => None,
                    v => match v.parse::<u16>() {
                        Ok(0) => None,
                        Ok(seconds) => Some(seconds),
                        Err(_) => {
                            let reason = format!("{value:?} is not a number of seconds (1 to 65535) or off");
                            return Err(self.error(Some(n), name.name(), reason));
                        }
                    },
                };
            }
            Setting::Endpoint => {
                self.once(values, n, name)?;
                let endpoint = super::values::parse_endpoint(value)
                    .map_err(|reason| self.error(Some(n), name.name(), reason))?;
                peer.endpoint = Some(endpoint);
            }
            _ => unreachable!("every key of Setting::CLIENT_PEER is handled"),
        }
        Ok(())
    }

    /// `# PrivateKey = <key>` in a [Peer] section: the client's key. Any other comment is just a comment.
    fn private_key_comment(&mut self, n: usize, comment: &str) -> Result<()> {
        let Some((key, value)) = comment.split_once('=') else {
            return Ok(());
        };
        let value = value.trim();
        if Setting::find(&[Setting::PrivateKey], key.trim()).is_none() || key_error(value).is_some() {
            return Ok(());
        }
        let mut lines = self.lines.peers.pop().expect("in a [Peer] section");
        let result = self.once(&mut lines.values, n, Setting::PrivateKey);
        self.lines.peers.push(lines);
        result?;
        self.config
            .peers
            .last_mut()
            .expect("in a [Peer] section")
            .private_key = Some(value.to_string());
        Ok(())
    }

    fn finish(self) -> Result<Configuration> {
        let Some(interface) = self.lines.interface else {
            return Err(self.error(None, "[Interface]", "the file has no [Interface] section"));
        };
        if !self.lines.values.contains_key(&Setting::PrivateKey) {
            return Err(self.error(
                Some(interface),
                Setting::PrivateKey.name(),
                "missing from [Interface]",
            ));
        }
        for (peer, lines) in self.config.peers.iter().zip(&self.lines.peers) {
            if peer.public_key.is_empty() {
                return Err(self.error(
                    Some(lines.header),
                    Setting::PublicKey.name(),
                    "missing from [Peer]",
                ));
            }
        }
        if self.side == Side::Client {
            self.check_client(interface)?;
        }
        if let Err((field, reason)) = self.config.check() {
            let (line, name) = self.locate(field);
            return Err(self.error(line, name, reason));
        }
        Ok(self.config)
    }

    /// A client's file names its own addresses and one peer, the server, with its Endpoint.
    fn check_client(&self, interface: usize) -> Result<()> {
        if self.config.address.is_empty() {
            let reason = "missing from [Interface]: the client's tunnel addresses";
            return Err(self.error(Some(interface), Setting::Address.name(), reason));
        }
        match self.lines.peers.as_slice() {
            [] => Err(self.error(
                None,
                "[Peer]",
                "a client's file has a [Peer] section, the server's",
            )),
            [lines] if self.config.peers[0].endpoint.is_none() => Err(self.error(
                Some(lines.header),
                Setting::Endpoint.name(),
                "missing from [Peer]: the server's address (host:port)",
            )),
            [_] => Ok(()),
            [_, second, ..] => Err(self.error(
                Some(second.header),
                "[Peer]",
                "a second [Peer] section: a client's file has one, the server's",
            )),
        }
    }

    /// The line and name of a value that `Configuration::check` found bad.
    fn locate(&self, field: Field) -> (Option<usize>, &'static str) {
        let interface = |key: Setting| (self.lines.values.get(&key).copied(), key.name());
        let peer = |i: usize, key: Setting| {
            let lines = &self.lines.peers[i];
            (
                Some(lines.values.get(&key).copied().unwrap_or(lines.header)),
                key.name(),
            )
        };
        match field {
            Field::PrivateKey => interface(Setting::PrivateKey),
            Field::Dns => interface(Setting::Dns),
            Field::Mtu => interface(Setting::Mtu),
            Field::PeerPublicKey(i) => peer(i, Setting::PublicKey),
            Field::PeerPrivateKey(i) => peer(i, Setting::PrivateKey),
            Field::PeerPresharedKey(i) => peer(i, Setting::PresharedKey),
            Field::PeerAllowedIps(i) => peer(i, Setting::AllowedIps),
            Field::PeerKeepalive(i) => peer(i, Setting::PersistentKeepalive),
        }
    }
}

pub(super) fn parse(text: &str, file: &str, side: Side) -> Result<Configuration> {
    let mut parser = Parser {
        file,
        side,
        config: Configuration::default(),
        lines: Lines::default(),
        section: Section::None,
    };
    for (i, line) in text.lines().enumerate() {
        parser.line(i + 1, line)?;
    }
    parser.finish()
}

pub(super) fn write(config: &Configuration) -> String {
    let mut out = String::from(
        "# A WireGuard server's configuration. \"# PrivateKey\" in a [Peer] section is the client's key,\n\
         # kept to print its client configuration again.\n\n[Interface]\n",
    );
    let line = |out: &mut String, key: Setting, value: &dyn std::fmt::Display| {
        *out += &format!("{key} = {value}\n");
    };
    line(&mut out, Setting::PrivateKey, &config.private_key);
    if config.listen_port != 0 {
        line(&mut out, Setting::ListenPort, &config.listen_port);
    }
    if !config.address.is_empty() {
        line(&mut out, Setting::Address, &join(&config.address));
    }
    if !config.dns.is_empty() {
        line(&mut out, Setting::Dns, &config.dns.join(", "));
    }
    if let Some(mtu) = config.mtu {
        line(&mut out, Setting::Mtu, &mtu);
    }
    for peer in &config.peers {
        out += "\n[Peer]\n";
        if let Some(key) = &peer.private_key {
            out += "# ";
            line(&mut out, Setting::PrivateKey, key);
        }
        line(&mut out, Setting::PublicKey, &peer.public_key);
        if let Some(key) = &peer.preshared_key {
            line(&mut out, Setting::PresharedKey, key);
        }
        if !peer.allowed_ips.is_empty() {
            line(&mut out, Setting::AllowedIps, &join(&peer.allowed_ips));
        }
        if let Some(seconds) = peer.persistent_keepalive {
            line(&mut out, Setting::PersistentKeepalive, &seconds);
        }
        if let Some(endpoint) = &peer.endpoint {
            line(&mut out, Setting::Endpoint, endpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests;
