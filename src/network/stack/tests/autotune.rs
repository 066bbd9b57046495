//! Receive-window auto-tuning: a client uploads over a path with a delay, and the window the stack advertises
//! grows while Python reads fast, falls back once the connection idles, and stops growing at the global budget.
//! Time moves only as the test moves it.

use std::time::Duration;

use super::*;
use crate::network::stack::{INITIAL_SEND_BUFFER, INITIAL_WINDOW, RELEASE_AFTER, RX_BUFFER, TX_BUFFER};
use smoltcp::time::Instant;
use smoltcp::wire::{TcpOption, TcpPacket};

/// Each way; a round trip is two steps.
const ONE_WAY: Duration = Duration::from_millis(25);

/// Clients and the stack on a path that delays every packet by `ONE_WAY`: each `step` moves the clock on by it
/// and delivers what was sent in the step before.
struct Path {
    stack: TestStack,
    lanes: Vec<Lane>,
    /// The window scale the stack offered.
    shift: u8,
    /// Polls the stack at its deadlines within a step too (for paced downloads), not only at its start.
    follow_deadlines: bool,
    events: Vec<NetworkToPython>,
}

/// A client on the path, from 10.0.0.<n>.
struct Lane {
    client: Client,
    to_stack: Vec<Vec<u8>>,
    to_client: Vec<Vec<u8>>,
    /// The client keeps its send buffer full.
    sending: bool,
    /// What the client read (it reads all that arrives).
    received: Vec<u8>,
}

/// What one step showed.
#[derive(Debug, Default)]
struct Step {
    /// Bytes read for Python.
    delivered: usize,
    /// The largest window the stack's packets advertised.
    window: usize,
}

impl Lane {
    /// The client takes what arrived, writes more if it is sending, and returns what it sends.
    fn exchange(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let client = &mut self.client;
        for p in self.to_client.drain(..) {
            client.take(now, p);
        }
        client.read_into(&mut self.received);
        if self.sending && client.socket().may_send() {
            let room = client.socket().send_capacity() - client.socket().send_queue();
            client.socket().send_slice(&vec![7; room]).unwrap();
        }
        loop {
            let before = client.device.tx.len();
            client.iface.poll(now, &mut client.device, &mut client.sockets);
            if client.device.tx.len() == before {
                break;
            }
        }
        client.device.tx.drain(..).collect()
    }
}

impl Path {
    fn new(clients: u8) -> Path {
        let lanes = (1..=clients)
            .map(|n| Lane {
                client: Client::connect(0, &format!("10.0.0.{n}:40000"), "10.0.0.42:443"),
                to_stack: vec![],
                to_client: vec![],
                sending: false,
                received: vec![],
            })
            .collect();
        Path {
            stack: stack(),
            lanes,
            shift: 0,
            follow_deadlines: false,
            events: vec![],
        }
    }

    fn step(&mut self) -> Step {
        let now = self.stack.now();
        let mut out = Outputs::default();
        for lane in &mut self.lanes {
            let sent = lane.exchange(now);
            for p in std::mem::replace(&mut lane.to_stack, sent) {
                self.stack.receive(0, "127.0.0.1:9".parse().unwrap(), p, &mut out);
            }
        }
        self.stack.flush(&mut out);
        self.stack.poll_timers(&mut out);
        // Paced segments leave at their moments within the step; they arrive with the rest at its end.
        let end = self.stack.clock + ONE_WAY;
        while let Some(at) = self
            .stack
            .next_deadline()
            .filter(|&at| self.follow_deadlines && at < end)
        {
            self.stack.clock = self.stack.clock.max(at);
            self.stack.poll_timers(&mut out);
        }
        let mut step = Step::default();
        for (_, p) in out.packets {
            if let Some(adv) = advertised(&p) {
                match adv.syn_scale {
                    Some(shift) => self.shift = shift,
                    None => step.window = step.window.max((adv.window as usize) << self.shift),
                }
            }
            // IPv4: the destination's last byte is the client's number.
            self.lanes[p[19] as usize - 1].to_client.push(p);
        }
        step.delivered = data(&out.events).len();
        self.events.extend(out.events);
        self.stack.clock = end;
        step
    }

    /// Steps until every client's connection is established; returns their ids, in the clients' order.
    fn open(&mut self) -> Vec<ConnectionId> {
        for _ in 0..10 {
            self.step();
            let ids: Vec<_> = self
                .events
                .iter()
                .filter_map(|e| match e {
                    NetworkToPython::ConnectionEstablished { id, src, .. } => Some((src.ip(), *id)),
                    _ => None,
                })
                .collect();
            if ids.len() == self.lanes.len() {
                let mut ids = ids;
                ids.sort();
                return ids.into_iter().map(|(_, id)| id).collect();
            }
        }
        panic!("not all connected");
    }

