//! Unit tests of `Peers`, with clients' `Tunn`s and datagrams built here.

use super::*;
use crate::config::Peer as PeerConfig;
use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

mod runtime;

/// A server with one peer per entry of `allowed_ips` (none: any address), and a client `Tunn` for each.
pub(super) fn server(allowed_ips: &[&[&str]]) -> (Peers, Vec<Tunn>) {
    let server_key = keys::generate();
    let server_public = keys::public("s", &keys::public_of("s", &server_key).unwrap()).unwrap();
    let mut peers = vec![];
    let mut clients = vec![];
    for (i, nets) in allowed_ips.iter().enumerate() {
        let client_key = keys::generate();
        let mut peer = PeerConfig::from_private_key("c", &client_key).unwrap();
        peer.allowed_ips = nets.iter().map(|n| n.parse().unwrap()).collect();
        peers.push(peer);
        let secret = keys::secret("c", &client_key).unwrap();
        clients.push(Tunn::new(secret, server_public, None, None, 7 + i as u32, None));
    }
    let config = Configuration {
        listen_port: 0,
        private_key: server_key,
        peers,
        ..Configuration::default()
    };
    (Peers::new(&config).unwrap(), clients)
}

/// A client Tunn and a server configured to accept it from any address.
fn setup() -> (Peers, Tunn) {
    let (peers, mut clients) = server(&[&[]]);
    (peers, clients.pop().unwrap())
}

pub(super) fn collect(f: impl FnOnce(&mut dyn FnMut(Output))) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    f(&mut |o| match o {
        Output::Send(addr, d) => out.push((format!("send {addr}"), d.to_vec())),
        Output::Deliver { peer, packet, .. } => out.push((format!("deliver {peer}"), packet.to_vec())),
        Output::HandshakeFailed { peer, endpoint } => out.push((format!("failed {peer} {endpoint}"), vec![])),
    });
    out
}

pub(super) fn ipv4_packet() -> Vec<u8> {
    // A minimal IPv4 header (no payload) from 10.0.0.1 to 10.0.0.42; boringtun checks only the length field.
    let mut p = vec![
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 42,
    ];
    p.resize(20, 0);
    p
}

#[test]
fn handshake_then_data_is_delivered_and_answered_at_the_new_address() {
    let (mut peers, mut client) = setup();
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();

    // The client wants to send a packet: it queues it and starts a handshake.
    let TunnResult::WriteToNetwork(init) = client.encapsulate(&ipv4_packet(), &mut cbuf) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(a, &init, &mut buf, &mut |o| e(o)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, format!("send {a}"));

    // The response completes the client's handshake: it confirms with a keepalive, then sends what it queued.
    let TunnResult::WriteToNetwork(keepalive) = client.decapsulate(None, &out[0].1, &mut cbuf) else {
        panic!()
    };
    let keepalive = keepalive.to_vec();
    assert!(collect(|e| peers.receive(a, &keepalive, &mut buf, &mut |o| e(o))).is_empty());
    let TunnResult::WriteToNetwork(data) = client.decapsulate(None, &[], &mut cbuf) else {
        panic!()
    };
    let data = data.to_vec();
    // The client moved: the data comes from b.
    let out = collect(|e| peers.receive(b, &data, &mut buf, &mut |o| e(o)));
    assert_eq!(out, vec![("deliver 0".to_string(), ipv4_packet())]);

    // Replies go to where the client is now.
    let out = collect(|e| peers.send(0, &ipv4_packet(), &mut buf, &mut |o| e(o)));
    assert_eq!(out[0].0, format!("send {b}"));
    let TunnResult::WriteToTunnelV4(p, _) = client.decapsulate(None, &out[0].1, &mut cbuf) else {
        panic!()
    };
    assert_eq!(p, &ipv4_packet()[..]);
}

