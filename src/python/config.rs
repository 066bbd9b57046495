//! `Configuration` for Python: range checks that name the field, then the crate's configuration.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::config;
use crate::error::Error;

#[pyclass(module = "mitmproxy_wireguard", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct Configuration(pub config::Configuration);

fn port(field: &str, value: i64) -> PyResult<u16> {
    u16::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("invalid {field}: {value} is not a port (0 to 65535)")))
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

    #[pyo3(signature = (address = "10.0.0.1/32", allowed_ips = "0.0.0.0/0, ::/0", endpoint = None))]
    fn pretty_print(
        &self,
        address: &str,
        allowed_ips: &str,
        endpoint: Option<String>,
    ) -> PyResult<Vec<String>> {
        let endpoint = endpoint.unwrap_or_else(|| format!("127.0.0.1:{}", self.0.listen_port));
        Ok(self.0.client_configs(address, allowed_ips, &endpoint)?)
    }

    #[getter]
    fn listen_port(&self) -> u16 {
        self.0.listen_port
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
