//! Reassembly of IPv4 and IPv6 fragments from peers, so that a datagram larger than the tunnel MTU reaches
//! Python whole.
//!
//! Fragments are keyed by peer as well as by addresses and identification: two peers that use the same tunnel
//! address never mix their fragments. A datagram whose fragments overlap is dropped whole (as RFC 5722 asks for
//! IPv6).
//!
//! A peer must not be able to make reassembly costly, nor to take reassembly away from others:
//! - Each peer has a share of its own (`PEER_BUDGET` bytes, `PEER_PARTIALS` datagrams); a peer over its share
//!   loses its own oldest partial datagrams. The total budget is a backstop for many peers over their share at
//!   once: it evicts from the peer holding the most, so a flood costs the flooding peers, not the others.
//! - Fragments other than the last must be large (`MIN_FRAGMENT_V4`, `MIN_FRAGMENT_V6`), so a datagram has few
//!   fragments; received ranges are kept sorted and merged, so each fragment costs a binary search.
//! - The bookkeeping holds exactly the datagrams under reassembly: a datagram that completes, overlaps, expires
//!   or is evicted leaves no entry behind.

use log::Level;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{Ipv4Packet, Ipv6Packet};

use crate::ids::PeerId;

/// How long the fragments of one datagram may take to arrive (Linux waits 30 s).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The bytes held for datagrams under reassembly, over all peers (Linux's `ipfrag_high_thresh` is 4 MiB too).
const BUDGET: usize = 4 << 20;
/// The bytes held for one peer's datagrams: sixteen of the largest at once.
const PEER_BUDGET: usize = 1 << 20;
/// The datagrams under reassembly for one peer.
const PEER_PARTIALS: usize = 64;
/// The least data a fragment other than the last carries over IPv4. IPv4 allows fragments of 8 bytes (links of
/// 68 bytes, RFC 791), but no peer's tunnel has an MTU near that: a client fragments its own datagrams to its
/// tunnel MTU (1420 by default, rarely under 1280). 512 bytes keep a datagram to at most 129 fragments.
const MIN_FRAGMENT_V4: usize = 512;
/// The least data a fragment other than the last carries over IPv6: every IPv6 link carries 1280-byte packets
/// (RFC 8200), so Linux drops a non-final fragment in a packet under 1280 bytes, and so does this (1280 less the
/// IPv6 header and the fragment header). A datagram has at most 54 fragments.
const MIN_FRAGMENT_V6: usize = 1280 - 40 - 8;
/// The largest datagram: an IP total length field holds no more.
const MAX_DATAGRAM: usize = 65535;
/// IPv6 next header value of a fragment header.
pub const IPV6_FRAGMENT: u8 = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    peer: PeerId,
    src: IpAddr,
    dst: IpAddr,
    ident: u32,
    protocol: u8,
}

struct Partial {
    /// The IP header of the reassembled packet (from the fragment at offset 0), without the fragment header.
    header: Vec<u8>,
    payload: Vec<u8>,
    /// Byte ranges received so far: sorted, disjoint, and adjacent ones merged (in-order arrival keeps one).
    ranges: Vec<(usize, usize)>,
    /// Known once the last fragment (no "more fragments" flag) arrived.
    total: Option<usize>,
    created: Instant,
}

impl Partial {
    fn new(created: Instant) -> Self {
        Partial {
            header: Vec::new(),
            payload: Vec::new(),
            ranges: Vec::new(),
            total: None,
            created,
        }
    }

    fn complete(&self) -> bool {
        self.total.is_some_and(|total| self.ranges == [(0, total)])
    }

    /// The memory it holds.
    fn held(&self) -> usize {
        self.header.capacity()
            + self.payload.capacity()
            + self.ranges.capacity() * std::mem::size_of::<(usize, usize)>()
    }

    /// Records `start..end` as received; false if it overlaps anything received before.
    fn add_range(&mut self, start: usize, end: usize) -> bool {
        // The first range that ends after `start`: the only one that can overlap.
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        if self.ranges.get(i).is_some_and(|&(s, _)| s < end) {
            return false;
        }
        let joins_previous = i > 0 && self.ranges[i - 1].1 == start;
        let joins_next = self.ranges.get(i).is_some_and(|&(s, _)| s == end);
        match (joins_previous, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = end,
            (false, true) => self.ranges[i].0 = start,
            (false, false) => self.ranges.insert(i, (start, end)),
        }
        true
    }

    /// Copies a fragment's data in; the payload grows by doubling, up to the largest datagram.
    fn write(&mut self, start: usize, data: &[u8]) {
        let end = start + data.len();
        if self.payload.capacity() < end {
            let capacity = end.max(2 * self.payload.capacity()).min(MAX_DATAGRAM);
            self.payload.reserve_exact(capacity - self.payload.len());
        }
        if self.payload.len() < end {
            self.payload.resize(end, 0);
        }
        self.payload[start..end].copy_from_slice(data);
    }
}