#[test]
fn a_handshake_flood_gets_cookies_and_known_peers_still_get_in() {
    let (mut peers, mut client) = setup();
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    // Another address than the peer's: one address's handshakes share a bucket (`handshake_limit`), and with
    // one address the peer's retry would get in only if the test ran slowly enough to refill it.
    let attacker: SocketAddr = "127.0.0.2:666".parse().unwrap();
    let home: SocketAddr = "127.0.0.1:1000".parse().unwrap();

    let mut cookies = 0;
    // Initiations with a valid MAC1 from keys the server does not know.
    let TunnResult::WriteToNetwork(_) = client.encapsulate(&ipv4_packet(), &mut cbuf) else {
        panic!()
    };
    let server_key = keys::public("s", &keys::encode(peers.public.as_bytes())).unwrap();
    for i in 0..(HANDSHAKES_PER_SECOND as u32 + 50) {
        let mut stranger = Tunn::new(
            keys::secret("x", &keys::generate()).unwrap(),
            server_key,
            None,
            None,
            i,
            None,
        );
        let TunnResult::WriteToNetwork(init) = stranger.format_handshake_initiation(&mut cbuf, false) else {
            panic!()
        };
        let init = init.to_vec();
        let out = collect(|e| peers.receive(attacker, &init, &mut buf, &mut |o| e(o)));
        match out.as_slice() {
            [] => {}
            [(to, reply)] => {
                assert_eq!(to, &format!("send {attacker}"));
                assert_eq!(
                    (reply.len(), reply[0]),
                    (64, 3),
                    "only cookie replies go to strangers"
                );
                cookies += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        cookies, 50,
        "past the limit, every initiation gets a cookie reply"
    );

    // The known peer, still under load: its first initiation gets a cookie, its retry with MAC2 gets in.
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, true) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(home, &init, &mut buf, &mut |o| e(o)));
    assert_eq!(out[0].1.len(), 64, "a cookie reply");
    assert!(matches!(
        client.decapsulate(Some(home.ip()), &out[0].1, &mut cbuf),
        TunnResult::Done
    ));
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, true) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(home, &init, &mut buf, &mut |o| e(o)));
    assert_eq!(out[0].1[0], 2, "a handshake response");
}

#[test]
fn junk_and_unknown_peers_are_dropped() {
    let (mut peers, _) = setup();
    let (_, mut stranger) = setup(); // a client of another server: its key is unknown here
    let mut buf = vec![0u8; BUFFER_SIZE];
    let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    for junk in [&b""[..], b"\x01\0\0\0", &[1u8; 148], &[4u8; 40], &[9u8; 300]] {
        assert!(collect(|e| peers.receive(a, junk, &mut buf, &mut |o| e(o))).is_empty());
    }
    let mut sbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(init) = stranger.encapsulate(&ipv4_packet(), &mut sbuf) else {
        panic!()
    };
    assert!(collect(|e| peers.receive(a, init, &mut buf, &mut |o| e(o))).is_empty());
    // Nothing is sent to a peer that never connected.
    assert!(collect(|e| peers.send(0, &ipv4_packet(), &mut buf, &mut |o| e(o))).is_empty());
}

/// The client completes a handshake with the server from `addr`.
pub(super) fn connect(peers: &mut Peers, client: &mut Tunn, addr: SocketAddr) {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, false) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(addr, &init, &mut buf, &mut |o| e(o)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1[0], 2, "a handshake response");
    let TunnResult::WriteToNetwork(keepalive) = client.decapsulate(None, &out[0].1, &mut cbuf) else {
        panic!()
    };
    let keepalive = keepalive.to_vec();
    assert!(collect(|e| peers.receive(addr, &keepalive, &mut buf, &mut |o| e(o))).is_empty());
}

/// The datagram that carries `packet` from a connected client.
pub(super) fn encrypt(client: &mut Tunn, packet: &[u8]) -> Vec<u8> {
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(datagram) = client.encapsulate(packet, &mut cbuf) else {
        panic!()
    };
    datagram.to_vec()
}

/// A handshake response as anyone can make one who knows the server's public key: random content, a guessed
/// receiver index, and a valid MAC1 (keyed BLAKE2s-128 over the message, with the key BLAKE2s-256("mac1----" ||
/// the server's public key), as the WireGuard paper defines it).
fn forged_response(server_public: &PublicKey, receiver_index: u32) -> Vec<u8> {
    let mut msg = vec![2, 0, 0, 0];
    msg.extend(rand_bytes::<4>()); // sender index
    msg.extend(receiver_index.to_le_bytes());
    msg.extend(rand_bytes::<32>()); // ephemeral key
    msg.extend(rand_bytes::<16>()); // encrypted nothing
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(server_public.as_bytes())
        .finalize();
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key).unwrap();
    Mac::update(&mut mac, &msg);
    msg.extend(mac.finalize().into_bytes());
    msg.extend([0; 16]); // no MAC2
    assert_eq!(msg.len(), 92);
    msg
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand_core::RngCore;
    let mut bytes = [0; N];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Sends forged handshake responses for peer 0 from `from`; returns how many cookie replies came back. Nothing
