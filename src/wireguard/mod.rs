//! The WireGuard task: owns the UDP socket and every peer's protocol state.

pub mod peers;

use log::Level;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::budget::TunnelQueue;
use crate::error::Result;
use crate::messages::{NetworkToWireGuard, PythonToWireGuard, Reply, WireGuardToNetwork};
use crate::network::packet::is_tcp;
use crate::shutdown;
use peers::{Output, Peers, BUFFER_SIZE};

/// How often peers' timers run: handshake retries, keepalives, session expiry, rate limiter reset.
const TICK: Duration = Duration::from_millis(250);

/// Datagrams read before the task looks at its other work.
const BATCH: usize = 64;

/// Datagrams that wait for room in the socket's send buffer; beyond this, more are dropped (and TCP recovers).
const MAX_OUTBOUND: usize = 4096;

pub struct WireGuardTask {
    socket: UdpSocket,
    peers: Peers,
    to_network: mpsc::Sender<WireGuardToNetwork>,
    from_network: mpsc::UnboundedReceiver<NetworkToWireGuard>,
    /// Each peer's datagrams in `from_network`: counted out as they are taken.
    tunnel: Arc<TunnelQueue>,
    /// Python's requests about peers; replies go the way of the network task, which has the events.
    from_python: mpsc::UnboundedReceiver<PythonToWireGuard>,
    shutdown: shutdown::Signal,
    /// Where decrypted and encrypted packets are written.
    buf: Vec<u8>,
    datagram: Vec<u8>,
    deliveries: Vec<WireGuardToNetwork>,
    /// Datagrams the socket had no room for yet, in order.
    outbound: Outbound,
}

/// Sends datagrams in order, and keeps those the socket cannot take yet instead of dropping them.
#[derive(Default)]
struct Outbound {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Datagrams dropped since the last report.
    dropped: u64,
    last_report: Option<std::time::Instant>,
}

impl Outbound {
    fn send(&mut self, socket: &UdpSocket, addr: SocketAddr, datagram: &[u8]) {
        if self.queue.is_empty() {
            match socket.try_send_to(datagram, addr) {
                Ok(_) => return,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    crate::ratelog::note(Level::Debug, "datagrams that could not be sent", || {
                        format!("could not send {} bytes to {addr}: {e}", datagram.len())
                    });
                    return;
                }
            }
        }
        if self.queue.len() >= MAX_OUTBOUND {
            self.dropped += 1;
            return;
        }
        self.queue.push_back((addr, datagram.to_vec()));
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

    /// Sends what waits, until the socket is full again.
    fn flush(&mut self, socket: &UdpSocket) {
        while let Some((addr, datagram)) = self.queue.front() {
            match socket.try_send_to(datagram, *addr) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => crate::ratelog::note(Level::Debug, "datagrams that could not be sent", || {
                    format!("could not send {} bytes to {addr}: {e}", datagram.len())
                }),
            }
            self.queue.pop_front();
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
    pub fn new(socket: UdpSocket, peers: Peers, channels: Channels, shutdown: shutdown::Signal) -> Self {
        WireGuardTask {
            socket,
            peers,
            to_network: channels.to_network,
            from_network: channels.from_network,
            tunnel: channels.tunnel,
            from_python: channels.from_python,
            shutdown,
            buf: vec![0; BUFFER_SIZE],
            datagram: vec![0; BUFFER_SIZE],
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
                msg = self.from_network.recv(), if self.outbound.queue.len() < BATCH => {
                    let Some(msg) = msg else { break };
                    self.encrypt(msg);
                    for _ in 1..BATCH {
                        let Ok(msg) = self.from_network.try_recv() else { break };
                        self.encrypt(msg);
                    }
                }
                Some(msg) = self.from_python.recv() => {
                    let reply = self.request(msg);
                    if self.to_network.send(reply).await.is_err() {
                        return Ok(());
                    }
                }
                ready = self.socket.readable() => {
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
                    for delivery in self.deliveries.drain(..) {
                        if self.to_network.send(delivery).await.is_err() {
                            return Ok(()); // The network task ended; the supervisor knows why.
                        }
                    }
                }
                ready = self.socket.writable(), if !self.outbound.queue.is_empty() => {
                    if ready.is_ok() {
                        self.outbound.flush(&self.socket);
                    }
                }
                _ = tick.tick() => {
                    let now = std::time::Instant::now();
                    let (socket, outbound) = (&self.socket, &mut self.outbound);
                    self.peers.tick(now, &mut self.buf, &mut |out| emit(socket, outbound, out, &mut Vec::new()));
                    self.outbound.report(now);
                    // The counts of per-packet records whose second is over, even if no record follows.
                    crate::ratelog::flush();
                }
            }
        }
        // The network task resets every connection on shutdown; those packets still go out.
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), self.from_network.recv()).await
        {
            self.encrypt(msg);
        }
        result
    }

    fn receive_batch(&mut self) {
        for _ in 0..BATCH {
            match self.socket.try_recv_from(&mut self.datagram) {
                Ok((len, src)) => {
                    let (socket, outbound, deliveries) =
                        (&self.socket, &mut self.outbound, &mut self.deliveries);
                    self.peers
                        .receive(src, &self.datagram[..len], &mut self.buf, &mut |out| {
                            emit(socket, outbound, out, deliveries)
                        });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here (e.g. port unreachable); they concern no one else.
                Err(e) => {
                    crate::ratelog::note(Level::Debug, "receive errors on the WireGuard socket", || {
                        format!("receive error on the WireGuard socket: {e}")
                    })
                }
            }
        }
    }

    fn encrypt(&mut self, msg: NetworkToWireGuard) {
        match msg {
            NetworkToWireGuard::Packet { peer, packet } => {
                if !is_tcp(&packet) {
                    self.tunnel.release(peer, packet.len());
                }
                let (socket, outbound) = (&self.socket, &mut self.outbound);
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
            PythonToWireGuard::AddPeer { request, peer } => match self.peers.add(&peer) {
                Ok(info) => {
                    log::debug!("peer {} added", info.public_key);
                    WireGuardToNetwork::PeerAdded { request, info }
                }
                Err(e) => WireGuardToNetwork::Reply {
                    request,
                    reply: Reply::Failed(e.to_string()),
                },
            },
            PythonToWireGuard::RemovePeer { request, public_key } => match self.peers.remove(&public_key) {
                Some(peer) => {
                    log::debug!("peer {} removed", crate::keys::encode(&public_key));
                    WireGuardToNetwork::PeerRemoved { request, peer }
                }
                None => WireGuardToNetwork::Reply {
                    request,
                    reply: Reply::Failed(format!(
                        "invalid public_key: the server has no peer {}",
                        crate::keys::encode(&public_key)
                    )),
                },
            },
            PythonToWireGuard::Stats { request } => WireGuardToNetwork::Stats {
                request,
                peers: self
                    .peers
                    .stats(std::time::Instant::now(), std::time::SystemTime::now()),
            },
        }
    }
}

fn emit(socket: &UdpSocket, outbound: &mut Outbound, out: Output, deliveries: &mut Vec<WireGuardToNetwork>) {
    match out {
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
mod tests {
    mod fuzz;
}
