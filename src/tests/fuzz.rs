//! Property tests of the whole way in, as a stranger or a peer reaches the server: datagrams (a real client's,
//! mutated, replayed, or junk) into the WireGuard task's `Peers`, the packets it delivers into the network
//! task's `Stack`, Python's side acting on the stack's events, time moving on, and the stack's packets going back
//! through `Peers::send` to the clients, whose `Tunn`s decrypt them. Each module's own property tests feed one
//! parser or state machine; this one feeds them to each other, as the two tasks do.
//!
//! It lives in `src/tests/fuzz.rs`, declared from lib.rs: a module's property tests are its `tests/fuzz.rs`
//! (README, Hacking), and the way in spans `wireguard` and `network`, so its module is the crate's root. It uses
//! what those modules offer the crate, and the stack's `#[cfg(test)]` `check_invariants`.
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

// ---------------------------------------------------------------------------------------------------------------
// Packets a client builds.

/// A TCP segment with any flags and options and a valid checksum.
#[derive(Debug, Clone)]
struct Tcp {
    seq: u32,
    ack: u32,
    /// FIN 1, SYN 2, RST 4, PSH 8, ACK 16, and the others.
    flags: u8,
    window: u16,
    /// Padded with zeros to a multiple of 4 bytes, at most 40.
    options: Vec<u8>,
    payload_len: usize,
}

impl Tcp {
    fn len(&self) -> u32 {
        self.payload_len as u32 + (self.flags & 1) as u32 + (self.flags >> 1 & 1) as u32
    }

    fn packet(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let mut options = self.options.clone();
        options.truncate(40);
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header_len = 20 + options.len();
        let mut tcp = vec![0; header_len];
        tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
        tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = ((header_len / 4) as u8) << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
        tcp[20..].copy_from_slice(&options);
        // A pattern of the sequence number, so that data is not all alike.
        tcp.extend((0..self.payload_len).map(|i| self.seq.wrapping_add(i as u32) as u8));
        let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
        TcpPacket::new_unchecked(&mut tcp).fill_checksum(&s, &d);
        ip(src.ip(), dst.ip(), 6, &tcp)
    }
}

/// An ICMP(v6) echo request.
fn echo_request(src: IpAddr, dst: IpAddr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let icmp = Icmpv4Repr::EchoRequest { ident, seq_no, data };
            let mut body = vec![0; icmp.buffer_len()];
            icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut body), &caps);
            ip(src, dst, 1, &body)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let icmp = Icmpv6Repr::EchoRequest { ident, seq_no, data };
            let mut body = vec![0; icmp.buffer_len()];
            icmp.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(&mut body), &caps);
            ip(src, dst, 58, &body)
        }
        _ => unreachable!("addresses of one family"),
    }
}

/// What the server delivers of a packet a client encrypts: boringtun cuts it to the length its IP header gives,
/// and drops it if that is longer than the packet (or the header is not there).
fn as_delivered(p: &[u8]) -> Option<Vec<u8>> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => u16::from_be_bytes([p[2], p[3]]) as usize,
        6 if p.len() >= 40 => 40 + u16::from_be_bytes([p[4], p[5]]) as usize,
        _ => return None,
    };
    (len <= p.len()).then(|| p[..len].to_vec())
}

// ---------------------------------------------------------------------------------------------------------------
// Packets the stack sends: valid, and what they carry.

/// What an unfragmented packet from the stack is.
#[derive(Debug)]
enum Sent {
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        /// The sequence number after it.
        end: u32,
        rst: bool,
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    EchoReply {
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: Vec<u8>,
    },
    /// An ICMP error (destination unreachable) that answers a SYN.
    IcmpError,
}

/// Checks a packet the stack sent: a valid IP header whose length is the packet's, and (unless it is a fragment)
/// a valid TCP, UDP or ICMP message. Returns what it is, or `None` for a fragment.
fn check_sent(p: &[u8]) -> Option<Sent> {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(p).expect("a valid IPv4 header");
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            assert_eq!(ip.total_len() as usize, p.len(), "IPv4 total length");
            if ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let payload = &p[ip.header_len() as usize..];
            let (src, dst) = (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr()));
            Some(check_transport(src, dst, ip.next_header(), payload))
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(p).expect("a valid IPv6 header");
            assert_eq!(40 + ip.payload_len() as usize, p.len(), "IPv6 payload length");
            if u8::from(ip.next_header()) == fragments::IPV6_FRAGMENT {
                return None;
            }
            let (src, dst) = (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr()));
            Some(check_transport(src, dst, ip.next_header(), &p[40..]))
        }
        _ => panic!("the stack sent something else than IP: {p:?}"),
    }
}

