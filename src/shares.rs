//! Each peer's share of a queue of datagrams, so that one peer sending (or being sent) datagrams faster than
//! the queue's reader takes them cannot take the queue from the others (their DNS among them). Used for the
//! datagrams that wait for Python (`events`) and for those that wait for the WireGuard task (`budget`).
//!
//! The queues are FIFOs emptied from the front, so nothing queued can be taken back out: unlike fragment
//! reassembly (`network::fragments`), which evicts from the peer holding the most, the share is kept on
//! arrival. A datagram is admitted only while its peer holds less than a fair share of the limits:
//!
//! `limit / (active + 1)`, where `active` is the number of peers holding datagrams now, the arriving one
//! counted. The `+ 1` keeps a share free for a peer that has nothing queued yet, so a lone flooder fills at
//! most half the queue and the next peer's datagram finds room; as more peers queue datagrams, each one's share
//! shrinks, and a peer over its share loses its own arriving datagrams until Python took enough of them. A peer
//! that holds nothing is always admitted while the queue has room: a share smaller than one datagram (many
//! active peers) still lets each peer through one at a time. An empty queue takes any datagram.
//!
//! Each datagram costs a hash map lookup and a few additions on arrival and on departure, whatever the number
//! of peers: the active count is kept as peers start and stop holding datagrams, never counted by a walk. The
//! map holds only peers with datagrams queued.

use std::collections::HashMap;

use crate::messages::PeerId;

/// Why a datagram was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is at its limit.
    Full,
    /// Its peer holds its fair share already.
    OverShare,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    count: usize,
    bytes: usize,
}

#[derive(Debug)]
pub struct Shares {
    max_count: usize,
    max_bytes: usize,
    peers: HashMap<PeerId, Held>,
    total: Held,
}

