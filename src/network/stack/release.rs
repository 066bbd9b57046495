//! Memory release: an idle connection gives its buffers' pages back to the kernel, a while after both emptied.

use smoltcp::time::Instant;

use super::connection::Connection;
use super::{RELEASE_AFTER, RX_BUFFER, TX_BUFFER};

impl Connection {
    /// Releases the pages of both buffers once they stayed empty for `RELEASE_AFTER`. Out-of-order data waits in
    /// the receive buffer beyond what `recv_queue` counts: while the client may fill a gap, the pages are kept.
    pub(super) fn release_pages(&mut self, now: Instant) {
        let socket = self.socket();
        let idle = socket.send_queue() == 0 && socket.recv_queue() == 0;
        if !(self.committed && idle && self.pending.is_empty() && !self.seq.awaits_retransmission()) {
            self.release_at = None;
            return;
        }
        match self.release_at {
            Some(at) if at <= now => {
                self.memory.release(0, RX_BUFFER + TX_BUFFER);
                self.committed = false;
                self.release_at = None;
                self.reset_window(now);
            }
            Some(_) => {}
            None => self.release_at = Some(now + RELEASE_AFTER.into()),
        }
    }
}
