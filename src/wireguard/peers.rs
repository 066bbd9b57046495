//! The WireGuard protocol state of every peer: which peer a datagram belongs to, and what to send in reply.
//!
//! No I/O happens here: the caller passes datagrams in and gets `Output`s back, so the logic is tested with
//! packets built in the test.
//!
//! Who may do what:
//! - One rate limiter (one cookie secret) sits in front of every peer and checks each handshake message's MAC1
//!   first; over its limit it answers with a cookie reply, whoever the message claims to be for. A cookie reply
//!   proves nothing about who sent the datagram (MAC1 needs only the server's public key).
//! - Behind it, handshake messages that passed the MAC checks reach a Diffie-Hellman only as far as a bucket per
//!   source address and one for all sources let them (`handshake_limit`): a cookie proves an address, and a
//!   message with a valid MAC2 passes the limiter however often it is replayed.
//! - A peer's endpoint moves only on a datagram that its key authenticated: a handshake initiation that was
//!   accepted (as WireGuard does; a replay is refused by its timestamp, but boringtun keeps the last one in
//!   memory only, so after a restart a recorded initiation is accepted once: SECURITY.md), a handshake response,
//!   a keepalive or data. Never on a cookie, in either direction.
//! - A decrypted packet whose source address is not in its peer's AllowedIPs is dropped (cryptokey routing),
//!   unless the peer may use any address (configured without AllowedIPs).
//!
//! Peers come and go while the server runs. Each sits in a slot, whose number is its `Tunn`'s index: boringtun
//! puts it in the top 24 bits of every receiver index it hands out, so a datagram finds its peer's slot in one
//! step. A removed peer's handshakes are refused at once; its slot stays taken until the network task has sent
//! its last packets (`forget`), and is then reused, oldest freed first. A stale datagram for the slot's
//! earlier peer does not authenticate with the new one's keys. Peer ids (`PeerId`) are never reused.

mod counters;
mod drops;
mod handshake_limit;

use log::Level;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::config::{self, Configuration};
use crate::error::{Error, Result};
use crate::keys;
use crate::messages::{PeerId, PeerInfo, PeerStats};
use counters::Counters;
use drops::Drops;
use handshake_limit::{HandshakeLimit, Refused};

/// Handshake messages a second, over all peers, before the server asks for cookies (as boringtun's own
/// device does).
const HANDSHAKES_PER_SECOND: u64 = 100;

/// How often drops are reported.
const PERIOD: Duration = Duration::from_secs(1);

/// Big enough for any datagram: a decapsulated packet is never larger than the datagram it came in.
pub const BUFFER_SIZE: usize = 65536 + 32;

/// The message type of a handshake initiation (WireGuard's message type 1).
const HANDSHAKE_INITIATION: u8 = 1;

/// How long handshakes are tried before the tunnel counts as down: WireGuard's REKEY_ATTEMPT_TIME, after which
/// boringtun too gives up and drops the packets it queued.
pub const HANDSHAKE_ATTEMPTS: Duration = Duration::from_secs(90);

/// The message type of a cookie reply (WireGuard's message type 3).
const COOKIE_REPLY: u8 = 3;

/// The message type of a data message (WireGuard's message type 4).
const DATA: u8 = 4;

/// Slots a `Tunn` index can name: boringtun shifts it left by 8 bits within a u32.
const MAX_SLOTS: usize = 1 << 24;

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
    /// No handshake with the peer completed within `HANDSHAKE_ATTEMPTS` of sending its first initiation.
    HandshakeFailed { peer: PeerId, endpoint: SocketAddr },
}

/// The source addresses a peer's packets may have.
#[derive(Debug)]
enum AllowedIps {
    /// Peers configured without addresses may use any; the network stack keeps peers that use the same address
    /// apart.
    Any,
    /// The peer's AllowedIPs: a short list of its own, so a packet's check does not grow with the peers.
    Only(Vec<IpNet>),
}

