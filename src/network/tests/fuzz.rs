//! Property tests of the inbound packet path: whatever a peer sends (arbitrary bytes, or valid packets with
//! mutations), parsing never panics, and the TCP stack survives any sequence of segments and of Python's
//! requests, answering only with packets that fit the tunnel. Uses only the stack's public API.
//!
//! A longer run: `PROPTEST_CASES=100000 cargo test --release --lib fuzz` (see README).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::select;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket};

use crate::messages::{ConnectionId, NetworkToPython, PeerInfo, PythonToNetwork};
use crate::network::device::MTU;
use crate::network::packet::{self, Inbound, Segment};
use crate::network::stack::{Outputs, Stack};

/// `default` cases, unless PROPTEST_CASES asks for another number (for a longer run).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(default))
}

/// An IP packet around `payload`, with a valid header of the family of `src` and `dst`; the whole-way
/// property test (`src/tests/fuzz/`) builds its packets with it too.
pub(crate) fn ip(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let next_header = IpProtocol::from(protocol);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header,
                payload_len: payload.len(),
                hop_limit: 64,
            };
            let mut p = vec![0; repr.buffer_len() + payload.len()];
            repr.emit(
                &mut Ipv4Packet::new_unchecked(&mut p),
                &ChecksumCapabilities::default(),
            );
            p[repr.buffer_len()..].copy_from_slice(payload);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header,
                payload_len: payload.len(),
                hop_limit: 64,
            };
            let mut p = vec![0; repr.buffer_len() + payload.len()];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut p));
            p[repr.buffer_len()..].copy_from_slice(payload);
            p
        }
        _ => unreachable!("addresses of one family"),
    }
}

/// A TCP header and its fields as a peer may set them: any flags, any options.
#[derive(Debug, Clone)]
struct Tcp {
    seq: u32,
    ack: u32,
    /// The flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    flags: u8,
    window: u16,
    /// Padded with zeros (end of options) to a multiple of 4 bytes, at most 40.
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Tcp {
    /// The whole IP packet, with a valid TCP checksum.
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
        tcp.extend_from_slice(&self.payload);
        let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
        TcpPacket::new_unchecked(&mut tcp).fill_checksum(&s, &d);
        ip(src.ip(), dst.ip(), 6, &tcp)
    }
}

/// TCP headers with any fields; mostly flags and options that a TCP sends, so that segments get past a
/// handshake, sometimes any.
fn tcp() -> impl Strategy<Value = Tcp> {
    // FIN 1, SYN 2, RST 4, PSH 8, ACK 16.
    let flags = prop_oneof![
        4 => select(vec![2u8, 16, 24, 17, 25, 4, 20, 18]),
        1 => any::<u8>(),
    ];
    // MSS, window scale, SACK permitted, timestamps, SACK blocks: each valid, in any mix.
    let option = select(vec![
        vec![2u8, 4, 5, 0xb4],
        vec![3, 3, 7],
        vec![4, 2],
        vec![8, 10, 0, 0, 0, 1, 0, 0, 0, 0],
        vec![5, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        vec![1],
    ]);
    let options = prop_oneof![
        3 => Just(vec![]),
        2 => proptest::collection::vec(option, 1..5).prop_map(|o| o.concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..44),
    ];
    let payload = prop_oneof![
        2 => Just(vec![]),
        2 => proptest::collection::vec(any::<u8>(), 1..100),
        1 => proptest::collection::vec(any::<u8>(), 0..1500),
    ];
    (
        any::<u32>(),
        any::<u32>(),
        flags,
        prop_oneof![4 => Just(65535u16), 1 => any::<u16>()],
        options,
        payload,
    )
        .prop_map(|(seq, ack, flags, window, options, payload)| Tcp {
            seq,
            ack,
            flags,
            window,
            options,
            payload,
        })
}

fn address_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    select(vec![
        ("10.0.0.1:5000", "10.0.0.42:80"),
        ("[fd00::1]:5000", "[fd00::42]:443"),
    ])
    .prop_map(|(s, d)| (s.parse().unwrap(), d.parse().unwrap()))
}

