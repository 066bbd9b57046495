//! The way from the network task to Python: an unbounded queue of events plus a wakeup socket that Python's
//! event loop watches. The network task never waits for Python (nor for its GIL): it queues, and writes one
//! byte to the wakeup socket when Python has not been woken since it last emptied the queue.
//!
//! The queue is bounded where it must be: TCP data by each connection's flow control, datagrams by a count.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::messages::NetworkToPython;

/// Datagrams waiting for Python before more are dropped.
pub const MAX_QUEUED_DATAGRAMS: usize = 4096;

struct Shared {
    /// Python was woken and has not yet started emptying the queue.
    notified: AtomicBool,
    queued_datagrams: AtomicUsize,
}

pub struct EventSender {
    tx: mpsc::UnboundedSender<NetworkToPython>,
    shared: Arc<Shared>,
    wake: UnixStream,
    pending_wake: bool,
    dropped_datagrams: u64,
}

pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<NetworkToPython>,
    shared: Arc<Shared>,
    wake: UnixStream,
}

pub fn channel() -> std::io::Result<(EventSender, EventReceiver)> {
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        notified: AtomicBool::new(false),
        queued_datagrams: AtomicUsize::new(0),
    });
    Ok((
        EventSender {
            tx,
            shared: shared.clone(),
            wake: wake_tx,
            pending_wake: false,
            dropped_datagrams: 0,
        },
        EventReceiver {
            rx,
            shared,
            wake: wake_rx,
        },
    ))
}

impl EventSender {
    /// A second sender, for the thread that reports the end of the server after the tasks are gone.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(EventSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            wake: self.wake.try_clone()?,
            pending_wake: false,
            dropped_datagrams: 0,
        })
    }

    pub fn send(&mut self, event: NetworkToPython) {
        if matches!(event, NetworkToPython::Datagram { .. }) {
            if self.shared.queued_datagrams.load(Ordering::Relaxed) >= MAX_QUEUED_DATAGRAMS {
                self.dropped_datagrams += 1;
                if self.dropped_datagrams.is_power_of_two() {
                    log::debug!(
                        "Python is not keeping up: dropped {} datagrams so far",
                        self.dropped_datagrams
                    );
                }
                return;
            }
            self.shared.queued_datagrams.fetch_add(1, Ordering::Relaxed);
        }
        // Python may be gone (the server is closing): then nobody needs the event.
        if self.tx.send(event).is_ok() {
            self.pending_wake = true;
        }
    }

    /// Wakes Python if events arrived since it last looked. Call once after a batch of `send`s.
    pub fn wake(&mut self) {
        if std::mem::take(&mut self.pending_wake) && !self.shared.notified.swap(true, Ordering::AcqRel) {
            match self.wake.write(&[1]) {
                Ok(_) => {}
                // A full socket already holds a wakeup.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => log::debug!("could not wake Python: {e}"),
            }
        }
    }
}

impl EventReceiver {
    /// The socket that becomes readable when events wait.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Takes the wakeup; call before emptying the queue with `try_recv`, so no event is left unannounced.
    pub fn acknowledge(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.shared.notified.store(false, Ordering::Release);
    }

    pub fn try_recv(&mut self) -> Option<NetworkToPython> {
        let event = self.rx.try_recv().ok()?;
        if matches!(event, NetworkToPython::Datagram { .. }) {
            self.shared.queued_datagrams.fetch_sub(1, Ordering::Relaxed);
        }
        Some(event)
    }
}
