//! The engine handle that the Python package drives: it starts the server, turns Python's calls into
//! messages for the network task, and hands out the network task's events as objects (`events.rs`).

use std::path::PathBuf;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use super::config::{peer_from_args, Configuration};
use super::convert::parse_address;
use crate::capture::{self, Capture};
use crate::events::{self, EventReceiver};
use crate::keys;
use crate::messages::{ConnectionId, PythonToNetwork, PythonToWireGuard, RequestId, SynAnswer, OUTGOING};
use crate::network::packet::Unreachable;
use crate::network::stack::{WRITE_HIGH_WATER, WRITE_LOW_WATER};
use crate::server::{Role, Server};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(start_engine, m)?)?;
    m.add_function(wrap_pyfunction!(start_client_engine, m)?)?;
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
    Engine::start(host, config, Role::Server { ask_first })
}

/// Starts the engine as a client of the one peer of `config`, the server at its Endpoint (a host name is
/// resolved now). Raises `ValueError` for a bad configuration or an endpoint that does not resolve, `OSError` if
/// no socket can be bound.
#[pyfunction]
fn start_client_engine(config: &Configuration) -> PyResult<Engine> {
    Engine::start("", config, Role::Client)
}

#[pyclass(module = "mitmproxy_wireguard._mitmproxy_wireguard")]
pub struct Engine {
    /// The id of the next connection that Python opens (`connect`).
    next_outgoing: ConnectionId,
    server: Server,
    events: EventReceiver,
    /// The running packet capture's writer; the network task holds its tap.
    capture: Option<Capture>,
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

    /// Opens a TCP connection to `dst_addr` through the tunnel to the first peer (a client's server), from
    /// `src_addr` (port 0: a free one). Returns its id at once; `ConnectionEstablished` with it follows the
    /// handshake, or `ConnectFailed`.
    fn connect(&mut self, src_addr: (String, u16), dst_addr: (String, u16)) -> PyResult<ConnectionId> {
        let src = parse_address("src_addr", src_addr)?;
        let dst = parse_address("dst_addr", dst_addr)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(PyValueError::new_err(
                "invalid dst_addr: src_addr and dst_addr must be of the same address family",
            ));
        }
        let id = self.next_outgoing;
        self.next_outgoing += 1;
        // A client's one peer is the first the WireGuard task numbered.
        self.send(PythonToNetwork::Connect {
            id,
            peer: 0,
            src,
            dst,
        })?;
        Ok(id)
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

    /// Adds a peer to the running server: `RequestDone` with `request` follows once it may handshake, with its
    /// AllowedIPs (given, or the next free tunnel addresses), or the error that refused it (a key or addresses
    /// another peer has).
    #[pyo3(signature = (request, public_key, allowed_ips = None, preshared_key = None, persistent_keepalive = None))]
    fn add_peer(
        &self,
        request: RequestId,
        public_key: &str,
        allowed_ips: Option<&str>,
        preshared_key: Option<&str>,
        persistent_keepalive: Option<i64>,
    ) -> PyResult<()> {
        let peer = peer_from_args(
            Some(public_key),
            preshared_key,
            None,
            ("allowed_ips", allowed_ips),
            persistent_keepalive,
        )?;
        Ok(self
            .server
            .request(PythonToWireGuard::AddPeer { request, peer })?)
    }

    /// Removes a peer from the running server; `RequestDone` with `request` follows once its connections were
    /// reset, or with the error if the server has no such peer.
    fn remove_peer(&self, request: RequestId, public_key: &str) -> PyResult<()> {
        let key = keys::decode("public_key", public_key)?;
        Ok(self.server.request(PythonToWireGuard::RemovePeer {
            request,
            public_key: key,
        })?)
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
    /// Starts the engine's thread in `role`. Python's loggers may have changed since the last engine: their
    /// levels are read again.
    fn start(host: &str, config: &Configuration, role: Role) -> PyResult<Engine> {
        if let Some(reset) = LOG_RESET.get() {
            reset.reset();
        }
        let (sender, events) = events::channel()?;
        let server = Server::start(host, &config.0, sender, role)?;
        Ok(Engine {
            server,
            events,
            capture: None,
            next_outgoing: OUTGOING,
        })
    }

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