/// else may come back.
fn forge_responses(peers: &mut Peers, from: SocketAddr, count: u32) -> usize {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cookies = 0;
    for i in 0..count {
        let forged = forged_response(&peers.public, i & 0xff);
        let out = collect(|e| peers.receive(from, &forged, &mut buf, &mut |o| e(o)));
        match out.as_slice() {
            [] => {}
            [(to, reply)] if to == &format!("send {from}") && reply.len() == 64 && reply[0] == 3 => {
                cookies += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    cookies
}

/// Where the server sends peer 0's next packet.
fn destination(peers: &mut Peers) -> String {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let out = collect(|e| peers.send(0, &ipv4_packet(), &mut buf, &mut |o| e(o)));
    out[0].0.clone()
}

#[test]
fn forged_handshake_responses_never_move_the_endpoint() {
    let (mut peers, mut client) = setup();
    let home: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let attacker: SocketAddr = "127.0.0.2:666".parse().unwrap();
    connect(&mut peers, &mut client, home);

    // Under the limit and over it: first rejected, then answered with cookies.
    let cookies = forge_responses(&mut peers, attacker, HANDSHAKES_PER_SECOND as u32 + 20);
    assert_eq!(destination(&mut peers), format!("send {home}"));
    // The limit counts the client's initiation too.
    assert_eq!(cookies, 21, "over the limit, forged responses get cookie replies");
}

#[test]
fn a_cookie_reply_does_not_move_the_endpoint() {
    let (mut peers, mut client) = setup();
    let home: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let elsewhere: SocketAddr = "127.0.0.3:1000".parse().unwrap();
    connect(&mut peers, &mut client, home);
    // The server starts a handshake; the client, under load (its own limit is 10), answers with a cookie.
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(init) = peers.slots[0]
        .as_mut()
        .unwrap()
        .tunn
        .format_handshake_initiation(&mut buf, true)
    else {
        panic!()
    };
    let init = init.to_vec();
    let cookie = (0..20)
        .find_map(|_| match client.decapsulate(Some(home.ip()), &init, &mut cbuf) {
            TunnResult::WriteToNetwork(reply) if reply[0] == COOKIE_REPLY => Some(reply.to_vec()),
            _ => None,
        })
        .expect("a cookie reply");
    // It is valid, and the server takes it, but it says nothing about who sent it.
    assert!(collect(|e| peers.receive(elsewhere, &cookie, &mut buf, &mut |o| e(o))).is_empty());
    assert_eq!(peers.drops.invalid, 0, "the cookie was taken");
    assert_eq!(destination(&mut peers), format!("send {home}"));
}

#[test]
fn one_limit_counts_the_handshake_messages_for_every_peer() {
    let (mut peers, mut clients) = server(&[&[], &[]]);
    let attacker: SocketAddr = "127.0.0.2:666".parse().unwrap();
    let home: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    assert_eq!(
        forge_responses(&mut peers, attacker, HANDSHAKES_PER_SECOND as u32),
        0
    );
    // Responses forged for peer 0 used up the limit: peer 1's initiation is asked for a cookie too.
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(init) = clients[1].format_handshake_initiation(&mut cbuf, false) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(home, &init, &mut buf, &mut |o| e(o)));
    assert_eq!((out[0].1.len(), out[0].1[0]), (64, 3), "a cookie reply");
    // The cookie is the server's, not one peer's: with it, the retry gets in.
    assert!(matches!(
        clients[1].decapsulate(Some(home.ip()), &out[0].1, &mut cbuf),
        TunnResult::Done
    ));
    let TunnResult::WriteToNetwork(init) = clients[1].format_handshake_initiation(&mut cbuf, true) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(home, &init, &mut buf, &mut |o| e(o)));
    assert_eq!(out[0].1[0], 2, "a handshake response");
}

#[test]
fn the_limit_starts_again_each_second() {
    let (mut peers, mut client) = setup();
    let attacker: SocketAddr = "127.0.0.2:666".parse().unwrap();
    let home: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let mut initiation = |peers: &mut Peers| {
        let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, true) else {
            panic!()
        };
        let init = init.to_vec();
        collect(|e| peers.receive(home, &init, &mut buf, &mut |o| e(o)))[0].1[0]
    };
    let tick = |peers: &mut Peers| {
        let mut buf = vec![0u8; BUFFER_SIZE];
        peers.tick(Instant::now(), &mut buf, &mut |_| {});
    };
    std::thread::sleep(Duration::from_millis(1100));
    tick(&mut peers); // the count starts again here
    assert_eq!(
        forge_responses(&mut peers, attacker, HANDSHAKES_PER_SECOND as u32),
        0
    );
    tick(&mut peers);
    assert_eq!(initiation(&mut peers), 3, "within the second: a cookie");
    std::thread::sleep(Duration::from_millis(1100));
    tick(&mut peers);
    assert_eq!(initiation(&mut peers), 2, "a second later: a handshake response");
}

