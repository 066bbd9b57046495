//! The socket's batches: the task's logic against a stand-in socket that behaves as the kernel's does (a
//! bounded send buffer, partial batches, an error that stops a batch and comes with the next call), and the
//! system calls themselves against real sockets on loopback.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use crate::wireguard::udp::{self, Datagrams, Received, BATCH};
use crate::wireguard::{receive_batch, Outbound, MAX_OUTBOUND};

/// A socket in memory.
#[derive(Default)]
struct Fake {
    /// What waits to be received: datagrams, and errors (an ICMP error, say) among them.
    incoming: VecDeque<io::Result<(SocketAddr, Vec<u8>)>>,
    /// Datagrams the send buffer still takes before `WouldBlock`.
    room: usize,
    /// Datagrams one call sends at most (the kernel may stop early).
    per_call: Option<usize>,
    /// Datagrams to this port fail, as to a network that cannot be reached.
    failing_port: Option<u16>,
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// The size of each batch offered to `send`, and of each `receive`'s result (0 for an error).
    send_calls: Vec<usize>,
    receive_calls: Vec<usize>,
}

impl Datagrams for Fake {
    fn receive(&mut self, slots: &mut Received, max: usize) -> io::Result<usize> {
        assert!(max > 0 && max <= BATCH);
        let mut n = 0;
        while n < max {
            match self.incoming.front() {
                None => break,
                // An error stops a batch, and comes alone with the next call.
                Some(Err(_)) if n > 0 => break,
                Some(Err(_)) => {
                    self.receive_calls.push(0);
                    return Err(self.incoming.pop_front().unwrap().unwrap_err());
                }
                Some(Ok(_)) => {
                    let (src, datagram) = self.incoming.pop_front().unwrap().unwrap();
                    slots.fill(n, src, &datagram);
                    n += 1;
                }
            }
        }
        self.receive_calls.push(n);
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn send(&mut self, datagrams: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
        assert!(!datagrams.is_empty() && datagrams.len() <= BATCH);
        self.send_calls.push(datagrams.len());
        let mut n = 0;
        for (addr, datagram) in datagrams.iter().take(self.per_call.unwrap_or(BATCH)) {
            let error = if self.room == 0 {
                io::Error::from(ErrorKind::WouldBlock)
            } else if Some(addr.port()) == self.failing_port {
                io::Error::from(ErrorKind::NetworkUnreachable)
            } else {
                self.room -= 1;
                self.sent.push((*addr, datagram.clone()));
                n += 1;
                continue;
            };
            return if n == 0 { Err(error) } else { Ok(n) };
        }
        Ok(n)
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

/// Datagram i: to port 1000 + i % 7, its bytes i's, of a length of its own.
fn datagram(i: usize) -> (SocketAddr, Vec<u8>) {
    (addr(1000 + (i % 7) as u16), vec![i as u8; 40 + i % 1400])
}

fn send_all(outbound: &mut Outbound, socket: &mut Fake, range: std::ops::Range<usize>) {
    for i in range {
        let (a, d) = datagram(i);
        outbound.send(socket, a, &d);
    }
}

#[test]
fn datagrams_go_out_a_batch_per_call_in_order() {
    let mut socket = Fake {
        room: usize::MAX,
        ..Fake::default()
    };
    let mut outbound = Outbound::default();
    send_all(&mut outbound, &mut socket, 0..150);
    // A full batch goes at once; what is left waits for the end of the task's batch of work.
    assert_eq!(socket.send_calls, [64, 64]);
    outbound.flush(&mut socket);
    assert_eq!(socket.send_calls, [64, 64, 22]);
    assert_eq!(socket.sent, (0..150).map(datagram).collect::<Vec<_>>());
    assert!(outbound.queue.is_empty() && !outbound.blocked);
    // Nothing waits: a flush makes no call.
    outbound.flush(&mut socket);
    assert_eq!(socket.send_calls.len(), 3);
}

#[test]
fn what_a_call_did_not_send_goes_with_the_next() {
    let mut socket = Fake {
        room: usize::MAX,
        per_call: Some(10),
        ..Fake::default()
    };
    let mut outbound = Outbound::default();
    send_all(&mut outbound, &mut socket, 0..30);
    outbound.flush(&mut socket);
    assert_eq!(socket.send_calls, [30, 20, 10]);
    assert_eq!(socket.sent, (0..30).map(datagram).collect::<Vec<_>>());
}

#[test]
fn a_full_socket_keeps_the_datagrams_until_it_reports_room() {
    let mut socket = Fake {
        room: 5,
        ..Fake::default()
    };
    let mut outbound = Outbound::default();
    send_all(&mut outbound, &mut socket, 0..10);
    outbound.flush(&mut socket);
    assert_eq!(socket.sent.len(), 5);
    assert!(outbound.blocked);
    assert_eq!(socket.send_calls, [10, 5]);
    // While it is full, nothing is tried: not by a full batch, not by the end of a batch of work.
    send_all(&mut outbound, &mut socket, 10..100);
    outbound.flush(&mut socket);
    assert_eq!(socket.send_calls, [10, 5]);
    assert_eq!(outbound.queue.len(), 95);
    socket.room = usize::MAX;
    outbound.writable(&mut socket);
    assert_eq!(socket.sent, (0..100).map(datagram).collect::<Vec<_>>());
    assert!(outbound.queue.is_empty() && !outbound.blocked);
    assert_eq!(outbound.dropped, 0);
}

#[test]
fn datagrams_are_dropped_only_beyond_the_bound_while_the_socket_is_full() {
    let mut socket = Fake {
        room: usize::MAX,
        ..Fake::default()
    };
    let mut outbound = Outbound::default();
    // With room, any number goes out.
    send_all(&mut outbound, &mut socket, 0..3 * MAX_OUTBOUND);
    outbound.flush(&mut socket);
    assert_eq!((socket.sent.len(), outbound.dropped), (3 * MAX_OUTBOUND, 0));

    let mut socket = Fake::default();
    let mut outbound = Outbound::default();
    send_all(&mut outbound, &mut socket, 0..MAX_OUTBOUND + 10);
    assert_eq!(outbound.queue.len(), MAX_OUTBOUND);
    assert_eq!(outbound.dropped, 10);
    // One call found the socket full; none since.
    assert_eq!(socket.send_calls, [BATCH]);
    socket.room = usize::MAX;
    outbound.writable(&mut socket);
    assert_eq!(socket.sent, (0..MAX_OUTBOUND).map(datagram).collect::<Vec<_>>());
    assert!(socket.send_calls[1..].iter().all(|&n| n == BATCH));
    // The buffers of datagrams sent are reused, a bounded number of them.
    assert!(!outbound.spare.is_empty() && outbound.spare.len() <= 2 * BATCH);
}

#[test]
fn a_datagram_that_cannot_be_sent_is_dropped_alone() {
    let mut socket = Fake {
        room: usize::MAX,
        failing_port: Some(1002),
        ..Fake::default()
    };
    let mut outbound = Outbound::default();
    send_all(&mut outbound, &mut socket, 0..10);
    outbound.flush(&mut socket);
    // 2 and 9 go to port 1002: each stops a batch, and is dropped when it comes first.
    assert_eq!(socket.send_calls, [10, 8, 7, 1]);
    let expected: Vec<_> = (0..10).filter(|i| i % 7 != 2).map(datagram).collect();
    assert_eq!(socket.sent, expected);
    assert!(outbound.queue.is_empty() && !outbound.blocked);
    assert_eq!(outbound.dropped, 0);
}

#[test]
fn datagrams_are_read_a_batch_per_call_up_to_the_budget() {
    let mut socket = Fake::default();
    socket.incoming.extend((0..100).map(|i| Ok(datagram(i))));
    let mut received = Received::default();
    let mut got = Vec::new();
    receive_batch(&mut socket, &mut received, BATCH, |_, src, d| {
        got.push((src, d.to_vec()))
    });
    assert_eq!(socket.receive_calls, [64]);
    assert_eq!(got, (0..64).map(datagram).collect::<Vec<_>>());
    // The rest, then the call that finds none (which clears the socket's readiness).
    receive_batch(&mut socket, &mut received, BATCH, |_, src, d| {
        got.push((src, d.to_vec()))
    });
    assert_eq!(socket.receive_calls, [64, 36, 0]);
    assert_eq!(got, (0..100).map(datagram).collect::<Vec<_>>());
}

#[test]
fn a_receive_error_is_passed_over() {
    let mut socket = Fake::default();
    socket.incoming.extend([
        Ok(datagram(0)),
        Ok(datagram(1)),
        Err(ErrorKind::ConnectionRefused.into()),
        Ok(datagram(2)),
    ]);
    let mut received = Received::default();
    let mut got = Vec::new();
    receive_batch(&mut socket, &mut received, BATCH, |_, src, d| {
        got.push((src, d.to_vec()))
    });
    assert_eq!(got, (0..3).map(datagram).collect::<Vec<_>>());
    assert_eq!(socket.receive_calls, [2, 0, 1, 0]);
    // An error counts against the budget: a socket with nothing but errors cannot hold the task.
    let mut socket = Fake::default();
    socket
        .incoming
        .extend((0..100).map(|_| Err(ErrorKind::ConnectionRefused.into())));
    receive_batch(&mut socket, &mut received, BATCH, |_, _, _| panic!("no datagram"));
    assert_eq!(socket.receive_calls.len(), BATCH);
}

#[test]
fn a_batch_of_requests_is_answered_in_one_call() {
    let mut socket = Fake {
        room: usize::MAX,
        ..Fake::default()
    };
    socket.incoming.extend((0..BATCH).map(|i| Ok(datagram(i))));
    let mut received = Received::default();
    let mut outbound = Outbound::default();
    receive_batch(&mut socket, &mut received, BATCH, |socket, src, d| {
        outbound.send(socket, src, d)
    });
    outbound.flush(&mut socket);
    assert_eq!((socket.receive_calls.len(), socket.send_calls.len()), (1, 1));
    assert_eq!(socket.sent, (0..BATCH).map(datagram).collect::<Vec<_>>());
}

#[test]
fn addresses_convert_both_ways() {
    let mapped = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped();
    for a in [
        SocketAddr::from(([192, 0, 2, 7], 51820)),
        SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(SocketAddrV6::new(mapped, 443, 0, 0)),
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 1, 2, 3, 4),
            65535,
            0x12345,
            7,
        )),
    ] {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = udp::to_sockaddr(&a, &mut storage);
        assert_eq!(udp::from_sockaddr(&storage, len), Some(a));
        assert_eq!(udp::from_sockaddr(&storage, len - 1), None);
    }
    // SAFETY: as above.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    storage.ss_family = libc::AF_UNIX as libc::sa_family_t;
    assert_eq!(udp::from_sockaddr(&storage, 110), None);
}

