//! `Configuration` for Python: range checks that name the field, then the crate's configuration.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::{self, ClientOptions, Peer};
use crate::error::Error;
use crate::keys;

/// The server's key, listen port and tunnel settings, and the WireGuard peers (clients) allowed to connect.
///
/// Keys are base64 strings as WireGuard configuration files write them. Invalid values raise `ValueError`
/// naming the field; a configuration file's errors name the file and line too.
///
/// Tunnel addresses: the server's `address` (10.0.0.1/16 and fd00::1/64 unless a file says otherwise) names
/// the tunnel's networks. A peer added without an address gets host number n of each network, 10.0.0.n/32 and
/// fd00::n/128 (n in hex there), for the lowest n whose addresses are free: not the server's, not a DNS
/// address, not another peer's. So the first peers get 10.0.0.2 and fd00::2, 10.0.0.3 and fd00::3, ...
/// A peer's addresses are its AllowedIPs: the server drops its packets from any other source address, as
/// WireGuard does. A peer without addresses (as in JSON of earlier versions) may use any.
///
/// ```python
/// cfg = Configuration.generate(listen_port=51820, peers=2)
/// cfg.add_peer(public_key=phone_public_key)  # a device with its own key
/// cfg.to_file("wg0.conf")
/// for text in cfg.pretty_print(endpoint="192.0.2.1:51820"):
///     print(text)  # one client configuration per peer
/// ```
#[pyclass(module = "mitmproxy_wireguard", eq)]
#[derive(Clone, PartialEq)]
pub struct Configuration(pub config::Configuration);

fn port(field: &str, value: i64) -> PyResult<u16> {
    u16::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("invalid {field}: {value} is not a port (0 to 65535)")))
}

fn addresses(field: &str, text: &str) -> PyResult<Vec<ipnet::IpNet>> {
    let nets = config::parse_nets(text)
        .map_err(|reason| PyValueError::new_err(format!("invalid {field}: {reason}")))?;
    if nets.is_empty() {
        return Err(PyValueError::new_err(format!("invalid {field}: no address")));
    }
    Ok(nets)
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// A peer from `add_peer`'s arguments, each checked; `address` is the name of the addresses' argument and its
/// value. Without keys, a private key is generated.
pub(super) fn peer_from_args(
    public_key: Option<&str>,
    preshared_key: Option<&str>,
    private_key: Option<&str>,
    address: (&str, Option<&str>),
    persistent_keepalive: Option<i64>,
) -> PyResult<Peer> {
    let mut peer = match (public_key, private_key) {
        (_, Some(private_key)) => Peer::from_private_key("private_key", private_key)?,
        (Some(public_key), None) => {
            keys::decode("public_key", public_key)?;
            Peer {
                public_key: public_key.trim().to_string(),
                ..Peer::default()
            }
        }
        (None, None) => Peer::from_private_key("private_key", &keys::generate())?,
    };
    if let Some(public_key) = public_key {
        if keys::decode("public_key", public_key)? != keys::decode("", &peer.public_key)? {
            return Err(PyValueError::new_err(
                "invalid private_key: does not belong to public_key",
            ));
        }
    }
    if let Some(psk) = preshared_key {
        keys::decode("preshared_key", psk)?;
        peer.preshared_key = Some(psk.trim().to_string());
    }
    if let (field, Some(address)) = address {
        peer.allowed_ips = addresses(field, address)?;
    }
    if let Some(seconds) = persistent_keepalive {
        peer.persistent_keepalive =
            Some(u16::try_from(seconds).ok().filter(|s| *s > 0).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "invalid persistent_keepalive: {seconds} is not a number of seconds (1 to 65535)"
                ))
            })?);
    }
    Ok(peer)
}

#[pymethods]
impl Configuration {
    /// Fresh keys for the server and `peers` clients, each with its own tunnel addresses, and the default
    /// tunnel settings: address 10.0.0.1/16 and fd00::1/64, DNS 10.0.0.53 and fd00::53, MTU 1420. A
    /// `listen_port` of 0 lets the system pick a port.
    #[staticmethod]
    #[pyo3(signature = (listen_port = 51820, peers = 1))]
    fn generate(listen_port: i64, peers: i64) -> PyResult<Self> {
        let listen_port = port("listen_port", listen_port)?;
        let peers = usize::try_from(peers)
            .ok()
            .filter(|n| *n <= 1 << 20)
            .ok_or_else(|| {
                PyValueError::new_err(format!("invalid peers: {peers} is not a number of peers"))
            })?;
        Ok(Configuration(config::Configuration::generate(
            listen_port,
            peers,
        )?))
    }

    /// A configuration from existing keys, with the default tunnel settings.
    #[staticmethod]
    fn custom(
        server_listen_port: i64,
        server_private_key: &str,
        client_private_keys: Vec<String>,
    ) -> PyResult<Self> {
        let listen_port = port("server_listen_port", server_listen_port)?;
        Ok(Configuration(config::Configuration::custom(
            listen_port,
            server_private_key,
            &client_private_keys,
        )?))
    }

