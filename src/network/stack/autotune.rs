//! Receive-window and send-buffer auto-tuning, as kernels do it. The receive window as Linux's
//! `tcp_rcv_space_adjust`: a connection starts with a window of `INITIAL_WINDOW` and grows it whenever Python
//! read more within a round trip than it did when the window last grew, to twice that, up to `RX_BUFFER`. The
//! send buffer as Linux's `tcp_sndbuf_expand`: a connection takes in a few congestion windows of Python's
//! writes, from `INITIAL_SEND_BUFFER` up to `TX_BUFFER`, so that the congestion window never waits for Python.
//! An idle connection falls back to the first sizes when its pages are released. A global budget
//! (`WindowBudget`) bounds what the buffers of all connections may commit: once it is spent, windows and send
//! buffers stop growing. Data already received is never dropped for it.
//!
//! The round trip is the socket's shortest (`tcp::Socket::min_rtt`): from the handshake and the ACKs of what the
//! stack sends and, where the client only sends, as Linux measures a receiver's round trip without timestamps.

use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::{INITIAL_SEND_BUFFER, INITIAL_WINDOW, RX_BUFFER, TX_BUFFER};
use crate::ids::ConnectionId;

/// Above twice what Python read in a round trip, room for a burst of 16 segments, as Linux leaves.
const HEADROOM: usize = 16 * 1460;

/// The send buffer takes in this many congestion windows of Python's writes: one in flight, one to follow, and
/// room for the data after a loss, which waits acknowledged only selectively (SACK) until the loss is resent.
const SEND_BUFFER_WINDOWS: usize = 4;

/// Pacing from this round trip up: a window then leaves spread over the round trip, not as one burst that
/// overflows the queues on the way. On a shorter (local) path the network task's timer, of about a millisecond,
/// cannot pace: on a busy machine its late wake-ups cost a bulk transfer two thirds of its rate.
const PACING_MIN_RTT: Duration = Duration::from_millis(10);

/// The shortest round trip the tuning goes by: a finer clock would only count the stack's own work.
const MIN_RTT: Duration = Duration::from_millis(1);

/// The memory that the buffers of all connections may commit, summed as each connection's window limit plus its
/// send limit while its buffers hold pages (`Pages::committed`). A connection whose pages were released
/// counts nothing. Connections always get their first window: the budget refuses growth only.
#[derive(Debug)]
pub(super) struct WindowBudget {
    pub(super) limit: usize,
    pub(super) used: usize,
}

impl WindowBudget {
    /// How far one of a connection's buffers may grow from `from` towards `wanted`: what is left once the others
    /// are counted, and this connection at its present window and send limit (`present`) as if it held pages.
    /// `charged` is what the connection counts in `used` now.
    fn grow(&self, charged: usize, present: usize, from: usize, wanted: usize) -> usize {
        let used = self.used - charged + present;
        from + (wanted - from).min(self.limit.saturating_sub(used))
    }
}

#[derive(Debug)]
pub(super) struct Autotune {
    /// The receive window limit set on the socket.
    pub(super) window: usize,
    /// How much of Python's writes the send buffer takes in.
    pub(super) send_limit: usize,
    /// What Python read in the round trip that made the window grow last: reading more makes it grow again.
    space: usize,
    /// Bytes read for Python so far, and where the current measurement started: when, and that count then.
    read: u64,
    measure: (Instant, u64),
    /// What the connection counts in `WindowBudget::used`.
    pub(super) charged: usize,
}

impl Autotune {
    pub(super) fn new(now: Instant) -> Self {
        Autotune {
            window: INITIAL_WINDOW,
            send_limit: INITIAL_SEND_BUFFER,
            space: INITIAL_WINDOW / 2,
            read: 0,
            measure: (now, 0),
            charged: 0,
        }
    }

    /// Bytes read for Python.
    pub(super) fn read(&mut self, bytes: usize) {
        self.read += bytes as u64;
    }

