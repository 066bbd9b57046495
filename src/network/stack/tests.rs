use std::net::SocketAddr;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::*;
use crate::messages::{ConnectionId, NetworkToPython, PeerId, PeerInfo, PythonToNetwork};
use crate::network::device::VirtualDevice;
use crate::network::packet;

/// `Client::pump` lets the clock move on by up to this to a deadline of the stack: pacing's, not a timeout's.
const PACING_WAIT: Duration = Duration::from_millis(50);

mod ask_first;
mod autotune;
mod cost;
mod initial_window;
mod limits;
mod outgoing;
mod peers;
mod recovery;
mod timestamps;
mod window_scale;

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
                self.device.rx = Some(p);
                self.iface.poll(now, &mut self.device, &mut self.sockets);
            }
        }
        panic!("no quiet moment after 10,000 rounds");
    }
}

/// The stack under test and the test's clock, which stands still unless a test moves it. Every call passes the
/// clock's time to the stack.
pub(super) struct TestStack {
    stack: Stack,
    start: StdInstant,
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

#[test]
fn connections_to_any_address_carry_data_both_ways_and_half_close() {
    for (src, dst) in [
        ("10.0.0.1:40000", "198.51.100.7:443"),
        ("[fd00::1]:40000", "[2001:db8::7]:80"),
    ] {
        let mut stack = stack();
        let mut client = Client::connect(0, src, dst);
        let events = client.pump(&mut stack);
        let id = established(&events);
        match &events[0] {
            NetworkToPython::ConnectionEstablished { src: s, dst: d, .. } => {
                assert_eq!((s.to_string(), d.to_string()), (src.to_string(), dst.to_string()));
            }
            e => panic!("unexpected {e:?}"),
        }

        // 300 KB from the client, more than the window: it arrives whole and in order.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut received = vec![];
        let mut sent = 0;
        while received.len() < payload.len() {
            sent += client.socket().send_slice(&payload[sent..]).unwrap();
            received.extend(data(&client.pump(&mut stack)));
        }
        assert_eq!(received, payload);

        // Python answers, then half-closes: the client reads it all, then EOF.
        let mut out = Outputs::default();
        stack.handle(
            PythonToNetwork::Write {
                id,
                data: b"hello".to_vec(),
            },
            &mut out,
        );
        stack.handle(PythonToNetwork::WriteEof { id }, &mut out);
        stack.flush(&mut out);
        for (_, p) in out.packets {
            client.device.rx = Some(p);
            client
                .iface
                .poll(stack.now(), &mut client.device, &mut client.sockets);
        }
        client.pump(&mut stack);
        let mut buf = [0u8; 16];
        let n = client.socket().recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(!client.socket().may_recv(), "the client saw the FIN");

        // The client still sends after Python's FIN; then closes: Python gets the data, then EOF.
        client.socket().send_slice(b"bye").unwrap();
        client.socket().close();
        let events = client.pump(&mut stack);
        assert_eq!(data(&events), b"bye");
        assert!(events
            .iter()
            .any(|e| matches!(e, NetworkToPython::Eof { id: i } if *i == id)));
        assert!(events
            .iter()
            .any(|e| matches!(e, NetworkToPython::ConnectionClosed { id: i, reset: false } if *i == id)));
    }
}

/// Python half-closes first and pauses reading; the client's data and FIN arrive, and the connection ends on the
/// wire (TIME-WAIT, then CLOSED once its timer runs out). What Python did not read is kept for it: once it reads
/// again it gets every byte, then EOF, and only then ConnectionClosed, after which the connection is forgotten.
#[test]
fn the_end_of_a_connection_waits_until_python_read_what_arrived_before_it() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    let id = established(&client.pump(&mut stack));
    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::PauseReading { id }, &mut out);
    stack.handle(PythonToNetwork::WriteEof { id }, &mut out);
    stack.flush(&mut out);
    for (_, p) in out.packets {
        client.device.rx = Some(p);
        client
            .iface
            .poll(stack.now(), &mut client.device, &mut client.sockets);
    }
    client.pump(&mut stack);
    assert!(!client.socket().may_recv(), "the client saw Python's FIN");

    client.socket().send_slice(b"unread data").unwrap();
    client.socket().close();
    let events = client.pump(&mut stack);
    assert!(events.is_empty(), "Python paused reading, yet heard {events:?}");
    let socket = stack.connections.get_mut(&id).unwrap().socket();
    assert_eq!(socket.state(), tcp::State::TimeWait);

    // TIME-WAIT runs out while Python still does not read: nothing is reported, nothing forgotten.
    stack.advance(Duration::from_secs(11));
    let mut out = Outputs::default();
    stack.poll_timers(&mut out);
    assert!(out.events.is_empty(), "heard {:?}", out.events);
    let socket = stack.connections.get_mut(&id).unwrap().socket();
    assert_eq!(socket.state(), tcp::State::Closed);

    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::ResumeReading { id }, &mut out);
    stack.flush(&mut out);
    assert_eq!(data(&out.events), b"unread data");
    let eof = out
        .events
        .iter()
        .position(|e| matches!(e, NetworkToPython::Eof { id: i } if *i == id));
    let closed = out
        .events
        .iter()
        .position(|e| matches!(e, NetworkToPython::ConnectionClosed { id: i, reset: false } if *i == id));
    assert!(
        matches!((eof, closed), (Some(e), Some(c)) if e + 1 == c && c + 1 == out.events.len()),
        "data, EOF, then ConnectionClosed: {:?}",
        out.events
    );
    assert_eq!(stack.connection_count(), 0);
}

