//! Bounds of the queues into the tunnel: from Python to the network task (`ByteBudget`), and from the network
//! task to the WireGuard task (`TunnelQueue`). Each queue is an unbounded channel whose sender counts what it
//! queues here and whose receiver counts it back out.
//!
//! Only datagrams (UDP, ICMP) are dropped at a bound: they may be lost anywhere on their way. TCP is never
//! dropped here: it is bounded by its own flow control before it reaches a queue (Python pauses writing at
//! `WRITE_HIGH_WATER`; the stack takes in no more than a connection's send buffer, and what leaves it is within
//! the congestion window and the client's window, which stop growing while the tunnel loses segments). So
//! Python's writes are counted in `ByteBudget`, and take the room of datagrams there, but always pass; TCP
//! segments for the WireGuard task are not counted at all, so that one peer's download does not take the room
//! of every peer's DNS answers. A segment that the full socket drops later stays in its connection's send
//! buffer until acknowledged, and is sent again.
//!
//! Drops are counted, and logged by the network task once a second, never one by one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::messages::PeerId;
use crate::shares::Shares;

#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    queued: AtomicUsize,
    dropped: AtomicU64,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Self {
        ByteBudget {
            limit,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Counts `bytes` as queued if they fit; if not, counts a drop and returns false: the caller drops them. An
    /// empty queue takes anything, so no datagram is too large for it.
    pub fn try_take(&self, bytes: usize) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + bytes <= self.limit).then_some(queued + bytes)
            })
            .is_ok();
        if !taken {
            self.count_drop();
        }
        taken
    }

    /// Counts `bytes` as queued whatever the limit: for TCP, bounded by its own flow control.
    pub fn take(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    /// `bytes` left the queue.
    pub fn give_back(&self, bytes: usize) {
        let before = self.queued.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "gave back more than was taken");
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The drops counted since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// The datagrams that wait for the WireGuard task, each peer within its share of a count of packets and of
/// bytes (`shares`): a peer that Python sends more than the tunnel carries loses its own datagrams, not the
/// other peers'. A fragmented datagram is admitted whole or not at all; its fragments leave one by one.
#[derive(Debug)]
pub struct TunnelQueue {
    /// Locked once per datagram by the network task and once per packet by the WireGuard task: both run on the
    /// engine thread, so it is never contended.
    shares: Mutex<Shares>,
    dropped: AtomicU64,
}

impl TunnelQueue {
    pub fn new(max_packets: usize, max_bytes: usize) -> Self {
        TunnelQueue {
            shares: Mutex::new(Shares::new(max_packets, max_bytes)),
            dropped: AtomicU64::new(0),
        }
    }

    fn shares(&self) -> MutexGuard<'_, Shares> {
        // A few additions that cannot panic half-way: a poisoned lock is still consistent.
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a datagram of `packets` packets and `bytes` for `peer` as queued if its peer's share has room; if
    /// not, counts a drop and returns false: the caller drops the datagram, all its packets.
    pub fn admit(&self, peer: PeerId, packets: usize, bytes: usize) -> bool {
        let admitted = self.shares().admit_packets(peer, packets, bytes).is_ok();
        if !admitted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// A packet of `bytes` for `peer`, admitted before, left the queue.
    pub fn release(&self, peer: PeerId, bytes: usize) {
        self.shares().release(peer, bytes);
    }

    /// The datagrams dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_beyond_the_limit_are_refused_and_counted() {
        let budget = ByteBudget::new(1000);
        assert!(budget.try_take(600));
        assert!(budget.try_take(400));
        assert!(!budget.try_take(1));
        budget.give_back(600);
        assert!(!budget.try_take(601));
        assert!(budget.try_take(600));
        assert_eq!(budget.take_dropped(), 2);
        assert_eq!(budget.take_dropped(), 0);
    }

    #[test]
    fn tcp_always_passes_and_takes_the_room_of_datagrams() {
        let budget = ByteBudget::new(1000);
        budget.take(900);
        budget.take(900);
        assert_eq!(budget.queued(), 1800);
        assert!(!budget.try_take(10));
        budget.give_back(900);
        assert!(budget.try_take(100));
        assert_eq!(budget.take_dropped(), 1);
    }

    #[test]
    fn an_empty_queue_takes_a_datagram_larger_than_the_limit() {
        let budget = ByteBudget::new(1000);
        assert!(budget.try_take(65_535));
        assert!(!budget.try_take(1));
        budget.give_back(65_535);
        assert_eq!(budget.queued(), 0);
    }

    #[test]
    fn a_peer_over_its_share_of_the_tunnel_loses_its_own_datagrams() {
        let queue = TunnelQueue::new(4096, 100_000);
        // Peer 1 alone may hold half, 50,000 bytes; a datagram of 40 fragments goes whole or not at all.
        assert!(queue.admit(1, 40, 40_000));
        assert!(!queue.admit(1, 40, 40_000));
        // The other peer finds room.
        assert!(queue.admit(2, 40, 40_000));
        assert_eq!(queue.take_dropped(), 1);
        // Once the WireGuard task took peer 1's fragments, its next datagram passes.
        for _ in 0..40 {
            queue.release(1, 1000);
        }
        assert!(queue.admit(1, 40, 20_000));
        assert_eq!(queue.take_dropped(), 0);
    }
}
