"""`forward --upstream wireguard:PATH` end to end: a real WireGuard client (wireguard-go, in a namespace of its
own) through `forward`, whose flows go out through a second WireGuard server (helpers_upstream: wireguard-go in
a namespace of its own, the kernel's stack and the test services behind its tunnel), to destinations behind it.

`forward` runs in the test namespace, which reaches the upstream's namespace only at the WireGuard server's
endpoint: the destinations (the upstream's tunnel addresses, 10.77.0.1 and fd77::1) are reached through the
tunnel or not at all, and they see the tunnel's client address (the configuration's Address, 10.77.0.2 and
fd77::2), never this machine's."""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
import sys
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from helpers import Namespace, assert_refused, assert_udp_echo, connect, needs_client
from helpers_cli import Cli, flow_records
from helpers_upstream import CLIENT_V4, CLIENT_V6, ECHO_PORT, TUNNEL_V4, TUNNEL_V6, Upstream
from upstream_web import HTTP_PORT, HTTPS_PORT, WHOAMI_PORT

pytestmark = [needs_client, pytest.mark.timeout(120)]

WEB = Path(__file__).with_name("upstream_web.py")
NAME = "dest.test"
# The forward's DNS address for its clients (a generated configuration's).
FORWARD_DNS = "10.0.0.53"
DOWNLOAD = 4 << 20


class Web:
    """upstream_web.py in the upstream's namespace, serving a file of random bytes, with a self-signed
    certificate for NAME and the tunnel's addresses."""

    def __init__(self, upstream: Upstream, tmp: Path):
        self.data = os.urandom(DOWNLOAD)
        (tmp / "file").write_bytes(self.data)
        cert, key = certificate(tmp)
        self.cert = cert
        self.process = Cli(
            program=tuple(
                upstream.namespace.exec(
                    sys.executable, str(WEB), str(cert), str(key), str(tmp / "file"), TUNNEL_V4, TUNNEL_V6
                )
            )
        )
        self.process.wait_for_stdout("^ready$")

    def seen(self, kind: str, port: int) -> list[str]:
        """The client addresses the web services saw for `kind` ("http", "https", "udp") on `port`."""
        return [line.split()[2] for line in list(self.process.stdout) if line.startswith(f"{kind} {port} ")]

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts the certificate alone."""
        return ssl.create_default_context(cafile=str(self.cert))


def certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for NAME and the tunnel's addresses, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(NAME),
                    x509.IPAddress(ipaddress.ip_address(TUNNEL_V4)),
                    x509.IPAddress(ipaddress.ip_address(TUNNEL_V6)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def write_config(upstream: Upstream, tmp: Path) -> Path:
    """The upstream's client configuration as a file, readable by its owner only."""
    path = tmp / "upstream.conf"
    path.write_text(upstream.client_config)
    path.chmod(0o600)
    return path


@pytest.fixture
async def tunnel(upstreams, forward_cli, tmp_path: Path) -> Any:
    """A WireGuard upstream with the web services behind it, and `forward --upstream wireguard:PATH` for it
    with a client in a namespace of its own: (upstream, web, forward process, the client's namespace)."""
    upstream = await upstreams("wireguard-go")
    web = Web(upstream, tmp_path)
    try:
        process, client_ns = await forward_cli("--upstream", f"wireguard:{write_config(upstream, tmp_path)}")
        yield upstream, web, process, client_ns
    finally:
        web.process.kill()


async def connect_to(ns: Namespace, address: tuple[str, int]) -> socket.socket:
    """A non-blocking TCP socket in `ns` connected to `address`, IPv4 or IPv6."""
    sock = ns.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), 10)
    except BaseException:
        sock.close()
        raise
    return sock


async def http_get(
    ns: Namespace, address: tuple[str, int], path: str, tls: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    """`GET path` over HTTP/1.0 (HTTPS with `tls`, for NAME) from `ns`: the status and the body, read to the
    end of the connection and checked against Content-Length."""
    sock = await connect_to(ns, address)
    kwargs: dict[str, Any] = {"ssl": tls, "server_hostname": NAME} if tls is not None else {}
    reader, writer = await asyncio.wait_for(asyncio.open_connection(sock=sock, limit=1 << 20, **kwargs), 10)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body), lines
    return int(lines[0].split()[1]), body


