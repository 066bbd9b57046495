//! When the stack gives up on a client, so that no client holds a connection's memory forever:
//!
//! - a handshake not completed `HANDSHAKE_TIMEOUT` after the SYN: the half-open connection is dropped without a
//!   word (Python never heard of it); one that Python opened, `CONNECT_TIMEOUT` after its SYN: Python hears
//!   `ConnectFailed` (a kernel's ETIMEDOUT);
//! - no FIN from the client `LINGER` after Python closed: reset;
//! - data in the send buffer that the client did not acknowledge for `USER_TIMEOUT`, whether it is silent or
//!   answers with a closed window: reset, as a kernel does with TCP_USER_TIMEOUT;
//! - a client silent for `SILENCE_TIMEOUT` despite keepalive probes: smoltcp resets the connection itself
//!   (`set_keep_alive`, `set_timeout` on each socket).
//!
//! A reset connection is reported to Python as reset, as a kernel's ETIMEDOUT.

use log::Level;
use smoltcp::time::Instant;

use super::lifecycle::Lifecycle;
use super::{Outputs, Stack, USER_TIMEOUT};
use crate::messages::{ConnectFailure, ConnectionId, NetworkToPython};

/// Where the send side stood when it last moved on.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Bytes the client had acknowledged.
    acked: u64,
    since: Instant,
}

/// How long the stack waits for a client on a connection.
#[derive(Debug, Default)]
pub(super) struct Patience {
    /// The latest moment to wait for the client: to complete its handshake, or, once Python closed the
    /// connection, to close its side.
    pub(super) give_up_at: Option<Instant>,
    /// The send side's progress, while data waits for the client's acknowledgement.
    progress: Option<Progress>,
}

impl Patience {
    pub(super) fn until(give_up_at: Instant) -> Self {
        Patience {
            give_up_at: Some(give_up_at),
            progress: None,
        }
    }

    /// Notes whether the client acknowledged more of what waits in the send buffer (`queued` bytes of the
    /// `enqueued` so far).
    pub(super) fn watch_progress(&mut self, queued: u64, enqueued: u64, now: Instant) {
        if queued == 0 {
            self.progress = None;
            return;
        }
        let acked = enqueued - queued;
        if self.progress.is_none_or(|p| p.acked != acked) {
            self.progress = Some(Progress { acked, since: now });
        }
    }

    /// The moment the stack gives up on the client unless it moves first.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let stalled = self.progress.map(|p| p.since + USER_TIMEOUT.into());
        match (self.give_up_at, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Stack {
    /// Ends connection `id` if its client ran out of time. Returns whether it is forgotten.
    pub(super) fn give_up_if_due(&mut self, id: ConnectionId, now: Instant, out: &mut Outputs) -> bool {
        let Some(conn) = self.connections.get_mut(&id) else {
            return true;
        };
        if conn.patience.deadline().is_none_or(|at| at > now) {
            return false;
        }
        if conn.lifecycle == Lifecycle::Connecting {
            if conn.outgoing {
                out.events.push(NetworkToPython::ConnectFailed {
                    id,
                    reason: ConnectFailure::TimedOut,
                });
            }
            crate::ratelog::note(Level::Debug, "connections dropped unestablished", || {
                format!("connection {id}: the client did not complete its handshake in time, dropped")
            });
            self.forget(id);
            return true;
        }
        crate::ratelog::note(Level::Debug, "connections reset unanswered", || {
            format!("connection {id}: the client did not answer in time, resetting")
        });
        conn.abort();
        false
    }
}