/// A valid packet of any kind a peer sends: TCP, UDP, ICMP(v6) of any type, or another protocol.
fn valid_packet() -> impl Strategy<Value = Vec<u8>> {
    let body = || proptest::collection::vec(any::<u8>(), 0..1500);
    prop_oneof![
        (address_pair(), tcp()).prop_map(|((s, d), t)| t.packet(s, d)),
        (address_pair(), body()).prop_map(|((s, d), payload)| packet::udp(s, d, &payload).unwrap()),
        // An echo request, or any other ICMP(v6) message: type, code, checksum, body.
        (address_pair(), any::<bool>(), any::<u8>(), any::<u8>(), body()).prop_map(
            |((s, d), echo, kind, code, mut body)| {
                let v6 = s.is_ipv6();
                let kind = match (echo, v6) {
                    (true, false) => 8,
                    (true, true) => 128,
                    (false, _) => kind,
                };
                body.splice(0..0, [kind, code, 0, 0]);
                let protocol = if v6 { 58 } else { 1 };
                let mut p = ip(s.ip(), d.ip(), protocol, &body);
                fill_icmp_checksum(&mut p, v6);
                p
            }
        ),
        (address_pair(), any::<u8>(), body()).prop_map(|((s, d), protocol, body)| ip(
            s.ip(),
            d.ip(),
            protocol,
            &body
        )),
    ]
}

fn fill_icmp_checksum(p: &mut [u8], v6: bool) {
    use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, Ipv6Address};
    if v6 {
        let s = Ipv6Address::from_octets(p[8..24].try_into().unwrap());
        let d = Ipv6Address::from_octets(p[24..40].try_into().unwrap());
        Icmpv6Packet::new_unchecked(&mut p[40..]).fill_checksum(&s, &d);
    } else {
        Icmpv4Packet::new_unchecked(&mut p[20..]).fill_checksum();
    }
}

/// Bytes overwritten, and the packet cut short or lengthened.
fn mutated(packet: Vec<u8>, mutations: &[(usize, u8)], resize: Option<usize>) -> Vec<u8> {
    let mut packet = packet;
    for &(at, byte) in mutations {
        if !packet.is_empty() {
            let len = packet.len();
            packet[at % len] = byte;
        }
    }
    if let Some(len) = resize {
        packet.resize(len, 0xa5);
    }
    packet
}

