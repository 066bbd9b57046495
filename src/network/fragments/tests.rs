use super::*;
use crate::network::packet::{self, Inbound};
use std::net::SocketAddr;

mod fuzz;

impl Reassembler {
    /// Entries in every structure that keeps track of datagrams under reassembly.
    fn entries(&self) -> usize {
        let shares: usize = self.shares.values().map(|s| s.partials.len()).sum();
        self.partials.len() + self.order.len() + shares + self.by_held.len()
    }

    /// Received ranges kept, over all datagrams: what a fragment's overlap check may have to look at.
    fn ranges_held(&self) -> usize {
        self.partials.values().map(|p| p.ranges.len()).sum()
    }

    fn peer_held(&self, peer: PeerId) -> usize {
        self.shares.get(&peer).map_or(0, |s| s.held)
    }
}

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
    // Only the fragment that just arrived is held.
    assert_eq!(r.partials.len(), 1);
    assert!(r.held_bytes() >= fragments[0].len() - 20);
    assert!(r.held_bytes() < 2 * fragments[0].len());
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

/// The fragments of a UDP datagram of `size` bytes whose packets are at most `mtu` bytes.
fn fragments_of(src: &str, dst: &str, size: usize, mtu: usize, ident: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (src, dst, payload) = datagram(src, dst, size);
    let whole = packet::udp(src, dst, &payload).unwrap();
    (payload, packet::fit_mtu(whole, mtu, ident))
}

#[test]
fn one_peers_flood_does_not_evict_another_peers_datagram() {
    let (payload, fragments) = fragments_of("10.0.0.1:5000", "10.0.0.42:53", 3000, 1420, 1);
    let mut r = Reassembler::default();
    let now = Instant::now();
    assert!(r.insert(1, &fragments[0], now).is_none());
    // Ten peers each send the last fragments of 200 datagrams of 60 KB: each fragment makes the whole datagram
    // held, 120 MB in all.
    let (_, flood) = fragments_of("10.0.0.9:5000", "10.0.0.42:53", 60_000, 1420, 0);
    let mut last = flood.last().unwrap().clone();
    for flooder in 2..12 {
        for ident in 0..200 {
            let mut ip = Ipv4Packet::new_unchecked(&mut last);
            ip.set_ident(ident);
            ip.fill_checksum();
            assert!(r.insert(flooder, &last, now).is_none());
            assert!(r.held_bytes() <= BUDGET);
            assert!(r.peer_held(flooder) <= PEER_BUDGET);
        }
    }
    // Peer 1's datagram was not touched: its other fragments complete it.
    let mut whole = None;
    for f in &fragments[1..] {
        whole = r.insert(1, f, now);
    }
    let whole = whole.expect("peer 1's datagram reassembled");
    assert!(matches!(packet::parse(&whole), Ok(Inbound::Udp { payload: p, .. }) if p == payload));
}

#[test]
fn a_peer_over_its_datagram_cap_loses_its_own_oldest() {
    let mut r = Reassembler::default();
    let now = Instant::now();
    for ident in 0..(PEER_PARTIALS as u32 + 10) {
        let (_, f) = fragments_of("10.0.0.1:5000", "10.0.0.42:53", 3000, 1420, ident);
        r.insert(0, &f[0], now);
    }
    assert_eq!(r.partials.len(), PEER_PARTIALS);
    // The newest are kept: the last one still completes.
    let (_, f) = fragments_of(
        "10.0.0.1:5000",
        "10.0.0.42:53",
        3000,
        1420,
        PEER_PARTIALS as u32 + 9,
    );
    assert!(reassemble(&mut r, 0, &f[1..]).is_some());
}

#[test]
fn completed_dropped_and_expired_datagrams_leave_no_bookkeeping() {
    let mut r = Reassembler::default();
    let now = Instant::now();
    for ident in 0..1000 {
        let peer = ident as usize % 3;
        let (_, f) = fragments_of("10.0.0.1:5000", "10.0.0.42:53", 3000, 1420, ident);
        assert!(reassemble(&mut r, peer, &f).is_some());
    }
    assert_eq!((r.entries(), r.held_bytes()), (0, 0));
    for ident in 0..50 {
        let (_, f) = fragments_of("[fd00::1]:5000", "[fd00::42]:53", 3000, 1420, ident);
        r.insert(0, &f[0], now);
        r.insert(0, &f[0], now); // overlaps: dropped
        r.insert(1, &f[1], now); // never completes
    }
    assert_eq!(r.partials.len(), 50);
    let (_, f) = fragments_of("10.0.0.1:5000", "10.0.0.42:53", 3000, 1420, 5000);
    // Much later, peer 1's partial datagrams have expired; this one completes.
    assert!(reassemble_at(&mut r, 2, &f, now + TIMEOUT).is_some());
    assert_eq!((r.entries(), r.held_bytes()), (0, 0));
}