    /// The window the connection asks for, once a round trip has passed since the last measurement.
    fn wanted(&mut self, now: Instant, rtt: Option<Duration>) -> Option<usize> {
        let rtt = rtt?;
        let (since, read_then) = self.measure;
        if now < since + rtt {
            return None;
        }
        self.measure = (now, self.read);
        let copied = (self.read - read_then) as usize;
        if copied <= self.space {
            return None;
        }
        // As Linux does: twice what was read, and on top twice the share by which the reads grew, so that the
        // window keeps ahead of a sender in slow start, and of one that resends a loss while the data after it
        // waits in the buffer.
        // The share is at most one (the reads doubled): a backlog read at once after a pause is no sender.
        let base = 2 * copied + HEADROOM;
        let growth = (copied - self.space).min(self.space);
        let grow = base as u64 * growth as u64 / self.space.max(1) as u64;
        self.space = copied;
        Some((base as u64 + 2 * grow).min(RX_BUFFER as u64) as usize)
    }
}

impl Autotune {
    /// Grows the window of connection `id` if Python read more in the last round trip than before, as far as
    /// the budget allows.
    pub(super) fn tune_window(
        &mut self,
        id: ConnectionId,
        now: Instant,
        budget: &WindowBudget,
        socket: &mut tcp::Socket,
    ) {
        let Some(wanted) = self.wanted(now, round_trip(socket)) else {
            return;
        };
        let window = self.window;
        if wanted <= window {
            return;
        }
        let present = window + self.send_limit;
        let grown = budget.grow(self.charged, present, window, wanted);
        if grown > window {
            log::trace!("connection {id}: receive window {window} -> {grown}");
            self.window = grown;
            socket.set_receive_window_limit(grown);
        }
    }

    /// Lets the send buffer take in `SEND_BUFFER_WINDOWS` congestion windows while Python's writes wait for room
    /// (`writes_wait`), as far as the budget allows; it does not shrink while the connection is busy.
    pub(super) fn tune_send_buffer(
        &mut self,
        id: ConnectionId,
        budget: &WindowBudget,
        socket: &tcp::Socket,
        writes_wait: bool,
    ) {
        if !writes_wait {
            return;
        }
        let limit = self.send_limit;
        let wanted = socket
            .congestion_window()
            .saturating_mul(SEND_BUFFER_WINDOWS)
            .clamp(INITIAL_SEND_BUFFER, TX_BUFFER);
        if wanted <= limit {
            return;
        }
        let present = self.window + limit;
        let grown = budget.grow(self.charged, present, limit, wanted);
        if grown > limit {
            log::trace!("connection {id}: send buffer {limit} -> {grown}");
            self.send_limit = grown;
        }
    }

    /// Paces the connection's segments once its round trip is long enough for the timer to pace them.
    pub(super) fn choose_pacing(&self, socket: &mut tcp::Socket) {
        let far = round_trip(socket).is_some_and(|rtt| rtt >= PACING_MIN_RTT);
        if socket.pacing() != far {
            socket.set_pacing(far);
        }
    }

    /// An idle connection, whose pages were released, starts again from the first window. The socket keeps the
    /// right edge it advertised (the window only closes as data arrives).
    pub(super) fn reset(&mut self, now: Instant, socket: &mut tcp::Socket) {
        self.window = INITIAL_WINDOW;
        self.send_limit = INITIAL_SEND_BUFFER;
        self.space = INITIAL_WINDOW / 2;
        self.measure = (now, self.read);
        socket.set_receive_window_limit(INITIAL_WINDOW);
    }

    /// Brings what the connection counts in the budget up to date: its window and send limit while its buffers
    /// hold pages (`committed`), nothing once they are released.
    pub(super) fn account(&mut self, budget: &mut WindowBudget, committed: bool) {
        let charge = if committed {
            self.window + self.send_limit
        } else {
            0
        };
        budget.used = budget.used - self.charged + charge;
        self.charged = charge;
    }
}

/// The connection's round trip, as the tuning goes by it.
fn round_trip(socket: &tcp::Socket) -> Option<Duration> {
    socket.min_rtt().map(|rtt| rtt.max(MIN_RTT))
}

/// The receive window limit a new socket starts with.
pub(super) fn start(socket: &mut tcp::Socket) {
    socket.set_receive_window_limit(INITIAL_WINDOW);
}
