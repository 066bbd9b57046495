//! Unit tests of peers added and removed while the server runs, and of what is counted of each peer.

use super::super::*;
use super::{collect, connect, encrypt, packet_from, server};
use crate::config::Peer as PeerConfig;

/// A new peer's configuration (any address) and its client's `Tunn`, for the server `peers`.
fn new_client(peers: &Peers, index: u32) -> (PeerConfig, Tunn) {
    let key = keys::generate();
    let config = PeerConfig::from_private_key("c", &key).unwrap();
    let client = Tunn::new(
        keys::secret("c", &key).unwrap(),
        peers.public,
        None,
        None,
        index,
        None,
    );
    (config, client)
}

fn key_of(config: &PeerConfig) -> [u8; 32] {
    keys::decode("k", &config.public_key).unwrap()
}

/// What the server makes of one datagram.
fn receive(peers: &mut Peers, from: SocketAddr, datagram: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    collect(|e| peers.receive(from, datagram, &mut buf, &mut |o| e(o)))
}

fn send(peers: &mut Peers, id: PeerId, packet: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    collect(|e| peers.send(id, packet, &mut buf, &mut |o| e(o)))
}

fn initiation(client: &mut Tunn) -> Vec<u8> {
    let mut cbuf = vec![0u8; BUFFER_SIZE];
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, true) else {
        panic!()
    };
    init.to_vec()
}

#[test]
fn a_peer_added_at_runtime_handshakes_at_once_under_a_new_id() {
    let (mut peers, _) = server(&[&[]]);
    let (config, mut client) = new_client(&peers, 1);
    let info = peers.add(&config).unwrap();
    assert_eq!(info.id, 1);
    assert_eq!(&*info.public_key, config.public_key);
    let addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    connect(&mut peers, &mut client, addr);
    let datagram = encrypt(&mut client, &packet_from("10.0.0.9"));
    let out = receive(&mut peers, addr, &datagram);
    assert_eq!(out, vec![("deliver 1".to_string(), packet_from("10.0.0.9"))]);
    // The same key twice is an error that names the field.
    let err = peers.add(&config).unwrap_err().to_string();
    assert!(err.contains("public_key") && err.contains("already"), "{err}");
}

#[test]
fn a_removed_peer_is_refused_and_gets_only_its_last_packets_until_forgotten() {
    let (mut peers, mut clients) = server(&[&[], &[]]);
    let addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let other: SocketAddr = "127.0.0.1:2000".parse().unwrap();
    connect(&mut peers, &mut clients[0], addr);
    connect(&mut peers, &mut clients[1], other);
    let stale = encrypt(&mut clients[0], &packet_from("10.0.0.9"));

    let key = *peers.by_key.iter().find(|(_, &slot)| slot == 0).unwrap().0;
    assert_eq!(peers.remove(&key), Some(0));
    assert_eq!(peers.remove(&key), None, "removed once");
    // Its data and its new handshakes are dropped, without a reply.
    assert!(receive(&mut peers, addr, &stale).is_empty());
    let init = initiation(&mut clients[0]);
    assert!(receive(&mut peers, addr, &init).is_empty());
    // Until forgotten, its session still carries packets to it (the resets of its connections)...
    let out = send(&mut peers, 0, &packet_from("10.0.0.42"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1[0], DATA);
    // ... and the statistics no longer list it.
    let ids: Vec<_> = peers
        .stats(Instant::now(), SystemTime::now())
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![1]);
    peers.forget(0);
    assert!(send(&mut peers, 0, &packet_from("10.0.0.42")).is_empty());
    assert!(peers.info(0).is_none());
    // The other peer goes on.
    let datagram = encrypt(&mut clients[1], &packet_from("10.0.0.9"));
    assert_eq!(receive(&mut peers, other, &datagram)[0].0, "deliver 1");
}

