//! What holds of the stack between any two calls, for tests that drive it from outside (src/tests/fuzz/):
//! its tables agree with each other, and no limit is exceeded.

use std::collections::HashMap;

use smoltcp::socket::tcp;

use super::lifecycle::Lifecycle;
use super::{Stack, INITIAL_SEND_BUFFER, INITIAL_WINDOW};
use crate::messages::PeerId;

impl Stack {
    /// Panics unless the connections, flows, timers, admission counts, window budget, dirty and starved lists
    /// agree with each other, and the connection limits, the window budget (beyond the first windows), the
    /// memory pool (at most `POOLED_BUFFERS` mappings), the fragment reassembler and the UDP routes are within their bounds.
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.flows.len(), self.connections.len(), "flows and connections");
        for (flow, id) in &self.flows {
            let conn = self.connections.get(id).expect("a flow names a connection");
            assert_eq!((conn.id, conn.flow), (*id, *flow));
        }
        let mut held: HashMap<PeerId, (usize, usize)> = HashMap::new();
        let mut deadlines = 0;
        let mut charged = 0;
        for (id, conn) in &self.connections {
            let counts = held.entry(conn.flow.peer).or_default();
            counts.0 += 1;
            counts.1 += (conn.lifecycle == Lifecycle::Connecting) as usize;
            if let Some(at) = conn.deadline {
                assert!(
                    self.timers.contains(&(at, *id)),
                    "connection {id} is not in the timers"
                );
                deadlines += 1;
            }
            charged += conn.autotune.charged;
            assert_eq!(conn.dirty, self.dirty.contains(id), "connection {id}: dirty");
            assert!(
                !conn.starved || self.budget.starved.contains(id),
                "connection {id}: starved"
            );
            // Python hears of every handshake that completed, at the batch's end.
            let state = conn.sockets.get::<tcp::Socket>(conn.handle).state();
            if !conn.dirty && conn.lifecycle == Lifecycle::Connecting {
                assert!(
                    !matches!(state, tcp::State::Established | tcp::State::CloseWait),
                    "connection {id} is {state} and Python was not told"
                );
            }
        }
        assert_eq!(
            self.timers.len(),
            deadlines,
            "timers of connections that are gone"
        );
        self.admission.check(&held);
        assert_eq!(self.window_budget.used, charged, "the window budget's count");
        // Every connection gets its first window and send buffer, whatever the budget says.
        let first = self.connections.len() * (INITIAL_WINDOW + INITIAL_SEND_BUFFER);
        assert!(
            self.window_budget.used <= self.window_budget.limit + first,
            "window budget: {} used",
            self.window_budget.used
        );
        self.memory.check();
        self.fragments.check();
        self.udp_routes.check();
    }
}