/// A fragment, read from its packet.
struct Fragment<'a> {
    key_src: IpAddr,
    key_dst: IpAddr,
    ident: u32,
    protocol: u8,
    offset: usize,
    more: bool,
    /// The IP header to rebuild the whole packet with (only used from the fragment at offset 0).
    header: &'a [u8],
    data: &'a [u8],
    v6: bool,
}

impl Fragment<'_> {
    /// Why the fragment cannot be part of a valid datagram, if it cannot.
    fn invalid(&self) -> Option<&'static str> {
        let min = if self.v6 { MIN_FRAGMENT_V6 } else { MIN_FRAGMENT_V4 };
        if self.data.is_empty() {
            Some("empty fragment")
        } else if self.offset + self.data.len() > MAX_DATAGRAM {
            Some("fragment beyond the largest datagram")
        } else if self.more && !self.data.len().is_multiple_of(8) {
            // Every fragment but the last carries a multiple of 8 bytes.
            Some("fragment length not a multiple of 8")
        } else if self.more && self.data.len() < min {
            Some("fragment too small")
        } else {
            None
        }
    }
}

/// What one peer holds.
#[derive(Default)]
struct PeerShare {
    held: usize,
    /// The peer's partial datagrams, oldest first: the oldest goes when the peer is over its share.
    partials: BTreeSet<(Instant, Key)>,
}

#[derive(Default)]
pub struct Reassembler {
    partials: HashMap<Key, Partial>,
    /// Every partial datagram, oldest first, for expiry.
    order: BTreeSet<(Instant, Key)>,
    shares: HashMap<PeerId, PeerShare>,
    /// Peers by bytes held, to find the one holding the most.
    by_held: BTreeSet<(usize, PeerId)>,
    held: usize,
}

/// Whether a packet is a fragment that must be reassembled before it can be routed.
pub fn is_fragment(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => Ipv4Packet::new_checked(packet).is_ok_and(|ip| ip.more_frags() || ip.frag_offset() != 0),
        Some(6) => {
            Ipv6Packet::new_checked(packet).is_ok_and(|ip| u8::from(ip.next_header()) == IPV6_FRAGMENT)
        }
        _ => false,
    }
}

fn parse(packet: &[u8]) -> Option<Fragment<'_>> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            let header_len = ip.header_len() as usize;
            let total_len = ip.total_len() as usize;
            Some(Fragment {
                key_src: ip.src_addr().into(),
                key_dst: ip.dst_addr().into(),
                ident: ip.ident().into(),
                protocol: ip.next_header().into(),
                offset: ip.frag_offset() as usize,
                more: ip.more_frags(),
                header: &packet[..header_len],
                data: &packet[header_len..total_len],
                v6: false,
            })
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            let end = 40 + ip.payload_len() as usize;
            let ext = packet.get(40..48)?;
            let field = u16::from_be_bytes([ext[2], ext[3]]);
            Some(Fragment {
                key_src: ip.src_addr().into(),
                key_dst: ip.dst_addr().into(),
                ident: u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]),
                protocol: ext[0],
                offset: (field & !0b111) as usize,
                more: field & 1 == 1,
                header: &packet[..40],
                data: packet.get(48..end)?,
                v6: true,
            })
        }
        _ => None,
    }
}

impl Reassembler {
    /// Takes a fragment; returns the whole packet once its last missing piece arrived.
    pub fn insert(&mut self, peer: PeerId, packet: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.expire(now);
        let Some(f) = parse(packet) else {
            crate::ratelog::note(Level::Debug, "fragments dropped", || {
                format!("dropped a malformed fragment from peer {peer}")
            });
            return None;
        };
        if let Some(why) = f.invalid() {
            crate::ratelog::note(Level::Debug, "fragments dropped", || {
                format!("dropped a fragment from peer {peer}: {why}")
            });
            return None;
        }
        let (start, end) = (f.offset, f.offset + f.data.len());
        let key = Key {
            peer,
            src: f.key_src,
            dst: f.key_dst,
            ident: f.ident,
            protocol: f.protocol,
        };
        if !self.partials.contains_key(&key) {
            self.start(key, now);
        }
        let partial = self.partials.get_mut(&key)?;
        let before = partial.held();
        let inconsistent = match partial.total {
            Some(total) => !f.more || end > total,
            None => !f.more && partial.payload.len() > end,
        };
        if inconsistent || !partial.add_range(start, end) {
            crate::ratelog::note(Level::Debug, "datagrams dropped in reassembly", || {
                format!("dropped a datagram from peer {peer}: overlapping or inconsistent fragments")
            });
            self.remove(&key);
            return None;
        }
        partial.write(start, f.data);
        if !f.more {
            partial.total = Some(end);
        }
        if start == 0 {
            partial.header = f.header.to_vec();
        }
        let (after, complete) = (partial.held(), partial.complete());
        self.account(peer, before, after);
        if complete {
            let partial = self.remove(&key)?;
            return rebuild(partial, f.protocol, f.v6).or_else(|| {
                crate::ratelog::note(Level::Debug, "datagrams dropped in reassembly", || {
                    format!("dropped a datagram from peer {peer}: larger than an IP packet can be")
                });
                None
            });
        }
        self.evict_over_budget(peer);
        None
    }