/// A lost segment that no duplicate ACK reveals waits for the retransmission timeout: its floor is Linux's 200 ms,
/// not smoltcp's default of 1 s.
#[test]
fn connections_have_a_200_ms_floor_under_the_retransmission_timeout() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    let id = established(&client.pump(&mut stack));
    let socket = stack.connections.get_mut(&id).unwrap().socket();
    assert_eq!(socket.min_rto(), smoltcp::time::Duration::from_millis(200));
}

/// On a path that reorders, a client's FIN, sent right after its last segment, can overtake it. The stack keeps
/// the FIN and ends the stream once the data before it arrived, without waiting for the client to send it again.
#[test]
fn a_fin_that_overtakes_the_last_data_ends_the_stream_once_the_data_arrived() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    let id = established(&client.pump(&mut stack));
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let now = stack.now();
    client.socket().send_slice(b"the last words").unwrap();
    client.iface.poll(now, &mut client.device, &mut client.sockets);
    client.socket().close();
    client.iface.poll(now, &mut client.device, &mut client.sockets);
    let sent: Vec<_> = client.device.tx.drain(..).collect();
    assert_eq!(sent.len(), 2, "the data and the FIN in segments of their own");

    // The FIN first, then the data; the clock stands still, so nothing is sent again.
    let mut out = Outputs::default();
    for packet in sent.into_iter().rev() {
        stack.receive(client.peer, endpoint, packet, &mut out);
    }
    stack.flush(&mut out);
    assert_eq!(data(&out.events), b"the last words");
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, NetworkToPython::Eof { id: i } if *i == id)),
        "no end of stream in {:?}",
        out.events
    );
}

/// On a path that reorders a lot (10 ms of jitter at thousands of datagrams a second), many segments arrive
/// before one that is missing. The stack keeps every one of them, as a kernel does, however many gaps lie
/// between them: a segment dropped for want of room to note its gap is one the client must send again.
#[test]
fn segments_that_arrive_out_of_order_are_all_kept_however_many_gaps_lie_between_them() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    let id = established(&client.pump(&mut stack));
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut sent = vec![];
    let mut expected = vec![];
    for i in 0..400u32 {
        let text = format!("segment {i:03} ");
        expected.extend_from_slice(text.as_bytes());
        client.socket().send_slice(text.as_bytes()).unwrap();
        let now = stack.now();
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        sent.append(&mut client.device.tx);
    }
    assert_eq!(sent.len(), 400, "a segment each");

    // Every other segment first (200 gaps), then the ones before them; the clock stands still, so none is sent
    // again.
    let (odd, even): (Vec<_>, Vec<_>) = sent.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
    let mut out = Outputs::default();
    for (_, packet) in odd.into_iter().chain(even) {
        stack.receive(client.peer, endpoint, packet, &mut out);
    }
    stack.flush(&mut out);
    assert_eq!(
        String::from_utf8(data(&out.events)).unwrap(),
        String::from_utf8(expected).unwrap()
    );
    assert!(stack.connections.contains_key(&id));
}

