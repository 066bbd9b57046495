//! The way from the network task to Python: an unbounded queue of events plus a wakeup socket that Python's
//! event loop watches. The network task never waits for Python (nor for its GIL): it queues, and writes one
//! byte to the wakeup socket when Python has not been woken since it last emptied the queue.
//!
//! The queue is bounded where it must be: TCP data by each connection's flow control, datagrams by a count and
//! bytes, of which each peer has a share (`shares`).

use log::Level;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::messages::{NetworkToPython, PeerId};
use crate::shares::{Refusal, Shares};

/// How often dropped datagrams are logged at most.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Datagrams waiting for Python before more are dropped.
pub const MAX_QUEUED_DATAGRAMS: usize = 4096;
/// Bytes of TCP data and datagrams waiting for Python. Beyond it, datagrams are dropped and connections are
/// no longer read (their TCP windows close) until Python catches up: a blocked event loop costs bounded memory.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;

struct Shared {
    /// Python was woken and has not yet started emptying the queue.
    notified: AtomicBool,
    /// Each peer's datagrams in the queue. Locked once per datagram on each side, never across anything else.
    shares: Mutex<Shares>,
    queued_bytes: AtomicUsize,
    /// Some connection was left unread for lack of room; Python asks the network task to resume it.
    starved: AtomicBool,
}

pub struct EventSender {
    tx: mpsc::UnboundedSender<NetworkToPython>,
    shared: Arc<Shared>,
    wake: UnixStream,
    pending_wake: bool,
    drops: Drops,
}

/// Datagrams dropped since they were last logged.
struct Drops {
    full: u64,
    over_share: u64,
    /// The last peer that was over its share.
    last_over_share: Option<Arc<str>>,
    last_report: Instant,
}

impl Drops {
    fn new() -> Self {
        Drops {
            full: 0,
            over_share: 0,
            last_over_share: None,
            last_report: Instant::now(),
        }
    }

    /// Logs the drops once `REPORT_EVERY` passed since the last report.
    fn report(&mut self, now: Instant) {
        if self.full + self.over_share == 0 || now < self.last_report + REPORT_EVERY {
            return;
        }
        if self.full > 0 {
            log::info!(
                "Python is not keeping up: dropped {} datagrams for it in the last {:.1} s (its queue was full)",
                self.full,
                now.duration_since(self.last_report).as_secs_f64()
            );
        }
        if let Some(peer) = &self.last_over_share {
            log::info!(
                "Python is not keeping up: dropped {} datagrams in the last {:.1} s from peers over their \
                 share of its queue, the last from peer {peer}",
                self.over_share,
                now.duration_since(self.last_report).as_secs_f64()
            );
        }
        *self = Drops {
            last_report: now,
            ..Drops::new()
        };
    }
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
        shares: Mutex::new(Shares::new(MAX_QUEUED_DATAGRAMS, MAX_QUEUED_BYTES)),
        queued_bytes: AtomicUsize::new(0),
        starved: AtomicBool::new(false),
    });
    Ok((
        EventSender {
            tx,
            shared: shared.clone(),
            wake: wake_tx,
            pending_wake: false,
            drops: Drops::new(),
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
            drops: Drops::new(),
        })
    }

    /// Bytes of data that may still be queued for Python.
    pub fn room(&self) -> usize {
        MAX_QUEUED_BYTES.saturating_sub(self.shared.queued_bytes.load(Ordering::Acquire))
    }

    /// Tells Python to send `ResumeStarved` once it emptied the queue.
    pub fn set_starved(&self) {
        self.shared.starved.store(true, Ordering::Release);
    }

    /// Queues an event for Python. Returns the peer of a datagram that was dropped instead (its peer over its
    /// share, or the queue full).
    pub fn send(&mut self, event: NetworkToPython) -> Option<PeerId> {
        let bytes = event_bytes(&event);
        if let NetworkToPython::Datagram { data, peer, .. } = &event {
            // TCP data shares the bytes: a datagram also needs room among them.
            let admitted = if data.len() > self.room() {
                Err(Refusal::Full)
            } else {
                self.shared.shares().admit(peer.id, data.len())
            };
            match admitted {
                Ok(()) => {}
                Err(Refusal::Full) => {
                    self.drops.full += 1;
                    return Some(peer.id);
                }
                Err(Refusal::OverShare) => {
                    self.drops.over_share += 1;
                    self.drops.last_over_share = Some(peer.public_key.clone());
                    return Some(peer.id);
                }
            }
        }
        if bytes > 0 {
            self.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        }
        // Python may be gone (the server is closing): then nobody needs the event.
        if self.tx.send(event).is_ok() {
            self.pending_wake = true;
        }
        None
    }

    /// Wakes Python if events arrived since it last looked. Call once after a batch of `send`s.
    pub fn wake(&mut self) {
        if self.drops.full + self.drops.over_share > 0 {
            self.drops.report(Instant::now());
        }
        if std::mem::take(&mut self.pending_wake) && !self.shared.notified.swap(true, Ordering::AcqRel) {
            match self.wake.write(&[1]) {
                Ok(_) => {}
                // A full socket already holds a wakeup.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => crate::ratelog::note(Level::Debug, "failed wakeups of Python", || {
                    format!("could not wake Python: {e}")
                }),
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
        // The sender writes one byte per wakeup and none until this one is acknowledged: one read empties it.
        let mut buf = [0u8; 64];
        let _ = self.wake.read(&mut buf);
        self.shared.notified.store(false, Ordering::Release);
    }

    pub fn try_recv(&mut self) -> Option<NetworkToPython> {
        let event = self.rx.try_recv().ok()?;
        if let NetworkToPython::Datagram { data, peer, .. } = &event {
            self.shared.shares().release(peer.id, data.len());
        }
        let bytes = event_bytes(&event);
        if bytes > 0 {
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        Some(event)
    }

    /// Whether the network task left connections unread for lack of room; clears the flag.
    pub fn take_starved(&self) -> bool {
        self.shared.starved.swap(false, Ordering::AcqRel)
    }
}

impl Shared {
    fn shares(&self) -> MutexGuard<'_, Shares> {
        // The lock is held for a few additions that cannot panic half-way: a poisoned one is still consistent.
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn event_bytes(event: &NetworkToPython) -> usize {
    match event {
        NetworkToPython::Data { data, .. } | NetworkToPython::Datagram { data, .. } => data.len(),
        _ => 0,
    }
}
