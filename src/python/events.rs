//! The network task's events as Python objects: a small frozen class per kind of event, whose fields are made
//! once, when the event crosses into Python. The package dispatches on the class.

use std::net::SocketAddr;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::{address, stats_dict};
use crate::messages::{ConnectFailure, ConnectionId, NetworkToPython, PeerId, PeerInfo, Reply, RequestId};
use crate::network::packet::Unreachable;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ConnectionRequested>()?;
    m.add_class::<ConnectionEstablished>()?;
    m.add_class::<ConnectionData>()?;
    m.add_class::<ConnectionEof>()?;
    m.add_class::<ConnectionDrained>()?;
    m.add_class::<ConnectionClosed>()?;
    m.add_class::<DatagramReceived>()?;
    m.add_class::<ConnectFailed>()?;
    m.add_class::<HandshakeFailed>()?;
    m.add_class::<RequestDone>()?;
    m.add_class::<ServerClosed>()?;
    Ok(())
}

/// A client's SYN, which waits for `Engine.answer_connection` (only from an engine started with
/// `ask_first`). `endpoint` is the peer's outer UDP address, `src` the client's address inside the tunnel,
/// `dst` the destination it asked for.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectionRequested {
    id: ConnectionId,
    peer_public_key: Py<PyAny>,
    /// The peer's outer UDP address.
    endpoint: Py<PyTuple>,
    /// The client's address inside the tunnel.
    src: Py<PyTuple>,
    /// The destination the client asked for.
    dst: Py<PyTuple>,
}

/// A TCP handshake completed. `endpoint` is the peer's outer UDP address, `src` the client's address inside
/// the tunnel, `dst` the destination it asked for.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectionEstablished {
    id: ConnectionId,
    peer_public_key: Py<PyAny>,
    /// The peer's outer UDP address.
    endpoint: Py<PyTuple>,
    /// The client's address inside the tunnel.
    src: Py<PyTuple>,
    /// The destination the client asked for.
    dst: Py<PyTuple>,
}

/// Bytes the client sent.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectionData {
    id: ConnectionId,
    data: Py<PyBytes>,
}

/// The client sent FIN.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectionEof {
    id: ConnectionId,
}

/// This many written bytes were handed to the TCP stack.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectionDrained {
    id: ConnectionId,
    bytes: usize,
}

/// The connection is gone; `reset` if by an abort or a timeout, not an orderly close.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectionClosed {
    id: ConnectionId,
    reset: bool,
}

/// A UDP datagram from a peer: `peer` is its id (a reply sent with it reaches that peer), `peer_public_key`
/// its key.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct DatagramReceived {
    data: Py<PyBytes>,
    src: Py<PyTuple>,
    dst: Py<PyTuple>,
    peer: PeerId,
    peer_public_key: Py<PyAny>,
}

/// A connection that Python opened (`Engine.connect`) was not established: `reason` is "refused" (a RST
/// answered), "timed-out" (no answer), "no-room" (no free port, or the connection limit), or from an ICMP
/// destination unreachable, "host-unreachable", "network-unreachable" or "prohibited".
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ConnectFailed {
    id: ConnectionId,
    reason: &'static str,
}

/// No WireGuard handshake with the peer completed within 90 s of trying; `endpoint` is where they were sent.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct HandshakeFailed {
    peer_public_key: Py<PyAny>,
    endpoint: Py<PyTuple>,
}

/// The answer to the request numbered `request` (`add_peer`, `remove_peer`, `request_stats`), after every
/// event it caused. `error` is why it was refused (a ValueError), else None; `stats` the peers' statistics for
/// `request_stats` (the fields of `PeerStats`), else None; `allowed_ips` the AllowedIPs a peer got from
/// `add_peer`, else None.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct RequestDone {
    request: RequestId,
    error: Option<String>,
    stats: Option<Py<PyAny>>,
    allowed_ips: Option<Vec<String>>,
}

/// Every task of the engine ended; `error` says why if it was not asked to close (a task failed), else
/// None.
#[pyclass(frozen, get_all, module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct ServerClosed {
    error: Option<String>,
}

