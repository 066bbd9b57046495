//! The steps a case is made of, how they are drawn, and what each does to the world.

use super::*;

/// Which fragments of a packet the client sends: all in order, or these (modulo their number: some left out,
/// some twice, in any order).
pub(super) type Order = Option<Vec<usize>>;

#[derive(Debug, Clone)]
pub(super) enum Step {
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
pub(super) enum Action {
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
pub(super) fn pick() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 0usize..1000, 1 => (1usize << 20)..(1usize << 20) + 8]
}

pub(super) fn action() -> impl Strategy<Value = Action> {
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
pub(super) fn tcp() -> impl Strategy<Value = Tcp> {
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
pub(super) fn offset() -> impl Strategy<Value = i16> {
    prop_oneof![6 => Just(0i16), 1 => -3i16..3]
}

/// An arbitrary flow: from the client's address (or any), to any address and port, of one family.
pub(super) fn elsewhere() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
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

pub(super) fn order() -> impl Strategy<Value = Order> {
    proptest::option::weighted(0.3, proptest::collection::vec(any::<usize>(), 0..8))
}

pub(super) fn inner_mutations() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop_oneof![8 => Just(vec![]), 1 => proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)]
}

pub(super) fn step() -> impl Strategy<Value = Step> {
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

impl World {
    pub(super) fn step(&mut self, step: Step) {
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
}
