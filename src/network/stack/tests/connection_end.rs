//! A connection's data both ways and its end: half-close, Python's close, the client's reset, TIME-WAIT, and
//! segments of connections the stack does not know.

use super::*;

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
        client.take_all(stack.now(), out.packets);
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
    client.take_all(stack.now(), out.packets);
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
    client.take_all(stack.now(), out.packets);
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
fn a_new_syn_reopens_a_flow_in_time_wait() {
    let mut stack = stack();
    let mut a = Client::connect(0, "10.0.0.1:40000", "10.0.0.42:1234");
    let first = established(&a.pump(&mut stack));
    // The server closes first, so its side of the flow waits in TIME-WAIT.
    let mut out = Outputs::default();
    stack.handle(PythonToNetwork::Close { id: first }, &mut out);
    stack.flush(&mut out);
    a.take_all(stack.now(), out.packets);
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