impl Shares {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Shares {
            max_count,
            max_bytes,
            peers: HashMap::new(),
            total: Held::default(),
        }
    }

    /// Datagrams queued, of all peers.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.total.count
    }

    /// Admits a datagram of `bytes` for `peer` (and counts it as queued), or says why not.
    pub fn admit(&mut self, peer: PeerId, bytes: usize) -> Result<(), Refusal> {
        self.admit_packets(peer, 1, bytes)
    }

    /// Admits a datagram made of `count` packets of `bytes` together (its fragments), all or none: a datagram
    /// that lost a fragment is lost whole. Each packet leaves the queue by itself (`release_packet`).
    pub fn admit_packets(&mut self, peer: PeerId, count: usize, bytes: usize) -> Result<(), Refusal> {
        if self.total.count + count > self.max_count || self.total.bytes + bytes > self.max_bytes {
            // An empty queue takes anything: no datagram is too large for it.
            if self.total.count > 0 {
                return Err(Refusal::Full);
            }
        }
        let held = self.peers.get(&peer).copied().unwrap_or_default();
        if held.count > 0 {
            // Active peers, this one among them, plus the share kept free.
            let shares = self.peers.len() + 1;
            if held.count + count > self.max_count / shares || held.bytes + bytes > self.max_bytes / shares {
                return Err(Refusal::OverShare);
            }
        }
        let held = self.peers.entry(peer).or_default();
        held.count += count;
        held.bytes += bytes;
        self.total.count += count;
        self.total.bytes += bytes;
        Ok(())
    }

    /// A datagram (or one packet of a datagram) of `bytes` for `peer`, admitted before, left the queue.
    pub fn release(&mut self, peer: PeerId, bytes: usize) {
        let Some(held) = self.peers.get_mut(&peer) else {
            debug_assert!(false, "released a datagram never admitted");
            return;
        };
        held.count -= 1;
        held.bytes -= bytes;
        if held.count == 0 {
            self.peers.remove(&peer);
        }
        self.total.count -= 1;
        self.total.bytes -= bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(shares: &mut Shares, peer: PeerId, bytes: usize) -> usize {
        let mut admitted = 0;
        while shares.admit(peer, bytes).is_ok() {
            admitted += 1;
            assert!(admitted <= 1_000_000);
        }
        admitted
    }

    #[test]
    fn a_lone_flooder_fills_half_and_leaves_room_for_the_next_peer() {
        let mut shares = Shares::new(100, 1 << 20);
        assert_eq!(fill(&mut shares, 1, 10), 50);
        assert_eq!(shares.admit(1, 10), Err(Refusal::OverShare));
        // The other peer finds room, up to its own share of three.
        assert_eq!(fill(&mut shares, 2, 10), 33);
        assert_eq!(shares.count(), 83);
    }

    #[test]
    fn a_flooder_over_its_share_loses_its_own_datagrams_until_python_took_enough() {
        let mut shares = Shares::new(100, 1 << 20);
        fill(&mut shares, 1, 10);
        shares.admit(2, 10).unwrap();
        // Two active peers: a share is a third; peer 1 holds 50.
        for _ in 0..16 {
            shares.release(1, 10);
            assert_eq!(shares.admit(1, 10), Err(Refusal::OverShare));
        }
        shares.release(1, 10); // 33 left
        assert_eq!(shares.admit(1, 10), Err(Refusal::OverShare));
        shares.release(1, 10); // 32 left
        assert_eq!(shares.admit(1, 10), Ok(()));
        assert_eq!(shares.admit(2, 10), Ok(()));
    }

    #[test]
    fn bytes_are_shared_like_counts() {
        let mut shares = Shares::new(1000, 1000);
        assert_eq!(fill(&mut shares, 1, 100), 5);
        assert_eq!(shares.admit(2, 100), Ok(()));
        // Two active peers: a share is a third, 333 bytes.
        assert_eq!(shares.admit(2, 300), Err(Refusal::OverShare));
        assert_eq!(shares.admit(2, 200), Ok(()));
        // 800 bytes queued: a datagram that does not fit is refused whoever sends it.
        assert_eq!(shares.admit(3, 250), Err(Refusal::Full));
    }

    #[test]
    fn a_peer_with_nothing_queued_is_admitted_even_when_shares_are_smaller_than_a_datagram() {
        let mut shares = Shares::new(4, 1 << 20);
        for peer in 0..4 {
            assert_eq!(shares.admit(peer, 1000), Ok(()));
        }
        assert_eq!(shares.admit(9, 1000), Err(Refusal::Full));
        shares.release(0, 1000);
        assert_eq!(shares.admit(9, 1000), Ok(()));
        assert_eq!(shares.admit(9, 1000), Err(Refusal::Full));
    }

    #[test]
    fn peers_that_emptied_their_share_leave_nothing_behind() {
        let mut shares = Shares::new(100, 1 << 20);
        for peer in 0..10 {
            shares.admit(peer, 7).unwrap();
            shares.admit(peer, 9).unwrap();
        }
        for peer in 0..10 {
            shares.release(peer, 9);
            shares.release(peer, 7);
        }
        assert!(shares.peers.is_empty());
        assert_eq!((shares.total.count, shares.total.bytes), (0, 0));
        // A fresh flooder gets half again.
        assert_eq!(fill(&mut shares, 3, 1), 50);
    }

    #[test]
    fn a_fragmented_datagram_is_admitted_whole_and_leaves_packet_by_packet() {
        let mut shares = Shares::new(100, 10_000);
        assert_eq!(shares.admit_packets(1, 3, 3000), Ok(()));
        // Peer 1 alone may hold half: 5000 bytes.
        assert_eq!(shares.admit_packets(1, 3, 3000), Err(Refusal::OverShare));
        assert_eq!(shares.admit_packets(2, 3, 3000), Ok(()));
        for _ in 0..3 {
            shares.release(1, 1000);
        }
        assert!(!shares.peers.contains_key(&1));
        assert_eq!(shares.count(), 3);
        assert_eq!(shares.admit_packets(3, 5, 8000), Err(Refusal::Full));
    }

    #[test]
    fn an_empty_queue_takes_a_datagram_larger_than_its_limit() {
        let mut shares = Shares::new(10, 1000);
        assert_eq!(shares.admit_packets(1, 46, 65_000), Ok(()));
        assert_eq!(shares.admit(2, 1), Err(Refusal::Full));
    }
}
