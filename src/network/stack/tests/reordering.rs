//! A path that reorders: a FIN that overtakes the last data, and out-of-order segments kept however many gaps
//! lie between them.

use super::*;

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