/// An IPv4 or IPv6 header (no payload) from `src`; boringtun checks only the length field.
pub(super) fn packet_from(src: &str) -> Vec<u8> {
    match src.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => {
            let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
            p.extend(a.octets());
            p.extend([10, 0, 0, 42]);
            p
        }
        IpAddr::V6(a) => {
            let mut p = vec![0x60, 0, 0, 0, 0, 0, 59, 64];
            p.extend(a.octets());
            p.extend("fd00::42".parse::<std::net::Ipv6Addr>().unwrap().octets());
            p
        }
    }
}

#[test]
fn packets_from_outside_the_peers_allowed_ips_are_dropped_and_counted() {
    let (mut peers, mut clients) = server(&[&["10.0.0.2/32", "fd00::2/128", "10.0.5.0/24"], &[]]);
    let home: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let moved: SocketAddr = "127.0.0.1:2000".parse().unwrap();
    connect(&mut peers, &mut clients[0], home);
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut deliver = |peers: &mut Peers, src: &str, from: SocketAddr| {
        let datagram = encrypt(&mut clients[0], &packet_from(src));
        collect(|e| peers.receive(from, &datagram, &mut buf, &mut |o| e(o)))
    };
    for src in ["10.0.0.2", "fd00::2", "10.0.5.77"] {
        assert_eq!(
            deliver(&mut peers, src, home),
            vec![("deliver 0".to_string(), packet_from(src))],
            "{src} is the peer's"
        );
    }
    for src in [
        "10.0.0.3", "10.0.0.1", "fd00::3", "10.0.6.1", "0.0.0.0", "fe80::1",
    ] {
        assert!(
            deliver(&mut peers, src, home).is_empty(),
            "{src} is not the peer's"
        );
    }
    assert_eq!((peers.drops.foreign_source, peers.drops.local_source), (4, 2));
    let (key, src) = peers.drops.last_foreign_source.clone().unwrap();
    assert_eq!(
        (&*key, src),
        (
            &*peers.slots[0].as_ref().unwrap().info.public_key,
            "10.0.6.1".parse().unwrap()
        )
    );
    // The datagram was the peer's all the same: it roams with it.
    assert!(deliver(&mut peers, "10.0.0.99", moved).is_empty());
    assert_eq!(destination(&mut peers), format!("send {moved}"));
}

#[test]
fn peers_without_allowed_ips_may_use_any_address_and_stay_apart() {
    let (mut peers, mut clients) = server(&[&[], &[]]);
    let mut buf = vec![0u8; BUFFER_SIZE];
    for (i, client) in clients.iter_mut().enumerate() {
        let addr: SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
        connect(&mut peers, client, addr);
        for src in ["10.0.0.1", "192.0.2.7", "fd00::1", "fe80::1"] {
            let datagram = encrypt(client, &packet_from(src));
            let out = collect(|e| peers.receive(addr, &datagram, &mut buf, &mut |o| e(o)));
            assert_eq!(out, vec![(format!("deliver {i}"), packet_from(src))]);
        }
    }
    assert_eq!(peers.drops.foreign_source + peers.drops.local_source, 0);
}

