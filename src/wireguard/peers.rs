//! The WireGuard protocol state of every peer: which peer a datagram belongs to, and what to send in reply.
//!
//! No I/O happens here: the caller passes datagrams in and gets `Output`s back, so the logic is tested with
//! packets built in the test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::config::Configuration;
use crate::error::Result;
use crate::keys;
use crate::messages::{PeerId, PeerInfo};

/// Handshake initiations a second, over all peers, before the server asks for cookies (as boringtun's own
/// device does).
const HANDSHAKES_PER_SECOND: u64 = 100;

/// How often drops are reported.
const PERIOD: Duration = Duration::from_secs(1);

/// Big enough for any datagram: a decapsulated packet is never larger than the datagram it came in.
pub const BUFFER_SIZE: usize = 65536 + 32;

/// What encryption adds to a packet: the data message's header (16 bytes) and the authentication tag (16).
const DATA_OVERHEAD: usize = 32;

/// The largest IP packet that fits in `BUFFER_SIZE` once encrypted. The stack fragments everything it makes up
/// to the tunnel's MTU, far below this; the check in `send` is the last line of defence, since boringtun panics
/// on a packet that does not fit.
pub const MAX_PACKET: usize = BUFFER_SIZE - DATA_OVERHEAD;

/// What the caller must do after feeding a datagram or a packet in.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Send this datagram to this address.
    Send(SocketAddr, &'a [u8]),
    /// An IP packet from a peer, for the network stack.
    Deliver {
        peer: PeerId,
        endpoint: SocketAddr,
        packet: &'a [u8],
    },
}

struct Peer {
    tunn: Tunn,
    info: PeerInfo,
    /// Where the last authenticated datagram came from: replies go there (roaming).
    endpoint: Option<SocketAddr>,
}

pub struct Peers {
    secret: StaticSecret,
    public: PublicKey,
    /// Sits in front of all peers, so that a flood of initiations costs a MAC check each, not a Diffie-Hellman.
    limiter: Arc<RateLimiter>,
    peers: Vec<Peer>,
    by_key: HashMap<[u8; 32], PeerId>,
    /// Datagrams that anyone can send in any number are counted, not logged one by one: a log record per
    /// datagram of a flood would cost more than answering it.
    drops: Drops,
    period_start: Option<Instant>,
}

#[derive(Default)]
struct Drops {
    not_wireguard: u64,
    bad_mac: u64,
    cookies: u64,
    undecryptable: u64,
    unknown_peer: u64,
    last_unknown_peer: Option<[u8; 32]>,
    unknown_index: u64,
    invalid: u64,
}

impl Drops {
    /// One record for the period, if anything was dropped; then the counts start again.
    fn report(&mut self) {
        let drops = std::mem::take(self);
        if let Some(key) = drops.last_unknown_peer {
            log::info!(
                "{} handshake(s) by unknown peers, the last by {}",
                drops.unknown_peer,
                keys::encode(&key)
            );
        }
        let counts = [
            (drops.cookies, "handshakes answered with a cookie (under load)"),
            (drops.not_wireguard, "datagrams that are no WireGuard message"),
            (drops.bad_mac, "handshakes with a bad MAC"),
            (drops.undecryptable, "handshakes that do not decrypt"),
            (drops.unknown_index, "datagrams for an unknown receiver index"),
            (drops.invalid, "datagrams that do not authenticate"),
        ];
        for (n, what) in counts {
            if n > 0 {
                log::debug!("in the last second: {n} {what}");
            }
        }
    }
}

impl Peers {
    pub fn new(config: &Configuration) -> Result<Self> {
        config.validate()?;
        let secret = keys::secret("server_private_key", &config.private_key)?;
        let public = PublicKey::from(&secret);
        let mut peers = Vec::with_capacity(config.peers.len());
        let mut by_key = HashMap::new();
        for (id, peer) in config.peers.iter().enumerate() {
            let key = keys::decode("peer public key", &peer.public_key)?;
            let psk = match &peer.preshared_key {
                Some(psk) => Some(keys::decode("preshared key", psk)?),
                None => None,
            };
            let tunn = Tunn::new(
                secret.clone(),
                PublicKey::from(key),
                psk,
                peer.persistent_keepalive,
                id as u32,
                None,
            );
            peers.push(Peer {
                tunn,
                info: PeerInfo {
                    id,
                    public_key: peer.public_key.as_str().into(),
                },
                endpoint: None,
            });
            by_key.insert(key, id);
        }
        Ok(Peers {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            secret,
            public,
            peers,
            by_key,
            drops: Drops::default(),
            period_start: None,
        })
    }

    pub fn info(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peers.get(peer).map(|p| &p.info)
    }