async def dns_query(ns: Namespace, name: str, rdtype: Any, tcp: bool = False) -> dns.message.Message:
    """A query from `ns` to the forward's DNS address, over UDP or TCP."""
    loop = asyncio.get_running_loop()
    query = dns.message.make_query(name, rdtype)
    wire = query.to_wire()
    if tcp:
        with await connect(ns, (FORWARD_DNS, 53)) as sock:
            await loop.sock_sendall(sock, struct.pack("!H", len(wire)) + wire)
            reply = b""
            while len(reply) < 2 or len(reply) < 2 + struct.unpack("!H", reply[:2])[0]:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                assert chunk, "the DNS connection ended before the answer"
                reply += chunk
            answer = dns.message.from_wire(reply[2:])
    else:
        with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((FORWARD_DNS, 53))
            await loop.sock_sendall(sock, wire)
            answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 65536), 15))
    assert answer.id == query.id
    return answer


def addresses(answer: dns.message.Message) -> list[str]:
    return [rr.address for rrset in answer.answer for rr in rrset]


async def test_tcp_and_udp_go_out_through_the_tunnel_intact(tunnel, tmp_path: Path):
    upstream, web, process, client_ns = tunnel
    conf = tmp_path / "upstream.conf"
    assert process.wait_for_stdout(
        rf"Every connection and UDP flow goes through wireguard:{conf}, the WireGuard tunnel to "
        rf"{upstream.namespace.there}:51820 \(from {CLIENT_V4}, {CLIENT_V6}\)\."
    )
    digest = hashlib.sha256(web.data).digest()
    # HTTP and HTTPS downloads, over IPv4 and IPv6, arrive whole.
    for host in (TUNNEL_V4, TUNNEL_V6):
        status, body = await http_get(client_ns, (host, HTTP_PORT), "/file")
        assert status == 200 and len(body) == DOWNLOAD and hashlib.sha256(body).digest() == digest
        status, body = await http_get(client_ns, (host, HTTPS_PORT), "/file", web.tls())
        assert status == 200 and len(body) == DOWNLOAD and hashlib.sha256(body).digest() == digest
    # The destination saw the tunnel's client address, as it tells the client too.
    assert await http_get(client_ns, (TUNNEL_V4, HTTP_PORT), "/whoami") == (200, CLIENT_V4.encode())
    assert await http_get(client_ns, (TUNNEL_V6, HTTPS_PORT), "/whoami", web.tls()) == (
        200,
        CLIENT_V6.encode(),
    )
    assert set(web.seen("http", HTTP_PORT)) == {CLIENT_V4, CLIENT_V6}
    assert set(web.seen("https", HTTPS_PORT)) == {CLIENT_V4, CLIENT_V6}
    records = process.wait_for(lambda: flow_records(process, "tcp", f"{TUNNEL_V4}:{HTTPS_PORT}"), timeout=10)
    assert records[0]["outcome"] == "closed" and records[0]["bytes_down"] > DOWNLOAD, records[0]

    # A UDP flow: echoed, and seen from the tunnel's address.
    messages = [b"datagram %d " % i + os.urandom(1000) for i in range(5)]
    with client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((TUNNEL_V4, ECHO_PORT))
        await assert_udp_echo(sock, messages)
    with client_ns.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((TUNNEL_V6, WHOAMI_PORT))
        await assert_udp_echo_from(sock, CLIENT_V6)
    assert web.seen("udp", WHOAMI_PORT) == [CLIENT_V6]
    # Stopped, it ends in order, the tunnel closed, and logs the UDP flow.
    assert process.stop() == 0
    udp = flow_records(process, "udp", f"{TUNNEL_V4}:{ECHO_PORT}")
    assert len(udp) == 1 and udp[0]["bytes_up"] == udp[0]["bytes_down"] == sum(map(len, messages)), udp


async def assert_udp_echo_from(sock: socket.socket, address: str) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"who am I?")
    reply = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
    assert reply.split()[0].decode() == address, reply