#[pymethods]
impl ServerClosed {
    /// Made by the engine; a stand-in for the engine in a test makes one too.
    #[new]
    #[pyo3(signature = (error = None))]
    fn new(error: Option<String>) -> Self {
        ServerClosed { error }
    }
}

fn tuple(py: Python<'_>, addr: SocketAddr) -> PyResult<Py<PyTuple>> {
    Ok(address(addr).into_pyobject(py)?.unbind())
}

fn object<T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>>>(
    py: Python<'_>,
    value: T,
) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, value)?.into_any())
}

/// A peer's public key as a Python string.
fn key(py: Python<'_>, peer: &PeerInfo) -> PyResult<Py<PyAny>> {
    Ok((*peer.public_key).into_pyobject(py)?.into_any().unbind())
}

/// The Python object for one event.
pub fn to_python(py: Python<'_>, event: NetworkToPython) -> PyResult<Py<PyAny>> {
    match event {
        NetworkToPython::ConnectionEstablished {
            id,
            peer,
            endpoint,
            src,
            dst,
        } => object(
            py,
            ConnectionEstablished {
                id,
                peer_public_key: key(py, &peer)?,
                endpoint: tuple(py, endpoint)?,
                src: tuple(py, src)?,
                dst: tuple(py, dst)?,
            },
        ),
        NetworkToPython::ConnectionRequested {
            id,
            peer,
            endpoint,
            src,
            dst,
        } => object(
            py,
            ConnectionRequested {
                id,
                peer_public_key: key(py, &peer)?,
                endpoint: tuple(py, endpoint)?,
                src: tuple(py, src)?,
                dst: tuple(py, dst)?,
            },
        ),
        NetworkToPython::Data { id, data } => object(
            py,
            ConnectionData {
                id,
                data: PyBytes::new(py, &data).unbind(),
            },
        ),
        NetworkToPython::Eof { id } => object(py, ConnectionEof { id }),
        NetworkToPython::Drained { id, bytes } => object(py, ConnectionDrained { id, bytes }),
        NetworkToPython::ConnectionClosed { id, reset } => object(py, ConnectionClosed { id, reset }),
        NetworkToPython::Datagram { data, src, dst, peer } => object(
            py,
            DatagramReceived {
                data: PyBytes::new(py, &data).unbind(),
                src: tuple(py, src)?,
                dst: tuple(py, dst)?,
                peer: peer.id,
                peer_public_key: key(py, &peer)?,
            },
        ),
        NetworkToPython::Reply { request, reply } => {
            let (mut error, mut stats, mut allowed_ips) = (None, None, None);
            match reply {
                Reply::Done => {}
                Reply::Failed(e) => error = Some(e),
                Reply::Added(nets) => allowed_ips = Some(nets.iter().map(ToString::to_string).collect()),
                Reply::Stats(peers) => {
                    let dicts = peers
                        .iter()
                        .map(|p| stats_dict(py, p))
                        .collect::<PyResult<Vec<_>>>()?;
                    stats = Some(dicts.into_pyobject(py)?.into_any().unbind());
                }
            }
            object(
                py,
                RequestDone {
                    request,
                    error,
                    stats,
                    allowed_ips,
                },
            )
        }
        NetworkToPython::ServerClosed { error } => object(py, ServerClosed { error }),
        NetworkToPython::ConnectFailed { id, reason } => {
            let reason = match reason {
                ConnectFailure::Refused => "refused",
                ConnectFailure::TimedOut => "timed-out",
                ConnectFailure::NoRoom => "no-room",
                ConnectFailure::Unreachable(Unreachable::Host) => "host-unreachable",
                ConnectFailure::Unreachable(Unreachable::Network) => "network-unreachable",
                ConnectFailure::Unreachable(Unreachable::Prohibited) => "prohibited",
            };
            object(py, ConnectFailed { id, reason })
        }
        NetworkToPython::HandshakeFailed { peer, endpoint } => object(
            py,
            HandshakeFailed {
                peer_public_key: key(py, &peer)?,
                endpoint: tuple(py, endpoint)?,
            },
        ),
    }
}
