//! The stack under test and a TCP client of smoltcp's own, wired to it, with the test's clock.

use super::*;

/// `Client::pump` lets the clock move on by up to this to a deadline of the stack: pacing's, not a timeout's.
const PACING_WAIT: Duration = Duration::from_millis(50);

/// A TCP client made of a smoltcp socket of its own, wired to the stack under test.
pub(super) struct Client {
    pub(super) iface: Interface,
    pub(super) device: VirtualDevice,
    pub(super) sockets: SocketSet<'static>,
    handle: SocketHandle,
    pub(super) peer: PeerId,
}

impl Client {
    pub(super) fn connect(peer: PeerId, src: &str, dst: &str) -> Client {
        Client::connect_with(peer, src, dst, |_| {})
    }

    /// `connect`, with `configure` called on the client's socket before it sends its SYN.
    pub(super) fn connect_with(
        peer: PeerId,
        src: &str,
        dst: &str,
        configure: impl FnOnce(&mut tcp::Socket<'static>),
    ) -> Client {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let mut device = VirtualDevice::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::from(src.ip()), 32)).unwrap();
        });
        match src.ip() {
            std::net::IpAddr::V4(ip) => iface.routes_mut().add_default_ipv4_route(ip).unwrap(),
            std::net::IpAddr::V6(ip) => iface.routes_mut().add_default_ipv6_route(ip).unwrap(),
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
        );
        socket.set_nagle_enabled(false);
        // A client that sends all its window allows, as the tests' timing assumes.
        socket.set_congestion_control(tcp::CongestionControl::None);
        configure(&mut socket);
        socket.connect(iface.context(), dst, src.port()).unwrap();
        let mut sockets = SocketSet::new(vec![]);
        let handle = sockets.add(socket);
        Client {
            iface,
            device,
            sockets,
            handle,
            peer,
        }
    }

    pub(super) fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(self.handle)
    }

    /// Reads everything that arrived in order into `into`.
    pub(super) fn read_into(&mut self, into: &mut Vec<u8>) {
        while let Ok(chunk) = self.socket().recv(|b| (b.len(), b.to_vec())) {
            if chunk.is_empty() {
                break;
            }
            into.extend(chunk);
        }
    }

    /// The client receives `packet` at `now`; what it answers waits for its next poll.
    pub(super) fn take(&mut self, now: Instant, packet: Vec<u8>) {
        self.device.rx = Some(packet);
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    /// The client receives each of the packets the stack put out, whatever peer they were for.
    pub(super) fn take_all(&mut self, now: Instant, packets: Vec<(PeerId, Vec<u8>)>) {
        for (_, p) in packets {
            self.take(now, p);
        }
    }

    /// Exchanges packets between client and stack until neither has more to say; returns Python's events.
    pub(super) fn pump(&mut self, stack: &mut TestStack) -> Vec<NetworkToPython> {
        self.pump_through(stack, Some)
    }

    /// `pump`, with a tunnel that may lose or change the client's packets.
    pub(super) fn pump_through(
        &mut self,
        stack: &mut TestStack,
        mut tunnel: impl FnMut(Vec<u8>) -> Option<Vec<u8>>,
    ) -> Vec<NetworkToPython> {
        let mut events = vec![];
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..10_000 {
            let now = stack.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let mut out = Outputs::default();
            let sent: Vec<_> = self.device.tx.drain(..).collect();
            for p in sent.iter().filter_map(|p| tunnel(p.clone())) {
                stack.receive(self.peer, endpoint, p, &mut out);
            }
            stack.flush(&mut out);
            stack.poll_timers(&mut out);
            events.append(&mut out.events);
            if sent.is_empty() && out.packets.is_empty() && !stack.follow_pacing() {
                return events;
            }
            for (peer, p) in out.packets {
                assert_eq!(peer, self.peer, "a packet went to the wrong peer");
                self.take(now, p);
            }
        }
        panic!("no quiet moment after 10,000 rounds");
    }
}

/// The stack under test and the test's clock, which stands still unless a test moves it. Every call passes the
/// clock's time to the stack.
pub(super) struct TestStack {
    pub(super) stack: Stack,
    pub(super) start: StdInstant,
    pub(super) clock: StdInstant,
}

impl TestStack {
    /// The clock's time, as the clients' smoltcp interfaces count it.
    pub(super) fn now(&self) -> Instant {
        Instant::from_micros((self.clock - self.start).as_micros() as i64)
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.clock += by;
    }

    /// Segments that pacing holds back for a moment are not an idle connection: moves the clock on to the
    /// stack's next deadline if it is that close, and tells whether it did.
    pub(super) fn follow_pacing(&mut self) -> bool {
        match self.next_deadline() {
            Some(at) if at <= self.clock + PACING_WAIT => {
                self.clock = self.clock.max(at);
                true
            }
            _ => false,
        }
    }

    pub(super) fn receive(&mut self, peer: PeerId, endpoint: SocketAddr, packet: Vec<u8>, out: &mut Outputs) {
        self.stack.receive(self.clock, peer, endpoint, packet, out);
    }

    pub(super) fn handle(&mut self, msg: PythonToNetwork, out: &mut Outputs) {
        self.stack.handle(self.clock, msg, out);
    }

    pub(super) fn flush(&mut self, out: &mut Outputs) {
        self.stack.flush(self.clock, out);
    }

    pub(super) fn poll_timers(&mut self, out: &mut Outputs) {
        self.stack.poll_timers(self.clock, out);
    }
}

impl std::ops::Deref for TestStack {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl std::ops::DerefMut for TestStack {
    fn deref_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }
}

pub(super) fn stack() -> TestStack {
    let peers = (0..2)
        .map(|id| PeerInfo {
            id,
            public_key: format!("key{id}").into(),
        })
        .collect();
    let start = StdInstant::now();
    TestStack {
        stack: Stack::new(peers, start),
        start,
        clock: start,
    }
}

pub(super) fn established(events: &[NetworkToPython]) -> ConnectionId {
    match events
        .iter()
        .find(|e| matches!(e, NetworkToPython::ConnectionEstablished { .. }))
    {
        Some(NetworkToPython::ConnectionEstablished { id, peer, .. }) => {
            assert_eq!(peer.public_key.as_ref(), format!("key{}", peer.id));
            *id
        }
        _ => panic!("no connection in {events:?}"),
    }
}

pub(super) fn data(events: &[NetworkToPython]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            NetworkToPython::Data { data, .. } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The client sends "request", kept as a packet so that a test can send it again; Python answers "reply".
/// Returns the request and what the stack put out.
pub(super) fn request_and_reply(
    stack: &mut TestStack,
    client: &mut Client,
    id: ConnectionId,
) -> (Vec<u8>, Outputs) {
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    client.socket().send_slice(b"request").unwrap();
    let now = stack.now();
    client.iface.poll(now, &mut client.device, &mut client.sockets);
    let request = client.device.tx.pop().unwrap();
    let mut out = Outputs::default();
    stack.receive(client.peer, endpoint, request.clone(), &mut out);
    stack.flush(&mut out);
    stack.handle(
        PythonToNetwork::Write {
            id,
            data: b"reply".to_vec(),
        },
        &mut out,
    );
    stack.flush(&mut out);
    (request, out)
}