async def test_dns_is_answered_by_the_tunnels_dns_server(tunnel):
    upstream, web, process, client_ns = tunnel
    assert process.wait_for_stdout(
        rf"DNS queries to 10\.0\.0\.53, fd00::53 go to {TUNNEL_V4}:53 through wireguard:"
    )
    answer = await dns_query(client_ns, NAME, dns.rdatatype.A)
    assert addresses(answer) == [TUNNEL_V4]
    answer = await dns_query(client_ns, NAME, dns.rdatatype.AAAA, tcp=True)
    assert addresses(answer) == [TUNNEL_V6]
    # This machine's resolver knows localhost; the tunnel's DNS server does not.
    answer = await dns_query(client_ns, "localhost", dns.rdatatype.A)
    assert answer.rcode() == dns.rcode.NXDOMAIN and addresses(answer) == []
    # A name resolved there, then reached through the tunnel.
    (resolved,) = addresses(await dns_query(client_ns, NAME, dns.rdatatype.A))
    assert await http_get(client_ns, (resolved, HTTPS_PORT), "/whoami", web.tls()) == (
        200,
        CLIENT_V4.encode(),
    )
    records = process.wait_for(
        lambda: len(flow_records(process, "dns", f"{FORWARD_DNS}:53")) >= 3
        and flow_records(process, "dns", f"{FORWARD_DNS}:53"),
        timeout=10,
    )
    outcomes = [r["outcome"] for r in records]
    assert f"A {NAME} via {TUNNEL_V4}:53: NOERROR, 1 answers" in outcomes, outcomes
    assert f"A localhost via {TUNNEL_V4}:53: NXDOMAIN, 0 answers" in outcomes, outcomes
    tcp = process.wait_for(lambda: flow_records(process, "dns-tcp", f"{FORWARD_DNS}:53"), timeout=10)
    assert tcp[0]["outcome"] == "closed", tcp


async def test_refusals_are_as_without_an_upstream(tunnel):
    """The policy refuses on the address the client asked for, before the tunnel; a port that nothing listens
    on behind the tunnel refuses the client's connection as it refused the tunnel's."""
    upstream, web, process, client_ns = tunnel
    # This host's address on its link to the upstream (the client reaches it only through `forward`): the
    # tunnel never hears of it.
    own = (upstream.namespace.here, 7)
    await assert_refused(client_ns, own, errno.EHOSTUNREACH)
    record = process.wait_for(lambda: flow_records(process, "tcp", f"{own[0]}:7"), timeout=10)[0]
    assert record["outcome"] == "refused: an address of this host", record
    await assert_refused(client_ns, (TUNNEL_V4, 81))
    record = process.wait_for(lambda: flow_records(process, "tcp", f"{TUNNEL_V4}:81"), timeout=10)[0]
    assert record["outcome"] == "unreachable: refused (nothing listens on that port)", record


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_tunnel_that_fails_resets_its_flows_with_the_reason_and_handshakes_again(
    upstreams, forward_cli, tmp_path: Path
):
    """The upstream's server goes away: after WireGuard's 90 s of handshake attempts the flows through the
    tunnel end, the client's connection reset, and their log records say why. Once the server is back, the
    next connection handshakes again."""
    upstream = await upstreams("wireguard-go")
    conf = write_config(upstream, tmp_path)
    process, client_ns = await forward_cli("--upstream", f"wireguard:{conf}", "--udp-idle-timeout", "600")
    loop = asyncio.get_running_loop()
    tcp = await connect(client_ns, (TUNNEL_V4, ECHO_PORT))
    udp = client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await loop.sock_sendall(tcp, b"hello")
        assert await asyncio.wait_for(loop.sock_recv(tcp, 100), 10) == b"hello"
        udp.setblocking(False)
        udp.connect((TUNNEL_V4, ECHO_PORT))
        await assert_udp_echo(udp, [b"hello"])
        await upstream.stop_server()
        # Data that the tunnel cannot deliver: its handshake attempts start 15 s later (WireGuard's timers).
        await loop.sock_sendall(tcp, b"anyone there?")
        reason = (
            f"upstream wireguard:{conf} failed: no WireGuard handshake with {upstream.namespace.there}:51820"
        )
        record = await asyncio.to_thread(
            process.wait_for, lambda: flow_records(process, "tcp", f"{TUNNEL_V4}:{ECHO_PORT}"), 150
        )
        assert record[0]["outcome"].startswith(reason) and "within 90 s" in record[0]["outcome"], record
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(loop.sock_recv(tcp, 100), 10):
                pass
        record = process.wait_for(lambda: flow_records(process, "udp", f"{TUNNEL_V4}:{ECHO_PORT}"), 10)
        assert record[0]["outcome"].startswith(reason), record
    finally:
        tcp.close()
        udp.close()
    # The server is back: the next connection starts a handshake, and goes through.
    await upstream.start_server()
    with await connect(client_ns, (TUNNEL_V4, ECHO_PORT)) as sock:
        await loop.sock_sendall(sock, b"hello again")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 10) == b"hello again"
    assert process.process.poll() is None
