//! Property tests of the WireGuard datagram path: arbitrary datagrams, and a real client's datagrams with
//! mutations, replays and truncations, from any address. Nothing panics, nothing that does not authenticate is
//! delivered or answered (but for cookie replies), and the client's session survives all of it.
//!
//! A longer run: `PROPTEST_CASES=100000 cargo test --release --lib fuzz` (see README).

use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use proptest::prelude::*;

use crate::config::{Configuration, Peer as PeerConfig};
use crate::keys;
use crate::wireguard::peers::{Output, Peers, BUFFER_SIZE};

/// `default` cases, unless PROPTEST_CASES asks for another number (for a longer run).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(default))
}

/// A server with two peers, and a client Tunn for the first.
fn setup() -> (Peers, Tunn) {
    let server_key = keys::generate();
    let client_key = keys::generate();
    let config = Configuration {
        listen_port: 0,
        private_key: server_key.clone(),
        peers: vec![
            PeerConfig::from_private_key("c", &client_key).unwrap(),
            PeerConfig::from_private_key("d", &keys::generate()).unwrap(),
        ],
        ..Configuration::default()
    };
    let client = Tunn::new(
        keys::secret("c", &client_key).unwrap(),
        keys::public("s", &keys::public_of("s", &server_key).unwrap()).unwrap(),
        None,
        None,
        7,
        None,
    );
    (Peers::new(&config).unwrap(), client)
}

/// What the server did with one datagram.
#[derive(Debug, Default)]
struct Seen {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    delivered: Vec<Vec<u8>>,
}

fn receive(peers: &mut Peers, src: SocketAddr, datagram: &[u8], buf: &mut [u8]) -> Seen {
    let mut seen = Seen::default();
    peers.receive(src, datagram, buf, &mut |out| match out {
        Output::Send(to, d) => seen.sent.push((to, d.to_vec())),
        Output::Deliver { packet, .. } => seen.delivered.push(packet.to_vec()),
        Output::HandshakeFailed { .. } => {}
    });
    seen
}

/// An IPv4 packet from the client's tunnel address with `payload` (boringtun reads only its length field).
fn ip_packet(payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 42];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The client completes a handshake; returns the datagrams it sent (initiation, keepalive and a data packet).
fn connect(peers: &mut Peers, client: &mut Tunn, home: SocketAddr, buf: &mut [u8]) -> Vec<Vec<u8>> {
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let first = ip_packet(b"first");
    let TunnResult::WriteToNetwork(init) = client.encapsulate(&first, &mut cbuf) else {
        panic!("no initiation")
    };
    let init = init.to_vec();
    let response = receive(peers, home, &init, buf).sent.remove(0).1;
    let TunnResult::WriteToNetwork(keepalive) = client.decapsulate(None, &response, &mut cbuf) else {
        panic!("no keepalive")
    };
    let keepalive = keepalive.to_vec();
    assert!(receive(peers, home, &keepalive, buf).sent.is_empty());
    let TunnResult::WriteToNetwork(data) = client.decapsulate(None, &[], &mut cbuf) else {
        panic!("the queued packet is not sent")
    };
    let data = data.to_vec();
    assert_eq!(receive(peers, home, &data, buf).delivered, vec![first]);
    vec![init, keepalive, data]
}

/// Datagrams shaped like each WireGuard message (type and length right, contents arbitrary), or anything; the
/// whole-way property test (`src/tests/fuzz/`) sends them too.
pub(crate) fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (1u8..=4, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(kind, rest)| {
            let len = match kind {
                1 => 148,
                2 => 92,
                3 => 64,
                _ => 32 + rest.len() / 16 * 16,
            };
            let mut d = vec![kind, 0, 0, 0];
            d.extend(rest.iter().cycle().take(len - 4));
            d.resize(len, 0);
            d
        }),
    ]
}

