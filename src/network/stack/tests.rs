//! The stack's tests, by topic, each file with a client of smoltcp's own against the stack (`harness`).

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

mod ask_first;
mod autotune;
mod connection_end;
mod cost;
mod harness;
mod initial_window;
mod limits;
mod outgoing;
mod peers;
mod recovery;
mod reordering;
mod timestamps;
mod window_scale;

use harness::*;

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
    client.take_all(stack.now(), out.packets);
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
