//! Timers: each connection is in `Stack::timers` at the moment it next needs a poll (smoltcp's retransmission
//! and delayed-ACK timers, the `timeouts` that end a connection, the release of idle pages), so that a tick
//! polls the connections that are due and no other.

use std::collections::BTreeSet;
use std::time::Instant as StdInstant;

use smoltcp::iface::Interface;
use smoltcp::time::Instant;

use super::connection::Connection;
use super::{Outputs, Stack};
use crate::messages::ConnectionId;

impl Stack {
    /// The earliest moment a connection needs a poll.
    pub fn next_deadline(&self) -> Option<StdInstant> {
        self.timers.first().map(|(at, _)| self.unclock(*at))
    }

    /// Polls the connections whose timers are due.
    pub fn poll_timers(&mut self, now: StdInstant, out: &mut Outputs) {
        let now = self.clock(now);
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.deadline = None;
                if !self.give_up_if_due(id, now, out) {
                    self.service(id, now, out);
                }
            }
        }
    }
}

impl Connection {
    /// Puts the connection in `timers` at the earliest moment it needs a poll, or takes it out.
    pub(super) fn reschedule(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        timers: &mut BTreeSet<(Instant, ConnectionId)>,
    ) {
        // A held socket has nothing to send, though smoltcp, which does not look at the pause, says it has: only
        // the handshake timeout is due.
        let mut next = if self.hold.holds() {
            None
        } else {
            iface.poll_at(now, &self.sockets)
        };
        for at in [self.patience.deadline(), self.pages.release_at]
            .into_iter()
            .flatten()
        {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if next == self.deadline {
            return;
        }
        if let Some(old) = self.deadline {
            timers.remove(&(old, self.id));
        }
        if let Some(new) = next {
            timers.insert((new, self.id));
        }
        self.deadline = next;
    }
}