/// Everything that reads a packet from a peer, run on one; none may panic.
fn read_everything(packet: &[u8]) {
    let _ = crate::network::fragments::is_fragment(packet);
    let _ = packet::sent_segment(packet);
    if let Ok(Inbound::Tcp { segment, .. }) = packet::parse(packet) {
        for flip in [false, true] {
            if let Some(ack) = packet::bare_ack(packet, segment.seq, flip) {
                // A bare acknowledgement is a TCP packet without data.
                match packet::parse(&ack) {
                    Ok(Inbound::Tcp { segment: s, .. }) => assert!(!s.has_data && s.len == 0),
                    other => panic!("bare_ack made {other:?}"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_parse_arbitrary_bytes(
        first in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut packet = vec![first];
        packet.extend(rest);
        read_everything(&packet);
        // The same bytes behind a valid IP header of each family.
        for (s, d) in ["10.0.0.1", "fd00::1"].map(|a| (a.parse().unwrap(), a.parse().unwrap())) {
            for protocol in [1, 6, 17, 58, first] {
                read_everything(&ip(s, d, protocol, &packet));
            }
        }
    }

    #[test]
    fn fuzz_parse_mutated_packets(
        packet in valid_packet(),
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        resize in proptest::option::of(0usize..1600),
    ) {
        read_everything(&packet);
        read_everything(&mutated(packet, &mutations, resize));
    }

    /// What parsing reads from a valid TCP packet is what was built into it; a bare acknowledgement keeps the
    /// addresses, ports, acknowledgement number and window, and carries a valid checksum.
    #[test]
    fn fuzz_tcp_segments_read_back((src, dst) in address_pair(), t in tcp()) {
        let packet = t.packet(src, dst);
        let Ok(Inbound::Tcp { src: s, dst: d, segment, opens }) = packet::parse(&packet) else {
            // A data offset beyond the options (from random options bytes) cannot happen: they are padded.
            panic!("a valid TCP packet does not parse");
        };
        let (syn, fin, ack) = (t.flags & 2 != 0, t.flags & 1 != 0, t.flags & 16 != 0);
        prop_assert_eq!((s, d), (src, dst));
        prop_assert_eq!(opens, syn && !ack);
        prop_assert_eq!(segment, Segment {
            seq: t.seq,
            len: t.payload.len() as u32 + syn as u32 + fin as u32,
            has_data: !t.payload.is_empty(),
            ack: ack.then_some(t.ack),
        });
        let Some(bare) = packet::bare_ack(&packet, 77, false) else {
            prop_assert!(!ack || t.window == 0);
            return Ok(());
        };
        let header = if src.is_ipv4() { 20 } else { 40 };
        let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
        let b = TcpPacket::new_checked(&bare[header..]).unwrap();
        prop_assert!(b.verify_checksum(&s, &d));
        prop_assert_eq!((b.src_port(), b.dst_port()), (src.port(), dst.port()));
        prop_assert_eq!((b.seq_number().0 as u32, b.ack_number().0 as u32), (77, t.ack));
        prop_assert_eq!(b.window_len(), t.window);
        prop_assert!(b.ack() && !b.syn() && !b.fin() && !b.rst() && b.payload().is_empty());
    }
}

/// Flows of the stack test: the same client address from two peers, and each family.
const FLOWS: [(usize, &str, &str); 4] = [
    (0, "10.0.0.1:5000", "10.0.0.42:80"),
    (1, "10.0.0.1:5000", "10.0.0.42:80"),
    (0, "10.0.0.1:5001", "192.0.2.7:443"),
    (0, "[fd00::1]:5000", "[fd00::42]:80"),
];

/// What the test does next.
#[derive(Debug, Clone)]
enum Step {
    /// A SYN from a flow's client, then the acknowledgement of the stack's answer: a connection opens.
    Open {
        flow: usize,
        isn: u32,
    },
    /// A TCP segment from a flow's client; `in_window` replaces its numbers with those the stack expects,
    /// plus small offsets, so that segments reach the states past the handshake.
    Segment {
        flow: usize,
        tcp: Tcp,
        in_window: Option<(i16, i16)>,
    },
    /// Any packet from a peer.
    Packet {
        peer: usize,
        packet: Vec<u8>,
    },
    Python {
        flow: usize,
        request: u8,
        len: usize,
    },
    ReadBudget(usize),
}

/// Mostly none: the number the other side expects.
fn offset() -> impl Strategy<Value = i16> {
    prop_oneof![4 => Just(0i16), 1 => -3i16..3]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..FLOWS.len(), any::<u32>()).prop_map(|(flow, isn)| Step::Open { flow, isn }),
        6 => (0..FLOWS.len(), tcp(), proptest::option::weighted(0.8, (offset(), offset())))
            .prop_map(|(flow, tcp, in_window)| Step::Segment { flow, tcp, in_window }),
        1 => (0usize..2, valid_packet(), proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3))
            .prop_map(|(peer, p, m)| Step::Packet { peer, packet: mutated(p, &m, None) }),
        2 => (0..FLOWS.len(), 0u8..7, 0usize..100_000)
            .prop_map(|(flow, request, len)| Step::Python { flow, request, len }),
        1 => prop_oneof![Just(usize::MAX), 0usize..5000].prop_map(Step::ReadBudget),
    ]
}

/// What the test knows of a flow: its connection, and the sequence numbers each side expects next.
#[derive(Default, Clone, Copy)]
struct Known {
    id: Option<ConnectionId>,
    /// The client's next sequence number, as last sent.
    client_next: u32,
    /// The stack's next sequence number, from its last segment.
    stack_next: Option<u32>,
}

/// The stack under test, and what the test learned from its output.
struct Harness {
    stack: Stack,
    /// The harness's clock: each step moves it on a little, so that timers come due.
    now: std::time::Instant,
    flows: Vec<(usize, SocketAddr, SocketAddr)>,
    known: [Known; FLOWS.len()],
    ids: HashMap<ConnectionId, usize>,
    out: Outputs,
    /// Counts of what happened, to see what a run reached.
    established: usize,
    data: usize,
}

impl Harness {
    fn new() -> Self {
        let peers = (0..2)
            .map(|id| PeerInfo {
                id,
                public_key: Arc::from(format!("peer{id}")),
            })
            .collect();
        let now = std::time::Instant::now();
        Harness {
            stack: Stack::new(peers, now),
            now,
            flows: FLOWS
                .iter()
                .map(|&(p, s, d)| (p, s.parse().unwrap(), d.parse().unwrap()))
                .collect(),
            known: [Known::default(); FLOWS.len()],
            ids: HashMap::new(),
            out: Outputs::default(),
            established: 0,
            data: 0,
        }
    }

    fn segment(&mut self, flow: usize, mut tcp: Tcp, in_window: Option<(i16, i16)>) {
        let (peer, src, dst) = self.flows[flow];
        if let (Some((ds, da)), Some(stack_next)) = (in_window, self.known[flow].stack_next) {
            tcp.seq = self.known[flow].client_next.wrapping_add(ds as u32);
            tcp.ack = stack_next.wrapping_add(da as u32);
        }
        let len = tcp.payload.len() as u32 + (tcp.flags & 1) as u32 + (tcp.flags >> 1 & 1) as u32;
        self.known[flow].client_next = tcp.seq.wrapping_add(len);
        let endpoint: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        self.stack
            .receive(self.now, peer, endpoint, tcp.packet(src, dst), &mut self.out);
    }

    fn step(&mut self, step: Step) {
        self.now += std::time::Duration::from_millis(10);
        match step {
            Step::Open { flow, isn } => {
                let bare = |flags, seq| Tcp {
                    seq,
                    ack: 0,
                    flags,
                    window: 65535,
                    options: vec![],
                    payload: vec![],
                };
                self.segment(flow, bare(2, isn), None);
                self.settle();
                self.segment(flow, bare(16, 0), Some((0, 0)));
            }
            Step::Segment { flow, tcp, in_window } => self.segment(flow, tcp, in_window),
            Step::Packet { peer, packet } => {
                let endpoint: SocketAddr = "192.0.2.1:51820".parse().unwrap();
                self.stack
                    .receive(self.now, peer, endpoint, packet, &mut self.out)
            }
            Step::Python { flow, request, len } => {
                let id = self.known[flow].id.unwrap_or(len as u64 % 4);
                let request = match request {
                    0 => PythonToNetwork::Write {
                        id,
                        data: vec![0x42; len],
                    },
                    1 => PythonToNetwork::WriteEof { id },
                    2 => PythonToNetwork::Close { id },
                    3 => PythonToNetwork::Abort { id },
                    4 => PythonToNetwork::PauseReading { id },
                    5 => PythonToNetwork::ResumeReading { id },
                    _ => PythonToNetwork::ResumeStarved,
                };
                self.stack.handle(self.now, request, &mut self.out);
            }
            Step::ReadBudget(bytes) => self.stack.set_read_budget(bytes),
        }
        self.settle();
    }

    /// Lets the stack finish what it was given; checks and learns from what came out.
    fn settle(&mut self) {
        self.stack.flush(self.now, &mut self.out);
        self.stack.poll_timers(self.now, &mut self.out);
        for (peer, p) in self.out.packets.drain(..) {
            assert!(p.len() <= MTU, "a packet of {} bytes for peer {peer}", p.len());
            let (Some(seg), Ok(Inbound::Tcp { src, dst, .. })) =
                (packet::sent_segment(&p), packet::parse(&p))
            else {
                continue;
            };
            let flow = self
                .flows
                .iter()
                .position(|&(fp, s, d)| fp == peer && s == dst && d == src);
            if let Some(flow) = flow {
                self.known[flow].stack_next = Some(seg.end());
            }
        }
        for event in self.out.events.drain(..) {
            match event {
                NetworkToPython::ConnectionEstablished {
                    id, peer, src, dst, ..
                } => {
                    let flow = self
                        .flows
                        .iter()
                        .position(|&(fp, s, d)| fp == peer.id && s == src && d == dst);
                    let flow = flow.expect("a connection of a known flow");
                    self.known[flow].id = Some(id);
                    self.ids.insert(id, flow);
                    self.established += 1;
                }
                NetworkToPython::Data { .. } => self.data += 1,
                NetworkToPython::ConnectionClosed { id, .. } => {
                    if let Some(flow) = self.ids.remove(&id) {
                        self.known[flow].id = None;
                    }
                }
                _ => {}
            }
        }
    }

    fn finish(mut self) -> (usize, usize) {
        self.stack.abort_all(self.now, &mut self.out);
        assert!(self.out.packets.iter().all(|(_, p)| p.len() <= MTU));
        (self.established, self.data)
    }
}

proptest! {
    // A case runs up to 100 steps: fewer cases keep the default run short.
    #![proptest_config(config(64))]

    /// Any sequence of segments (in and out of window, any flags and options), other packets and Python's
    /// requests: the stack never panics and never sends a packet larger than the tunnel's MTU.
    #[test]
    fn fuzz_tcp_segments_into_the_stack(steps in proptest::collection::vec(step(), 1..100)) {
        let mut harness = Harness::new();
        for step in steps {
            harness.step(step);
        }
        let (established, data) = harness.finish();
        if std::env::var_os("FUZZ_STATS").is_some() {
            eprintln!("established {established}, data events {data}");
        }
    }
}
