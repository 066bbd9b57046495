//! `Configuration` for Python: range checks that name the field, then the crate's configuration.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::{self, ClientOptions, Peer};
use crate::error::Error;
use crate::keys;

#[pyclass(module = "mitmproxy_wireguard", eq)]
#[derive(Clone, PartialEq)]
pub struct Configuration(pub config::Configuration);

fn port(field: &str, value: i64) -> PyResult<u16> {
    u16::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("invalid {field}: {value} is not a port (0 to 65535)")))
}

fn addresses(field: &str, text: &str) -> PyResult<Vec<ipnet::IpNet>> {
    let nets = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(config::parse_net)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| PyValueError::new_err(format!("invalid {field}: {reason}")))?;
    if nets.is_empty() {
        return Err(PyValueError::new_err(format!("invalid {field}: no address")));
    }
    Ok(nets)
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

#[pymethods]
impl Configuration {
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

    fn to_json(&self) -> String {
        self.0.to_json()
    }

    #[staticmethod]
    fn from_json(s: &str) -> PyResult<Self> {
        Ok(Configuration(config::Configuration::from_json(s)?))
    }

    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Ok(Configuration(
            py.detach(|| config::Configuration::from_file(&path))?,
        ))
    }

    fn to_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        Ok(py.detach(|| self.0.to_file(&path))?)
    }

    #[pyo3(signature = (public_key = None, preshared_key = None, *, private_key = None, address = None, persistent_keepalive = None))]
    fn add_peer(
        &mut self,
        public_key: Option<&str>,
        preshared_key: Option<&str>,
        private_key: Option<&str>,
        address: Option<&str>,
        persistent_keepalive: Option<i64>,
    ) -> PyResult<String> {
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
        if let Some(address) = address {
            peer.allowed_ips = addresses("address", address)?;
        }
        if let Some(seconds) = persistent_keepalive {
            peer.persistent_keepalive =
                Some(u16::try_from(seconds).ok().filter(|s| *s > 0).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "invalid persistent_keepalive: {seconds} is not a number of seconds (1 to 65535)"
                    ))
                })?);
        }
        Ok(self.0.add_peer(peer)?.public_key.clone())
    }

    fn remove_peer(&mut self, public_key: &str) -> PyResult<()> {
        self.0.remove_peer(public_key)?;
        Ok(())
    }

    #[pyo3(signature = (address = None, allowed_ips = "0.0.0.0/0, ::/0", endpoint = None, *, dns = None, mtu = None))]
    fn pretty_print(
        &self,
        address: Option<String>,
        allowed_ips: &str,
        endpoint: Option<String>,
        dns: Option<String>,
        mtu: Option<i64>,
    ) -> PyResult<Vec<String>> {
        let mtu = match mtu {
            None => None,
            Some(0) => Some(0),
            Some(m) => Some(
                u16::try_from(m)
                    .ok()
                    .filter(|m| *m >= config::MIN_MTU)
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "invalid mtu: {m} is not an MTU ({} to 65535, or 0 for none)",
                            config::MIN_MTU
                        ))
                    })?,
            ),
        };
        if let Some(entry) = dns
            .iter()
            .flat_map(|d| d.split(','))
            .map(str::trim)
            .find(|e| !e.is_empty() && !config::is_dns_entry(e))
        {
            return Err(PyValueError::new_err(format!(
                "invalid dns: {entry:?} is neither an IP address nor a domain"
            )));
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

    #[getter]
    fn client_private_keys(&self) -> Vec<String> {
        self.0
            .peers
            .iter()
            .filter_map(|p| p.private_key.clone())
            .collect()
    }

    #[getter]
    fn address(&self) -> Vec<String> {
        strings(&self.0.address)
    }

    #[getter]
    fn dns(&self) -> Vec<String> {
        self.0.dns.clone()
    }

    #[getter]
    fn mtu(&self) -> Option<u16> {
        self.0.mtu
    }

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