#[test]
fn a_removed_peer_with_an_expired_session_starts_no_handshake() {
    let (mut peers, _) = server(&[&[]]);
    let (config, mut client) = new_client(&peers, 1);
    let info = peers.add(&config).unwrap();
    let addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    // The peer has an endpoint (it connected once), then is removed and loses its session.
    connect(&mut peers, &mut client, addr);
    peers.remove(&key_of(&config));
    let slot = peers.by_id[&info.id];
    let peer = peers.slots[slot].as_mut().unwrap();
    // A Tunn without a session answers a packet with a handshake initiation: that must not go out.
    peer.tunn = Tunn::new(
        peers.secret.clone(),
        PublicKey::from(key_of(&config)),
        None,
        None,
        slot as u32,
        None,
    );
    assert!(send(&mut peers, info.id, &packet_from("10.0.0.42")).is_empty());
}

#[test]
fn ids_are_never_reused_and_a_reused_slot_does_not_take_the_old_peers_datagrams() {
    let (mut peers, _) = server(&[]);
    let (a, mut client_a) = new_client(&peers, 1);
    let (b, _) = new_client(&peers, 2);
    assert_eq!(peers.add(&a).unwrap().id, 0);
    assert_eq!(peers.add(&b).unwrap().id, 1);
    let addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    connect(&mut peers, &mut client_a, addr);
    let stale = encrypt(&mut client_a, &packet_from("10.0.0.9"));

    peers.remove(&key_of(&a));
    peers.forget(0);
    let (c, _) = new_client(&peers, 3);
    let c_info = peers.add(&c).unwrap();
    assert_eq!(c_info.id, 2, "a new id, never 0 again");
    assert_eq!(peers.by_id[&2], 0, "the freed slot is reused");
    // A's datagram names slot 0, now C's: it does not authenticate there.
    assert!(receive(&mut peers, addr, &stale).is_empty());
    let stats = peers.stats(Instant::now(), SystemTime::now());
    let c_stats = stats.iter().find(|s| s.id == 2).unwrap();
    assert_eq!(c_stats.rx_packets, 0);
    assert!(c_stats.drops.contains(&("invalid", 1)), "{:?}", c_stats.drops);
    // The same key may come back, as a new peer.
    assert_eq!(peers.add(&a).unwrap().id, 3);
    assert!(peers.info(0).is_none());
}

#[test]
fn each_peer_has_its_own_counts() {
    let (mut peers, mut clients) = server(&[&["10.0.0.2/32"], &["10.0.0.3/32"]]);
    let addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let before = SystemTime::now();
    connect(&mut peers, &mut clients[0], addr);
    let mut sent = 0;
    for _ in 0..3 {
        let datagram = encrypt(&mut clients[0], &packet_from("10.0.0.2"));
        sent += datagram.len();
        assert_eq!(receive(&mut peers, addr, &datagram).len(), 1);
    }
    let forged = encrypt(&mut clients[0], &packet_from("10.0.0.3"));
    assert!(receive(&mut peers, addr, &forged).is_empty());
    assert!(receive(&mut peers, addr, &forged).is_empty(), "a replay");
    let reply = send(&mut peers, 0, &packet_from("10.0.0.42"));
    assert!(send(&mut peers, 1, &packet_from("10.0.0.42")).is_empty());

    let stats = peers.stats(Instant::now(), SystemTime::now());
    let (first, second) = (&stats[0], &stats[1]);
    assert_eq!(first.endpoint, Some(addr));
    assert!(first
        .last_handshake
        .is_some_and(|t| t >= before - Duration::from_secs(1)));
    assert_eq!(first.allowed_ips, vec!["10.0.0.2/32".parse::<IpNet>().unwrap()]);
    // The initiation and the keepalive, three packets and the forged one (authenticated, then dropped).
    assert_eq!(first.rx_packets, 2 + 3 + 1);
    assert!(first.rx_bytes > (sent + forged.len()) as u64);
    // The handshake response and the reply.
    assert_eq!(first.tx_packets, 2);
    assert_eq!(first.tx_bytes, (92 + reply[0].1.len()) as u64);
    let drops: HashMap<_, _> = first.drops.iter().copied().collect();
    assert_eq!(
        (drops["allowed_ips"], drops["replayed"], drops["no_session"]),
        (1, 1, 0)
    );

    assert_eq!(
        (second.rx_packets, second.tx_packets, second.endpoint),
        (0, 0, None)
    );
    assert!(second.last_handshake.is_none());
    assert!(second.drops.contains(&("no_session", 1)));
}
