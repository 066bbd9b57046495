//! The WireGuard task: owns the UDP socket and every peer's protocol state.

pub mod peers;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::messages::{NetworkToWireGuard, WireGuardToNetwork};
use crate::shutdown;
use peers::{Output, Peers, BUFFER_SIZE};

/// How often peers' timers run: handshake retries, keepalives, session expiry, rate limiter reset.
const TICK: Duration = Duration::from_millis(250);

/// Datagrams read before the task looks at its other work.
const BATCH: usize = 64;

pub struct WireGuardTask {
    socket: UdpSocket,
    peers: Peers,
    to_network: mpsc::Sender<WireGuardToNetwork>,
    from_network: mpsc::UnboundedReceiver<NetworkToWireGuard>,
    shutdown: shutdown::Signal,
    /// Where decrypted and encrypted packets are written.
    buf: Vec<u8>,
    datagram: Vec<u8>,
    deliveries: Vec<WireGuardToNetwork>,
}

impl WireGuardTask {
    pub fn new(
        socket: UdpSocket,
        peers: Peers,
        to_network: mpsc::Sender<WireGuardToNetwork>,
        from_network: mpsc::UnboundedReceiver<NetworkToWireGuard>,
        shutdown: shutdown::Signal,
    ) -> Self {
        WireGuardTask {
            socket,
            peers,
            to_network,
            from_network,
            shutdown,
            buf: vec![0; BUFFER_SIZE],
            datagram: vec![0; BUFFER_SIZE],
            deliveries: Vec::new(),
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                msg = self.from_network.recv() => {
                    let Some(msg) = msg else { break };
                    self.encrypt(msg);
                    for _ in 1..BATCH {
                        let Ok(msg) = self.from_network.try_recv() else { break };
                        self.encrypt(msg);
                    }
                }
                ready = self.socket.readable() => {
                    if let Err(e) = ready {
                        log::error!("WireGuard socket failed: {e}");
                        break;
                    }
                    self.receive_batch();
                    for delivery in self.deliveries.drain(..) {
                        if self.to_network.send(delivery).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tick.tick() => {
                    let socket = &self.socket;
                    self.peers.tick(&mut self.buf, &mut |out| emit(socket, out, &mut Vec::new()));
                }
            }
        }
        // The network task resets every connection on shutdown; those packets still go out.
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), self.from_network.recv()).await
        {
            self.encrypt(msg);
        }
    }

    fn receive_batch(&mut self) {
        for _ in 0..BATCH {
            match self.socket.try_recv_from(&mut self.datagram) {
                Ok((len, src)) => {
                    let (socket, deliveries) = (&self.socket, &mut self.deliveries);
                    self.peers
                        .receive(src, &self.datagram[..len], &mut self.buf, &mut |out| {
                            emit(socket, out, deliveries)
                        });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here (e.g. port unreachable); they concern no one else.
                Err(e) => log::debug!("receive error on the WireGuard socket: {e}"),
            }
        }
    }

    fn encrypt(&mut self, msg: NetworkToWireGuard) {
        match msg {
            NetworkToWireGuard::Packet { peer, packet } => {
                let socket = &self.socket;
                self.peers.send(peer, &packet, &mut self.buf, &mut |out| {
                    emit(socket, out, &mut Vec::new())
                });
            }
        }
    }
}

fn emit(socket: &UdpSocket, out: Output, deliveries: &mut Vec<WireGuardToNetwork>) {
    match out {
        Output::Send(addr, datagram) => send(socket, addr, datagram),
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

/// UDP is lossy: a full send buffer drops the datagram as a full NIC queue would, and TCP recovers.
fn send(socket: &UdpSocket, addr: SocketAddr, datagram: &[u8]) {
    if let Err(e) = socket.try_send_to(datagram, addr) {
        log::debug!("could not send {} bytes to {addr}: {e}", datagram.len());
    }
}