    /// Handles one datagram from `src`. Anything that does not authenticate is dropped with a debug log.
    pub fn receive(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        emit: &mut impl FnMut(Output),
    ) {
        let id = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                self.drops.not_wireguard += 1;
                return;
            }
            Ok(Packet::HandshakeInit(init)) => {
                match self.limiter.verify_packet(Some(src.ip()), datagram, buf) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        self.drops.cookies += 1;
                        emit(Output::Send(src, cookie));
                        return;
                    }
                    Err(_) => {
                        self.drops.bad_mac += 1;
                        return;
                    }
                }
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                    self.drops.undecryptable += 1;
                    return;
                };
                match self.by_key.get(&half.peer_static_public) {
                    Some(&id) => id,
                    None => {
                        self.drops.unknown_peer += 1;
                        self.drops.last_unknown_peer = Some(half.peer_static_public);
                        return;
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => (p.receiver_idx >> 8) as usize,
            Ok(Packet::PacketCookieReply(p)) => (p.receiver_idx >> 8) as usize,
            Ok(Packet::PacketData(p)) => (p.receiver_idx >> 8) as usize,
        };
        let Some(peer) = self.peers.get_mut(id) else {
            self.drops.unknown_index += 1;
            return;
        };
        match peer.tunn.decapsulate(Some(src.ip()), datagram, buf) {
            TunnResult::Done => peer.endpoint = Some(src),
            TunnResult::Err(WireGuardError::DuplicateCounter) => {}
            TunnResult::Err(_) => self.drops.invalid += 1,
            TunnResult::WriteToNetwork(reply) => {
                if datagram_is_authenticated(datagram) {
                    peer.endpoint = Some(src);
                }
                emit(Output::Send(src, reply));
                // Packets queued while there was no session go out now.
                while let TunnResult::WriteToNetwork(packet) = peer.tunn.decapsulate(None, &[], buf) {
                    emit(Output::Send(src, packet));
                }
            }
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                peer.endpoint = Some(src);
                emit(Output::Deliver {
                    peer: id,
                    endpoint: src,
                    packet,
                });
            }
        }
    }

    /// Encrypts one IP packet for a peer. Without a session, boringtun queues it and starts a handshake.
    pub fn send(&mut self, id: PeerId, packet: &[u8], buf: &mut [u8], emit: &mut impl FnMut(Output)) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            log::debug!("dropped a packet for peer {id}: it never connected");
            return;
        };
        if packet.len() > MAX_PACKET.min(buf.len().saturating_sub(DATA_OVERHEAD)) {
            log::warn!(
                "dropped a packet of {} bytes for peer {id}: too large to encrypt",
                packet.len()
            );
            return;
        }
        match peer.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(datagram) => emit(Output::Send(endpoint, datagram)),
            TunnResult::Err(e) => log::debug!("could not encrypt a packet for peer {id}: {e:?}"),
            _ => {}
        }
    }

    /// Drives every peer's timers: handshake retries, keepalives, session expiry. Call a few times a second.
    /// The limiter's count starts again once a second (it keeps that period itself); drops are reported once
    /// a second too.
    pub fn tick(&mut self, now: Instant, buf: &mut [u8], emit: &mut impl FnMut(Output)) {
        self.limiter.reset_count();
        if self
            .period_start
            .is_none_or(|start| now.duration_since(start) >= PERIOD)
        {
            self.period_start = Some(now);
            self.drops.report();
        }
        for peer in &mut self.peers {
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    if let Some(endpoint) = peer.endpoint {
                        emit(Output::Send(endpoint, datagram));
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => log::debug!("timer error for peer {}: {e:?}", peer.info.id),
                _ => {}
            }
        }
    }
}

/// Cookie replies are the only messages a peer's key does not vouch for.
fn datagram_is_authenticated(datagram: &[u8]) -> bool {
    !matches!(
        Tunn::parse_incoming_packet(datagram),
        Ok(Packet::PacketCookieReply(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Peer as PeerConfig;

    /// A client Tunn and a server configured to accept it.
    fn setup() -> (Peers, Tunn) {
        let server_key = keys::generate();
        let client_key = keys::generate();
        let config = Configuration {
            listen_port: 0,
            private_key: server_key.clone(),
            peers: vec![PeerConfig::from_private_key("c", &client_key).unwrap()],
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

    fn collect(f: impl FnOnce(&mut dyn FnMut(Output))) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![];
        f(&mut |o| match o {
            Output::Send(addr, d) => out.push((format!("send {addr}"), d.to_vec())),
            Output::Deliver { peer, packet, .. } => out.push((format!("deliver {peer}"), packet.to_vec())),
        });
        out
    }

    fn ipv4_packet() -> Vec<u8> {
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
        let attacker: SocketAddr = "127.0.0.1:666".parse().unwrap();
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
            let TunnResult::WriteToNetwork(init) = stranger.format_handshake_initiation(&mut cbuf, false)
            else {
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

    /// A packet too large for a WireGuard datagram is dropped, not handed to boringtun (which panics on it);
    /// the largest one that fits goes out.
    #[test]
    fn packets_too_large_to_encrypt_are_dropped_not_a_panic() {
        let (mut peers, mut client) = setup();
        let mut buf = vec![0u8; BUFFER_SIZE];
        let mut cbuf = vec![0u8; BUFFER_SIZE];
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, false) else {
            panic!()
        };
        let init = init.to_vec();
        let out = collect(|e| peers.receive(a, &init, &mut buf, &mut |o| e(o)));
        let TunnResult::WriteToNetwork(keepalive) = client.decapsulate(None, &out[0].1, &mut cbuf) else {
            panic!()
        };
        let keepalive = keepalive.to_vec();
        collect(|e| peers.receive(a, &keepalive, &mut buf, &mut |o| e(o)));

        let too_large = vec![0x60; MAX_PACKET + 1];
        assert!(collect(|e| peers.send(0, &too_large, &mut buf, &mut |o| e(o))).is_empty());
        let largest = vec![0x60; MAX_PACKET];
        let out = collect(|e| peers.send(0, &largest, &mut buf, &mut |o| e(o)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), BUFFER_SIZE);
    }
}
