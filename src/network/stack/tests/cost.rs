//! The stack's work for fixed loads, to be counted in instructions (not run by default; the counts do not depend
//! on what else the machine does):
//!
//! ```shell
//! cargo test --release --lib --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cost.out target/release/deps/mitmproxy_wireguard-* \
//!     --ignored --exact network::stack::tests::cost::new_connections
//! callgrind_annotate /tmp/cost.out | head
//! ```
//!
//! The same file dropped into an earlier tree gives its count, for a comparison.

use super::*;

/// 500 connections, one after another: handshake, a 1000-byte request, Python's answer, Python's close, the
/// client's close.
#[test]
#[ignore]
fn new_connections() {
    let mut stack = stack();
    for i in 0..500u32 {
        let src = format!("10.0.0.1:{}", 20_000 + i);
        let mut client = Client::connect(0, &src, "198.51.100.7:80");
        let id = established(&client.pump(&mut stack));
        client.socket().send_slice(&[7; 1000]).unwrap();
        let got = data(&client.pump(&mut stack));
        assert_eq!(got.len(), 1000);
        let mut out = Outputs::default();
        stack.handle(PythonToNetwork::Write { id, data: got }, &mut out);
        stack.handle(PythonToNetwork::Close { id }, &mut out);
        stack.flush(&mut out);
        client.take_all(stack.now(), out.packets);
        client.socket().close();
        client.pump(&mut stack);
    }
}

/// One connection, 16 MiB from the client, read by Python as it comes.
#[test]
#[ignore]
fn bulk_upload() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    established(&client.pump(&mut stack));
    let payload = vec![3u8; 1 << 16];
    let mut received = 0;
    while received < 16 << 20 {
        while client.socket().send_slice(&payload).unwrap_or(0) > 0 {}
        received += data(&client.pump(&mut stack)).len();
    }
}

/// 2,000 round trips of 1000 bytes on one connection.
#[test]
#[ignore]
fn ping_pong() {
    let mut stack = stack();
    let mut client = Client::connect(0, "10.0.0.1:40000", "198.51.100.7:80");
    let id = established(&client.pump(&mut stack));
    let mut buf = vec![];
    for _ in 0..2000 {
        client.socket().send_slice(&[9; 1000]).unwrap();
        let got = data(&client.pump(&mut stack));
        let mut out = Outputs::default();
        stack.handle(PythonToNetwork::Write { id, data: got }, &mut out);
        stack.flush(&mut out);
        client.take_all(stack.now(), out.packets);
        client.pump(&mut stack);
        buf.clear();
        client.read_into(&mut buf);
        assert_eq!(buf.len(), 1000);
    }
}
