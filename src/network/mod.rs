//! The network task: runs the TCP/IP stack between the WireGuard task and Python.

mod device;
pub mod fragments;
mod memory;
pub mod packet;
pub mod stack;
mod udp_routes;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::capture::{Direction, Tap};
use crate::error::Result;
use crate::events::EventSender;
use crate::messages::{
    NetworkToPython, NetworkToWireGuard, PeerId, PythonToNetwork, Reply, WireGuardToNetwork,
};
use crate::shutdown;
use stack::{Outputs, Stack};

/// Messages handled before the task flushes what they produced; keeps a burst from starving the others.
const BATCH: usize = 64;

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
    from_python: mpsc::UnboundedReceiver<PythonToNetwork>,
    events: EventSender,
    shutdown: shutdown::Signal,
    /// The running packet capture, if any: every packet from and to peers is copied to it.
    capture: Option<Tap>,
}

impl NetworkTask {
    pub fn new(
        stack: Stack,
        from_wireguard: mpsc::Receiver<WireGuardToNetwork>,
        to_wireguard: mpsc::UnboundedSender<NetworkToWireGuard>,
        from_python: mpsc::UnboundedReceiver<PythonToNetwork>,
        events: EventSender,
        shutdown: shutdown::Signal,
    ) -> Self {
        NetworkTask {
            stack,
            from_wireguard,
            to_wireguard,
            from_python,
            events,
            shutdown,
            capture: None,
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
        match msg {
            // Dropping a tap ends its capture: its writer finishes the file.
            PythonToNetwork::Capture(tap) => self.capture = tap,
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
            WireGuardToNetwork::PeerAdded { request, info } => {
                self.stack.add_peer(info);
                (request, Reply::Done)
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
        };
        out.events.push(NetworkToPython::Reply { request, reply });
    }

    fn send_packets(&mut self, now: Instant, out: &mut Outputs) {
        for (peer, packet) in out.packets.drain(..) {
            if let Some(tap) = &mut self.capture {
                tap.packet(now, peer, Direction::ToPeer, &packet, |id| key(&self.stack, id));
            }
            // The WireGuard task ends only after this task: a failed send means shutdown is under way.
            let _ = self
                .to_wireguard
                .send(NetworkToWireGuard::Packet { peer, packet });
        }
    }

    fn flush(&mut self, now: Instant, out: &mut Outputs) {
        self.stack.set_read_budget(self.events.room());
        self.stack.flush(now, out);
        if self.stack.has_starved() {
            self.events.set_starved();
        }
        self.send_packets(now, out);
        for event in out.events.drain(..) {
            self.events.send(event);
        }
        self.events.wake();
    }
}

/// A peer's public key, which names its interface in a capture.
fn key(stack: &Stack, peer: PeerId) -> Option<Arc<str>> {
    stack.peer(peer).map(|info| info.public_key.clone())
}

#[cfg(test)]
mod tests {
    mod fuzz;
}