    /// Uploads for `round_trips`; returns what each round trip delivered to Python and the largest window
    /// advertised in it.
    fn upload(&mut self, round_trips: usize) -> Vec<(usize, usize)> {
        self.lanes.iter_mut().for_each(|l| l.sending = true);
        (0..round_trips)
            .map(|_| {
                let (a, b) = (self.step(), self.step());
                (a.delivered + b.delivered, a.window.max(b.window))
            })
            .collect()
    }

    /// Stops sending and lets the connections idle until their pages are released.
    fn idle(&mut self) {
        self.lanes.iter_mut().for_each(|l| l.sending = false);
        for _ in 0..4 {
            self.step();
        }
        self.stack.advance(RELEASE_AFTER);
        for _ in 0..4 {
            self.step();
        }
    }

    fn window(&self, id: ConnectionId) -> usize {
        self.stack.connections[&id].autotune.window
    }

    fn pause_reading(&mut self, id: ConnectionId) {
        let mut out = Outputs::default();
        self.stack.handle(PythonToNetwork::PauseReading { id }, &mut out);
        self.stack.flush(&mut out);
    }
}

#[test]
fn the_window_grows_while_python_reads_a_window_per_round_trip() {
    let mut path = Path::new(1);
    let id = path.open()[0];
    // Longer than `RELEASE_AFTER`: buffers that Python keeps empty are not those of an idle connection.
    let rounds = path.upload(30);
    let (first, last) = (rounds[0], rounds[29]);
    // The first round trip carries the first window; the window grows each round trip from there.
    assert!(
        first.0 <= INITIAL_WINDOW,
        "started at the first window: {rounds:?}"
    );
    // The client's send buffer (1 MiB) bounds it at last.
    assert!(last.1 >= 8 * INITIAL_WINDOW, "the window grew: {rounds:?}");
    assert!(
        last.0 >= 8 * INITIAL_WINDOW,
        "more arrived per round trip: {rounds:?}"
    );
    // At most twice what was read and the headroom, plus twice as much again when the reads doubled: three
    // times that, with at most a window read.
    for pair in rounds.windows(2) {
        assert!(
            pair[1].1 <= 3 * (2 * pair[0].1.max(INITIAL_WINDOW) + 16 * 1460),
            "grew by steps: {rounds:?}"
        );
    }
    assert_eq!(
        path.stack.window_budget.used,
        path.window(id) + INITIAL_SEND_BUFFER
    );
}

#[test]
fn a_window_that_python_does_not_read_does_not_grow() {
    let mut path = Path::new(1);
    let id = path.open()[0];
    path.pause_reading(id);
    let rounds = path.upload(6);
    assert!(
        rounds.iter().all(|r| r.0 == 0 && r.1 <= INITIAL_WINDOW),
        "{rounds:?}"
    );
    assert_eq!(path.window(id), INITIAL_WINDOW);
}

#[test]
fn an_idle_connection_falls_back_to_the_first_window_and_gives_back_its_budget() {
    let mut path = Path::new(1);
    let id = path.open()[0];
    path.upload(10);
    let grown = path.window(id);
    assert!(grown >= 8 * INITIAL_WINDOW, "{grown}");
    assert_eq!(path.stack.window_budget.used, grown + INITIAL_SEND_BUFFER);

    path.idle();
    assert_eq!(path.window(id), INITIAL_WINDOW);
    assert_eq!(
        path.stack.window_budget.used, 0,
        "an idle connection counts nothing"
    );

    // Python stops reading: the client fills what was advertised before the connection went idle (a window
    // is never shrunk) and no more, and the window stays the first one while nothing is read.
    path.pause_reading(id);
    let rounds = path.upload(4);
    let held = path.stack.connections.get_mut(&id).unwrap().socket().recv_queue();
    assert!(held <= grown, "{held} > {grown}");
    assert_eq!(path.window(id), INITIAL_WINDOW);
    assert!(rounds.iter().all(|r| r.0 == 0), "{rounds:?}");
}