fn check_transport(src: IpAddr, dst: IpAddr, protocol: IpProtocol, payload: &[u8]) -> Sent {
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    let caps = ChecksumCapabilities::default();
    match protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).expect("a valid TCP header");
            assert!(tcp.verify_checksum(&s, &d), "TCP checksum");
            let len = tcp.payload().len() as u32 + tcp.syn() as u32 + tcp.fin() as u32;
            let seq = tcp.seq_number().0 as u32;
            Sent::Tcp {
                src: SocketAddr::new(src, tcp.src_port()),
                dst: SocketAddr::new(dst, tcp.dst_port()),
                end: seq.wrapping_add(len),
                rst: tcp.rst(),
            }
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).expect("a valid UDP header");
            assert_eq!(udp.len() as usize, payload.len(), "UDP length");
            assert!(udp.verify_checksum(&s, &d), "UDP checksum");
            Sent::Udp {
                src: SocketAddr::new(src, udp.src_port()),
                dst: SocketAddr::new(dst, udp.dst_port()),
                data: udp.payload().to_vec(),
            }
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).expect("a valid ICMP header");
            assert!(icmp.verify_checksum(), "ICMP checksum");
            match Icmpv4Repr::parse(&icmp, &caps) {
                Ok(Icmpv4Repr::EchoReply { ident, seq_no, data }) => Sent::EchoReply {
                    src,
                    dst,
                    ident,
                    seq_no,
                    data: data.to_vec(),
                },
                // Its quote is cut short of the packet its header describes, which smoltcp's parser does not
                // take: the type is enough.
                _ if icmp.msg_type() == smoltcp::wire::Icmpv4Message::DstUnreachable => Sent::IcmpError,
                other => panic!("the stack sent ICMP {other:?}"),
            }
        }
        IpProtocol::Icmpv6 => {
            let icmp = Icmpv6Packet::new_checked(payload).expect("a valid ICMPv6 header");
            let (IpAddr::V6(s6), IpAddr::V6(d6)) = (src, dst) else {
                panic!("ICMPv6 over IPv4")
            };
            assert!(icmp.verify_checksum(&s6, &d6), "ICMPv6 checksum");
            match Icmpv6Repr::parse(&s6, &d6, &icmp, &caps) {
                Ok(Icmpv6Repr::EchoReply { ident, seq_no, data }) => Sent::EchoReply {
                    src,
                    dst,
                    ident,
                    seq_no,
                    data: data.to_vec(),
                },
                // As for ICMP: a quote cut to fit 1280 bytes.
                _ if icmp.msg_type() == smoltcp::wire::Icmpv6Message::DstUnreachable => Sent::IcmpError,
                other => panic!("the stack sent ICMPv6 {other:?}"),
            }
        }
        other => panic!("the stack sent protocol {other}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The clients.

/// What a client knows of a TCP flow: the sequence numbers each side expects next.
#[derive(Debug, Default, Clone, Copy)]
struct FlowState {
    client_next: u32,
    stack_next: Option<u32>,
}

struct Client {
    tunn: Tunn,
    home: SocketAddr,
    config: PeerConfig,
    /// Its peer's id at the server, while the server has it.
    peer: Option<PeerId>,
    /// What the server may deliver of the packets it encrypted (`as_delivered`).
    sent: HashSet<Vec<u8>>,
    /// Packets the stack sent it that it has not decrypted yet.
    expected: Vec<Vec<u8>>,
    /// TCP flows (its side, the remote side), and the payload bytes it sent on each.
    flows: BTreeMap<(SocketAddr, SocketAddr), FlowState>,
    tcp_bytes: HashMap<(SocketAddr, SocketAddr), usize>,
    /// SYNs it sent (its side, the remote side), datagrams (source, destination, payload) and echo requests.
    syns: HashSet<(SocketAddr, SocketAddr)>,
    udp: HashSet<(SocketAddr, SocketAddr, Vec<u8>)>,
    pings: HashSet<(IpAddr, IpAddr, u16, u16, Vec<u8>)>,
    /// It sent fragments with bytes overwritten: what they reassemble to is not known, so its datagrams and
    /// echo replies are not checked against what it sent.
    loose: bool,
    /// The stack's fragments to it.
    reassembler: Reassembler,
    next_ident: u32,
}

impl Client {
    /// Notes what a packet it sends carries, as the stack reads it.
    fn note(&mut self, p: &[u8]) {
        match packet::parse(p) {
            Ok(Inbound::Tcp {
                src,
                dst,
                opens,
                segment,
            }) => {
                if opens {
                    self.syns.insert((src, dst));
                }
                *self.tcp_bytes.entry((src, dst)).or_default() += segment.len as usize;
            }
            Ok(Inbound::Udp { src, dst, payload }) => {
                self.udp.insert((src, dst, payload.to_vec()));
            }
            Ok(Inbound::Ping {
                src,
                dst,
                ident,
                seq_no,
                data,
            }) => {
                self.pings.insert((src, dst, ident, seq_no, data.to_vec()));
            }
            // An ICMP error a client sends about the stack's segments: the stack checks it against its flows.
            Ok(Inbound::Unreachable { .. }) | Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Python's side.

/// What Python knows of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `ConnectionRequested`, not answered yet.
    Requested,
    /// Accepted: `ConnectionEstablished` may follow.
    Accepted,
    /// Python opened it (`Connect`): `ConnectionEstablished` or `ConnectFailed` follows.
    Connecting,
    Open,
    /// `ConnectionClosed` without reset, maybe in TIME-WAIT: the data Python did not read yet may follow, and EOF.
    Ended,
    /// Nothing may follow: reset, refused, failed, or Python closed or aborted it.
    Gone,
}

#[derive(Debug)]
struct Conn {
    state: State,
    peer: PeerId,
    /// The client's side and the remote side.
    flow: (SocketAddr, SocketAddr),
    eof: bool,
    written: usize,
    drained: usize,
}

struct Python {
    ask_first: bool,
    conns: BTreeMap<ConnectionId, Conn>,
    /// Room in Python's queue: the read budget given before each flush.
    room: usize,
    capacity: usize,
    next_outgoing: ConnectionId,
    /// Datagrams it received (source, destination, peer), to answer; datagrams it sent.
    received: Vec<(SocketAddr, SocketAddr, PeerId)>,
    sent: HashSet<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Data read per flow of a peer's client (client index, client side, remote side).
    read: HashMap<(usize, SocketAddr, SocketAddr), usize>,
}

// ---------------------------------------------------------------------------------------------------------------
// The steps.

/// Which fragments of a packet the client sends: all in order, or these (modulo their number: some left out,
/// some twice, in any order).
type Order = Option<Vec<usize>>;

#[derive(Debug, Clone)]
enum Step {
    /// A client's TCP segment on one of its flows; `in_window` replaces its numbers with those the stack expects,
    /// plus small offsets, on a flow the stack answered on, so that segments reach the states past the handshake.
    /// `to`: to an arbitrary destination instead (from the client's address or another).
    Tcp {
        client: usize,
        flow: usize,
        tcp: Tcp,
        in_window: Option<(i16, i16)>,
        to: Option<(SocketAddr, SocketAddr)>,
        inner: Vec<(usize, u8)>,
    },
    /// A SYN, then the acknowledgement of the stack's answer.
    Open {
        client: usize,
        flow: usize,
        isn: u32,
    },
    /// A UDP datagram (fragmented over `mtu`) from the client.
    Udp {
        client: usize,
        v6: bool,
        ports: (u16, u16),
        len: usize,
        mtu: usize,
        order: Order,
        inner: Vec<(usize, u8)>,
    },
    /// An echo request (fragmented over `mtu`).
    Ping {
        client: usize,
        v6: bool,
        ident: u16,
        len: usize,
        mtu: usize,
        order: Order,
    },
    /// A datagram seen on the wire before (either way), with bits flipped and its length changed, or as it was
    /// (a replay), from a client's endpoint or elsewhere.
    Mutate {
        which: usize,
        flips: Vec<(usize, u8)>,
        resize: Option<usize>,
        from: usize,
    },
    Junk {
        datagram: Vec<u8>,
        from: usize,
    },
    /// The client starts a new handshake (a rekey).
    Rehandshake {
        client: usize,
    },
    Python(Action),
    /// Time passes: the stack's timers and `Peers::tick`.
    Wait {
        ms: u64,
    },
}

/// What Python does: to a connection it knows (`pick` among them, modulo their number) or any id.
#[derive(Debug, Clone)]
enum Action {
    Answer {
        pick: usize,
        answer: u8,
    },
    Write {
        pick: usize,
        len: usize,
    },
    WriteEof {
        pick: usize,
    },
    Close {
        pick: usize,
    },
    Abort {
        pick: usize,
    },
    Pause {
        pick: usize,
    },
    Resume {
        pick: usize,
    },
    /// Python emptied its queue.
    Drain,
    /// A datagram: an answer to one it received (naming the peer or not), or to any address.
    Datagram {
        pick: usize,
        len: usize,
        name_peer: bool,
    },
    /// Python opens a connection to a client's flow, from a fixed local port or a free one.
    Connect {
        client: usize,
        flow: usize,
        free_port: bool,
    },
    /// Python removes a client's peer, and maybe adds it back (a new id, the client must handshake again).
    RemovePeer {
        client: usize,
        add_back: bool,
    },
}

/// Connections Python knows, or sometimes one it does not (an id the stack may hold unannounced).
fn pick() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 0usize..1000, 1 => (1usize << 20)..(1usize << 20) + 8]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (pick(), 0u8..6).prop_map(|(pick, answer)| Action::Answer { pick, answer }),
        4 => (pick(), prop_oneof![0usize..2000, 0usize..200_000]).prop_map(|(pick, len)| Action::Write { pick, len }),
        1 => pick().prop_map(|pick| Action::WriteEof { pick }),
        1 => pick().prop_map(|pick| Action::Close { pick }),
        1 => pick().prop_map(|pick| Action::Abort { pick }),
        1 => pick().prop_map(|pick| Action::Pause { pick }),
        1 => pick().prop_map(|pick| Action::Resume { pick }),
        2 => Just(Action::Drain),
        2 => (any::<usize>(), prop_oneof![0usize..2000, 0usize..70_000], any::<bool>())
            .prop_map(|(pick, len, name_peer)| Action::Datagram { pick, len, name_peer }),
        1 => (0usize..2, any::<usize>(), any::<bool>())
            .prop_map(|(client, flow, free_port)| Action::Connect { client, flow, free_port }),
        // Rare: it ends the client's traffic until it handshakes again.
        1 => (0usize..2, 0u8..4).prop_map(|(client, add)| Action::RemovePeer { client, add_back: add > 0 }),
    ]
}