    /// The configuration of `start_server`'s 0.1.x call form, whose peers may use any tunnel address; errors
    /// name that call's arguments. Private: the package's own plumbing.
    #[staticmethod]
    fn _from_keys(listen_port: i64, private_key: &str, peer_public_keys: Vec<String>) -> PyResult<Self> {
        let listen_port = port("port", listen_port)?;
        Ok(Configuration(config::Configuration::from_keys(
            listen_port,
            private_key,
            &peer_public_keys,
        )?))
    }

    /// The configuration as JSON, private keys included.
    fn to_json(&self) -> String {
        self.0.to_json()
    }

    /// Reads what `to_json` wrote.
    #[staticmethod]
    fn from_json(s: &str) -> PyResult<Self> {
        Ok(Configuration(config::Configuration::from_json(s)?))
    }

    /// Reads a WireGuard configuration file in wg-quick's format.
    ///
    /// `[Interface]`: PrivateKey, ListenPort, Address (the server's tunnel addresses), DNS and MTU (what client
    /// configurations get). `[Peer]`, one for each peer: PublicKey, PresharedKey, AllowedIPs (the peer's tunnel
    /// addresses), PersistentKeepalive. Names are case-insensitive, `#` starts a comment. A comment
    /// `# PrivateKey = <key>` in a `[Peer]` section is the client's private key, which `to_file` writes for the
    /// peers whose keys were generated here. Any other key is an error: `ValueError` names the file, the line
    /// and the field.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Ok(Configuration(
            py.detach(|| config::Configuration::from_file(&path))?,
        ))
    }

    /// What `from_file` makes of a file's contents, read by the caller; errors name `file`. Private: the
    /// command line's reload reads the file once, checks it is whole, and parses what it read.
    #[staticmethod]
    fn _from_bytes(py: Python<'_>, data: Vec<u8>, file: &str) -> PyResult<Self> {
        Ok(Configuration(
            py.detach(|| config::Configuration::from_bytes(data, file))?,
        ))
    }

    /// A client's configuration from a WireGuard configuration file's text: `[Interface]` PrivateKey, Address
    /// (the client's tunnel addresses), DNS, MTU, ListenPort; one `[Peer]`, the server: PublicKey, Endpoint,
    /// AllowedIPs, PresharedKey, PersistentKeepalive. Errors name `file`, the line and the field. Private:
    /// `connect` reads it.
    #[staticmethod]
    fn _client_from_text(text: &str, file: &str) -> PyResult<Self> {
        Ok(Configuration(config::Configuration::from_client_wg_quick(
            text, file,
        )?))
    }

    /// A client's configuration from `connect`'s arguments, each checked and named in errors.
    #[staticmethod]
    #[pyo3(signature = (private_key, public_key, endpoint, address, dns = None, preshared_key = None, persistent_keepalive = None, allowed_ips = None, mtu = None))]
    #[allow(clippy::too_many_arguments)] // the arguments of `connect`
    fn _client_from_keys(
        private_key: &str,
        public_key: &str,
        endpoint: &str,
        address: &str,
        dns: Option<&str>,
        preshared_key: Option<&str>,
        persistent_keepalive: Option<i64>,
        allowed_ips: Option<&str>,
        mtu: Option<i64>,
    ) -> PyResult<Self> {
        keys::decode("private_key", private_key)?;
        let mut server = peer_from_args(
            Some(public_key),
            preshared_key,
            None,
            ("allowed_ips", Some(allowed_ips.unwrap_or("0.0.0.0/0, ::/0"))),
            persistent_keepalive,
        )?;
        server.endpoint = Some(
            config::parse_endpoint(endpoint)
                .map_err(|reason| PyValueError::new_err(format!("invalid endpoint: {reason}")))?,
        );
        let dns = match dns {
            Some(text) => config::parse_dns(text)
                .map_err(|reason| PyValueError::new_err(format!("invalid dns: {reason}")))?,
            None => vec![],
        };
        let mtu = mtu
            .map(|m| {
                config::check_mtu(m).map_err(|reason| PyValueError::new_err(format!("invalid mtu: {reason}")))
            })
            .transpose()?;
        let cfg = config::Configuration {
            listen_port: 0,
            private_key: private_key.trim().to_string(),
            address: addresses("address", address)?,
            dns,
            mtu,
            peers: vec![server],
        };
        cfg.validate()?;
        Ok(Configuration(cfg))
    }

    /// The first peer's Endpoint, as given (a client's server), or None.
    #[getter]
    fn _endpoint(&self) -> Option<String> {
        self.0.peers.first().and_then(|p| p.endpoint.clone())
    }

    /// Writes the configuration as a WireGuard configuration file that `from_file` reads back unchanged,
    /// readable by its owner only.
    fn to_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        Ok(py.detach(|| self.0.to_file(&path))?)
    }

    /// Adds a peer and returns its public key.
    ///
    /// Without keys, a private key is generated (and kept, for its client configuration). `address` is the
    /// peer's tunnel addresses, comma-separated (default: the next free ones). A running server keeps the peers
    /// it was started with: see `Server.add_peer`.
    #[pyo3(signature = (public_key = None, preshared_key = None, *, private_key = None, address = None, persistent_keepalive = None))]
    fn add_peer(
        &mut self,
        public_key: Option<&str>,
        preshared_key: Option<&str>,
        private_key: Option<&str>,
        address: Option<&str>,
        persistent_keepalive: Option<i64>,
    ) -> PyResult<String> {
        let peer = peer_from_args(
            public_key,
            preshared_key,
            private_key,
            ("address", address),
            persistent_keepalive,
        )?;
        Ok(self.0.add_peer(peer)?.public_key.clone())
    }

    /// Removes the peer with this public key; `ValueError` if there is none.
    fn remove_peer(&mut self, public_key: &str) -> PyResult<()> {
        self.0.remove_peer(public_key)?;
        Ok(())
    }

    /// One WireGuard client configuration text per peer, ready to import into a WireGuard client.
    ///
    /// `address` is the client's tunnel address (default: each peer's own; the server drops packets from
    /// addresses that are not the peer's), `allowed_ips` what it routes into the tunnel, `endpoint` the
    /// server's address as the client reaches it (default: `127.0.0.1:<listen_port>`), `dns` its resolvers,
    /// comma-separated ("" for none; default: the configuration's DNS) and `mtu` its MTU (0 for none;
    /// default: the configuration's MTU, else 1420).
    ///
    /// A peer whose private key is not here (the device made its own) gets a template: its `PrivateKey` is the
    /// placeholder `<the device's own key>`, for the device's key.
    #[pyo3(signature = (address = None, allowed_ips = "0.0.0.0/0, ::/0", endpoint = None, *, dns = None, mtu = None))]
    fn pretty_print(
        &self,
        address: Option<String>,
        allowed_ips: &str,
        endpoint: Option<String>,
        dns: Option<String>,
        mtu: Option<i64>,
    ) -> PyResult<Vec<String>> {
        let mtu =
            match mtu {
                None => None,
                Some(0) => Some(0),
                Some(m) => Some(config::check_mtu(m).map_err(|reason| {
                    PyValueError::new_err(format!("invalid mtu: {reason}, or 0 for none"))
                })?),
            };
        if let Some(dns) = &dns {
            config::parse_dns(dns)
                .map_err(|reason| PyValueError::new_err(format!("invalid dns: {reason}")))?;
        }
        let endpoint = endpoint.unwrap_or_else(|| format!("127.0.0.1:{}", self.0.listen_port));
        Ok(self.0.client_configs(&ClientOptions {
            address,
            allowed_ips: allowed_ips.to_string(),
            endpoint,
            dns,
            mtu,
        })?)
    }

    /// The UDP port the server listens on (0: any free port).
    #[getter]
    fn listen_port(&self) -> u16 {
        self.0.listen_port
    }

    #[setter]
    fn set_listen_port(&mut self, value: i64) -> PyResult<()> {
        self.0.listen_port = port("listen_port", value)?;
        Ok(())
    }

    #[getter]
    fn server_public_key(&self) -> PyResult<String> {
        Ok(self.0.server_public_key()?)
    }

    #[getter]
    fn client_public_keys(&self) -> Vec<String> {
        self.0.peers.iter().map(|p| p.public_key.clone()).collect()
    }

    /// The private keys of the peers whose keys were generated here.
    #[getter]
    fn client_private_keys(&self) -> Vec<String> {
        self.0
            .peers
            .iter()
            .filter_map(|p| p.private_key.clone())
            .collect()
    }

    /// The server's tunnel addresses, with their networks' prefix lengths.
    #[getter]
    fn address(&self) -> Vec<String> {
        strings(&self.0.address)
    }

    /// The resolvers that client configurations name.
    #[getter]
    fn dns(&self) -> Vec<String> {
        self.0.dns.clone()
    }

    /// The MTU that client configurations name.
    #[getter]
    fn mtu(&self) -> Option<u16> {
        self.0.mtu
    }

    /// Each peer: `public_key`, `private_key` and `preshared_key` (or None), `allowed_ips` (a list) and
    /// `persistent_keepalive` (seconds, or None).
    #[getter]
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.0
            .peers
            .iter()
            .map(|peer| {
                let dict = PyDict::new(py);
                dict.set_item("public_key", &peer.public_key)?;
                dict.set_item("private_key", &peer.private_key)?;
                dict.set_item("preshared_key", &peer.preshared_key)?;
                dict.set_item("allowed_ips", strings(&peer.allowed_ips))?;
                dict.set_item("persistent_keepalive", peer.persistent_keepalive)?;
                Ok(dict)
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        let server_public_key = self.0.server_public_key().unwrap_or_else(|_: Error| "?".into());
        format!(
            "Configuration(listen_port={}, server_public_key={:?}, peers={})",
            self.0.listen_port,
            server_public_key,
            self.0.peers.len()
        )
    }
}