/// A packet too large for a WireGuard datagram is dropped, not handed to boringtun (which panics on it); the
/// largest one that fits goes out.
#[test]
fn packets_too_large_to_encrypt_are_dropped_not_a_panic() {
    let (mut peers, mut client) = setup();
    let mut buf = vec![0u8; BUFFER_SIZE];
    connect(&mut peers, &mut client, "127.0.0.1:1000".parse().unwrap());

    let too_large = vec![0x60; MAX_PACKET + 1];
    assert!(collect(|e| peers.send(0, &too_large, &mut buf, &mut |o| e(o))).is_empty());
    let largest = vec![0x60; MAX_PACKET];
    let out = collect(|e| peers.send(0, &largest, &mut buf, &mut |o| e(o)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.len(), BUFFER_SIZE);
}

/// A client of the server that does not know it: its initiations have a valid MAC1 and fail at the lookup of
/// its static key, after one Diffie-Hellman.
fn stranger(peers: &Peers, index: u32) -> Tunn {
    let server_key = keys::public("s", &keys::encode(peers.public.as_bytes())).unwrap();
    Tunn::new(
        keys::secret("x", &keys::generate()).unwrap(),
        server_key,
        None,
        None,
        index,
        None,
    )
}

/// Puts the server under load (past the cookie threshold) with forged responses from an address of their own.
fn load(peers: &mut Peers) {
    let loader: SocketAddr = "127.0.0.9:9".parse().unwrap();
    forge_responses(peers, loader, HANDSHAKES_PER_SECOND as u32);
    peers.drops = Drops::default();
}

/// The initiation of `client` with a valid MAC2 for `from`: sent once without, the server's cookie reply gives
/// the cookie, which the client uses in its next one (boringtun decrypts the cookie with XChaCha20-Poly1305
/// under the server's key, the MAC1 of the message it answers as additional data).
fn initiation_with_mac2(peers: &mut Peers, client: &mut Tunn, from: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, true) else {
        panic!()
    };
    let init = init.to_vec();
    let out = collect(|e| peers.receive(from, &init, &mut buf, &mut |o| e(o)));
    assert_eq!(
        (out.len(), out[0].1.len(), out[0].1[0]),
        (1, 64, 3),
        "a cookie reply"
    );
    assert!(matches!(
        client.decapsulate(Some(from.ip()), &out[0].1, &mut cbuf),
        TunnResult::Done
    ));
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, true) else {
        panic!()
    };
    init.to_vec()
}

#[test]
fn a_replayed_initiation_with_a_valid_mac2_reaches_a_diffie_hellman_only_as_its_source_may() {
    let (mut peers, _) = setup();
    let attacker: SocketAddr = "127.0.0.2:666".parse().unwrap();
    let mut buf = vec![0u8; BUFFER_SIZE];
    load(&mut peers);
    let mut client = stranger(&peers, 1);
    let init = initiation_with_mac2(&mut peers, &mut client, attacker);
    let before = peers.drops.unknown_peer;
    let start = Instant::now();
    for _ in 0..200 {
        assert!(collect(|e| peers.receive(attacker, &init, &mut buf, &mut |o| e(o))).is_empty());
    }
    let elapsed = start.elapsed();
    // The MAC2 is valid: no cookie reply, each copy reaches the lookup of its key, as far as its bucket lets it.
    let reached = peers.drops.unknown_peer - before;
    let may = handshake_limit::PER_SOURCE_BURST
        + (elapsed.as_secs_f64() * handshake_limit::PER_SOURCE_RATE as f64) as u64
        + 1;
    assert!(
        reached <= may,
        "{reached} of 200 copies reached a Diffie-Hellman in {elapsed:?}"
    );
    assert_eq!(peers.drops.source_limited, 200 - reached);
    assert_eq!(
        peers.drops.cookies, 1,
        "only the first initiation got a cookie reply"
    );
}

#[test]
fn initiations_with_valid_mac2s_from_many_sources_are_bounded_together() {
    // A global bucket a debug build can reach (the real one is tested in `handshake_limit`).
    const RATE: u64 = 5;
    const BURST: u64 = 10;
    let (mut peers, _) = setup();
    peers.handshakes = HandshakeLimit::with_global(Instant::now(), RATE, BURST);
    let mut buf = vec![0u8; BUFFER_SIZE];
    load(&mut peers);
    let mut client = stranger(&peers, 1);
    // One initiation per source, each with the MAC2 of its source: no source's bucket is ever empty.
    let sources: u32 = 60;
    let inits: Vec<(SocketAddr, Vec<u8>)> = (0..sources)
        .map(|i| {
            let from = SocketAddr::from(((0x0a00_0000 + i).to_be_bytes(), 1000));
            (from, initiation_with_mac2(&mut peers, &mut client, from))
        })
        .collect();
    // Getting the cookies took time, in which the global bucket filled up again.
    let before = peers.drops.unknown_peer;
    let start = Instant::now();
    for (from, init) in &inits {
        assert!(collect(|e| peers.receive(*from, init, &mut buf, &mut |o| e(o))).is_empty());
    }
    let elapsed = start.elapsed();
    let reached = peers.drops.unknown_peer - before;
    let may = BURST + (elapsed.as_secs_f64() * RATE as f64) as u64 + 1;
    assert!(
        reached <= may,
        "{reached} of {sources} initiations reached a Diffie-Hellman in {elapsed:?}"
    );
    assert_eq!(peers.drops.source_limited, 0);
    assert_eq!(peers.drops.over_budget, u64::from(sources) - reached);
}

