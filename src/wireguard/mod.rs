//! The WireGuard task: owns the UDP socket and every peer's protocol state.

pub mod peers;
mod turns;
pub mod udp;

use log::Level;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::budget::TunnelQueue;
use crate::config::Configuration;
use crate::error::Result;
use crate::messages::{NetworkToWireGuard, PythonToWireGuard, Reply, WireGuardToNetwork};
use crate::network::packet::is_tcp;
use crate::shutdown;
use peers::{Output, Peers, BUFFER_SIZE};
use turns::Turns;
use udp::{Datagrams, Received, Socket, BATCH};

/// How often peers' timers run: handshake retries, keepalives, session expiry, rate limiter reset.
const TICK: Duration = Duration::from_millis(250);

/// Datagrams that wait for room in the socket's send buffer; beyond this, more are dropped (and TCP recovers).
const MAX_OUTBOUND: usize = 4096;

/// Buffers of datagrams sent that are kept for the next ones, and the largest kept.
const SPARE_BUFFERS: usize = 2 * BATCH;
const SPARE_CAPACITY: usize = 4096;

pub struct WireGuardTask {
    socket: Socket,
    /// The server's configuration with its peers as they are now: the one record of the running server's peers
    /// as configured. New peers are checked against it (keys, overlapping addresses) and get their free tunnel
    /// addresses from it; the other tasks and Python learn of them by message.
    config: Configuration,
    peers: Peers,
    to_network: mpsc::Sender<WireGuardToNetwork>,
    from_network: mpsc::UnboundedReceiver<NetworkToWireGuard>,
    /// Each peer's datagrams in `from_network`: counted out as they are taken.
    tunnel: Arc<TunnelQueue>,
    /// What was taken from `from_network` and waits to be encrypted, in turns by peer.
    waiting: Turns,
    /// Python's requests about peers; replies go the way of the network task, which has the events.
    from_python: mpsc::UnboundedReceiver<PythonToWireGuard>,
    shutdown: shutdown::Signal,
    /// Where decrypted and encrypted packets are written.
    buf: Vec<u8>,
    /// Where received datagrams land, a batch at a time.
    received: Received,
    deliveries: Vec<WireGuardToNetwork>,
    /// Datagrams to send, in order: those of the batch of work at hand, and those the socket had no room for.
    outbound: Outbound,
}

/// Sends datagrams in order, in batches of up to `BATCH` per system call, and keeps those the socket cannot take
/// yet instead of dropping them.
///
/// A datagram is queued (copied into a buffer of its own, from those of datagrams sent), and goes out with the
/// next flush: at the end of what the task does with a batch of its work (`flush`), or as soon as a batch is
/// full. Once the socket had no room (`blocked`), nothing is tried until it reports room again (`writable`),
/// and only then are datagrams dropped, when `MAX_OUTBOUND` wait already: as when each was sent at once.
#[derive(Default)]
struct Outbound {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The socket had no room for the first in the queue, and has not reported room since.
    blocked: bool,
    /// Buffers of datagrams sent, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Datagrams dropped since the last report.
    dropped: u64,
    last_report: Option<std::time::Instant>,
}

