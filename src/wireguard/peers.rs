//! The WireGuard protocol state of every peer: which peer a datagram belongs to, and what to send in reply.
//!
//! No I/O happens here: the caller passes datagrams in and gets `Output`s back, so the logic is tested with
//! packets built in the test.
//!
//! Who may do what:
//! - One rate limiter (one cookie secret) sits in front of every peer and checks each handshake message's MAC1
//!   first; over its limit it answers with a cookie reply, whoever the message claims to be for. A cookie reply
//!   proves nothing about who sent the datagram (MAC1 needs only the server's public key).
//! - A peer's endpoint moves only on a datagram that its key authenticated: a handshake message that completed,
//!   or data. Never on a cookie, in either direction.
//! - A decrypted packet whose source address is not in its peer's AllowedIPs is dropped (cryptokey routing),
//!   unless the peer may use any address (configured without AllowedIPs).

mod drops;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::config::Configuration;
use crate::error::Result;
use crate::keys;
use crate::messages::{PeerId, PeerInfo};
use drops::Drops;

/// Handshake messages a second, over all peers, before the server asks for cookies (as boringtun's own
/// device does).
const HANDSHAKES_PER_SECOND: u64 = 100;

/// How often drops are reported.
const PERIOD: Duration = Duration::from_secs(1);

/// Big enough for any datagram: a decapsulated packet is never larger than the datagram it came in.
pub const BUFFER_SIZE: usize = 65536 + 32;

/// The message type of a cookie reply (WireGuard's message type 3).
const COOKIE_REPLY: u8 = 3;

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

/// The source addresses a peer's packets may have.
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
}

struct Peer {
    tunn: Tunn,
    info: PeerInfo,
    allowed_ips: AllowedIps,
    /// Where the last authenticated datagram came from: replies go there (roaming).
    endpoint: Option<SocketAddr>,
}

pub struct Peers {
    secret: StaticSecret,
    public: PublicKey,
    /// Sits in front of all peers, so that a flood of handshake messages costs a MAC check each, not a
    /// Diffie-Hellman, and so that a cookie reply is decided once for the whole server.
    limiter: Arc<RateLimiter>,
    peers: Vec<Peer>,
    by_key: HashMap<[u8; 32], PeerId>,
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
                Some(mac_check.clone()),
            );
            peers.push(Peer {
                tunn,
                info: PeerInfo {
                    id,
                    public_key: peer.public_key.as_str().into(),
                },
                allowed_ips: AllowedIps::new(&peer.allowed_ips),
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

    /// Handles one datagram from `src`. Anything that does not authenticate is dropped and counted.
    pub fn receive(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        emit: &mut impl FnMut(Output),
    ) {
        let Some((id, is_cookie_reply)) = self.route(src, datagram, buf, emit) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
            self.drops.unknown_index += 1;
            return;
        };
        let (packet, inner_src) = match peer.tunn.decapsulate(Some(src.ip()), datagram, buf) {
            TunnResult::WriteToTunnelV4(packet, inner_src) => (packet, IpAddr::from(inner_src)),
            TunnResult::WriteToTunnelV6(packet, inner_src) => (packet, IpAddr::from(inner_src)),
            // A keepalive, or a cookie reply to the server's own handshake: only the keepalive vouches for src.
            TunnResult::Done => {
                if !is_cookie_reply {
                    peer.endpoint = Some(src);
                }
                return;
            }
            TunnResult::Err(WireGuardError::DuplicateCounter) => return,
            TunnResult::Err(_) => {
                self.drops.invalid += 1;
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                // A handshake that completed. `route` answered every cookie already; the check stays so that a
                // cookie reply, whatever its origin, never moves an endpoint.
                if reply.first() != Some(&COOKIE_REPLY) {
                    peer.endpoint = Some(src);
                }
                emit(Output::Send(src, reply));
                // Packets queued while there was no session go out now.
                while let TunnResult::WriteToNetwork(packet) = peer.tunn.decapsulate(None, &[], buf) {
                    emit(Output::Send(src, packet));
                }
                return;
            }
        };
        // Authenticated, whatever the source inside claims: the endpoint is the peer's.
        peer.endpoint = Some(src);
        if !peer.allowed_ips.contains(inner_src) {
            self.drops.foreign_source(&peer.info.public_key, inner_src);
            return;
        }
        emit(Output::Deliver {
            peer: id,
            endpoint: src,
            packet,
        });
    }

    /// Checks a datagram's MACs under the shared limiter and finds the peer it is for: for a handshake
    /// initiation by the initiator's static key (one Diffie-Hellman), for the others by the receiver index the
    /// server handed out. Returns the peer and whether the datagram is a cookie reply.
    fn route(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        emit: &mut impl FnMut(Output),
    ) -> Option<(PeerId, bool)> {
        let packet = match self.limiter.verify_packet(Some(src.ip()), datagram, buf) {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.drops.cookies += 1;
                emit(Output::Send(src, cookie));
                return None;
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                self.drops.bad_mac += 1;
                return None;
            }
            Err(_) => {
                self.drops.not_wireguard += 1;
                return None;
            }
        };
        let index = match packet {
            Packet::HandshakeInit(init) => {
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                    self.drops.undecryptable += 1;
                    return None;
                };
                return match self.by_key.get(&half.peer_static_public) {
                    Some(&id) => Some((id, false)),
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
    /// The limiter's count starts again once a second (`reset_count` does nothing until a second has passed
    /// since its last reset); drops are reported once a second too.
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

#[cfg(test)]
mod tests;