impl AllowedIps {
    fn new(nets: &[IpNet]) -> Self {
        if nets.is_empty() {
            AllowedIps::Any
        } else {
            AllowedIps::Only(nets.to_vec())
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        match self {
            AllowedIps::Any => true,
            AllowedIps::Only(nets) => nets.iter().any(|net| net.contains(&addr)),
        }
    }

    fn nets(&self) -> &[IpNet] {
        match self {
            AllowedIps::Any => &[],
            AllowedIps::Only(nets) => nets,
        }
    }
}

struct Peer {
    tunn: Tunn,
    info: PeerInfo,
    allowed_ips: AllowedIps,
    /// Where the last authenticated datagram came from: replies go there (roaming).
    endpoint: Option<SocketAddr>,
    /// Removed, waiting for `forget`: it receives nothing and starts no handshake; data still goes out.
    removed: bool,
    /// When the first handshake initiation since the last completed handshake went out.
    initiating_since: Option<Instant>,
    counters: Counters,
}

impl Peer {
    /// Sends a datagram to the peer, counting it.
    fn send(&mut self, addr: SocketAddr, datagram: &[u8], emit: &mut impl FnMut(Output)) {
        if datagram.first() == Some(&HANDSHAKE_INITIATION) && self.initiating_since.is_none() {
            self.initiating_since = Some(Instant::now());
        }
        self.counters.sent(datagram.len());
        emit(Output::Send(addr, datagram));
    }
}

pub struct Peers {
    secret: StaticSecret,
    public: PublicKey,
    /// Sits in front of all peers, so that a flood of handshake messages costs a MAC check each, not a
    /// Diffie-Hellman, and so that a cookie reply is decided once for the whole server.
    limiter: Arc<RateLimiter>,
    /// Given to every `Tunn`: see `new`.
    mac_check: Arc<RateLimiter>,
    /// Indexed by the `Tunn`'s index.
    slots: Vec<Option<Peer>>,
    /// Empty slots, the longest empty first.
    free: VecDeque<usize>,
    by_id: HashMap<PeerId, usize>,
    /// The peers not removed, by public key.
    by_key: HashMap<[u8; 32], usize>,
    next_id: PeerId,
    /// Behind `limiter`: how many handshake messages that passed it reach a Diffie-Hellman, from each source and
    /// from all together (a valid MAC2 lets a message past `limiter` however often it is sent).
    handshakes: HandshakeLimit,
    drops: Drops,
    period_start: Option<Instant>,
}

impl Peers {
    pub fn new(config: &Configuration) -> Result<Self> {
        config.validate()?;
        let secret = keys::secret("server_private_key", &config.private_key)?;
        let public = PublicKey::from(&secret);
        // Every `Tunn` checks a handshake's MAC1 again, with a limiter of its own unless given one. Given one
        // that is never over its limit, it never answers with a cookie: that is decided by `limiter`, once per
        // message, before the message reaches a peer. (With a limiter of its own, each peer had a cookie secret
        // and a limit of its own.) Its count is never reset; a u64 does not reach the limit.
        let mac_check = Arc::new(RateLimiter::new(&public, u64::MAX));
        let mut peers = Peers {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            mac_check,
            secret,
            public,
            slots: Vec::with_capacity(config.peers.len()),
            free: VecDeque::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 0,
            handshakes: HandshakeLimit::new(Instant::now()),
            drops: Drops::default(),
            period_start: None,
        };
        for peer in &config.peers {
            peers.add(peer)?;
        }
        Ok(peers)
    }

    /// Adds a peer, which may handshake at once, and returns its id and key. Its values must be valid (the
    /// configuration checked them); a key that is a peer's already is an error.
    pub fn add(&mut self, peer: &config::Peer) -> Result<PeerInfo> {
        let key = keys::decode("public_key", &peer.public_key)?;
        if self.by_key.contains_key(&key) {
            return Err(Error::config(
                "public_key",
                format!("the server has a peer with this key already: {}", peer.public_key),
            ));
        }
        let psk = match &peer.preshared_key {
            Some(psk) => Some(keys::decode("preshared_key", psk)?),
            None => None,
        };
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                return Err(Error::config(
                    "public_key",
                    "the server has as many peers as it can",
                ))
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(key),
            psk,
            peer.persistent_keepalive,
            slot as u32,
            Some(self.mac_check.clone()),
        );
        let info = PeerInfo {
            id,
            public_key: peer.public_key.as_str().into(),
        };
        self.slots[slot] = Some(Peer {
            tunn,
            info: info.clone(),
            allowed_ips: AllowedIps::new(&peer.allowed_ips),
            // A literal address; a name was resolved by whoever gave it (`Server::start` for a client).
            endpoint: peer.endpoint.as_deref().and_then(|e| e.parse().ok()),
            removed: false,
            initiating_since: None,
            counters: Counters::default(),
        });
        self.by_id.insert(id, slot);
        self.by_key.insert(key, slot);
        Ok(info)
    }

