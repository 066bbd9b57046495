//! Property tests of the whole way in, as a stranger or a peer reaches the server: datagrams (a real client's,
//! mutated, replayed, or junk) into the WireGuard task's `Peers`, the packets it delivers into the network
//! task's `Stack`, Python's side acting on the stack's events, time moving on, and the stack's packets going back
//! through `Peers::send` to the clients, whose `Tunn`s decrypt them. Each module's own property tests feed one
//! parser or state machine; this one feeds them to each other, as the two tasks do.
//!
//! It lives in `src/tests/fuzz/`, declared from lib.rs: a module's property tests are its `tests/fuzz.rs`
//! (README, Hacking), and the way in spans `wireguard` and `network`, so its module is the crate's root. It uses
//! what those modules offer the crate, and the stack's `#[cfg(test)]` `check_invariants`. Here: the property and
//! its settings; `packets.rs` builds the clients' packets and checks the stack's; `model.rs` is what the clients
//! and Python know; `steps.rs` the steps, how they are drawn and what each does; `world.rs` the two halves of the
//! server, the clients and the wire between them; `python.rs` Python's side, each event checked.
//!
//! After every step it checks:
//! - nothing panicked;
//! - the stack's bookkeeping agrees with itself and its bounds hold (`Stack::check_invariants`): connections per
//!   peer, half-open ones and all together within the admission limits and counted right, timers and flows of
//!   live connections only, the window budget's count, the memory pool, the fragment reassembler's budgets, the
//!   UDP routes;
//! - `Peers` delivers only packets a client encrypted (as boringtun cuts them to their IP length), from that
//!   client's peer and endpoint, and sends nothing but cookie replies to addresses no client sent from;
//! - what Python hears makes sense (`World::event`): `ConnectionRequested` only when the stack asks first,
//!   `ConnectionEstablished` once per id, after Python accepted when asked, for a SYN the client sent; `Data`,
//!   `Eof`, `Drained` only for a connection Python heard of and did not close; no `Data` after `Eof`, `Eof` once,
//!   no more drained than written, no more data read than the client sent on that flow; `ConnectionClosed` once,
//!   and after it nothing but the data a connection in TIME-WAIT still had for Python; nothing after Python closed
//!   or aborted a connection; `ConnectFailed` only for Python's own connections; datagrams only as a client sent
//!   them;
//! - the read budget Python gave the stack (`set_read_budget`, before every flush as the network task does) is
//!   never exceeded;
//! - every packet the stack sends is a valid IP packet of at most the tunnel's MTU, with valid checksums (its
//!   fragments reassembled first), and reaches the client as it was sent: echo replies answer the client's
//!   requests, UDP carries what Python sent;
//! - at the end, once the stack resets everything, every connection Python heard of was closed and none is left.
//!
//! A longer run: `PROPTEST_CASES=100000 cargo test --release --lib fuzz` (see README); `FUZZ_STATS=1` prints what
//! the cases reached.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use proptest::prelude::*;
use proptest::sample::select;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket, UdpPacket,
};

use crate::config::{Configuration, Peer as PeerConfig};
use crate::keys;
use crate::messages::{
    ConnectionId, NetworkToPython, PeerId, PeerInfo, PythonToNetwork, SynAnswer, OUTGOING,
};
use crate::network::device::MTU;
use crate::network::fragments::{self, Reassembler};
use crate::network::packet::{self, Inbound, Unreachable};
use crate::network::stack::{Outputs, Stack};
use crate::network::tests::fuzz::ip;
use crate::wireguard::peers::{Output, Peers, BUFFER_SIZE};
use crate::wireguard::tests::fuzz::junk;

/// `default` cases, unless PROPTEST_CASES asks for another number (for a longer run).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(default))
}

/// The clients' outer endpoints, and an address no client sends from.
const HOMES: [&str; 2] = ["192.0.2.1:1000", "192.0.2.2:2000"];
const ELSEWHERE: &str = "198.51.100.9:666";
/// Both clients' addresses inside the tunnel: client 0's peer has them as AllowedIPs, client 1's takes any (the
/// 0.1.x form), so the two share them.
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// Flows every client knows from the start (client side, remote side); more are learned from the stack's packets.
const FLOWS: [(&str, &str); 3] = [
    ("10.0.0.1:5000", "10.0.0.42:80"),
    ("10.0.0.1:5001", "192.0.2.7:443"),
    ("[fd00::1]:5000", "[fd00::42]:80"),
];

// What the whole run reached, for FUZZ_STATS.
static CASES: AtomicUsize = AtomicUsize::new(0);
static ESTABLISHED: AtomicUsize = AtomicUsize::new(0);
static DATA_BYTES: AtomicUsize = AtomicUsize::new(0);
static CLOSED: AtomicUsize = AtomicUsize::new(0);
static DATAGRAMS: AtomicUsize = AtomicUsize::new(0);
static ECHOES: AtomicUsize = AtomicUsize::new(0);
static TO_CLIENTS: AtomicUsize = AtomicUsize::new(0);

fn count(counter: &AtomicUsize, n: usize) {
    counter.fetch_add(n, Ordering::Relaxed);
}

mod model;
mod packets;
mod python;
mod steps;
mod world;

use model::*;
use packets::*;
use steps::*;
use world::*;

proptest! {
    // A case makes two handshakes and up to 120 steps (Diffie-Hellman in a debug build): few cases keep the
    // default run short.
    #![proptest_config(config(64))]

    /// The whole way in: see the module's documentation for the steps and what is checked after each.
    #[test]
    fn fuzz_the_whole_way_in(
        ask_first in any::<bool>(),
        capacity in prop_oneof![Just(usize::MAX), 0usize..300_000],
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut world = World::new(ask_first, capacity);
        for step in steps {
            world.step(step);
        }
        world.finish();
        count(&CASES, 1);
        if std::env::var_os("FUZZ_STATS").is_some() {
            let get = |c: &AtomicUsize| c.load(Ordering::Relaxed);
            eprintln!(
                "cases {}: established {}, data bytes {}, closed {}, datagrams {}, echoes {}, packets to clients {}",
                get(&CASES), get(&ESTABLISHED), get(&DATA_BYTES), get(&CLOSED), get(&DATAGRAMS), get(&ECHOES),
                get(&TO_CLIENTS),
            );
        }
    }
}
