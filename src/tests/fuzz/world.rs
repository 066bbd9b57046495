//! The world: the server's two halves, the clients, Python, and the wire between them; a peer removed,
//! and the end of a case.

use super::*;

/// A datagram on the wire.
pub(super) enum Hop {
    ToServer(SocketAddr, Vec<u8>),
    ToClient(SocketAddr, Vec<u8>),
}

pub(super) struct World {
    pub(super) peers: Peers,
    pub(super) stack: Stack,
    pub(super) clients: Vec<Client>,
    pub(super) python: Python,
    pub(super) now: Instant,
    pub(super) out: Outputs,
    pub(super) buf: Vec<u8>,
    pub(super) cbuf: Vec<u8>,
    /// Every datagram seen on the wire, either way, for replays, with the endpoint of the client that sent or got
    /// it.
    pub(super) wire: Vec<(SocketAddr, Vec<u8>)>,
    /// Handshake initiations that the server answered.
    pub(super) answered: HashSet<Vec<u8>>,
    /// The stack received a packet since it last flushed.
    pub(super) unflushed: bool,
}

impl World {
    pub(super) fn new(ask_first: bool, capacity: usize) -> World {
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

    pub(super) fn client_of(&self, peer: PeerId) -> Option<usize> {
        self.clients.iter().position(|c| c.peer == Some(peer))
    }

    pub(super) fn source(&self, from: usize) -> SocketAddr {
        match self.clients.get(from) {
            Some(client) => client.home,
            None => ELSEWHERE.parse().unwrap(),
        }
    }

    /// A client encrypts IP packets and sends them: on the wire, to the server, and what it delivers to the stack.
    pub(super) fn client_sends(&mut self, i: usize, packets: Vec<Vec<u8>>) {
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
    pub(super) fn run(&mut self, mut hops: VecDeque<Hop>) {
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

    pub(super) fn server_receives(&mut self, src: SocketAddr, d: &[u8], hops: &mut VecDeque<Hop>) {
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
    pub(super) fn server_sends(&mut self, to: SocketAddr, d: Vec<u8>, hops: &mut VecDeque<Hop>) {
        if self.clients.iter().any(|c| c.home == to) {
            hops.push_back(Hop::ToClient(to, d));
        } else {
            assert_eq!((d.len(), d[0]), (64, 3), "sent {d:?} to {to}, where no client is");
        }
    }

    pub(super) fn client_receives(&mut self, to: SocketAddr, d: &[u8], hops: &mut VecDeque<Hop>) {
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
    pub(super) fn client_reads(&mut self, i: usize, p: Vec<u8>) {
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
    pub(super) fn settle(&mut self) {
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
    pub(super) fn drain_outputs(&mut self) {
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

    /// As the WireGuard and network tasks remove a peer: `Peers` refuses it, the stack resets its connections and
    /// sends their last packets, `Peers` forgets it; maybe it is added back, with a new id.
    pub(super) fn remove_peer(&mut self, client: usize, add_back: bool) {
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

    /// The stack resets everything: Python hears of the end of every connection it knew open, none is left.
    pub(super) fn finish(mut self) {
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
pub(super) fn addresses(v6: bool, (sport, dport): (u16, u16)) -> (SocketAddr, SocketAddr) {
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
pub(super) fn ordered(fragments: Vec<Vec<u8>>, order: Order) -> Vec<Vec<u8>> {
    match order {
        None => fragments,
        Some(order) => order
            .into_iter()
            .map(|i| fragments[i % fragments.len()].clone())
            .collect(),
    }
}

/// Bytes of a plaintext packet overwritten before the client encrypts it.
pub(super) fn mutated(mut packet: Vec<u8>, mutations: &[(usize, u8)]) -> Vec<u8> {
    for &(at, byte) in mutations {
        let len = packet.len();
        packet[at % len] = byte;
    }
    packet
}