/// The client sends "request", kept as a packet so that a test can send it again; Python answers "reply".
/// Returns the request and what the stack put out.
fn request_and_reply(stack: &mut TestStack, client: &mut Client, id: ConnectionId) -> (Vec<u8>, Outputs) {
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

#[test]
fn a_reply_lost_in_the_tunnel_is_resent_each_time_the_client_repeats_its_request() {
    for (src, dst) in [
        ("10.0.0.1:40000", "10.0.0.42:1234"),
        ("[fd00::1]:40000", "[fd00::42]:1234"),
    ] {
        let mut stack = stack();
        let mut client = Client::connect(0, src, dst);
        let id = established(&client.pump(&mut stack));
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();

        // The stack acknowledges the request with Python's reply, which the tunnel loses.
        let (request, out) = request_and_reply(&mut stack, &mut client, id);
        assert_eq!(data(&out.events), b"request");
        assert_eq!(out.packets.len(), 1, "the reply went out");

        // Long before the stack's retransmission timer, the client repeats its request (on its own timer, after
        // 200 ms): the reply is sent again at once. The first resend is lost too; the second arrives.
        for attempt in 0..2 {
            stack.advance(Duration::from_millis(200));
            let now = stack.now();
            let mut out = Outputs::default();
            stack.receive(0, endpoint, request.clone(), &mut out);
            stack.flush(&mut out);
            assert!(
                out.events.is_empty(),
                "Python does not get the request again: {:?}",
                out.events
            );
            let resent = out
                .packets
                .iter()
                .filter(|(_, p)| packet::sent_segment(p).unwrap().has_data)
                .count();
            assert_eq!(resent, 1, "attempt {attempt}: the reply was sent again");
            if attempt == 1 {
                for (_, p) in out.packets {
                    client.device.rx = Some(p);
                    client.iface.poll(now, &mut client.device, &mut client.sockets);
                }
            }
        }
        let mut buf = [0u8; 16];
        let n = client.socket().recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"reply");
    }
}

#[test]
fn a_repeated_request_whose_reply_arrived_resends_nothing() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let id = established(&client.pump(&mut stack));
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (request, out) = request_and_reply(&mut stack, &mut client, id);
    let reply_end = out
        .packets
        .iter()
        .filter_map(|(_, p)| packet::sent_segment(p).filter(|s| s.has_data))
        .next_back()
        .unwrap()
        .end();
    client.socket().set_ack_delay(None);
    for (_, p) in out.packets {
        client.device.rx = Some(p);
        client
            .iface
            .poll(stack.now(), &mut client.device, &mut client.sockets);
    }
    client.pump(&mut stack); // the reply arrived and is acknowledged at once

    // The client resends its request (say its timer fired early), now acknowledging the reply.
    let mut request = request;
    request[28..32].copy_from_slice(&reply_end.to_be_bytes());
    let mut out = Outputs::default();
    stack.receive(0, endpoint, request, &mut out);
    stack.flush(&mut out);
    let data_segments = out
        .packets
        .iter()
        .filter(|(_, p)| packet::sent_segment(p).unwrap().has_data)
        .count();
    assert_eq!(data_segments, 0, "only an acknowledgement answers a stale repeat");
}

/// Lets the stack's clock run on, in steps as long as idle buffers wait before they are released (a delayed
/// acknowledgement goes out in the first), servicing what is due.
fn idle(stack: &mut TestStack) {
    for _ in 0..3 {
        stack.advance(RELEASE_AFTER + Duration::from_millis(10));
        stack.poll_timers(&mut Outputs::default());
    }
}

#[test]
fn an_idle_connection_gives_its_pages_back_but_keeps_data_that_arrived_out_of_order() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let id = established(&client.pump(&mut stack));
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();

    client.socket().send_slice(b"first").unwrap();
    assert_eq!(data(&client.pump(&mut stack)), b"first");
    assert!(stack.connections[&id].pages.committed);
    idle(&mut stack);
    assert!(
        !stack.connections[&id].pages.committed,
        "Python read all, nothing to send: released"
    );

    // The tunnel loses a segment and delivers the next: the stack holds that one beyond a gap.
    let mut segments = vec![];
    for text in [b"lost ", b"later"] {
        client.socket().send_slice(text).unwrap();
        let now = stack.now();
        client.iface.poll(now, &mut client.device, &mut client.sockets);
        segments.push(client.device.tx.pop().unwrap());
    }
    let mut out = Outputs::default();
    stack.receive(0, endpoint, segments[1].clone(), &mut out);
    stack.flush(&mut out);
    assert!(data(&out.events).is_empty());
    idle(&mut stack);
    assert!(
        stack.connections[&id].pages.committed,
        "out-of-order data keeps its pages"
    );

    // The client retransmits the lost segment: both arrive whole, in order.
    let mut out = Outputs::default();
    stack.receive(0, endpoint, segments[0].clone(), &mut out);
    stack.flush(&mut out);
    assert_eq!(data(&out.events), b"lost later");
    idle(&mut stack);
    assert!(!stack.connections[&id].pages.committed);
}