fn socket(addr: &str) -> UdpSocket {
    let socket = UdpSocket::bind(addr).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
}

/// Sends all of `datagrams` with sendmmsg (which takes up to BATCH a call).
fn sendmmsg_all(from: &UdpSocket, datagrams: &[(SocketAddr, Vec<u8>)]) {
    let mut done = 0;
    while done < datagrams.len() {
        let n = udp::sendmmsg(from.as_raw_fd(), &datagrams[done..]).unwrap();
        assert!(n > 0 && n <= BATCH);
        done += n;
    }
}

/// Receives with recvmmsg until `n` arrived (within a second).
fn recvmmsg_n(to: &UdpSocket, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut received = Received::default();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while got.len() < n {
        match udp::recvmmsg(to.as_raw_fd(), &mut received, BATCH) {
            Ok(k) => got.extend((0..k).map(|i| {
                let (src, d) = received.get(i);
                (src, d.to_vec())
            })),
            Err(e) if e.kind() == ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => panic!("{} of {n} datagrams arrived: {e}", got.len()),
        }
    }
    got
}

#[test]
fn the_system_calls_carry_datagrams_of_any_size_in_order() {
    let (a, b) = (socket("127.0.0.1:0"), socket("127.0.0.1:0"));
    let (from, to) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    // The largest datagram IPv4 carries, an empty one, and runs longer than a batch (in parts that fit the
    // default receive buffer).
    let big = [(to, vec![7; 65507]), (to, vec![])];
    let small: Vec<_> = (0..400).map(|i| (to, vec![i as u8; 1 + i % 100 * 6])).collect();
    for part in std::iter::once(&big[..]).chain(small.chunks(80)) {
        sendmmsg_all(&a, part);
        let got = recvmmsg_n(&b, part.len());
        assert_eq!(
            got,
            part.iter().map(|(_, d)| (from, d.clone())).collect::<Vec<_>>()
        );
    }
    // Nothing waits: WouldBlock at once.
    let mut received = Received::default();
    let e = udp::recvmmsg(b.as_raw_fd(), &mut received, BATCH).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
}

#[test]
fn a_dual_stack_socket_sees_ipv4_peers_as_mapped_and_answers_either_form() {
    use socket2::{Domain, Socket, Type};
    let Ok(server) = Socket::new(Domain::IPV6, Type::DGRAM, None) else {
        return; // No IPv6 on this machine.
    };
    server.set_only_v6(false).unwrap();
    server.set_nonblocking(true).unwrap();
    server
        .bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    let server: UdpSocket = server.into();
    let port = server.local_addr().unwrap().port();
    let client = socket("127.0.0.1:0");
    let client_addr = client.local_addr().unwrap();
    client.send_to(b"hello", ("127.0.0.1", port)).unwrap();
    let mapped = SocketAddr::V6(SocketAddrV6::new(
        Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
        client_addr.port(),
        0,
        0,
    ));
    assert_eq!(recvmmsg_n(&server, 1), [(mapped, b"hello".to_vec())]);
    // Replies to the mapped address and to the plain IPv4 one both arrive.
    sendmmsg_all(
        &server,
        &[(mapped, b"one".to_vec()), (client_addr, b"two".to_vec())],
    );
    let got: Vec<_> = recvmmsg_n(&client, 2).into_iter().map(|(_, d)| d).collect();
    assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
}
