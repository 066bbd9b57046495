//! The engine handle that the Python package drives: it starts the server, turns Python's calls into
//! messages for the network task, and hands out the network task's events as objects (`events.rs`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use std::time::UNIX_EPOCH;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::config::{peer_from_args, Configuration};
use crate::capture::{self, Capture};
use crate::config;
use crate::error::Error;
use crate::events::{self, EventReceiver};
use crate::keys;
use crate::messages::{ConnectionId, PeerStats, PythonToNetwork, PythonToWireGuard, RequestId, SynAnswer};
use crate::network::packet::Unreachable;
use crate::network::stack::{WRITE_HIGH_WATER, WRITE_LOW_WATER};
use crate::server::Server;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(start_engine, m)?)?;
    m.add("WRITE_HIGH_WATER", WRITE_HIGH_WATER)?;
    m.add("WRITE_LOW_WATER", WRITE_LOW_WATER)?;
    super::events::register(m)?;
    Ok(())
}

static LOG_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

pub fn set_log_reset(handle: pyo3_log::ResetHandle) {
    let _ = LOG_RESET.set(handle);
}

/// Binds the socket and starts the engine thread. Raises `OSError` if the address cannot be bound and
/// `ValueError` for a bad configuration. With `ask_first`, every SYN waits for Python's answer
/// (`ConnectionRequested`, then `Engine.answer_connection`) before the client gets one.
#[pyfunction]
#[pyo3(signature = (host, config, ask_first = false))]
fn start_engine(host: &str, config: &Configuration, ask_first: bool) -> PyResult<Engine> {
    if let Some(reset) = LOG_RESET.get() {
        reset.reset();
    }
    let (sender, events) = events::channel()?;
    let server = Server::start(host, &config.0, sender, ask_first)?;
    Ok(Engine {
        server,
        events,
        capture: None,
        config: config.0.clone(),
    })
}

#[pyclass(module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct Engine {
    server: Server,
    events: EventReceiver,
    /// The running packet capture's writer; the network task holds its tap.
    capture: Option<Capture>,
    /// The configuration with the peers as they are now: new peers are checked against it (keys, addresses)
    /// and get their free tunnel addresses from it, before the engine hears of them.
    config: config::Configuration,
}

/// Python sees addresses as (host, port); an IPv4 peer on a dual-stack socket as plain IPv4.
pub(super) fn address(addr: SocketAddr) -> (String, u16) {
    (addr.ip().to_canonical().to_string(), addr.port())
}

