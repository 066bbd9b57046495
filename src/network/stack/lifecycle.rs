//! What Python knows of a connection, and so what it may be told next.
//!
//! ```text
//!              handshake done                      Python: Close or Abort
//! Connecting ─────────────────► Open ────────────────────────────────────────► Detached
//!     │                          │  Python: WriteEof sets fin_requested;           ▲
//!     │                          │  the client's FIN, once read, sets eof_reported │
//!     │                          │                                                 │
//!     │                          │ TIME-WAIT: ConnectionClosed                     │ Python: Close or Abort
//!     │                          ├────────────────────────────────► Ended ─────────┘
//!     │                          │                                    │
//!     │ socket closed            │ socket closed:                     │ socket closed
//!     ▼                          ▼ ConnectionClosed                   ▼
//!  forgotten                  forgotten                           forgotten     (Detached too)
//! ```
//!
//! The TCP state is smoltcp's; this is only the side Python sees. ConnectionClosed is reported once, from Open:
//! never for a connection Python did not hear of, nor for one it closed itself. It is the last event of a
//! connection: it waits until Python has read every byte that arrived (and EOF, after an orderly end), however
//! long Python pauses reading; until then the connection stays Open, whatever its socket's state.

/// See the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// The handshake is under way: Python does not know of the connection.
    Connecting,
    /// Python was told of it (ConnectionEstablished): data flows both ways until each side half-closes.
    Open {
        /// Python was told of the client's FIN (Eof).
        eof_reported: bool,
        /// Python asked for a FIN after its data (WriteEof): it writes no more.
        fin_requested: bool,
    },
    /// Python was told that the connection ended (ConnectionClosed), after every byte and EOF, while the socket
    /// waits in TIME-WAIT: both FINs were exchanged, so Python's FIN was requested.
    Ended,
    /// Python closed or aborted the connection: it hears nothing more, and data that still arrives is read and
    /// dropped to keep the window open. After a Close a FIN follows Python's data; an Abort reset the socket.
    Detached,
}

impl Lifecycle {
    /// Python hears of the connection's data, EOF and drained writes.
    pub(super) fn python_listens(self) -> bool {
        matches!(self, Lifecycle::Open { .. })
    }

    /// Python's writes are taken.
    pub(super) fn takes_writes(self) -> bool {
        matches!(
            self,
            Lifecycle::Open {
                fin_requested: false,
                ..
            }
        )
    }

    /// A FIN goes out once Python's writes are in the send buffer.
    pub(super) fn fin_requested(self) -> bool {
        matches!(
            self,
            Lifecycle::Open {
                fin_requested: true,
                ..
            } | Lifecycle::Ended
                | Lifecycle::Detached
        )
    }

    /// Python is still to be told of the client's FIN.
    pub(super) fn eof_due(self) -> bool {
        matches!(
            self,
            Lifecycle::Open {
                eof_reported: false,
                ..
            }
        )
    }

    /// Python was told of the connection: Connecting → Open.
    pub(super) fn announce(&mut self) {
        if *self == Lifecycle::Connecting {
            *self = Lifecycle::Open {
                eof_reported: false,
                fin_requested: false,
            };
        }
    }

    /// Python asked for a FIN after its data.
    pub(super) fn request_fin(&mut self) {
        if let Lifecycle::Open { fin_requested, .. } = self {
            *fin_requested = true;
        }
    }

    /// Python was told of the client's FIN.
    pub(super) fn report_eof(&mut self) {
        if let Lifecycle::Open { eof_reported, .. } = self {
            *eof_reported = true;
        }
    }

    /// Python was told that the connection ended (ConnectionClosed): Open → Ended. A connection whose socket
    /// closed is forgotten right after; one in TIME-WAIT stays Ended until then.
    pub(super) fn end(&mut self) {
        if let Lifecycle::Open { .. } = *self {
            *self = Lifecycle::Ended;
        }
    }

    /// Python closed or aborted the connection.
    pub(super) fn detach(&mut self) {
        *self = Lifecycle::Detached;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_hears_until_it_detaches_and_writes_until_it_asks_for_fin() {
        let mut life = Lifecycle::Connecting;
        assert!(!life.python_listens() && !life.takes_writes() && !life.eof_due());
        life.announce();
        assert!(life.python_listens() && life.takes_writes() && life.eof_due());
        life.request_fin();
        assert!(!life.takes_writes() && life.fin_requested());
        life.report_eof();
        assert!(!life.eof_due());
        life.end();
        assert_eq!(life, Lifecycle::Ended);
        assert!(!life.python_listens() && !life.eof_due() && life.fin_requested());
        life.detach();
        assert!(!life.python_listens() && !life.takes_writes() && !life.eof_due() && life.fin_requested());
        life.announce();
        assert_eq!(life, Lifecycle::Detached, "no way back");
    }
}
