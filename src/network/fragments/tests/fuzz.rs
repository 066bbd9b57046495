//! Property tests of reassembly: arbitrary and mutated fragments from several peers never panic and never hold
//! more than the budgets; valid fragments in any order reassemble into the original datagram.

use super::*;
use proptest::prelude::*;
use proptest::sample::select;

/// `default` cases, unless PROPTEST_CASES asks for another number (for a longer run).
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(default))
}

/// Source and destination of a test datagram of either family.
fn addresses(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("[fd00::1]:5000", "[fd00::42]:53")
    } else {
        ("10.0.0.1:5000", "10.0.0.42:53")
    }
}

/// One packet that reaches the reassembler.
#[derive(Debug, Clone)]
enum Input {
    Bytes(Vec<u8>),
    /// Fragment `index` (modulo their number) of one of the case's datagrams, with identification `ident` and
    /// some bytes overwritten.
    Fragment {
        datagram: usize,
        index: usize,
        ident: u32,
        mutations: Vec<(usize, u8)>,
    },
}

impl Input {
    fn packet(&self, datagrams: &[Vec<Vec<u8>>]) -> Vec<u8> {
        match self {
            Input::Bytes(bytes) => bytes.clone(),
            Input::Fragment {
                datagram,
                index,
                ident,
                mutations,
            } => {
                let fragments = &datagrams[datagram % datagrams.len()];
                let mut packet = fragments[index % fragments.len()].clone();
                if packet[0] >> 4 == 4 {
                    let mut ip = Ipv4Packet::new_unchecked(&mut packet);
                    ip.set_ident(*ident as u16);
                    ip.fill_checksum();
                } else if packet.len() >= 48 {
                    packet[44..48].copy_from_slice(&ident.to_be_bytes());
                }
                for &(at, byte) in mutations {
                    let len = packet.len();
                    packet[at % len] = byte;
                }
                packet
            }
        }
    }
}

/// A datagram's fragments: its family, size and MTU.
fn datagram_fragments() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        any::<bool>(),
        prop_oneof![1usize..4000, 30_000usize..65_400],
        select(vec![68usize, 532, 1000, 1280, 1420, 9000]),
    )
        .prop_map(|(v6, size, mtu)| {
            let (src, dst) = addresses(v6);
            let whole = packet::udp(src.parse().unwrap(), dst.parse().unwrap(), &vec![0x5a; size]).unwrap();
            packet::fit_mtu(whole, mtu, 0)
        })
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Input::Bytes),
        4 => (
            any::<usize>(),
            any::<usize>(),
            0u32..32,
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        )
            .prop_map(|(datagram, index, ident, mutations)| Input::Fragment {
                datagram,
                index,
                ident,
                mutations,
            }),
    ]
}

proptest! {
    #![proptest_config(config(64))]

    /// Eight peers, 32 identifications each, datagrams of up to 64 KiB: enough to exceed every budget.
    #[test]
    fn fuzz_fragments_from_several_peers(
        datagrams in proptest::collection::vec(datagram_fragments(), 1..6),
        inputs in proptest::collection::vec((0usize..8, input(), 0u64..3), 1..400),
    ) {
        let mut r = Reassembler::default();
        let mut now = Instant::now();
        for (peer, input, wait) in inputs {
            // Mostly no time passes, sometimes 15 s: enough for expiry within a case.
            now += Duration::from_secs(15 * (wait / 2));
            let packet = input.packet(&datagrams);
            if let Some(whole) = r.insert(peer, &packet, now) {
                let _ = packet::parse(&whole);
            }
            r.check_budgets();
        }
        r.check();
    }

    #[test]
    fn fuzz_shuffled_fragments_reassemble_to_the_original(
        (datagrams, order) in proptest::collection::vec(
            (0usize..3, any::<bool>(), 1usize..65_488, 0usize..8000),
            1..4,
        )
        .prop_flat_map(|datagrams| {
            let tags: Vec<(usize, usize)> = datagrams
                .iter()
                .enumerate()
                .flat_map(|(i, d)| (0..fragments(i, d).1.len()).map(move |j| (i, j)))
                .collect();
            (Just(datagrams), Just(tags).prop_shuffle())
        }),
    ) {
        let built: Vec<_> = datagrams.iter().enumerate().map(|(i, d)| fragments(i, d)).collect();
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut done = vec![None; datagrams.len()];
        for (i, j) in order {
            let packet = &built[i].1[j];
            if !is_fragment(packet) {
                done[i] = Some(packet.clone()); // small enough to need no fragments
                continue;
            }
            if let Some(whole) = r.insert(datagrams[i].0, packet, now) {
                prop_assert!(done[i].is_none(), "datagram {} reassembled twice", i);
                done[i] = Some(whole);
            }
            r.check_budgets();
        }
        for (i, whole) in done.into_iter().enumerate() {
            let whole = whole.expect("every datagram reassembled");
            let (src, dst) = addresses(datagrams[i].1);
            prop_assert_eq!(whole.len(), built[i].0.len());
            prop_assert_eq!(
                packet::parse(&whole),
                Ok(Inbound::Udp { src: src.parse().unwrap(), dst: dst.parse().unwrap(), payload: &built[i].2 })
            );
        }
        prop_assert_eq!((r.entries(), r.held_bytes()), (0, 0));
    }
}

/// The whole packet, its fragments and its payload, for datagram `i` of a case: (peer, v6, size, extra MTU).
fn fragments(
    i: usize,
    &(_, v6, size, extra_mtu): &(usize, bool, usize, usize),
) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let (src, dst) = addresses(v6);
    let (src, dst, payload) = datagram(src, dst, size);
    let whole = packet::udp(src, dst, &payload).unwrap();
    // Over the smallest packets with fragments accepted.
    let mtu = if v6 { 1280 } else { 20 + MIN_FRAGMENT_V4 } + extra_mtu;
    let fragments = packet::fit_mtu(whole.clone(), mtu, i as u32);
    (whole, fragments, payload)
}