    /// Removes the peer with this key: from now on its datagrams are dropped and its handshakes refused.
    /// Packets for it are still encrypted with the session it has, until `forget`. Returns its id.
    pub fn remove(&mut self, key: &[u8; 32]) -> Option<PeerId> {
        let slot = self.by_key.remove(key)?;
        let peer = self.slots[slot].as_mut()?;
        peer.removed = true;
        Some(peer.info.id)
    }

    /// Drops a removed peer's session and frees its slot.
    pub fn forget(&mut self, id: PeerId) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        if self.slots[slot].as_ref().is_some_and(|p| p.removed) {
            self.by_id.remove(&id);
            self.slots[slot] = None;
            self.free.push_back(slot);
        }
    }

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.slots[*self.by_id.get(&id)?].as_ref()
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.slots[*self.by_id.get(&id)?].as_mut()
    }

    /// Every peer's statistics (those removed excepted), in the order they were added.
    pub fn stats(&self, now: Instant, wall: SystemTime) -> Vec<PeerStats> {
        let mut stats: Vec<PeerStats> = self
            .slots
            .iter()
            .flatten()
            .filter(|p| !p.removed)
            .map(|p| {
                let mut s = PeerStats {
                    id: p.info.id,
                    public_key: p.info.public_key.clone(),
                    allowed_ips: p.allowed_ips.nets().to_vec(),
                    endpoint: p.endpoint,
                    ..PeerStats::default()
                };
                p.counters.fill(&mut s, now, wall);
                s
            })
            .collect();
        stats.sort_by_key(|s| s.id);
        stats
    }

    pub fn info(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peer(peer).map(|p| &p.info)
    }

    /// Handles one datagram from `src`. Anything that does not authenticate is dropped and counted.
    pub fn receive(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        emit: &mut impl FnMut(Output),
    ) {
        let Some((slot, is_cookie_reply)) = self.route(src, datagram, buf, emit) else {
            return;
        };
        let Some(peer) = self
            .slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|p| !p.removed)
        else {
            self.drops.unknown_index += 1;
            return;
        };
        let (packet, inner_src) = match peer.tunn.decapsulate(Some(src.ip()), datagram, buf) {
            TunnResult::WriteToTunnelV4(packet, inner_src) => (packet, IpAddr::from(inner_src)),
            TunnResult::WriteToTunnelV6(packet, inner_src) => (packet, IpAddr::from(inner_src)),
            // A keepalive, or a cookie reply to the server's own handshake: only the keepalive vouches for src.
            TunnResult::Done => {
                peer.counters.received(datagram.len());
                if !is_cookie_reply {
                    peer.endpoint = Some(src);
                }
                return;
            }
            TunnResult::Err(WireGuardError::DuplicateCounter) => {
                peer.counters.replayed += 1;
                return;
            }
            TunnResult::Err(_) => {
                peer.counters.invalid += 1;
                self.drops.invalid += 1;
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                peer.counters.received(datagram.len());
                // An initiation accepted (answered with a response), or a response to ours answered with a
                // keepalive. `route` answered every cookie already; the check stays so that a cookie reply,
                // whatever its origin, never moves an endpoint.
                if reply.first() != Some(&COOKIE_REPLY) {
                    peer.endpoint = Some(src);
                    peer.counters.last_handshake = Some(Instant::now());
                    peer.initiating_since = None;
                }
                peer.send(src, reply, emit);
                // Packets queued while there was no session go out now.
                while let TunnResult::WriteToNetwork(packet) = peer.tunn.decapsulate(None, &[], buf) {
                    peer.send(src, packet, emit);
                }
                return;
            }
        };
        peer.counters.received(datagram.len());
        // Authenticated, whatever the source inside claims: the endpoint is the peer's.
        peer.endpoint = Some(src);
        if !peer.allowed_ips.contains(inner_src) {
            if self.drops.foreign_source(&peer.info.public_key, inner_src) {
                peer.counters.local_source += 1;
            } else {
                peer.counters.allowed_ips += 1;
            }
            return;
        }
        emit(Output::Deliver {
            peer: peer.info.id,
            endpoint: src,
            packet,
        });
    }

    /// Checks a datagram's MACs under the shared limiter, then a handshake message against its source's and the
    /// global bucket, and finds the peer it is for: for a handshake initiation by the initiator's static key (one
    /// Diffie-Hellman), for the others by the receiver index the server handed out. Returns the peer's slot and whether the datagram is a cookie reply.
    fn route(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        emit: &mut impl FnMut(Output),
    ) -> Option<(usize, bool)> {
        let packet = match self.limiter.verify_packet(Some(src.ip()), datagram, buf) {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.drops.cookies += 1;
                emit(Output::Send(src, cookie));
                return None;
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                self.drops.bad_mac += 1;
                self.drops.last_bad_mac = Some(src);
                return None;
            }
            Err(_) => {
                self.drops.not_wireguard += 1;
                return None;
            }
        };
        if matches!(packet, Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)) {
            match self.handshakes.allow(Instant::now(), src.ip()) {
                Ok(()) => {}
                Err(Refused::Source) => {
                    self.drops.source_limited += 1;
                    return None;
                }
                Err(Refused::Global) => {
                    self.drops.over_budget += 1;
                    return None;
                }
            }
        }
        let index = match packet {
            Packet::HandshakeInit(init) => {
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                    self.drops.undecryptable += 1;
                    return None;
                };
                return match self.by_key.get(&half.peer_static_public) {
                    Some(&slot) => Some((slot, false)),
                    None => {
                        self.drops.unknown_peer += 1;
                        self.drops.last_unknown_peer = Some(half.peer_static_public);
                        None
                    }
                };
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => return Some(((p.receiver_idx >> 8) as usize, true)),
            Packet::PacketData(p) => p.receiver_idx,
        };
        Some(((index >> 8) as usize, false))
    }

    /// Encrypts one IP packet for a peer. Without a session, boringtun queues it and starts a handshake; not
    /// for a removed peer, which gets its last packets only if it still has a session.
    pub fn send(&mut self, id: PeerId, packet: &[u8], buf: &mut [u8], emit: &mut impl FnMut(Output)) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            peer.counters.no_session += 1;
            crate::ratelog::note(
                Level::Debug,
                "packets for peers that never connected dropped",
                || format!("dropped a packet for peer {id}: it never connected"),
            );
            return;
        };
        if packet.len() > MAX_PACKET.min(buf.len().saturating_sub(DATA_OVERHEAD)) {
            peer.counters.too_large += 1;
            crate::ratelog::note(Level::Warn, "packets too large to encrypt dropped", || {
                format!(
                    "dropped a packet of {} bytes for peer {id}: too large to encrypt",
                    packet.len()
                )
            });
            return;
        }
        match peer.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(datagram) if peer.removed && datagram.first() != Some(&DATA) => {}
            TunnResult::WriteToNetwork(datagram) => peer.send(endpoint, datagram, emit),
            TunnResult::Err(e) => {
                crate::ratelog::note(Level::Debug, "packets that could not be encrypted", || {
                    format!("could not encrypt a packet for peer {id}: {e:?}")
                })
            }
            _ => {}
        }
    }

    /// Drives every peer's timers: handshake retries, keepalives, session expiry. Call a few times a second.
    /// The limiter's count starts again once a second (`reset_count` does nothing until a second has passed
    /// since its last reset); drops are reported once a second too.
    pub fn tick(&mut self, now: Instant, buf: &mut [u8], emit: &mut impl FnMut(Output)) {
        self.limiter.reset_count();
        if self
            .period_start
            .is_none_or(|start| now.duration_since(start) >= PERIOD)
        {
            self.period_start = Some(now);
            self.drops.report(&keys::encode(self.public.as_bytes()));
            self.handshakes.prune(now);
        }
        for peer in self.slots.iter_mut().flatten().filter(|p| !p.removed) {
            if let (Some(since), Some(endpoint)) = (peer.initiating_since, peer.endpoint) {
                if now.saturating_duration_since(since) >= HANDSHAKE_ATTEMPTS {
                    peer.initiating_since = None;
                    log::info!(
                        "no handshake with peer {} at {endpoint} completed within {} s",
                        peer.info.public_key,
                        HANDSHAKE_ATTEMPTS.as_secs()
                    );
                    emit(Output::HandshakeFailed {
                        peer: peer.info.id,
                        endpoint,
                    });
                }
            }
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    if let Some(endpoint) = peer.endpoint {
                        peer.send(endpoint, datagram, emit);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => crate::ratelog::note(Level::Debug, "timer errors", || {
                    format!("timer error for peer {}: {e:?}", peer.info.id)
                }),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
