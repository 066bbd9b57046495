//! Values as Python sees them, for the engine's replies and its events alike.

use std::net::{IpAddr, SocketAddr};
use std::time::UNIX_EPOCH;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::messages::PeerStats;

/// Python sees addresses as (host, port); an IPv4 peer on a dual-stack socket as plain IPv4.
pub(super) fn address(addr: SocketAddr) -> (String, u16) {
    (addr.ip().to_canonical().to_string(), addr.port())
}

/// A peer's statistics as the dict `PeerStats` is made from.
pub(super) fn stats_dict<'py>(py: Python<'py>, p: &PeerStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("public_key", &*p.public_key)?;
    d.set_item(
        "allowed_ips",
        p.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
    )?;
    d.set_item("endpoint", p.endpoint.map(address))?;
    let handshake = p
        .last_handshake
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    d.set_item("last_handshake", handshake)?;
    d.set_item("rx_bytes", p.rx_bytes)?;
    d.set_item("rx_packets", p.rx_packets)?;
    d.set_item("tx_bytes", p.tx_bytes)?;
    d.set_item("tx_packets", p.tx_packets)?;
    d.set_item("tcp_connections", p.tcp_connections)?;
    d.set_item("udp_flows", p.udp_flows)?;
    let drops = PyDict::new(py);
    for (reason, n) in &p.drops {
        drops.set_item(*reason, n)?;
    }
    d.set_item("drops", drops)?;
    Ok(d)
}

/// An address from Python, `(host, port)` with an IP address as host; `ValueError` naming `field` otherwise.
pub(super) fn parse_address(field: &str, (host, port): (String, u16)) -> PyResult<SocketAddr> {
    let ip: IpAddr = host
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| PyValueError::new_err(format!("invalid {field}: {host:?} is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}