#[test]
fn a_client_reset_is_reported_as_such() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let id = established(&client.pump(&mut stack));
    client.socket().abort();
    let events = client.pump(&mut stack);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, NetworkToPython::ConnectionClosed { id: i, reset: true } if *i == id)),
        "{events:?}"
    );
    assert_eq!(stack.connection_count(), 0);
}

#[test]
fn python_close_flushes_before_fin() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let id = established(&client.pump(&mut stack));
    let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let mut out = Outputs::default();
    stack.handle(
        PythonToNetwork::Write {
            id,
            data: payload.clone(),
        },
        &mut out,
    );
    stack.handle(PythonToNetwork::Close { id }, &mut out);
    stack.flush(&mut out);
    for (_, p) in out.packets {
        client.device.rx = Some(p);
        client
            .iface
            .poll(stack.now(), &mut client.device, &mut client.sockets);
    }
    let mut received = vec![];
    for _ in 0..1000 {
        while let Ok(n) = client.socket().recv(|b| (b.len(), b.to_vec())) {
            if n.is_empty() {
                break;
            }
            received.extend(n);
        }
        if !client.socket().may_recv() {
            break;
        }
        client.pump(&mut stack);
    }
    assert_eq!(received.len(), payload.len());
    assert_eq!(received, payload);
    assert_eq!(client.socket().state(), tcp::State::CloseWait, "FIN, not RST");
}

#[test]
fn reading_stops_at_the_budget_and_resumes_when_python_caught_up() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    established(&client.pump(&mut stack));
    let payload: Vec<u8> = (0..(2 * RX_BUFFER + 100_000) as u32)
        .map(|i| (i % 249) as u8)
        .collect();
    stack.set_read_budget(10_000);
    let mut sent = 0;
    let mut received = vec![];
    for _ in 0..20 {
        sent += client.socket().send_slice(&payload[sent..]).unwrap();
        stack.set_read_budget(10_000usize.saturating_sub(received.len()));
        received.extend(data(&client.pump(&mut stack)));
    }
    assert_eq!(received.len(), 10_000, "no more than the budget is read");
    assert!(stack.has_starved());
    // The window closed: the client holds the rest.
    assert!(client.socket().send_queue() > 0);

    stack.set_read_budget(usize::MAX);
    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::ResumeStarved, &mut out);
    stack.flush(&mut out);
    received.extend(data(&out.events));
    for (_, p) in out.packets {
        client.device.rx = Some(p);
        client
            .iface
            .poll(stack.now(), &mut client.device, &mut client.sockets);
    }
    while received.len() < payload.len() {
        sent += client.socket().send_slice(&payload[sent..]).unwrap();
        received.extend(data(&client.pump(&mut stack)));
    }
    assert_eq!(received, payload);
    assert!(!stack.has_starved());
}

#[test]
fn two_peers_with_one_address_are_kept_apart() {
    let mut stack = stack();
    let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let mut b = Client::connect(1, "10.0.0.1:40000", "10.0.0.42:1234");
    let id_a = established(&a.pump(&mut stack));
    let id_b = established(&b.pump(&mut stack));
    assert_ne!(id_a, id_b);
    a.socket().send_slice(b"from a").unwrap();
    b.socket().send_slice(b"from b").unwrap();
    assert_eq!(data(&a.pump(&mut stack)), b"from a");
    assert_eq!(data(&b.pump(&mut stack)), b"from b");
}

#[test]
fn a_new_syn_reopens_a_flow_in_time_wait() {
    let mut stack = stack();
    let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let first = established(&a.pump(&mut stack));
    // The server closes first, so its side of the flow waits in TIME-WAIT.
    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::Close { id: first }, &mut out);
    stack.flush(&mut out);
    for (_, p) in out.packets {
        a.device.rx = Some(p);
        let now = stack.now();
        a.iface.poll(now, &mut a.device, &mut a.sockets);
    }
    a.pump(&mut stack);
    a.socket().close();
    a.pump(&mut stack);
    assert_eq!(a.socket().state(), tcp::State::Closed);
    assert_eq!(stack.connection_count(), 1, "the server's side is in TIME-WAIT");

    // The client connects again from the same port at once.
    let mut b = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let second = established(&b.pump(&mut stack));
    assert_ne!(first, second);
    b.socket().send_slice(b"again").unwrap();
    assert_eq!(data(&b.pump(&mut stack)), b"again");
}

#[test]
fn segments_of_unknown_connections_get_a_reset() {
    let mut stack = stack();
    let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    established(&a.pump(&mut stack));
    // The same connection seen from another peer is unknown there: the stack resets it.
    a.peer = 1;
    a.socket().send_slice(b"x").unwrap();
    a.pump(&mut stack);
    assert_eq!(a.socket().state(), tcp::State::Closed);
}
