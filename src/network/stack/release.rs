//! Memory release: an idle connection gives its buffers' pages back to the kernel, a while after both emptied;
//! a busy one gives back the pages of its receive buffer that Python has read past, and those of its send
//! buffer that the client acknowledged.

use smoltcp::time::Instant;

use super::{RELEASE_AFTER, RX_BUFFER, TX_BUFFER};
use crate::network::memory::LazyMemory;

/// The receive buffer's pages go back in chunks of this size once Python has read past them.
const READ_CHUNK: usize = 256 * 1024;
/// The send buffer's pages go back in chunks of this size once the client acknowledged their data.
const SENT_CHUNK: usize = 256 * 1024;

/// Where the send buffer's live data is, in the server's byte stream (offsets from the connection's first byte).
/// smoltcp's send buffer is a ring that starts again at its beginning whenever it is empty when data is written:
/// from then on, the stream's byte `x` is at `(x - start) % TX_BUFFER`. A busy connection moves through every
/// page of the ring, a send limit's worth at a time.
#[derive(Debug, Default)]
pub(super) struct WritePosition {
    /// The stream offset at the ring's beginning.
    start: u64,
    /// The stream's bytes before this were given back (or are before `start`).
    released: u64,
    /// The furthest stream offset written since `start`.
    written: u64,
}

impl WritePosition {
    /// The ring is empty and starts again at its beginning with the stream's byte `at`. What the last round
    /// through it committed beyond its first chunk goes back: it is dead, and a connection whose writes come in
    /// small pieces would not reach it again.
    pub(super) fn restart(&mut self, at: u64, memory: &LazyMemory) {
        let reached = (self.written - self.start).min(TX_BUFFER as u64) as usize;
        if reached > SENT_CHUNK {
            memory.release(RX_BUFFER + SENT_CHUNK, reached - SENT_CHUNK);
        }
        *self = WritePosition {
            start: at,
            released: at,
            written: at,
        };
    }

    pub(super) fn wrote(&mut self, end: u64) {
        self.written = self.written.max(end);
    }
}

/// Where the receive buffer's live data can be, in the client's byte stream (offsets from the connection's
/// first byte). smoltcp's receive buffer is a ring that starts at its beginning and never goes back while the
/// connection lives: the stream's byte `x` is at `x % RX_BUFFER`, and data moves through every page of the
/// ring, a window's worth at a time. Without giving back the pages behind the reader, a connection that stays
/// busy would commit the whole ring, however small its window.
#[derive(Debug, Default)]
pub(super) struct ReadPosition {
    /// Bytes taken out of the receive buffer (for Python, or dropped after it closed).
    pub(super) dequeued: u64,
    /// The stream's bytes before this were given back, or were live when Python read past them.
    released: u64,
    /// The right edge the window may have been advertised up to before it fell back to the first window:
    /// smoltcp keeps it (crates/smoltcp/fork/README.md), and data may arrive up to it.
    pub(super) floor: u64,
}

/// A connection's buffer memory and what of it may go back to the kernel.
pub(super) struct Pages {
    /// The pages of both buffers: receive buffer first, then the send buffer; none before the handshake
    /// completed (`Stack::give_buffers`). The socket's buffers borrow them: the connection drops its socket first.
    pub(super) memory: Option<LazyMemory>,
    /// The buffers hold pages that can be released once both are empty (at `release_at`).
    pub(super) committed: bool,
    pub(super) release_at: Option<Instant>,
    /// Bytes through both buffers when `release_at` was set.
    release_mark: u64,
    /// How far Python read, for the pages it read past.
    pub(super) read: ReadPosition,
    /// How far the client acknowledged, for the pages of the send buffer behind it.
    pub(super) write: WritePosition,
}

impl Pages {
    pub(super) fn new(memory: Option<LazyMemory>) -> Self {
        Pages {
            memory,
            committed: false,
            release_at: None,
            release_mark: 0,
            read: ReadPosition::default(),
            write: WritePosition::default(),
        }
    }

    /// `n` bytes went into the send buffer, the stream's bytes up to `end`; `restart`: the buffer was empty, so
    /// its ring starts again at its beginning with them.
    pub(super) fn wrote(&mut self, end: u64, n: usize, restart: bool) {
        if let (true, Some(memory)) = (restart, &self.memory) {
            self.write.restart(end - n as u64, memory);
        }
        self.committed = true;
        self.write.wrote(end);
    }

    /// Gives back the pages of the receive buffer's chunks that Python read past, unless the window (`window`
    /// bytes beyond the reader) reaches around the ring into them: data may arrive anywhere from the reader to
    /// the window's right edge.
    pub(super) fn release_read_chunks(&mut self, window: usize) {
        let position = &mut self.read;
        let chunk_end = position.dequeued / READ_CHUNK as u64 * READ_CHUNK as u64;
        if chunk_end <= position.released {
            return;
        }
        let live_end = (position.dequeued + window as u64).max(position.floor);
        let start = position.released.max(
            live_end
                .saturating_sub(RX_BUFFER as u64)
                .next_multiple_of(READ_CHUNK as u64),
        );
        position.released = chunk_end;
        if let Some(memory) = &self.memory {
            memory.release_ring(0, RX_BUFFER, start, chunk_end);
        }
    }

    /// Gives back the pages of the send buffer's chunks whose data the client acknowledged (the stream up to
    /// `acked`), unless the data written since (up to `enqueued`) reaches around the ring into them.
    pub(super) fn release_sent_chunks(&mut self, acked: u64, enqueued: u64) {
        let position = &mut self.write;
        let chunk = SENT_CHUNK as u64;
        let chunk_end = position.start + (acked - position.start) / chunk * chunk;
        if chunk_end <= position.released {
            return;
        }
        // Stream offsets from here on may share their pages with data written up to `enqueued`.
        let reused = enqueued.saturating_sub(TX_BUFFER as u64);
        let start = position
            .released
            .max(position.start + reused.saturating_sub(position.start).next_multiple_of(chunk));
        position.released = chunk_end;
        let (from, to) = (start - position.start, chunk_end - position.start);
        if let Some(memory) = &self.memory {
            memory.release_ring(RX_BUFFER, TX_BUFFER, from, to);
        }
    }

    /// Releases the pages of both buffers once they stayed empty (`idle`), with no data through them (`moved`
    /// bytes so far, both ways), for `RELEASE_AFTER`. Returns whether it did now: then the connection falls back
    /// to its first window, and the right edge the window of `window` bytes reached stays where data may arrive.
    pub(super) fn release_if_idle(&mut self, now: Instant, idle: bool, moved: u64, window: usize) -> bool {
        if !(self.committed && idle) {
            self.release_at = None;
            return false;
        }
        // Data that went through since: the connection is busy, with buffers that Python keeps empty.
        if self.release_at.is_some() && moved != self.release_mark {
            self.release_at = None;
        }
        match self.release_at {
            Some(at) if at <= now => {
                if let Some(memory) = &self.memory {
                    memory.release(0, RX_BUFFER + TX_BUFFER);
                }
                self.committed = false;
                self.release_at = None;
                let read = &mut self.read;
                read.floor = read.floor.max(read.dequeued + window as u64);
                true
            }
            Some(_) => false,
            None => {
                self.release_at = Some(now + RELEASE_AFTER.into());
                self.release_mark = moved;
                false
            }
        }
    }
}
