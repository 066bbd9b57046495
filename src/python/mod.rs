//! The Python extension module `mitmproxy_wireguard._mitmproxy_wireguard`: conversions and nothing else. The
//! asyncio side (streams, the server object) lives in the Python package over it.

mod config;
mod engine;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;
use crate::keys;

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::InvalidKey { .. } | Error::InvalidConfig { .. } => PyValueError::new_err(e.to_string()),
            Error::Io(io) => io.into(),
            Error::Closed => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

/// Generates a new private key, base64-encoded like `wg genkey` prints it.
#[pyfunction]
fn genkey() -> String {
    keys::generate()
}

/// The public key of a base64-encoded private key, like `wg pubkey` prints it.
#[pyfunction]
fn pubkey(private_key: &str) -> PyResult<String> {
    Ok(keys::public_of("private_key", private_key)?)
}

#[pymodule]
fn _mitmproxy_wireguard(m: &Bound<'_, PyModule>) -> PyResult<()> {
    pyo3_log::init();
    m.add_function(wrap_pyfunction!(genkey, m)?)?;
    m.add_function(wrap_pyfunction!(pubkey, m)?)?;
    m.add_class::<config::Configuration>()?;
    engine::register(m)?;
    Ok(())
}