/// What one handshake initiation costs the server, in a release build:
/// `cargo test --release --lib handshake_cost -- --ignored --nocapture`. Each from a source of its own, fewer
/// than the cookie threshold at a time; the best of several rounds.
#[test]
#[ignore]
fn handshake_cost() {
    const N: usize = 90;
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..10 {
        let (mut peers, mut clients) = server(&[&[] as &[&str]; N]);
        let mut buf = vec![0u8; BUFFER_SIZE];
        let mut cbuf = vec![0u8; BUFFER_SIZE];
        let known: Vec<Vec<u8>> = clients
            .iter_mut()
            .map(|c| match c.format_handshake_initiation(&mut cbuf, false) {
                TunnResult::WriteToNetwork(init) => init.to_vec(),
                _ => panic!(),
            })
            .collect();
        let unknown: Vec<Vec<u8>> = (0..N as u32)
            .map(
                |i| match stranger(&peers, i).format_handshake_initiation(&mut cbuf, false) {
                    TunnResult::WriteToNetwork(init) => init.to_vec(),
                    _ => panic!(),
                },
            )
            .collect();
        let mut time = |inits: &[Vec<u8>], peers: &mut Peers| {
            peers.tick(Instant::now() + Duration::from_secs(2), &mut cbuf, &mut |_| {});
            let start = Instant::now();
            for (i, init) in inits.iter().enumerate() {
                let from = SocketAddr::from(([10, 0, 0, i as u8], 1000));
                peers.receive(from, init, &mut buf, &mut |_| {});
            }
            start.elapsed().as_secs_f64() / inits.len() as f64
        };
        let k = time(&known, &mut peers);
        assert_eq!(peers.drops.cookies, 0);
        std::thread::sleep(Duration::from_millis(1100));
        let u = time(&unknown, &mut peers);
        assert_eq!(peers.drops.unknown_peer, N as u64);
        best = (best.0.min(k), best.1.min(u));
    }
    println!(
        "a handshake initiation costs {:.0} µs for a known peer, {:.0} µs from an unknown key",
        best.0 * 1e6,
        best.1 * 1e6
    );
}

#[test]
fn handshakes_unanswered_for_90_s_are_reported_once_with_the_endpoint() {
    let (mut peers, _client) = server(&[&[]]);
    let endpoint: SocketAddr = "192.0.2.9:51820".parse().unwrap();
    peers.slots[0].as_mut().unwrap().endpoint = Some(endpoint);
    let mut buf = vec![0; BUFFER_SIZE];
    // A packet for the peer, with no session: boringtun starts a handshake, which nobody answers.
    let sent = collect(|emit| peers.send(0, &ipv4_packet(), &mut buf, &mut |o| emit(o)));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1[0], HANDSHAKE_INITIATION);
    let start = Instant::now();
    let failed =
        |out: &[(String, Vec<u8>)]| out.iter().filter(|(what, _)| what.starts_with("failed")).count();
    let early = collect(|emit| peers.tick(start + Duration::from_secs(89), &mut buf, &mut |o| emit(o)));
    assert_eq!(failed(&early), 0);
    let due = collect(|emit| {
        peers.tick(
            start + HANDSHAKE_ATTEMPTS + Duration::from_secs(1),
            &mut buf,
            &mut |o| emit(o),
        )
    });
    assert_eq!(
        due.iter()
            .find(|(what, _)| what.starts_with("failed"))
            .map(|(w, _)| w.as_str()),
        Some("failed 0 192.0.2.9:51820")
    );
    let later = collect(|emit| peers.tick(start + Duration::from_secs(120), &mut buf, &mut |o| emit(o)));
    assert_eq!(failed(&later), 0, "reported once");
}

#[test]
fn a_configured_endpoint_is_where_the_first_handshake_goes() {
    let server_key = keys::generate();
    let mut peer = PeerConfig::from_private_key("c", &keys::generate()).unwrap();
    peer.endpoint = Some("192.0.2.9:51820".into());
    let config = Configuration {
        private_key: server_key,
        peers: vec![peer],
        ..Configuration::default()
    };
    let mut peers = Peers::new(&config).unwrap();
    let mut buf = vec![0; BUFFER_SIZE];
    let sent = collect(|emit| peers.send(0, &ipv4_packet(), &mut buf, &mut |o| emit(o)));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "send 192.0.2.9:51820");
}
