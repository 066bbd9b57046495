//! The network task: runs the TCP/IP stack between the WireGuard task and Python.

pub(crate) mod device;
pub use device::MTU;
pub mod fragments;
mod memory;
pub mod packet;
pub mod stack;
mod udp_routes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::budget::{ByteBudget, TunnelQueue};
use crate::capture::{Direction, Tap};
use crate::error::Result;
use crate::events::EventSender;
use crate::messages::{
    NetworkToPython, NetworkToWireGuard, PeerId, PythonToNetwork, Reply, WireGuardToNetwork,
};
use crate::shutdown;
use stack::{Outputs, QueueDrop, Stack};

/// Messages handled before the task flushes what they produced; keeps a burst from starving the others.
const BATCH: usize = 64;

/// How often datagrams dropped at the queues into the tunnel are logged at most.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What woke the task.
enum Wakeup {
    Python(Option<PythonToNetwork>),
    WireGuard(Option<WireGuardToNetwork>),
    Timer,
}

pub struct NetworkTask {
    stack: Stack,
    from_wireguard: mpsc::Receiver<WireGuardToNetwork>,
    to_wireguard: mpsc::UnboundedSender<NetworkToWireGuard>,
    /// Each peer's datagrams in `to_wireguard`: those beyond a peer's share are dropped, TCP always passes.
    tunnel: Arc<TunnelQueue>,
    from_python: mpsc::UnboundedReceiver<PythonToNetwork>,
    /// What `from_python` holds: given back as messages are taken out.
    from_python_budget: Arc<ByteBudget>,
    events: EventSender,
    shutdown: shutdown::Signal,
    /// The running packet capture, if any: every packet from and to peers is copied to it.
    capture: Option<Tap>,
    /// When drops at the queues into the tunnel were last logged.
    last_report: Instant,
}

impl NetworkTask {
    pub fn new(
        stack: Stack,
        from_wireguard: mpsc::Receiver<WireGuardToNetwork>,
        (to_wireguard, tunnel): (mpsc::UnboundedSender<NetworkToWireGuard>, Arc<TunnelQueue>),
        (from_python, from_python_budget): (mpsc::UnboundedReceiver<PythonToNetwork>, Arc<ByteBudget>),
        events: EventSender,
        shutdown: shutdown::Signal,
    ) -> Self {
        NetworkTask {
            stack,
            from_wireguard,
            to_wireguard,
            tunnel,
            from_python,
            from_python_budget,
            events,
            shutdown,
            capture: None,
            last_report: Instant::now(),
        }
    }

    /// Serves until shutdown, or until the WireGuard task or Python is gone.
    pub async fn run(mut self) -> Result<()> {
        let mut out = Outputs::default();
        let mut shutdown = self.shutdown.clone();
        // Both futures live across iterations: re-creating them per wakeup costs a timer insertion each time.
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let never = tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
        let timer = tokio::time::sleep_until(never);
        tokio::pin!(timer);
        loop {
            let deadline = self
                .stack
                .next_deadline()
                .map_or(never, tokio::time::Instant::from_std);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // Not biased: tokio starts from a random branch each time, so neither a Python side that always has
            // messages nor a busy tunnel keeps the other, or the stack's timers, from running; each wakeup does
            // a bounded batch.
            let wakeup = tokio::select! {
                _ = &mut stop => break,
                msg = self.from_python.recv() => Wakeup::Python(msg),
                msg = self.from_wireguard.recv() => Wakeup::WireGuard(msg),
                _ = &mut timer => Wakeup::Timer,
            };
            // The time of this wakeup, for all it does.
            let now = Instant::now();
            match wakeup {
                Wakeup::Python(None) => {
                    log::debug!("network task: Python is gone");
                    break;
                }
                Wakeup::Python(Some(msg)) => {
                    self.handle(now, msg, &mut out);
                    for _ in 1..BATCH {
                        let Ok(msg) = self.from_python.try_recv() else {
                            break;
                        };
                        self.handle(now, msg, &mut out);
                    }
                }
                Wakeup::WireGuard(None) => {
                    log::debug!("network task: the WireGuard task is gone");
                    break;
                }
                Wakeup::WireGuard(Some(msg)) => {
                    self.receive(now, msg, &mut out);
                    for _ in 1..BATCH {
                        let Ok(msg) = self.from_wireguard.try_recv() else {
                            break;
                        };
                        self.receive(now, msg, &mut out);
                    }
                }
                Wakeup::Timer => self.stack.poll_timers(now, &mut out),
            }
            self.flush(now, &mut out);
        }
        log::debug!(
            "network task: shutting down with {} connections",
            self.stack.connection_count()
        );
        // Every client sees its connections end at once.
        let now = Instant::now();
        self.stack.abort_all(now, &mut out);
        self.flush(now, &mut out);
        Ok(())
    }