fn parse_address(field: &str, (host, port): (String, u16)) -> PyResult<SocketAddr> {
    let ip: IpAddr = host
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| PyValueError::new_err(format!("invalid {field}: {host:?} is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}

#[pymethods]
impl Engine {
    fn getsockname(&self) -> (String, u16) {
        let addr = self.server.local_addr();
        (addr.ip().to_string(), addr.port())
    }

    /// The socket the event loop watches: readable when events wait.
    fn wakeup_fd(&self) -> i32 {
        self.events.fd()
    }

    /// Every waiting event, each an object of its own class (see `events.rs`).
    fn take_events(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        self.events.acknowledge();
        let mut out = Vec::new();
        while let Some(event) = self.events.try_recv() {
            out.push(super::events::to_python(py, event)?);
        }
        if self.events.take_starved() {
            // Fails only once the engine has ended: then nothing waits to be resumed, and the events taken
            // (`ServerClosed` among them) must still reach Python.
            let _ = self.server.send(PythonToNetwork::ResumeStarved);
        }
        Ok(out)
    }

    /// Answers a `ConnectionRequested`: "accept" (the SYN-ACK), "reset" (a RST), "host-unreachable",
    /// "network-unreachable" or "prohibited" (an ICMP destination unreachable with that code) or "silence"
    /// (nothing, until the handshake times out). `ValueError` for any other answer.
    fn answer_connection(&self, id: ConnectionId, answer: &str) -> PyResult<()> {
        let answer = match answer {
            "accept" => SynAnswer::Accept,
            "reset" => SynAnswer::Reset,
            "host-unreachable" => SynAnswer::Unreachable(Unreachable::Host),
            "network-unreachable" => SynAnswer::Unreachable(Unreachable::Network),
            "prohibited" => SynAnswer::Unreachable(Unreachable::Prohibited),
            "silence" => SynAnswer::Silence,
            other => {
                return Err(PyValueError::new_err(format!(
                    "invalid answer: {other:?} (accept, reset, host-unreachable, network-unreachable, \
                     prohibited or silence)"
                )))
            }
        };
        self.send(PythonToNetwork::Answer { id, answer })
    }

    fn write(&self, id: ConnectionId, data: &[u8]) -> PyResult<()> {
        self.send(PythonToNetwork::Write {
            id,
            data: data.to_vec(),
        })
    }

    fn write_eof(&self, id: ConnectionId) -> PyResult<()> {
        self.send(PythonToNetwork::WriteEof { id })
    }

    fn close_connection(&self, id: ConnectionId) -> PyResult<()> {
        self.send(PythonToNetwork::Close { id })
    }

    fn abort_connection(&self, id: ConnectionId) -> PyResult<()> {
        self.send(PythonToNetwork::Abort { id })
    }

    fn pause_reading(&self, id: ConnectionId) -> PyResult<()> {
        self.send(PythonToNetwork::PauseReading { id })
    }

    fn resume_reading(&self, id: ConnectionId) -> PyResult<()> {
        self.send(PythonToNetwork::ResumeReading { id })
    }

    #[pyo3(signature = (data, src_addr, dst_addr, peer = None))]
    fn send_datagram(
        &self,
        data: &[u8],
        src_addr: (String, u16),
        dst_addr: (String, u16),
        peer: Option<usize>,
    ) -> PyResult<()> {
        let src = parse_address("src_addr", src_addr)?;
        let dst = parse_address("dst_addr", dst_addr)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(PyValueError::new_err(
                "invalid dst_addr: src_addr and dst_addr must be of the same address family",
            ));
        }
        self.send(PythonToNetwork::SendDatagram {
            data: data.to_vec(),
            src,
            dst,
            peer,
        })
    }

    /// Creates `path` (mode 0600) and starts copying every packet to and from peers into it, as pcapng. Raises
    /// `OSError` with the path if it cannot be created, `RuntimeError` if a capture runs or the server is closed.
    fn start_capture(&mut self, path: PathBuf) -> PyResult<()> {
        if let Some(running) = &self.capture {
            return Err(PyRuntimeError::new_err(format!(
                "a packet capture to {} is running: stop it first",
                running.path().display()
            )));
        }
        let (capture, tap) = capture::start(&path)?;
        if let Err(e) = self.server.send(PythonToNetwork::Capture(Some(tap))) {
            // The tap went with the message: the writer ends at once.
            capture.finish();
            return Err(e.into());
        }
        log::info!("capturing packets to {}", path.display());
        self.capture = Some(capture);
        Ok(())
    }

    /// Stops the capture, if one runs, and waits until its file is written and closed.
    fn stop_capture(&mut self, py: Python<'_>) {
        if self.capture.is_some() {
            // Fails only if the network task is gone, and its tap with it.
            let _ = self.server.send(PythonToNetwork::Capture(None));
        }
        self.finish_capture(py);
    }

    /// Adds a peer to the running server; returns its AllowedIPs (given, or the next free tunnel addresses).
    /// `RequestDone` with `request` follows once it may handshake.
    #[pyo3(signature = (request, public_key, allowed_ips = None, preshared_key = None, persistent_keepalive = None))]
    fn add_peer(
        &mut self,
        request: RequestId,
        public_key: &str,
        allowed_ips: Option<&str>,
        preshared_key: Option<&str>,
        persistent_keepalive: Option<i64>,
    ) -> PyResult<Vec<String>> {
        let peer = peer_from_args(
            Some(public_key),
            preshared_key,
            None,
            ("allowed_ips", allowed_ips),
            persistent_keepalive,
        )?;
        let peer = self.config.add_peer(peer).map_err(as_servers)?.clone();
        let allowed_ips = peer.allowed_ips.iter().map(ToString::to_string).collect();
        if let Err(e) = self.server.request(PythonToWireGuard::AddPeer { request, peer }) {
            let _ = self.config.remove_peer(public_key);
            return Err(e.into());
        }
        Ok(allowed_ips)
    }

    /// Removes a peer from the running server; `RequestDone` with `request` follows once its connections were
    /// reset. `ValueError` if the server has no such peer.
    fn remove_peer(&mut self, request: RequestId, public_key: &str) -> PyResult<()> {
        let key = keys::decode("public_key", public_key)?;
        let removed = self.config.remove_peer(public_key).map_err(as_servers)?;
        if let Err(e) = self.server.request(PythonToWireGuard::RemovePeer {
            request,
            public_key: key,
        }) {
            self.config.peers.push(removed);
            return Err(e.into());
        }
        Ok(())
    }

    /// Asks for every peer's statistics; they come with `RequestDone` and `request`.
    fn request_stats(&self, request: RequestId) -> PyResult<()> {
        Ok(self.server.request(PythonToWireGuard::Stats { request })?)
    }

    /// Asks the engine to stop; `ServerClosed` follows.
    fn close(&self) {
        self.server.close();
    }

    /// Waits for the engine thread, without holding the GIL; call after `ServerClosed`. A capture ends
    /// with the engine: its file is complete when this returns.
    fn join(&mut self, py: Python<'_>) {
        py.detach(|| self.server.join());
        self.finish_capture(py);
    }
}

/// An engine that Python drops without closing it (a server never closed, at the end of its event loop) stops
/// here. Python holds the GIL while it drops objects, and the engine thread needs the GIL for its last log
/// records: the join waits without it, or neither side could go on.
impl Drop for Engine {
    fn drop(&mut self) {
        self.server.close();
        Python::attach(|py| {
            py.detach(|| self.server.join());
            self.finish_capture(py);
        });
    }
}

impl Engine {
    /// Waits, without the GIL, for the capture's writer once its tap is gone, and logs how the capture went.
    fn finish_capture(&mut self, py: Python<'_>) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        let path = capture.path().to_owned();
        let summary = py.detach(|| capture.finish());
        // A write error was logged when it happened.
        let why = match summary.error {
            Some(_) => "the writer failed or fell behind",
            None => "the writer fell behind",
        };
        let message = format!(
            "packet capture to {} stopped: {} packets written, {} dropped because {why}",
            path.display(),
            summary.packets,
            summary.dropped
        );
        if summary.dropped > 0 {
            log::warn!("{message}");
        } else {
            log::info!("{message}");
        }
    }

    fn send(&self, msg: PythonToNetwork) -> PyResult<()> {
        Ok(self.server.send(msg)?)
    }
}

/// An error of the configuration the engine keeps, as the server's: named by the argument (`allowed_ips`, not
/// `peers[3].allowed_ips`).
fn as_servers(e: Error) -> Error {
    match e {
        Error::InvalidConfig { field, reason } => Error::config(
            field.rsplit('.').next().unwrap_or(&field),
            reason.replace("the configuration", "the server"),
        ),
        e => e,
    }
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