/// TCP headers: mostly the flags and options a TCP sends, sometimes any.
fn tcp() -> impl Strategy<Value = Tcp> {
    // FIN 1, SYN 2, RST 4, PSH 8, ACK 16: mostly data, so that connections live a while; some FINs, SYNs and
    // SYN-ACKs (to Python's connections), a few RSTs, sometimes anything.
    let flags = prop_oneof![
        8 => select(vec![16u8, 24]),
        3 => select(vec![2u8, 17, 25, 18]),
        1 => select(vec![4u8, 20]),
        1 => any::<u8>(),
    ];
    let option = select(vec![
        vec![2u8, 4, 5, 0xb4],
        vec![3, 3, 7],
        vec![4, 2],
        vec![8, 10, 0, 0, 0, 1, 0, 0, 0, 0],
        vec![5, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        vec![1],
    ]);
    let options = prop_oneof![
        4 => Just(vec![]),
        2 => proptest::collection::vec(option, 1..5).prop_map(|o| o.concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..44),
    ];
    let payload_len = prop_oneof![2 => Just(0usize), 4 => 1usize..200, 1 => 0usize..1400];
    (
        any::<u32>(),
        any::<u32>(),
        flags,
        prop_oneof![6 => Just(65535u16), 1 => any::<u16>()],
        options,
        payload_len,
    )
        .prop_map(|(seq, ack, flags, window, options, payload_len)| Tcp {
            seq,
            ack,
            flags,
            window,
            options,
            payload_len,
        })
}

/// Mostly none: the number the other side expects.
fn offset() -> impl Strategy<Value = i16> {
    prop_oneof![6 => Just(0i16), 1 => -3i16..3]
}

/// An arbitrary flow: from the client's address (or any), to any address and port, of one family.
fn elsewhere() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(v6, own, s, d, sport, dport)| {
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (
                    if own {
                        CLIENT_V6.into()
                    } else {
                        Ipv6Addr::from(s).into()
                    },
                    Ipv6Addr::from(d).into(),
                )
            } else {
                let (s4, d4) = ([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]]);
                (
                    if own {
                        CLIENT_V4.into()
                    } else {
                        Ipv4Addr::from(s4).into()
                    },
                    Ipv4Addr::from(d4).into(),
                )
            };
            (SocketAddr::new(src, sport), SocketAddr::new(dst, dport))
        })
}

fn order() -> impl Strategy<Value = Order> {
    proptest::option::weighted(0.3, proptest::collection::vec(any::<usize>(), 0..8))
}

fn inner_mutations() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop_oneof![8 => Just(vec![]), 1 => proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)]
}