    fn handle(&mut self, now: Instant, msg: PythonToNetwork, out: &mut Outputs) {
        self.from_python_budget.give_back(msg.queued_bytes());
        match msg {
            // Dropping a tap ends its capture: its writer finishes the file.
            PythonToNetwork::Capture(tap) => self.capture = tap,
            // A datagram of Python's goes to the WireGuard task whole (all its fragments) or not at all.
            msg @ PythonToNetwork::SendDatagram { .. } => {
                let start = out.packets.len();
                self.stack.handle(now, msg, out);
                let made = out.packets.split_off(start);
                let Some(&(peer, _)) = made.first() else {
                    return; // dropped by the stack (no route), which logged why
                };
                let bytes = made.iter().map(|(_, packet)| packet.len()).sum();
                if self.tunnel.admit(peer, made.len(), bytes) {
                    for (peer, packet) in made {
                        self.send_packet(now, peer, packet);
                    }
                } else {
                    self.stack.count_queue_drop(peer, QueueDrop::Tunnel);
                }
            }
            msg => self.stack.handle(now, msg, out),
        }
    }

    /// A packet, or a request of Python's that the WireGuard task did its part of: this task completes it and
    /// replies, after the events the request caused.
    fn receive(&mut self, now: Instant, msg: WireGuardToNetwork, out: &mut Outputs) {
        let (request, reply) = match msg {
            WireGuardToNetwork::Packet {
                peer,
                endpoint,
                packet,
            } => {
                if let Some(tap) = &mut self.capture {
                    tap.packet(now, peer, Direction::FromPeer, &packet, |id| key(&self.stack, id));
                }
                return self.stack.receive(now, peer, endpoint, packet, out);
            }
            WireGuardToNetwork::PeerAdded {
                request,
                info,
                allowed_ips,
            } => {
                self.stack.add_peer(info);
                (request, Reply::Added(allowed_ips))
            }
            WireGuardToNetwork::PeerRemoved { request, peer } => {
                self.stack.remove_peer(now, peer, out);
                // The resets of its connections go before the WireGuard task drops its session.
                self.send_packets(now, out);
                let _ = self.to_wireguard.send(NetworkToWireGuard::ForgetPeer { peer });
                (request, Reply::Done)
            }
            WireGuardToNetwork::Stats { request, mut peers } => {
                self.stack.complete_stats(&mut peers);
                (request, Reply::Stats(peers))
            }
            WireGuardToNetwork::Reply { request, reply } => (request, reply),
            WireGuardToNetwork::HandshakeFailed { peer, endpoint } => {
                if let Some(info) = self.stack.peer(peer) {
                    let peer = info.clone();
                    out.events
                        .push(NetworkToPython::HandshakeFailed { peer, endpoint });
                }
                return;
            }
        };
        out.events.push(NetworkToPython::Reply { request, reply });
    }

    /// Sends the stack's packets to the WireGuard task: TCP always (its windows bound it), other packets
    /// (ICMP, the stack's UDP) within their peer's share of the queue.
    fn send_packets(&mut self, now: Instant, out: &mut Outputs) {
        for (peer, packet) in out.packets.drain(..) {
            if packet::is_tcp(&packet) || self.tunnel.admit(peer, 1, packet.len()) {
                self.send_packet(now, peer, packet);
            } else {
                self.stack.count_queue_drop(peer, QueueDrop::Tunnel);
            }
        }
    }

    /// Sends one packet, admitted to the queue already if it is no TCP segment.
    fn send_packet(&mut self, now: Instant, peer: PeerId, packet: Vec<u8>) {
        if let Some(tap) = &mut self.capture {
            tap.packet(now, peer, Direction::ToPeer, &packet, |id| key(&self.stack, id));
        }
        // The WireGuard task ends only after this task: a failed send means shutdown is under way.
        let _ = self
            .to_wireguard
            .send(NetworkToWireGuard::Packet { peer, packet });
    }

    fn flush(&mut self, now: Instant, out: &mut Outputs) {
        self.stack.set_read_budget(self.events.room());
        self.stack.flush(now, out);
        if self.stack.has_starved() {
            self.events.set_starved();
        }
        self.send_packets(now, out);
        for event in out.events.drain(..) {
            if let Some(peer) = self.events.send(event) {
                self.stack.count_queue_drop(peer, QueueDrop::Python);
            }
        }
        self.events.wake();
        if now >= self.last_report + REPORT_EVERY {
            self.report_drops(now);
        }
    }

    /// Logs the datagrams dropped at the queues into the tunnel since the last report.
    fn report_drops(&mut self, now: Instant) {
        let seconds = now.duration_since(self.last_report).as_secs_f64();
        self.last_report = now;
        let from_python = self.from_python_budget.take_dropped();
        if from_python > 0 {
            log::info!(
                "the tunnel is not keeping up with Python: dropped {from_python} datagrams of Python's in the \
                 last {seconds:.1} s (its queue to the network task was full)"
            );
        }
        let to_wireguard = self.tunnel.take_dropped();
        if to_wireguard > 0 {
            log::info!(
                "the tunnel is not keeping up: dropped {to_wireguard} datagrams for peers in the last \
                 {seconds:.1} s (over their peer's share of the queue to the WireGuard task)"
            );
        }
    }
}

/// A peer's public key, which names its interface in a capture.
fn key(stack: &Stack, peer: PeerId) -> Option<Arc<str>> {
    stack.peer(peer).map(|info| info.public_key.clone())
}

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) mod fuzz;
}