#[test]
fn windows_stop_growing_at_the_global_budget() {
    let mut path = Path::new(3);
    let budget = 3 * (INITIAL_WINDOW + INITIAL_SEND_BUFFER) + 300_000;
    path.stack.window_budget.limit = budget;
    let ids = path.open();
    let rounds = path.upload(10);
    let windows: Vec<usize> = ids.iter().map(|&id| path.window(id)).collect();
    let used = path.stack.window_budget.used;
    assert_eq!(windows.iter().sum::<usize>() + 3 * INITIAL_SEND_BUFFER, used);
    // A connection grew into what was left before the others took their first windows, which they always get.
    let first = INITIAL_WINDOW + INITIAL_SEND_BUFFER;
    assert!(used <= budget + 2 * first, "{used} > {budget}: {windows:?}");
    assert!(
        used + 1460 > budget,
        "the budget was spent: {used} of {budget}, {windows:?}"
    );
    // Without the budget, each of them grows past what all three got together.
    let mut alone = Path::new(3);
    let alone_ids = alone.open();
    alone.upload(10);
    let total: usize = windows.iter().sum();
    assert!(
        alone_ids.iter().all(|&id| alone.window(id) > total),
        "{windows:?}"
    );
    // The budget stops growth only: what arrived was read, at the windows that were granted.
    let delivered: usize = rounds.iter().map(|r| r.0).sum();
    assert!(delivered > 10 * 3 * INITIAL_WINDOW / 2, "{rounds:?}");
}

#[test]
fn a_busy_connection_commits_its_window_not_its_whole_receive_buffer() {
    let mut path = Path::new(1);
    // No budget: the window stays at the first one while the data goes round the 4 MiB ring twice.
    path.stack.window_budget.limit = 0;
    let id = path.open()[0];
    let rounds = path.upload(2 * RX_BUFFER / INITIAL_WINDOW + 10);
    let delivered: usize = rounds.iter().map(|r| r.0).sum();
    assert!(delivered > 2 * RX_BUFFER, "{delivered}");
    assert_eq!(path.window(id), INITIAL_WINDOW);
    let resident = path.stack.connections[&id]
        .pages
        .memory
        .as_ref()
        .unwrap()
        .resident(0, RX_BUFFER);
    assert!(
        resident <= 4 * INITIAL_WINDOW + 256 * 1024,
        "{resident} bytes committed"
    );
}

#[test]
fn the_send_buffer_grows_with_the_congestion_window_and_gives_back_what_was_acknowledged() {
    let mut path = Path::new(1);
    path.follow_deadlines = true;
    let id = path.open()[0];
    // Python writes more than the send buffer's whole ring, in one go; the client reads all that arrives.
    let download: Vec<u8> = (0..(TX_BUFFER + (2 << 20)) as u32)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut out = Outputs::default();
    let data = download.clone();
    path.stack.handle(PythonToNetwork::Write { id, data }, &mut out);
    path.stack.flush(&mut out);
    let (mut limit, mut resident) = (0, 0);
    for _ in 0..400 {
        path.step();
        let conn = &path.stack.connections[&id];
        limit = limit.max(conn.autotune.send_limit);
        resident = resident.max(conn.pages.memory.as_ref().unwrap().resident(RX_BUFFER, TX_BUFFER));
        if path.lanes[0].received.len() == download.len() {
            break;
        }
    }
    assert!(
        path.lanes[0].received == download,
        "the download arrived whole and in order"
    );
    // The client's 1 MiB receive buffer bounds the congestion window, and so the send buffer.
    assert!(limit >= 3 * INITIAL_SEND_BUFFER, "the send buffer grew: {limit}");
    assert!(limit <= TX_BUFFER);
    // At most the send limit is live; what the client acknowledged goes back a chunk at a time.
    assert!(
        resident <= limit + 2 * 256 * 1024,
        "{resident} bytes of the send buffer committed at most, limit {limit}"
    );
}

/// What a TCP segment the stack sends tells the client of its receive window.
struct Advertised {
    /// The window field, in units of the scale.
    window: u16,
    /// On a SYN: the window scale it offers (0 if none; a SYN's own window is never scaled).
    syn_scale: Option<u8>,
}

/// The window a packet the stack sends advertises; `None` without an ACK, unless it is a SYN.
fn advertised(packet: &[u8]) -> Option<Advertised> {
    let ip_header_len = match packet.first().map(|b| b >> 4) {
        Some(4) => ((packet[0] & 0x0f) as usize) * 4,
        Some(6) => 40,
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(packet.get(ip_header_len..)?).ok()?;
    if !tcp.ack() && !tcp.syn() {
        return None;
    }
    let mut options = tcp.options();
    let mut scale = None;
    while scale.is_none() && !options.is_empty() {
        match TcpOption::parse(options) {
            Ok((_, TcpOption::WindowScale(shift))) => scale = Some(shift),
            Ok((_, TcpOption::EndOfList)) | Err(_) => break,
            Ok((rest, _)) => options = rest,
        }
    }
    Some(Advertised {
        window: tcp.window_len(),
        syn_scale: tcp.syn().then(|| scale.unwrap_or(0)),
    })
}