fn reassemble_at(r: &mut Reassembler, peer: PeerId, fragments: &[Vec<u8>], now: Instant) -> Option<Vec<u8>> {
    fragments.iter().fold(None, |_, f| r.insert(peer, f, now))
}

#[test]
fn tiny_fragments_are_dropped() {
    let now = Instant::now();
    // IPv4 fragments with 48 bytes of data each (a 68-byte MTU), IPv6 ones with 952 (a 1000-byte MTU).
    for (src, dst, mtu) in [
        ("10.0.0.1:5000", "10.0.0.42:53", 68),
        ("[fd00::1]:5000", "[fd00::42]:53", 1000),
    ] {
        let (_, fragments) = fragments_of(src, dst, 3000, mtu, 1);
        let mut r = Reassembler::default();
        for f in &fragments[..fragments.len() - 1] {
            assert!(r.insert(0, f, now).is_none());
            assert_eq!((r.entries(), r.held_bytes()), (0, 0));
        }
    }
    // The smallest fragments accepted: 512 bytes of data over IPv4, packets of 1280 bytes over IPv6.
    for (src, dst, mtu) in [
        ("10.0.0.1:5000", "10.0.0.42:53", 20 + MIN_FRAGMENT_V4),
        ("[fd00::1]:5000", "[fd00::42]:53", 1280),
    ] {
        let (_, fragments) = fragments_of(src, dst, 3000, mtu, 1);
        let mut r = Reassembler::default();
        assert!(reassemble(&mut r, 0, &fragments).is_some());
    }
}

#[test]
fn the_largest_datagram_in_the_smallest_fragments_costs_bounded_work() {
    let now = Instant::now();
    // The largest bound on the fragments of one datagram, over both families.
    let most_ranges = MAX_DATAGRAM / MIN_FRAGMENT_V4 + 1;
    // 65,535 bytes in 8-byte fragments: 8,188 of them, all but the last dropped on arrival.
    let (_, fragments) = fragments_of("10.0.0.1:5000", "10.0.0.42:53", 65_507, 28, 1);
    assert!(fragments.len() > 8000);
    let mut r = Reassembler::default();
    for f in fragments.iter().rev() {
        assert!(r.insert(0, f, now).is_none());
        assert!(r.ranges_held() <= most_ranges);
    }
    // In the smallest fragments accepted, every other one first so that none are adjacent: as many ranges as
    // there can be, and each fragment's check is a binary search among them.
    for (src, dst, mtu) in [
        ("10.0.0.1:5000", "10.0.0.42:53", 20 + MIN_FRAGMENT_V4),
        ("[fd00::1]:5000", "[fd00::42]:53", 1280),
    ] {
        let (payload, fragments) = fragments_of(src, dst, 65_507 - 20, mtu, 2);
        let mut r = Reassembler::default();
        let order = fragments
            .iter()
            .step_by(2)
            .chain(fragments.iter().skip(1).step_by(2));
        let mut whole = None;
        for f in order {
            assert!(whole.is_none());
            whole = r.insert(0, f, now);
            assert!(r.ranges_held() <= most_ranges);
        }
        let whole = whole.expect("reassembled");
        assert!(matches!(packet::parse(&whole), Ok(Inbound::Udp { payload: p, .. }) if p == payload));
    }
}

#[test]
fn a_removed_peers_partial_datagrams_are_forgotten() {
    let (src, dst, payload) = datagram("10.0.0.1:5000", "10.0.0.42:53", 3000);
    let fragments = packet::udp_packets(src, dst, &payload, 1420, 7).unwrap();
    let mut r = Reassembler::default();
    let now = Instant::now();
    for ident in 0..3 {
        let (_, mine) = fragments_of("10.0.0.1:5000", "10.0.0.42:53", 3000, 1420, ident);
        assert!(r.insert(1, &mine[0], now).is_none());
    }
    assert!(r.insert(2, &fragments[0], now).is_none());
    let others = r.peer_held(2);
    r.forget(1);
    assert_eq!(r.peer_held(1), 0);
    assert_eq!(r.held_bytes(), others);
    assert_eq!(
        r.entries(),
        4,
        "only peer 2's datagram is left, in each structure"
    );
    assert!(reassemble(&mut r, 2, &fragments[1..]).is_some());
    assert_eq!(r.entries(), 0);
}