/// What an attacker does with the client's datagrams, or what the client does next.
#[derive(Debug, Clone)]
enum Step {
    /// The client sends a packet.
    Send(Vec<u8>),
    /// A datagram the client sent before, with bytes overwritten and its length changed, from anywhere.
    Mutate {
        which: usize,
        mutations: Vec<(usize, u8)>,
        resize: Option<usize>,
        from_home: bool,
    },
    Junk(Vec<u8>, bool),
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..100).prop_map(Step::Send),
        4 => (
            any::<usize>(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            proptest::option::weighted(0.3, 0usize..400),
            any::<bool>(),
        )
            .prop_map(|(which, mutations, resize, from_home)| Step::Mutate {
                which,
                mutations,
                resize,
                from_home,
            }),
        2 => (junk(), any::<bool>()).prop_map(|(j, home)| Step::Junk(j, home)),
        1 => Just(Step::Tick),
    ]
}

/// A datagram that does not authenticate may get a cookie reply (64 bytes, type 3) and nothing else.
fn assert_only_cookies(seen: &Seen) {
    assert!(seen.delivered.is_empty(), "delivered {:?}", seen.delivered);
    for (_, d) in &seen.sent {
        assert_eq!((d.len(), d[0]), (64, 3), "sent {d:?}");
    }
}

proptest! {
    // Each case makes a server (Diffie-Hellman in a debug build): fewer cases with more datagrams each.
    #![proptest_config(config(64))]

    #[test]
    fn fuzz_arbitrary_datagrams_are_dropped(datagrams in proptest::collection::vec(junk(), 1..80)) {
        let (mut peers, _) = setup();
        let mut buf = vec![0u8; BUFFER_SIZE];
        let src: SocketAddr = "192.0.2.66:4444".parse().unwrap();
        for d in &datagrams {
            assert_only_cookies(&receive(&mut peers, src, d, &mut buf));
        }
    }
}

proptest! {
    // A case makes a handshake (Diffie-Hellman in a debug build): fewer cases keep the default run short.
    #![proptest_config(config(32))]

    /// Mutated, replayed and forged datagrams deliver nothing the client did not send, and the client's next
    /// packet still arrives.
    #[test]
    fn fuzz_mutated_datagrams_of_a_session(steps in proptest::collection::vec(step(), 1..60)) {
        let (mut peers, mut client) = setup();
        let mut buf = vec![0u8; BUFFER_SIZE];
        let mut cbuf = vec![0u8; BUFFER_SIZE];
        let home: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let elsewhere: SocketAddr = "198.51.100.9:666".parse().unwrap();
        let mut sent = connect(&mut peers, &mut client, home, &mut buf);
        let mut packets = vec![ip_packet(b"first")];
        for step in steps {
            match step {
                Step::Send(payload) => {
                    let packet = ip_packet(&payload);
                    let TunnResult::WriteToNetwork(d) = client.encapsulate(&packet, &mut cbuf) else {
                        panic!("the client has a session")
                    };
                    let d = d.to_vec();
                    let seen = receive(&mut peers, home, &d, &mut buf);
                    prop_assert_eq!(&seen.delivered, &vec![packet.clone()]);
                    sent.push(d);
                    packets.push(packet);
                }
                Step::Mutate { which, mutations, resize, from_home } => {
                    let mut d = sent[which % sent.len()].clone();
                    for (at, byte) in mutations {
                        let len = d.len();
                        d[at % len] = byte;
                    }
                    if let Some(len) = resize {
                        d.resize(len, 0);
                    }
                    let src = if from_home { home } else { elsewhere };
                    let seen = receive(&mut peers, src, &d, &mut buf);
                    // A replay of a data packet is refused; only an unchanged one the server never saw could
                    // deliver, and all of them were seen.
                    for p in &seen.delivered {
                        prop_assert!(packets.contains(p), "delivered a packet the client never sent");
                    }
                    prop_assert!(seen.delivered.is_empty(), "a replayed or altered datagram was delivered");
                }
                Step::Junk(d, from_home) => {
                    let src = if from_home { home } else { elsewhere };
                    assert_only_cookies(&receive(&mut peers, src, &d, &mut buf));
                }
                Step::Tick => peers.tick(Instant::now(), &mut buf, &mut |_| {}),
            }
        }
        // The session survived: the client's next packet arrives.
        let last = ip_packet(b"last");
        let TunnResult::WriteToNetwork(d) = client.encapsulate(&last, &mut cbuf) else {
            panic!("the client has a session")
        };
        let d = d.to_vec();
        prop_assert_eq!(receive(&mut peers, home, &d, &mut buf).delivered, vec![last]);
    }
}