    /// Forgets a peer's partial datagrams (it was removed).
    pub fn forget(&mut self, peer: PeerId) {
        let keys: Vec<Key> = self
            .shares
            .get(&peer)
            .map(|share| share.partials.iter().map(|&(_, key)| key).collect())
            .unwrap_or_default();
        for key in keys {
            self.remove(&key);
        }
    }

    /// Begins a datagram, making room among the peer's own partial datagrams if needed.
    fn start(&mut self, key: Key, now: Instant) {
        let share = self.shares.entry(key.peer).or_default();
        if share.partials.len() >= PEER_PARTIALS {
            self.evict_oldest(key.peer, "too many incomplete datagrams");
        }
        self.partials.insert(key, Partial::new(now));
        self.order.insert((now, key));
        let share = self.shares.entry(key.peer).or_default();
        share.partials.insert((now, key));
        // A new share holds nothing yet; it is ranked once it does.
    }

    /// Updates the bytes held by a peer whose datagram went from holding `before` to `after`.
    fn account(&mut self, peer: PeerId, before: usize, after: usize) {
        let Some(share) = self.shares.get_mut(&peer) else {
            return;
        };
        self.by_held.remove(&(share.held, peer));
        share.held = share.held + after - before;
        self.held = self.held + after - before;
        if share.partials.is_empty() {
            self.shares.remove(&peer);
        } else {
            self.by_held.insert((share.held, peer));
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let partial = self.partials.remove(key)?;
        self.order.remove(&(partial.created, *key));
        if let Some(share) = self.shares.get_mut(&key.peer) {
            share.partials.remove(&(partial.created, *key));
        }
        self.account(key.peer, partial.held(), 0);
        Some(partial)
    }

    fn evict_oldest(&mut self, peer: PeerId, why: &str) {
        let oldest = self.shares.get(&peer).and_then(|s| s.partials.first().copied());
        if let Some((_, key)) = oldest {
            crate::ratelog::note(Level::Debug, "incomplete datagrams dropped", || {
                format!("dropped an incomplete datagram from peer {peer}: {why}")
            });
            self.remove(&key);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.first() {
            if now.saturating_duration_since(at) < TIMEOUT {
                break;
            }
            crate::ratelog::note(Level::Debug, "incomplete datagrams dropped", || {
                format!("dropped an incomplete datagram from peer {}: timed out", key.peer)
            });
            self.remove(&key);
        }
    }

    /// Brings `peer` within its share, then everyone within the total, at the expense of whoever holds most.
    fn evict_over_budget(&mut self, peer: PeerId) {
        while self.shares.get(&peer).is_some_and(|s| s.held > PEER_BUDGET) {
            self.evict_oldest(peer, "its reassembly memory is full");
        }
        while self.held > BUDGET {
            let Some(&(_, largest)) = self.by_held.last() else {
                break;
            };
            self.evict_oldest(largest, "reassembly memory is full");
        }
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held
    }

    /// Panics unless the budgets hold: all peers together, and each peer.
    #[cfg(test)]
    pub(crate) fn check_budgets(&self) {
        assert!(self.held <= BUDGET, "held {} > {BUDGET}", self.held);
        assert!(self.shares.values().all(|s| s.held <= PEER_BUDGET));
    }

    /// Panics unless every structure agrees with the others and no budget is exceeded.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        self.check_budgets();
        let held: usize = self.partials.values().map(Partial::held).sum();
        assert_eq!(self.held, held);
        assert_eq!(self.order.len(), self.partials.len());
        assert_eq!(self.by_held.len(), self.shares.len());
        for (peer, share) in &self.shares {
            assert!(share.held <= PEER_BUDGET);
            assert!(!share.partials.is_empty());
            assert!(share.partials.len() <= PEER_PARTIALS);
            assert!(self.by_held.contains(&(share.held, *peer)));
            let held: usize = share.partials.iter().map(|(_, k)| self.partials[k].held()).sum();
            assert_eq!(share.held, held);
        }
    }
}

/// The whole packet: the first fragment's header, fixed up for the full length, and the payload. `None` if the
/// header and payload together exceed an IP packet's length field.
fn rebuild(partial: Partial, protocol: u8, v6: bool) -> Option<Vec<u8>> {
    let mut packet = partial.header;
    if v6 {
        let payload_len = u16::try_from(partial.payload.len()).ok()?;
        packet[4..6].copy_from_slice(&payload_len.to_be_bytes());
        packet[6] = protocol;
        packet.extend_from_slice(&partial.payload);
    } else {
        let total = u16::try_from(packet.len() + partial.payload.len()).ok()?;
        packet.extend_from_slice(&partial.payload);
        let mut ip = Ipv4Packet::new_unchecked(&mut packet);
        ip.set_total_len(total);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.fill_checksum();
    }
    Some(packet)
}

#[cfg(test)]
mod tests;
