//! When the stack gives up on a client, so that no client holds a connection's memory forever:
//!
//! - a handshake not completed `HANDSHAKE_TIMEOUT` after the SYN: the half-open connection is dropped without a
//!   word (Python never heard of it);
//! - no FIN from the client `LINGER` after Python closed: reset;
//! - data in the send buffer that the client did not acknowledge for `USER_TIMEOUT`, whether it is silent or
//!   answers with a closed window: reset, as a kernel does with TCP_USER_TIMEOUT;
//! - a client silent for `SILENCE_TIMEOUT` despite keepalive probes: smoltcp resets the connection itself
//!   (`set_keep_alive`, `set_timeout` on each socket).
//!
//! A reset connection is reported to Python as reset, as a kernel's ETIMEDOUT.

use log::Level;
use smoltcp::time::Instant;

use super::connection::Connection;
use super::lifecycle::Lifecycle;
use super::{Stack, USER_TIMEOUT};
use crate::messages::ConnectionId;

/// Where the send side stood when it last moved on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    /// Bytes the client had acknowledged.
    acked: u64,
    since: Instant,
}

impl Connection {
    /// Notes whether the client acknowledged more of what waits in the send buffer.
    pub(super) fn watch_progress(&mut self, now: Instant) {
        let queued = self.socket().send_queue() as u64;
        if queued == 0 {
            self.progress = None;
            return;
        }
        let acked = self.enqueued - queued;
        if self.progress.is_none_or(|p| p.acked != acked) {
            self.progress = Some(Progress { acked, since: now });
        }
    }

    /// The moment the stack gives up on the client unless it moves first.
    pub(super) fn give_up_deadline(&self) -> Option<Instant> {
        let stalled = self.progress.map(|p| p.since + USER_TIMEOUT.into());
        match (self.give_up_at, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Stack {
    /// Ends connection `id` if its client ran out of time. Returns whether it is forgotten.
    pub(super) fn give_up_if_due(&mut self, id: ConnectionId, now: Instant) -> bool {
        let Some(conn) = self.connections.get_mut(&id) else {
            return true;
        };
        if conn.give_up_deadline().is_none_or(|at| at > now) {
            return false;
        }
        if conn.lifecycle == Lifecycle::Connecting {
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
