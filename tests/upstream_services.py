"""The services of a test upstream (helpers_upstream.py), run inside its namespace on the kernel's TCP/IP
stack and listening on the given tunnel addresses:

- TCP 7: echo, half-close aware: echoes until the client's FIN, then sends its own FIN.
- TCP 9: sink: reads until the client's FIN, then answers `<sha256 hex digest> <byte count>\\n` and sends its
  FIN.
- TCP 19: source: reads one line with a byte count N, sends N bytes of `pattern`, then its FIN.
- UDP 7: echo.
- DNS on 53, UDP and TCP: `NAMES` answer A and AAAA; other names are NXDOMAIN.

`python3 upstream_services.py ADDRESS...` prints `ready` once every socket listens, and ends when its standard
input closes (the harness holds the other end, so the services end with the test session even if it dies) or
when it is killed. The sockets are bound with IP_FREEBIND, so they listen whether or not the addresses exist
yet, and keep listening while the WireGuard server's device is gone during a restart.

Importing this module starts nothing: the harness takes `pattern`, `NAMES` and the ports from it.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import sys
import threading
from typing import Callable

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ECHO_PORT = 7
SINK_PORT = 9
SOURCE_PORT = 19
DNS_PORT = 53
# The largest count the source sends.
SOURCE_LIMIT = 1 << 30
# The names the DNS server knows: name -> (IPv4 addresses, IPv6 addresses).
NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dest.test": (("10.77.0.1",), ("fd77::1",)),
    "v4only.test": (("10.77.0.1",), ()),
    "v6only.test": ((), ("fd77::1",)),
}
# Byte i of the source's stream is i % 251: a period that is no power of two, so that bytes out of order or
# duplicated at segment boundaries show.
_PERIOD = 251
_BLOCK = bytes(range(_PERIOD)) * 261  # 65,511 bytes: a whole number of periods.

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)


def pattern(n: int, offset: int = 0) -> bytes:
    """`n` bytes of the source's stream, from byte `offset` on."""
    start = offset % _PERIOD
    out = bytearray()
    while len(out) < n:
        out += _BLOCK[start:] if not out else _BLOCK
    return bytes(out[:n])


def bound_socket(address: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    return sock


def recv_all(conn: socket.socket) -> bytes:
    """Everything until the peer's FIN."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def sink(conn: socket.socket) -> None:
    digest, count = hashlib.sha256(), 0
    while data := conn.recv(65536):
        digest.update(data)
        count += len(data)
    conn.sendall(f"{digest.hexdigest()} {count}\n".encode())
    conn.shutdown(socket.SHUT_WR)


def source(conn: socket.socket) -> None:
    line = b""
    while not line.endswith(b"\n") and len(line) < 32:
        chunk = conn.recv(1)
        if not chunk:
            return
        line += chunk
    n = int(line)
    if not 0 <= n <= SOURCE_LIMIT:
        return
    sent = 0
    while sent < n:
        block = _BLOCK[: n - sent]
        conn.sendall(block)
        sent += len(block)
    conn.shutdown(socket.SHUT_WR)
    # Until the client closes: closing first with unread data would reset the connection.
    recv_all(conn)


def dns_answer(query_wire: bytes) -> bytes:
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    if name not in NAMES:
        response.set_rcode(dns.rcode.NXDOMAIN)
    else:
        v4, v6 = NAMES[name]
        addresses = {dns.rdatatype.A: v4, dns.rdatatype.AAAA: v6}.get(question.rdtype, ())
        if addresses:
            kind = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", kind, list(addresses)))
    wire: bytes = response.to_wire()
    return wire


def dns_tcp(conn: socket.socket) -> None:
    while len(head := conn.recv(2, socket.MSG_WAITALL)) == 2:
        (length,) = struct.unpack("!H", head)
        wire = dns_answer(conn.recv(length, socket.MSG_WAITALL))
        conn.sendall(struct.pack("!H", len(wire)) + wire)


def serve_tcp(server: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    def session(conn: socket.socket) -> None:
        with conn:
            try:
                handle(conn)
            except (OSError, ValueError):
                pass

    while True:
        conn, _ = server.accept()
        threading.Thread(target=session, args=(conn,), daemon=True).start()


def serve_udp(sock: socket.socket, answer: Callable[[bytes], bytes]) -> None:
    while True:
        data, peer = sock.recvfrom(65536)
        try:
            reply = answer(data)
        except Exception:
            continue
        try:
            sock.sendto(reply, peer)
        except OSError:
            pass


def main(addresses: list[str]) -> None:
    threads = []
    for address in addresses:
        for port, handle in (
            (ECHO_PORT, echo),
            (SINK_PORT, sink),
            (SOURCE_PORT, source),
            (DNS_PORT, dns_tcp),
        ):
            server = bound_socket(address, port, socket.SOCK_STREAM)
            threads.append(threading.Thread(target=serve_tcp, args=(server, handle), daemon=True))
        for port, answer in ((ECHO_PORT, bytes), (DNS_PORT, dns_answer)):
            sock = bound_socket(address, port, socket.SOCK_DGRAM)
            threads.append(threading.Thread(target=serve_udp, args=(sock, answer), daemon=True))
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    # Until the harness goes away.
    sys.stdin.buffer.read()


if __name__ == "__main__":
    main(sys.argv[1:])
