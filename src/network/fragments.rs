//! Reassembly of IPv4 and IPv6 fragments from peers, so that a datagram larger than the tunnel MTU reaches
//! Python whole.
//!
//! Fragments are keyed by peer as well as by addresses and identification: two peers that use the same tunnel
//! address never mix their fragments. Memory is bounded by a total byte budget and a timeout; a datagram whose
//! fragments overlap is dropped whole (as RFC 5722 asks for IPv6).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{Ipv4Packet, Ipv6Packet};

use crate::messages::PeerId;

/// How long the fragments of one datagram may take to arrive (Linux waits 30 s).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The bytes held for datagrams under reassembly, over all peers.
const BUDGET: usize = 4 << 20;
/// The largest datagram: an IP total length field holds no more.
const MAX_DATAGRAM: usize = 65535;
/// IPv6 next header value of a fragment header.
pub const IPV6_FRAGMENT: u8 = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Byte ranges received so far, unordered; few, as fragments come from one MTU.
    ranges: Vec<(usize, usize)>,
    /// Known once the last fragment (no "more fragments" flag) arrived.
    total: Option<usize>,
    created: Instant,
}

impl Partial {
    fn complete(&self) -> bool {
        let Some(total) = self.total else { return false };
        !self.header.is_empty() && self.ranges.iter().map(|(s, e)| e - s).sum::<usize>() == total
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

#[derive(Default)]
pub struct Reassembler {
    partials: HashMap<Key, Partial>,
    /// Keys in order of arrival, for expiry and for evicting the oldest when over budget.
    order: VecDeque<(Instant, Key)>,
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
            log::debug!("dropped a malformed fragment from peer {peer}");
            return None;
        };
        let (start, end) = (f.offset, f.offset + f.data.len());
        // Every fragment but the last carries a multiple of 8 bytes.
        if end > MAX_DATAGRAM || (f.more && f.data.len() % 8 != 0) || f.data.is_empty() {
            log::debug!("dropped an invalid fragment from peer {peer}");
            return None;
        }
        let key = Key {
            peer,
            src: f.key_src,
            dst: f.key_dst,
            ident: f.ident,
            protocol: f.protocol,
        };
        if !self.partials.contains_key(&key) {
            self.order.push_back((now, key));
        }
        let partial = self.partials.entry(key).or_insert_with(|| Partial {
            header: Vec::new(),
            payload: Vec::new(),
            ranges: Vec::new(),
            total: None,
            created: now,
        });
        if partial.ranges.iter().any(|&(s, e)| start < e && s < end)
            || (!f.more && partial.total.is_some())
            || partial.total.is_some_and(|t| end > t)
        {
            log::debug!("dropped a datagram from peer {peer}: overlapping fragments");
            self.remove(&key);
            return None;
        }
        if partial.payload.len() < end {
            self.held += end - partial.payload.len();
            partial.payload.resize(end, 0);
        }
        partial.payload[start..end].copy_from_slice(f.data);
        partial.ranges.push((start, end));
        if !f.more {
            partial.total = Some(end);
        }
        if start == 0 {
            partial.header = f.header.to_vec();
        }
        if !partial.complete() {
            self.evict_over_budget();
            return None;
        }
        let partial = self.remove(&key)?;
        Some(rebuild(partial, f.protocol, f.v6))
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let partial = self.partials.remove(key)?;
        self.held -= partial.payload.len();
        // Its entry in `order` goes when it reaches the front.
        Some(partial)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            let stale = match self.partials.get(&key) {
                None => true,
                Some(p) => p.created != at || now.duration_since(at) >= TIMEOUT,
            };
            if !stale {
                break;
            }
            self.order.pop_front();
            if self.partials.get(&key).is_some_and(|p| p.created == at) {
                log::debug!("dropped an incomplete datagram from peer {}: timed out", key.peer);
                self.remove(&key);
            }
        }
    }

    fn evict_over_budget(&mut self) {
        while self.held > BUDGET {
            let Some((at, key)) = self.order.pop_front() else {
                break;
            };
            if self.partials.get(&key).is_some_and(|p| p.created == at) {
                log::debug!(
                    "dropped an incomplete datagram from peer {}: reassembly memory full",
                    key.peer
                );
                self.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held
    }
}

/// The whole packet: the first fragment's header, fixed up for the full length, and the payload.
fn rebuild(partial: Partial, protocol: u8, v6: bool) -> Vec<u8> {
    let mut packet = partial.header;
    packet.extend_from_slice(&partial.payload);
    if v6 {
        let payload_len = partial.payload.len() as u16;
        packet[4..6].copy_from_slice(&payload_len.to_be_bytes());
        packet[6] = protocol;
    } else {
        let total = packet.len() as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut packet);
        ip.set_total_len(total);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.fill_checksum();
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::packet::{self, Inbound};
    use std::net::SocketAddr;

    fn datagram(src: &str, dst: &str, size: usize) -> (SocketAddr, SocketAddr, Vec<u8>) {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        (src.parse().unwrap(), dst.parse().unwrap(), payload)
    }

    fn reassemble(r: &mut Reassembler, peer: PeerId, fragments: &[Vec<u8>]) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut result = None;
        for f in fragments {
            assert!(is_fragment(f));
            assert!(result.is_none(), "complete before the last fragment");
            result = r.insert(peer, f, now);
        }
        result
    }

    #[test]
    fn fragmented_udp_reassembles_in_both_families_and_any_order() {
        for (src, dst) in [
            ("10.0.0.1:5000", "10.0.0.42:53"),
            ("[fd00::1]:5000", "[fd00::42]:53"),
        ] {
            let (src, dst, payload) = datagram(src, dst, 16_000);
            let mut fragments = packet::udp_packets(src, dst, &payload, 1420, 99).unwrap();
            assert!(fragments.len() >= 12);
            assert!(fragments.iter().all(|f| f.len() <= 1420));
            fragments.reverse();
            let mut r = Reassembler::default();
            let whole = reassemble(&mut r, 0, &fragments).expect("reassembled");
            assert_eq!(
                packet::parse(&whole),
                Ok(Inbound::Udp {
                    src,
                    dst,
                    payload: &payload
                })
            );
            assert_eq!(r.held_bytes(), 0);
        }
    }

    #[test]
    fn peers_do_not_mix_fragments() {
        let (src, dst, payload) = datagram("10.0.0.1:5000", "10.0.0.42:53", 3000);
        let fragments = packet::udp_packets(src, dst, &payload, 1420, 7).unwrap();
        let mut r = Reassembler::default();
        let now = Instant::now();
        // Peer 1 sends the first fragment, peer 2 the rest: neither completes.
        assert!(r.insert(1, &fragments[0], now).is_none());
        for f in &fragments[1..] {
            assert!(r.insert(2, f, now).is_none());
        }
        assert!(r.held_bytes() > 0);
        // Peer 1 completes its own.
        let mut last = None;
        for f in &fragments[1..] {
            last = r.insert(1, f, now);
        }
        assert!(last.is_some());
    }

    #[test]
    fn overlaps_drop_the_datagram_and_timeouts_free_memory() {
        let (src, dst, payload) = datagram("10.0.0.1:5000", "10.0.0.42:53", 3000);
        let fragments = packet::udp_packets(src, dst, &payload, 1420, 7).unwrap();
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert!(r.insert(0, &fragments[0], now).is_none());
        assert!(r.insert(0, &fragments[0], now).is_none()); // a duplicate overlaps: all dropped
        assert_eq!(r.held_bytes(), 0);
        assert!(r.insert(0, &fragments[1], now).is_none());
        assert!(r.held_bytes() > 0);
        // Much later, anything else arriving expires it.
        assert!(r
            .insert(0, &fragments[0], now + TIMEOUT + Duration::from_secs(1))
            .is_none());
        assert_eq!(r.held_bytes(), fragments[0].len() - 20);
    }

    #[test]
    fn memory_stays_within_budget() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        for i in 0..200u32 {
            let (src, dst, payload) = datagram("10.0.0.1:5000", "10.0.0.42:53", 60_000);
            let fragments = packet::udp_packets(src, dst, &payload, 1420, i).unwrap();
            // Only the last fragment: the datagram's full length is held at once.
            r.insert(0, fragments.last().unwrap(), now);
            assert!(r.held_bytes() <= BUDGET);
        }
    }
}
