//! The Python extension module `mitmproxy_wireguard._mitmproxy_wireguard`: conversions and nothing else. The
//! asyncio side (streams, the server object) lives in the Python package over it.

mod config;
mod convert;
mod engine;
mod events;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;
use crate::keys;

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::InvalidKey { .. } | Error::InvalidConfig { .. } | Error::InvalidFile { .. } => {
                PyValueError::new_err(e.to_string())
            }
            Error::Io(io) => io.into(),
            Error::File { path, source } => match source.raw_os_error().or(match source.kind() {
                // A refusal of our own (a link, another user's file): PermissionError, as from the system.
                std::io::ErrorKind::PermissionDenied => Some(libc::EACCES),
                _ => None,
            }) {
                // As Python's own `open` raises it: `OSError(errno, strerror, filename)` makes the subclass
                // (`PermissionError`, ...) and the message `[Errno N] strerror: 'path'`.
                Some(errno) => {
                    let text = source.to_string();
                    let strerror = text
                        .strip_suffix(&format!(" (os error {errno})"))
                        .unwrap_or(&text);
                    PyOSError::new_err((errno, strerror.to_owned(), path.into_os_string()))
                }
                None => PyOSError::new_err(format!("{}: {source}", path.display())),
            },
            Error::Bind { addr, source } => {
                let text = source.to_string();
                let message = |reason: &str| format!("cannot listen on UDP {addr}: {reason}");
                match source.raw_os_error() {
                    // `OSError(errno, strerror)`: the subclass and `errno` (EADDRINUSE, ...) for callers.
                    Some(errno) => {
                        let strerror = text
                            .strip_suffix(&format!(" (os error {errno})"))
                            .unwrap_or(&text);
                        PyOSError::new_err((errno, message(strerror)))
                    }
                    None => PyOSError::new_err(message(&text)),
                }
            }
            Error::Closed => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

/// A new private key, base64-encoded as `wg genkey` prints it.
#[pyfunction]
fn genkey() -> String {
    keys::generate()
}

/// The public key of a private key, as `wg pubkey` prints it. Raises `ValueError` for an invalid key.
#[pyfunction]
fn pubkey(private_key: &str) -> PyResult<String> {
    Ok(keys::public_of("private_key", private_key)?)
}

/// Rust log records go to Python's `logging`, under `mitmproxy_wireguard.*` for this crate. The TCP stack's
/// own records are for its developers: only its warnings are passed on.
/// A process has one Rust logger: if another module installed one first, records go there instead.
fn init_logging(py: Python<'_>) -> PyResult<Option<pyo3_log::ResetHandle>> {
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?
        .filter_target("smoltcp".to_string(), log::LevelFilter::Warn);
    Ok(logger.install().ok())
}

#[pymodule]
fn _mitmproxy_wireguard(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Levels are cached for speed; each new server re-reads them, so that logging set up after import counts.
    if let Some(reset) = init_logging(m.py())? {
        engine::set_log_reset(reset);
    }
    m.add_function(wrap_pyfunction!(genkey, m)?)?;
    m.add_function(wrap_pyfunction!(pubkey, m)?)?;
    m.add_class::<config::Configuration>()?;
    // `eq` fills the rich comparison slot, for which Python lists `__lt__`, `__le__`, `__gt__` and `__ge__` too
    // (help() shows them; each raises TypeError). A configuration has no order: they go, and `<` still raises
    // TypeError as for any object without an order.
    let configuration = m.getattr("Configuration")?;
    for name in ["__lt__", "__le__", "__gt__", "__ge__"] {
        configuration.delattr(name)?;
    }
    engine::register(m)?;
    Ok(())
}
