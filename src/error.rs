//! The crate's error type. Each variant maps to one Python exception at the boundary (`From<Error> for PyErr` in `python/mod.rs`).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key that is not 32 bytes of base64; `field` names where it came from.
    #[error("invalid {field}: {reason}")]
    InvalidKey { field: String, reason: String },
    /// A configuration value that makes no sense; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A WireGuard configuration file with a bad value: `file`, `line` (when one line is at fault) and `field`
    /// say where.
    #[error("invalid {field} in {file}{}: {reason}", line.map(|n| format!(", line {n}")).unwrap_or_default())]
    InvalidFile {
        file: String,
        line: Option<usize>,
        field: String,
        reason: String,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A file that could not be opened or written; Python sees the path as the `OSError`'s filename.
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    /// The server's UDP socket could not be bound to `addr`.
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the server is closed")]
    Closed,
}

impl Error {
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