fn step() -> impl Strategy<Value = Step> {
    let mtu = || select(vec![1280usize, 1420]);
    prop_oneof![
        16 => (
            0usize..2,
            any::<usize>(),
            tcp(),
            proptest::option::weighted(0.8, (offset(), offset())),
            proptest::option::weighted(0.1, elsewhere()),
            inner_mutations(),
        )
            .prop_map(|(client, flow, tcp, in_window, to, inner)| Step::Tcp { client, flow, tcp, in_window, to, inner }),
        4 => (0usize..2, any::<usize>(), any::<u32>()).prop_map(|(client, flow, isn)| Step::Open { client, flow, isn }),
        4 => (
            0usize..2,
            any::<bool>(),
            (select(vec![53u16, 5000, 5001]), select(vec![53u16, 443, 9999])),
            prop_oneof![4 => 0usize..1400, 1 => 0usize..65_400],
            mtu(),
            order(),
            inner_mutations(),
        )
            .prop_map(|(client, v6, ports, len, mtu, order, inner)| Step::Udp { client, v6, ports, len, mtu, order, inner }),
        2 => (0usize..2, any::<bool>(), any::<u16>(), prop_oneof![4 => 0usize..1400, 1 => 0usize..65_400], mtu(), order())
            .prop_map(|(client, v6, ident, len, mtu, order)| Step::Ping { client, v6, ident, len, mtu, order }),
        6 => (
            any::<usize>(),
            proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
            proptest::option::weighted(0.3, 0usize..1600),
            0usize..3,
        )
            .prop_map(|(which, flips, resize, from)| Step::Mutate { which, flips, resize, from }),
        2 => (junk(), 0usize..3).prop_map(|(datagram, from)| Step::Junk { datagram, from }),
        1 => (0usize..2).prop_map(|client| Step::Rehandshake { client }),
        12 => action().prop_map(Step::Python),
        4 => prop_oneof![
            6 => 0u64..500,
            3 => 500u64..10_000,
            1 => 10_000u64..900_000,
        ]
        .prop_map(|ms| Step::Wait { ms }),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// The world: the server's two halves, the clients, Python, and the wire between them.

/// A datagram on the wire.
enum Hop {
    ToServer(SocketAddr, Vec<u8>),
    ToClient(SocketAddr, Vec<u8>),
}

struct World {
    peers: Peers,
    stack: Stack,
    clients: Vec<Client>,
    python: Python,
    now: Instant,
    out: Outputs,
    buf: Vec<u8>,
    cbuf: Vec<u8>,
    /// Every datagram seen on the wire, either way, for replays, with the endpoint of the client that sent or got
    /// it.
    wire: Vec<(SocketAddr, Vec<u8>)>,
    /// Handshake initiations that the server answered.
    answered: HashSet<Vec<u8>>,
    /// The stack received a packet since it last flushed.
    unflushed: bool,
}

impl World {
    fn new(ask_first: bool, capacity: usize) -> World {
        let server_key = keys::generate();
        let server_public = keys::public("s", &keys::public_of("s", &server_key).unwrap()).unwrap();
        let mut configs = vec![];
        let mut clients = vec![];
        for (i, home) in HOMES.iter().enumerate() {
            let client_key = keys::generate();
            let mut config = PeerConfig::from_private_key("c", &client_key).unwrap();
            if i == 0 {
                config.allowed_ips = vec!["10.0.0.1/32".parse().unwrap(), "fd00::1/128".parse().unwrap()];
            }
            configs.push(config.clone());
            let secret = keys::secret("c", &client_key).unwrap();
            let flows = FLOWS
                .iter()
                .map(|(c, r)| ((c.parse().unwrap(), r.parse().unwrap()), FlowState::default()))
                .collect();
            clients.push(Client {
                tunn: Tunn::new(secret, server_public, None, None, 7 + i as u32, None),
                home: home.parse().unwrap(),
                config,
                peer: None,
                sent: HashSet::new(),
                expected: vec![],
                flows,
                tcp_bytes: HashMap::new(),
                syns: HashSet::new(),
                udp: HashSet::new(),
                pings: HashSet::new(),
                loose: false,
                reassembler: Reassembler::default(),
                next_ident: 0,
            });
        }
        let config = Configuration {
            listen_port: 0,
            private_key: server_key,
            peers: configs,
            ..Configuration::default()
        };
        let peers = Peers::new(&config).unwrap();
        let infos: Vec<PeerInfo> = (0..clients.len())
            .map(|id| peers.info(id).unwrap().clone())
            .collect();
        for (id, client) in clients.iter_mut().enumerate() {
            client.peer = Some(id);
        }
        let now = Instant::now();
        let mut stack = Stack::new(infos, now);
        stack.set_ask_first(ask_first);
        World {
            peers,
            stack,
            clients,
            python: Python {
                ask_first,
                conns: BTreeMap::new(),
                room: capacity,
                capacity,
                next_outgoing: OUTGOING,
                received: vec![],
                sent: HashSet::new(),
                read: HashMap::new(),
            },
            now,
            out: Outputs::default(),
            buf: vec![0; BUFFER_SIZE],
            cbuf: vec![0; BUFFER_SIZE],
            wire: vec![],
            answered: HashSet::new(),
            unflushed: false,
        }
    }

    fn client_of(&self, peer: PeerId) -> Option<usize> {
        self.clients.iter().position(|c| c.peer == Some(peer))
    }

    fn source(&self, from: usize) -> SocketAddr {
        match self.clients.get(from) {
            Some(client) => client.home,
            None => ELSEWHERE.parse().unwrap(),
        }
    }

    /// A client encrypts IP packets and sends them: on the wire, to the server, and what it delivers to the stack.
    fn client_sends(&mut self, i: usize, packets: Vec<Vec<u8>>) {
        let mut hops = VecDeque::new();
        for p in packets {
            let client = &mut self.clients[i];
            if let Some(delivered) = as_delivered(&p) {
                client.note(&delivered);
                client.sent.insert(delivered);
            }
            match client.tunn.encapsulate(&p, &mut self.cbuf) {
                TunnResult::WriteToNetwork(d) => hops.push_back(Hop::ToServer(client.home, d.to_vec())),
                TunnResult::Done => {} // queued behind a handshake under way
                TunnResult::Err(e) => panic!("the client could not encrypt: {e:?}"),
                _ => unreachable!("encapsulate writes to the network only"),
            }
        }
        self.run(hops);
    }

    /// Carries datagrams until the wire is quiet.
    fn run(&mut self, mut hops: VecDeque<Hop>) {
        while let Some(hop) = hops.pop_front() {
            match hop {
                Hop::ToServer(src, d) => {
                    self.wire.push((src, d.clone()));
                    self.server_receives(src, &d, &mut hops);
                }
                Hop::ToClient(to, d) => {
                    self.wire.push((to, d.clone()));
                    self.client_receives(to, &d, &mut hops);
                }
            }
        }
    }

    fn server_receives(&mut self, src: SocketAddr, d: &[u8], hops: &mut VecDeque<Hop>) {
        let mut sends = vec![];
        let mut deliveries = vec![];
        self.peers.receive(src, d, &mut self.buf, &mut |o| match o {
            Output::Send(to, d) => sends.push((to, d.to_vec())),
            Output::Deliver {
                peer,
                endpoint,
                packet,
            } => deliveries.push((peer, endpoint, packet.to_vec())),
            Output::HandshakeFailed { .. } => panic!("a handshake failure out of a received datagram"),
        });
        if d.first() == Some(&1) && sends.iter().any(|(_, reply)| reply.first() == Some(&2)) {
            self.answered.insert(d.to_vec());
        }
        for (to, d) in sends {
            self.server_sends(to, d, hops);
        }
        for (peer, endpoint, packet) in deliveries {
            let i = self.client_of(peer).expect("delivered for a peer of no client");
            let client = &self.clients[i];
            assert_eq!(
                endpoint, client.home,
                "delivered from another endpoint than the client's"
            );
            assert_eq!(src, client.home);
            assert!(
                client.sent.contains(&packet),
                "delivered a packet the client never sent: {packet:?}"
            );
            self.stack
                .receive(self.now, peer, endpoint, packet, &mut self.out);
            self.unflushed = true;
        }
    }

    /// A datagram from the server: to a client, or a cookie reply to anyone.
    fn server_sends(&mut self, to: SocketAddr, d: Vec<u8>, hops: &mut VecDeque<Hop>) {
        if self.clients.iter().any(|c| c.home == to) {
            hops.push_back(Hop::ToClient(to, d));
        } else {
            assert_eq!((d.len(), d[0]), (64, 3), "sent {d:?} to {to}, where no client is");
        }
    }

    fn client_receives(&mut self, to: SocketAddr, d: &[u8], hops: &mut VecDeque<Hop>) {
        let i = self.clients.iter().position(|c| c.home == to).unwrap();
        let client = &mut self.clients[i];
        let server: SocketAddr = "203.0.113.1:51820".parse().unwrap();
        let mut packet = None;
        match client.tunn.decapsulate(Some(server.ip()), d, &mut self.cbuf) {
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                packet = Some(p.to_vec())
            }
            TunnResult::WriteToNetwork(reply) => {
                hops.push_back(Hop::ToServer(client.home, reply.to_vec()));
                // Packets queued while there was no session go out now.
                while let TunnResult::WriteToNetwork(queued) =
                    client.tunn.decapsulate(None, &[], &mut self.cbuf)
                {
                    hops.push_back(Hop::ToServer(client.home, queued.to_vec()));
                }
            }
            TunnResult::Done => {}
            // A cookie reply the client has no handshake for (a mutated handshake of its own drew it), or a response
            // to an initiation it has given up on (a delayed copy, answered late) is refused.
            TunnResult::Err(_) if matches!(d.first(), Some(2 | 3)) => {}
            TunnResult::Err(e) => panic!("client {i} could not decrypt a datagram from the server: {e:?}"),
        }
        if let Some(p) = packet {
            count(&TO_CLIENTS, 1);
            let at = client.expected.iter().position(|e| *e == p);
            let at =
                at.unwrap_or_else(|| panic!("client {i} decrypted a packet the stack never sent it: {p:?}"));
            client.expected.remove(at);
            self.client_reads(i, p);
        }
    }

    /// A client reads a packet of the stack's (checked already): learns its TCP numbers, checks what it carries.
    fn client_reads(&mut self, i: usize, p: Vec<u8>) {
        let client = &mut self.clients[i];
        let whole = if fragments::is_fragment(&p) {
            match client.reassembler.insert(0, &p, self.now) {
                Some(whole) => whole,
                None => return,
            }
        } else {
            p
        };
        match check_sent(&whole).expect("a reassembled packet") {
            Sent::Tcp { src, dst, end, rst } => {
                // After a RST the flow waits for a new SYN.
                client.flows.entry((dst, src)).or_default().stack_next = (!rst).then_some(end);
            }
            Sent::Udp { src, dst, data } => {
                assert!(
                    self.python.sent.contains(&(src, dst, data)),
                    "a datagram Python never sent"
                );
            }
            Sent::EchoReply {
                src,
                dst,
                ident,
                seq_no,
                data,
            } => {
                assert!(
                    client.loose || client.pings.contains(&(dst, src, ident, seq_no, data)),
                    "an echo reply to no request of the client's"
                );
                count(&ECHOES, 1);
            }
            Sent::IcmpError => {}
        }
    }

    /// Lets the stack finish what it was given, sends its packets to the clients and Python its events, until
    /// nothing moves; then checks the stack.
    fn settle(&mut self) {
        for _ in 0..50 {
            self.unflushed = false;
            self.stack.set_read_budget(self.python.room);
            self.stack.flush(self.now, &mut self.out);
            self.stack.poll_timers(self.now, &mut self.out);
            self.drain_outputs();
            self.stack.check_invariants();
            if !self.unflushed {
                break;
            }
        }
    }

    /// The stack's events to Python, its packets through `Peers::send` to the clients.
    fn drain_outputs(&mut self) {
        let events: Vec<_> = self.out.events.drain(..).collect();
        for event in events {
            self.event(event);
        }
        let packets: Vec<_> = self.out.packets.drain(..).collect();
        let mut hops = VecDeque::new();
        for (peer, p) in packets {
            assert!(p.len() <= MTU, "a packet of {} bytes", p.len());
            check_sent(&p);
            if let Some(i) = self.client_of(peer) {
                self.clients[i].expected.push(p.clone());
            }
            let mut sends = vec![];
            self.peers.send(peer, &p, &mut self.buf, &mut |o| match o {
                Output::Send(to, d) => sends.push((to, d.to_vec())),
                other => panic!("Peers::send gave {other:?}"),
            });
            for (to, d) in sends {
                self.server_sends(to, d, &mut hops);
            }
        }
        self.run(hops);
    }

    /// One event for Python, checked against what Python and the clients know.
    fn event(&mut self, event: NetworkToPython) {
        let python = &mut self.python;
        match event {
            NetworkToPython::ConnectionRequested {
                id,
                peer,
                endpoint,
                src,
                dst,
            } => {
                assert!(python.ask_first, "asked about connection {id} unasked");
                assert!(
                    id < OUTGOING && !python.conns.contains_key(&id),
                    "requested {id} twice"
                );
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(peer.id))
                    .expect("a client's peer");
                assert_eq!(endpoint, self.clients[i].home);
                assert!(
                    self.clients[i].syns.contains(&(src, dst)),
                    "a request without a SYN"
                );
                let conn = Conn {
                    state: State::Requested,
                    peer: peer.id,
                    flow: (src, dst),
                    eof: false,
                    written: 0,
                    drained: 0,
                };
                python.conns.insert(id, conn);
            }
            NetworkToPython::ConnectionEstablished {
                id,
                peer,
                endpoint,
                src,
                dst,
            } => {
                count(&ESTABLISHED, 1);
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(peer.id))
                    .expect("a client's peer");
                match python.conns.get_mut(&id) {
                    None => {
                        assert!(!python.ask_first, "connection {id} established without a request");
                        assert!(id < OUTGOING);
                        assert_eq!(endpoint, self.clients[i].home);
                        assert!(
                            self.clients[i].syns.contains(&(src, dst)),
                            "established without a SYN"
                        );
                        let conn = Conn {
                            state: State::Open,
                            peer: peer.id,
                            flow: (src, dst),
                            eof: false,
                            written: 0,
                            drained: 0,
                        };
                        python.conns.insert(id, conn);
                    }
                    Some(conn) => {
                        assert!(
                            matches!(conn.state, State::Accepted | State::Connecting),
                            "connection {id} established in state {:?}",
                            conn.state
                        );
                        assert_eq!(conn.peer, peer.id);
                        assert_eq!(conn.flow.0, src);
                        // Python's own connection from a free port: the port is known now.
                        assert!(
                            conn.flow.1 == dst || (conn.flow.1.port() == 0 && conn.flow.1.ip() == dst.ip())
                        );
                        conn.flow.1 = dst;
                        conn.state = State::Open;
                    }
                }
            }
            NetworkToPython::Data { id, data } => {
                let conn = python
                    .conns
                    .get(&id)
                    .unwrap_or_else(|| panic!("data for unknown {id}"));
                assert!(
                    matches!(conn.state, State::Open | State::Ended),
                    "data in {:?}",
                    conn.state
                );
                assert!(!conn.eof, "data after EOF");
                assert!(!data.is_empty(), "empty data");
                assert!(
                    data.len() <= python.room,
                    "read {} with room for {}",
                    data.len(),
                    python.room
                );
                python.room -= data.len();
                count(&DATA_BYTES, data.len());
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(conn.peer))
                    .expect("a client's peer");
                let read = python.read.entry((i, conn.flow.0, conn.flow.1)).or_default();
                *read += data.len();
                let sent = self.clients[i].tcp_bytes.get(&conn.flow).copied().unwrap_or(0);
                assert!(
                    *read <= sent,
                    "read {read} bytes of a flow whose client sent {sent}"
                );
            }
            NetworkToPython::Eof { id } => {
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("EOF for unknown {id}"));
                assert!(
                    matches!(conn.state, State::Open | State::Ended),
                    "EOF in {:?}",
                    conn.state
                );
                assert!(!conn.eof, "EOF twice");
                conn.eof = true;
            }
            NetworkToPython::Drained { id, bytes } => {
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("drained for unknown {id}"));
                assert_eq!(conn.state, State::Open, "drained");
                conn.drained += bytes;
                assert!(
                    conn.drained <= conn.written,
                    "drained {} of {}",
                    conn.drained,
                    conn.written
                );
            }
            NetworkToPython::ConnectionClosed { id, reset } => {
                count(&CLOSED, 1);
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("closed unknown {id}"));
                assert_eq!(conn.state, State::Open, "closed {id}");
                conn.state = if reset { State::Gone } else { State::Ended };
            }
            NetworkToPython::ConnectFailed { id, .. } => {
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("failed unknown {id}"));
                assert_eq!(conn.state, State::Connecting, "failed {id}");
                conn.state = State::Gone;
            }
            NetworkToPython::Datagram { data, src, dst, peer } => {
                count(&DATAGRAMS, 1);
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(peer.id))
                    .expect("a client's peer");
                let client = &self.clients[i];
                assert!(
                    client.loose || client.udp.contains(&(src, dst, data)),
                    "a datagram the client never sent"
                );
                python.received.push((src, dst, peer.id));
            }
            other => panic!("the stack sent {other:?}"),
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Tcp {
                client,
                flow,
                mut tcp,
                in_window,
                to,
                inner,
            } => {
                let c = &mut self.clients[client];
                // A segment in the window goes to a flow the stack answered on, if there is one.
                let answered: Vec<_> = c
                    .flows
                    .iter()
                    .filter(|(_, f)| f.stack_next.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                let (src, dst) = match to {
                    Some(addresses) => addresses,
                    None if in_window.is_some() && !answered.is_empty() => answered[flow % answered.len()],
                    None => *c.flows.keys().nth(flow % c.flows.len()).unwrap(),
                };
                let state = c.flows.entry((src, dst)).or_default();
                let end = |tcp: &Tcp| tcp.seq.wrapping_add(tcp.len());
                if let (Some((ds, da)), Some(stack_next)) = (in_window, state.stack_next) {
                    tcp.seq = state.client_next.wrapping_add(ds as u32);
                    tcp.ack = stack_next.wrapping_add(da as u32);
                    // The client's sequence moves on, unless the segment leaves a hole (as if one before it was
                    // lost): the next segment fills it.
                    if !packet::seq_after(tcp.seq, state.client_next)
                        && packet::seq_after(end(&tcp), state.client_next)
                    {
                        state.client_next = end(&tcp);
                    }
                } else if tcp.flags & 2 != 0 {
                    // A SYN starts the client's sequence; other segments out of the window are noise beside it.
                    state.client_next = end(&tcp);
                }
                let packet = mutated(tcp.packet(src, dst), &inner);
                self.client_sends(client, vec![packet]);
            }
            Step::Open { client, flow, isn } => {
                let bare = |flags, seq| Tcp {
                    seq,
                    ack: 0,
                    flags,
                    window: 65535,
                    options: vec![],
                    payload_len: 0,
                };
                let c = &mut self.clients[client];
                let (src, dst) = *c.flows.keys().nth(flow % c.flows.len()).unwrap();
                c.flows.get_mut(&(src, dst)).unwrap().client_next = isn.wrapping_add(1);
                self.client_sends(client, vec![bare(2, isn).packet(src, dst)]);
                self.settle();
                let c = &mut self.clients[client];
                let state = c.flows[&(src, dst)];
                if let Some(ack) = state.stack_next {
                    let packet = Tcp {
                        ack,
                        ..bare(16, state.client_next)
                    }
                    .packet(src, dst);
                    self.client_sends(client, vec![packet]);
                }
            }
            Step::Udp {
                client,
                v6,
                ports,
                len,
                mtu,
                order,
                inner,
            } => {
                let (src, dst) = addresses(v6, ports);
                // Within an IP packet's length (`packet::udp` takes no more).
                let data: Vec<u8> = (0..len.min(65535 - 48)).map(|i| (i * 7) as u8).collect();
                let Some(whole) = packet::udp(src, dst, &data) else {
                    return;
                };
                let c = &mut self.clients[client];
                c.next_ident += 1;
                let fragments = packet::fit_mtu(whole.clone(), mtu, c.next_ident);
                if fragments.len() > 1 {
                    // What the fragments reassemble to, unless bytes of them are overwritten.
                    c.note(&whole);
                    c.loose |= !inner.is_empty();
                }
                let packets = ordered(fragments, order)
                    .into_iter()
                    .map(|p| mutated(p, &inner))
                    .collect();
                self.client_sends(client, packets);
            }
            Step::Ping {
                client,
                v6,
                ident,
                len,
                mtu,
                order,
            } => {
                let (src, dst) = addresses(v6, (0, 0));
                let data: Vec<u8> = (0..len.min(65535 - 48)).map(|i| (i * 3) as u8).collect();
                let whole = echo_request(src.ip(), dst.ip(), ident, 1, &data);
                let c = &mut self.clients[client];
                c.next_ident += 1;
                let fragments = packet::fit_mtu(whole.clone(), mtu, c.next_ident);
                if fragments.len() > 1 {
                    c.note(&whole);
                }
                self.client_sends(client, ordered(fragments, order));
            }
            Step::Mutate {
                which,
                flips,
                resize,
                from,
            } => {
                if self.wire.is_empty() {
                    return;
                }
                let (home, original) = self.wire[which % self.wire.len()].clone();
                let mut d = original.clone();
                for (at, bits) in flips {
                    if !d.is_empty() {
                        let len = d.len();
                        d[at % len] ^= bits;
                    }
                }
                if let Some(len) = resize {
                    d.resize(len, 0);
                }
                let mut src = self.source(from);
                // A handshake initiation that the server never answered (a limit refused it, or it drew a cookie)
                // is accepted once, from anywhere, as WireGuard accepts a delayed one, and moves the peer's
                // endpoint there. That one comes from its client's endpoint, so that clients stay where they are.
                if d == original && d.first() == Some(&1) && !self.answered.contains(&d) {
                    src = home;
                }
                self.run(VecDeque::from([Hop::ToServer(src, d)]));
            }
            Step::Junk { datagram, from } => {
                let src = self.source(from);
                self.run(VecDeque::from([Hop::ToServer(src, datagram)]));
            }
            Step::Rehandshake { client } => {
                let c = &mut self.clients[client];
                if let TunnResult::WriteToNetwork(init) =
                    c.tunn.format_handshake_initiation(&mut self.cbuf, true)
                {
                    let hop = Hop::ToServer(c.home, init.to_vec());
                    self.run(VecDeque::from([hop]));
                }
            }
            Step::Python(action) => self.python_acts(action),
            Step::Wait { ms } => {
                self.now += Duration::from_millis(ms);
                let mut sends = vec![];
                self.peers.tick(self.now, &mut self.buf, &mut |o| match o {
                    Output::Send(to, d) => sends.push((to, d.to_vec())),
                    Output::HandshakeFailed { .. } => {}
                    other => panic!("tick gave {other:?}"),
                });
                let mut hops = VecDeque::new();
                for (to, d) in sends {
                    self.server_sends(to, d, &mut hops);
                }
                self.run(hops);
            }
        }
        self.settle();
        self.check_python();
    }

    /// The id Python acts on: one it knows, or any.
    fn id(&self, pick: usize) -> ConnectionId {
        if pick >= 1 << 20 || self.python.conns.is_empty() {
            return (pick % 8) as ConnectionId;
        }
        *self
            .python
            .conns
            .keys()
            .nth(pick % self.python.conns.len())
            .unwrap()
    }

    fn python_acts(&mut self, action: Action) {
        let now = self.now;
        let request = match action {
            Action::Answer { pick, answer } => {
                let id = self.id(pick);
                let answer = match answer {
                    0 | 1 => SynAnswer::Accept,
                    2 => SynAnswer::Reset,
                    3 => SynAnswer::Silence,
                    4 => SynAnswer::Unreachable(Unreachable::Host),
                    _ => SynAnswer::Unreachable(Unreachable::Prohibited),
                };
                if let Some(conn) = self.python.conns.get_mut(&id) {
                    if conn.state == State::Requested {
                        conn.state = if answer == SynAnswer::Accept {
                            State::Accepted
                        } else {
                            State::Gone
                        };
                    }
                }
                PythonToNetwork::Answer { id, answer }
            }
            Action::Write { pick, len } => {
                let id = self.id(pick);
                if let Some(conn) = self.python.conns.get_mut(&id) {
                    conn.written += len;
                }
                PythonToNetwork::Write {
                    id,
                    data: vec![0x42; len],
                }
            }
            Action::WriteEof { pick } => PythonToNetwork::WriteEof { id: self.id(pick) },
            Action::Close { pick } | Action::Abort { pick } => {
                let id = self.id(pick);
                if let Some(conn) = self.python.conns.get_mut(&id) {
                    conn.state = State::Gone;
                }
                if matches!(action, Action::Close { .. }) {
                    PythonToNetwork::Close { id }
                } else {
                    PythonToNetwork::Abort { id }
                }
            }
            Action::Pause { pick } => PythonToNetwork::PauseReading { id: self.id(pick) },
            Action::Resume { pick } => PythonToNetwork::ResumeReading { id: self.id(pick) },
            Action::Drain => {
                self.python.room = self.python.capacity;
                PythonToNetwork::ResumeStarved
            }
            Action::Datagram { pick, len, name_peer } => {
                let data = vec![0x17; len];
                let (src, dst, peer) = match self.python.received.len() {
                    0 => (
                        "10.0.0.42:53".parse().unwrap(),
                        "10.0.0.1:5000".parse().unwrap(),
                        0,
                    ),
                    n => {
                        let (src, dst, peer) = self.python.received[pick % n];
                        (dst, src, peer)
                    }
                };
                self.python.sent.insert((src, dst, data.clone()));
                PythonToNetwork::SendDatagram {
                    data,
                    src,
                    dst,
                    peer: name_peer.then_some(peer),
                }
            }
            Action::Connect {
                client,
                flow,
                free_port,
            } => {
                let Some(peer) = self.clients[client].peer else {
                    return;
                };
                let c = &self.clients[client];
                let (client_side, mut remote) = *c.flows.keys().nth(flow % c.flows.len()).unwrap();
                if free_port {
                    remote.set_port(0);
                }
                let id = self.python.next_outgoing;
                self.python.next_outgoing += 1;
                let conn = Conn {
                    state: State::Connecting,
                    peer,
                    flow: (client_side, remote),
                    eof: false,
                    written: 0,
                    drained: 0,
                };
                self.python.conns.insert(id, conn);
                PythonToNetwork::Connect {
                    id,
                    peer,
                    src: remote,
                    dst: client_side,
                }
            }
            Action::RemovePeer { client, add_back } => {
                self.remove_peer(client, add_back);
                return;
            }
        };
        self.stack.handle(now, request, &mut self.out);
    }

    /// As the WireGuard and network tasks remove a peer: `Peers` refuses it, the stack resets its connections and
    /// sends their last packets, `Peers` forgets it; maybe it is added back, with a new id.
    fn remove_peer(&mut self, client: usize, add_back: bool) {
        let Some(old) = self.clients[client].peer else {
            return;
        };
        let key = keys::decode("k", &self.clients[client].config.public_key).unwrap();
        assert_eq!(self.peers.remove(&key), Some(old));
        self.stack.remove_peer(self.now, old, &mut self.out);
        self.drain_outputs();
        self.peers.forget(old);
        self.clients[client].peer = None;
        self.clients[client].expected.clear();
        // Python heard of the end of every connection of the peer; those it did not hear of are gone silently.
        for (id, conn) in &mut self.python.conns {
            if conn.peer == old {
                assert!(
                    conn.state != State::Open,
                    "connection {id} of a removed peer still open"
                );
                conn.state = State::Gone;
            }
        }
        if add_back {
            // A new peer with the old key keeps no handshake timestamp: a replay of the client's last initiation
            // would be accepted once and move its endpoint (SECURITY.md). Replays come from what follows.
            self.wire.clear();
            let info = self.peers.add(&self.clients[client].config).unwrap();
            self.clients[client].peer = Some(info.id);
            self.stack.add_peer(info);
        }
    }

    /// What Python knows agrees with the stack: no more connections than the stack holds are open.
    fn check_python(&self) {
        let open = self
            .python
            .conns
            .values()
            .filter(|c| c.state == State::Open)
            .count();
        assert!(
            open <= self.stack.connection_count(),
            "{open} open, the stack holds fewer"
        );
    }

    /// The stack resets everything: Python hears of the end of every connection it knew open, none is left.
    fn finish(mut self) {
        self.stack.abort_all(self.now, &mut self.out);
        self.drain_outputs();
        self.settle();
        for (id, conn) in &self.python.conns {
            assert!(
                conn.state != State::Open,
                "connection {id} still open after abort_all"
            );
        }
        assert_eq!(self.stack.connection_count(), 0);
    }
}

/// A client's addresses for a datagram or a ping: its own, to a remote one.
fn addresses(v6: bool, (sport, dport): (u16, u16)) -> (SocketAddr, SocketAddr) {
    if v6 {
        (
            SocketAddr::new(CLIENT_V6.into(), sport),
            SocketAddr::new("fd00::42".parse().unwrap(), dport),
        )
    } else {
        (
            SocketAddr::new(CLIENT_V4.into(), sport),
            SocketAddr::new("10.0.0.42".parse().unwrap(), dport),
        )
    }
}

/// The fragments in `order` (modulo their number), or all in order.
fn ordered(fragments: Vec<Vec<u8>>, order: Order) -> Vec<Vec<u8>> {
    match order {
        None => fragments,
        Some(order) => order
            .into_iter()
            .map(|i| fragments[i % fragments.len()].clone())
            .collect(),
    }
}

/// Bytes of a plaintext packet overwritten before the client encrypts it.
fn mutated(mut packet: Vec<u8>, mutations: &[(usize, u8)]) -> Vec<u8> {
    for &(at, byte) in mutations {
        let len = packet.len();
        packet[at % len] = byte;
    }
    packet
}

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