impl Outbound {
    fn send(&mut self, socket: &mut impl Datagrams, addr: SocketAddr, datagram: &[u8]) {
        if self.queue.len() >= MAX_OUTBOUND {
            self.dropped += 1;
            return;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(datagram);
        self.queue.push_back((addr, buf));
        if self.queue.len() >= BATCH {
            self.flush(socket);
        }
    }

    /// Logs the datagrams dropped since the last report, at most once a second.
    fn report(&mut self, now: std::time::Instant) {
        if self.dropped == 0
            || self
                .last_report
                .is_some_and(|last| now < last + Duration::from_secs(1))
        {
            return;
        }
        log::debug!(
            "send queue full: dropped {} datagrams for peers since the last report",
            std::mem::take(&mut self.dropped)
        );
        self.last_report = Some(now);
    }

    /// The socket reported room: sends what waits.
    fn writable(&mut self, socket: &mut impl Datagrams) {
        self.blocked = false;
        self.flush(socket);
    }

    /// Sends what waits, a batch per system call, until the socket is full; nothing while it is.
    fn flush(&mut self, socket: &mut impl Datagrams) {
        while !self.blocked && !self.queue.is_empty() {
            // The ring's first part: a batch may be cut short where it wraps around.
            let (batch, _) = self.queue.as_slices();
            let batch = &batch[..batch.len().min(BATCH)];
            match socket.send(batch) {
                // Never none of a batch (that is an error); were it so, the first would go, so as not to loop.
                Ok(sent) => {
                    for _ in 0..sent.clamp(1, batch.len()) {
                        self.recycle();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.blocked = true,
                // This datagram's error (a later one's comes with the next call); it goes, the rest stay.
                Err(e) => {
                    if let Some((addr, datagram)) = self.queue.front() {
                        crate::ratelog::note(Level::Debug, "datagrams that could not be sent", || {
                            format!("could not send {} bytes to {addr}: {e}", datagram.len())
                        });
                    }
                    self.recycle();
                }
            }
        }
    }

    /// Takes the first datagram off the queue, keeping its buffer for another.
    fn recycle(&mut self) {
        if let Some((_, mut buf)) = self.queue.pop_front() {
            if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_CAPACITY {
                buf.clear();
                self.spare.push(buf);
            }
        }
    }
}

/// Reads up to `budget` datagrams, a batch per system call, until the socket has none; `each` gets every
/// datagram (and the socket, to send with). Errors of the socket are logged, each counting as one datagram of
/// the budget.
fn receive_batch<S: Datagrams>(
    socket: &mut S,
    received: &mut Received,
    mut budget: usize,
    mut each: impl FnMut(&mut S, SocketAddr, &[u8]),
) {
    while budget > 0 {
        match socket.receive(received, budget) {
            Ok(n) => {
                for i in 0..n {
                    let (src, datagram) = received.get(i);
                    each(socket, src, datagram);
                }
                budget = budget.saturating_sub(n.max(1));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // ICMP errors from earlier sends surface here (e.g. port unreachable); they concern no one else.
            Err(e) => {
                crate::ratelog::note(Level::Debug, "receive errors on the WireGuard socket", || {
                    format!("receive error on the WireGuard socket: {e}")
                });
                budget -= 1;
            }
        }
    }
}

/// The channels of the WireGuard task.
pub struct Channels {
    pub to_network: mpsc::Sender<WireGuardToNetwork>,
    pub from_network: mpsc::UnboundedReceiver<NetworkToWireGuard>,
    pub tunnel: Arc<TunnelQueue>,
    pub from_python: mpsc::UnboundedReceiver<PythonToWireGuard>,
}

impl WireGuardTask {
    pub fn new(
        socket: UdpSocket,
        config: Configuration,
        peers: Peers,
        channels: Channels,
        shutdown: shutdown::Signal,
    ) -> Self {
        WireGuardTask {
            socket: Socket(socket),
            config,
            peers,
            to_network: channels.to_network,
            from_network: channels.from_network,
            tunnel: channels.tunnel,
            waiting: Turns::default(),
            from_python: channels.from_python,
            shutdown,
            buf: vec![0; BUFFER_SIZE],
            received: Received::default(),
            deliveries: Vec::new(),
            outbound: Outbound::default(),
        }
    }

    /// Serves until shutdown; an error of the socket ends it early.
    pub async fn run(mut self) -> Result<()> {
        let mut result = Ok(());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            // Not biased: tokio starts from a random branch each time, so none that is always ready (a flooded
            // socket, a stack with packets to send) keeps the others from running, the timers among them; each
            // branch does a bounded batch. Python's requests need an order of their own: see the socket's branch.
            tokio::select! {
                _ = &mut stop => break,
                // While datagrams wait for the socket, packets wait in the channel: the stack sees backpressure.
                // What is in the channel is taken at once (a move each; its bounds are the tunnel queue's shares
                // and TCP's windows), and a batch of it encrypted, in turns by peer.
                msg = self.from_network.recv(), if self.outbound.queue.len() < BATCH => {
                    let Some(msg) = msg else { break };
                    self.waiting.push(msg);
                    for _ in 0..self.from_network.len() {
                        let Ok(msg) = self.from_network.try_recv() else { break };
                        self.waiting.push(msg);
                    }
                    self.encrypt_batch();
                }
                _ = std::future::ready(()), if !self.waiting.is_empty() && self.outbound.queue.len() < BATCH => {
                    self.encrypt_batch();
                }
                Some(msg) = self.from_python.recv() => {
                    let reply = self.request(msg);
                    if self.to_network.send(reply).await.is_err() {
                        return Ok(());
                    }
                }
                ready = self.socket.0.readable() => {
                    if let Err(e) = ready {
                        result = Err(e.into());
                        break;
                    }
                    // A peer added a moment before its handshake arrived is known to it: the requests that wait
                    // go first. Only those there now, so that requests cannot keep the socket waiting either.
                    for _ in 0..self.from_python.len() {
                        let Ok(msg) = self.from_python.try_recv() else { break };
                        let reply = self.request(msg);
                        if self.to_network.send(reply).await.is_err() {
                            return Ok(());
                        }
                    }
                    self.receive_batch();
                    // Handshake responses go out before the packets that came with the batch are delivered.
                    self.outbound.flush(&mut self.socket);
                    for delivery in self.deliveries.drain(..) {
                        if self.to_network.send(delivery).await.is_err() {
                            return Ok(()); // The network task ended; the supervisor knows why.
                        }
                    }
                }
                ready = self.socket.0.writable(), if !self.outbound.queue.is_empty() => {
                    if ready.is_ok() {
                        self.outbound.writable(&mut self.socket);
                    }
                }
                _ = tick.tick() => {
                    let now = std::time::Instant::now();
                    let (socket, outbound, deliveries) = (&mut self.socket, &mut self.outbound, &mut self.deliveries);
                    self.peers.tick(now, &mut self.buf, &mut |out| emit(socket, outbound, out, deliveries));
                    self.outbound.flush(&mut self.socket);
                    for delivery in self.deliveries.drain(..) {
                        if self.to_network.send(delivery).await.is_err() {
                            return Ok(());
                        }
                    }
                    self.outbound.report(now);
                    // The counts of per-packet records whose second is over, even if no record follows.
                    crate::ratelog::flush();
                }
            }
        }
        // The network task resets every connection on shutdown; those packets still go out.
        while let Some(msg) = self.waiting.pop() {
            self.encrypt(msg);
            self.outbound.flush(&mut self.socket);
        }
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), self.from_network.recv()).await
        {
            self.encrypt(msg);
            self.outbound.flush(&mut self.socket);
        }
        result
    }

    fn receive_batch(&mut self) {
        let (peers, buf, outbound, deliveries) = (
            &mut self.peers,
            &mut self.buf,
            &mut self.outbound,
            &mut self.deliveries,
        );
        receive_batch(
            &mut self.socket,
            &mut self.received,
            BATCH,
            |socket, src, datagram| {
                peers.receive(src, datagram, buf, &mut |out| {
                    emit(socket, outbound, out, deliveries)
                });
            },
        );
    }

    /// Encrypts up to a batch of what waits, in turns by peer, and sends it.
    fn encrypt_batch(&mut self) {
        for _ in 0..BATCH {
            let Some(msg) = self.waiting.pop() else { break };
            self.encrypt(msg);
        }
        self.outbound.flush(&mut self.socket);
    }

    fn encrypt(&mut self, msg: NetworkToWireGuard) {
        match msg {
            NetworkToWireGuard::Packet { peer, packet } => {
                if !is_tcp(&packet) {
                    self.tunnel.release(peer, packet.len());
                }
                let (socket, outbound) = (&mut self.socket, &mut self.outbound);
                self.peers.send(peer, &packet, &mut self.buf, &mut |out| {
                    emit(socket, outbound, out, &mut Vec::new())
                });
            }
            NetworkToWireGuard::ForgetPeer { peer } => self.peers.forget(peer),
        }
    }

    /// Carries out a request of Python's; what the network task must do next (and reply) is returned.
    fn request(&mut self, msg: PythonToWireGuard) -> WireGuardToNetwork {
        match msg {
            PythonToWireGuard::AddPeer { request, peer } => match self.add_peer(peer) {
                Ok((info, allowed_ips)) => {
                    log::debug!("peer {} added", info.public_key);
                    WireGuardToNetwork::PeerAdded {
                        request,
                        info,
                        allowed_ips,
                    }
                }
                Err(e) => WireGuardToNetwork::Reply {
                    request,
                    reply: Reply::Failed(e.to_string()),
                },
            },
            PythonToWireGuard::RemovePeer { request, public_key } => {
                let key = crate::keys::encode(&public_key);
                match self.peers.remove(&public_key) {
                    Some(peer) => {
                        let _ = self.config.remove_peer(&key);
                        log::debug!("peer {key} removed");
                        WireGuardToNetwork::PeerRemoved { request, peer }
                    }
                    None => WireGuardToNetwork::Reply {
                        request,
                        reply: Reply::Failed(format!("invalid public_key: the server has no peer {key}")),
                    },
                }
            }
            PythonToWireGuard::Stats { request } => WireGuardToNetwork::Stats {
                request,
                peers: self
                    .peers
                    .stats(std::time::Instant::now(), std::time::SystemTime::now()),
            },
        }
    }
}

impl WireGuardTask {
    /// Adds a peer to the configuration (which gives it its free addresses, and refuses a key or addresses
    /// another peer has), then to the peers; returns its id and key, and its AllowedIPs.
    fn add_peer(
        &mut self,
        peer: crate::config::Peer,
    ) -> Result<(crate::messages::PeerInfo, Vec<ipnet::IpNet>)> {
        let key = peer.public_key.clone();
        let peer = self.config.add_peer(peer).map_err(as_servers)?.clone();
        match self.peers.add(&peer) {
            Ok(info) => Ok((info, peer.allowed_ips)),
            Err(e) => {
                let _ = self.config.remove_peer(&key);
                Err(e)
            }
        }
    }
}

/// An error of the configuration the task keeps, as the server's: named by the argument (`allowed_ips`, not
/// `peers[3].allowed_ips`).
fn as_servers(e: crate::error::Error) -> crate::error::Error {
    match e {
        crate::error::Error::InvalidConfig { field, reason } => crate::error::Error::config(
            field.rsplit('.').next().unwrap_or(&field),
            reason.replace("the configuration", "the server"),
        ),
        e => e,
    }
}

fn emit(
    socket: &mut impl Datagrams,
    outbound: &mut Outbound,
    out: Output,
    deliveries: &mut Vec<WireGuardToNetwork>,
) {
    match out {
        Output::HandshakeFailed { peer, endpoint } => {
            deliveries.push(WireGuardToNetwork::HandshakeFailed { peer, endpoint })
        }
        Output::Send(addr, datagram) => outbound.send(socket, addr, datagram),
        Output::Deliver {
            peer,
            endpoint,
            packet,
        } => deliveries.push(WireGuardToNetwork::Packet {
            peer,
            endpoint,
            packet: packet.to_vec(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    mod batch;
    pub(crate) mod fuzz;
}
