"""The upstreams of helpers_upstream.py work, checked without this package's client: a reference client
(wireguard-go) set up from each upstream's client configuration reaches every service behind the tunnel."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from helpers import Namespace, assert_udp_echo, close_writer, needs_client
from helpers_cli import config_fields
from helpers_upstream import (
    BORINGTUN_VERSION,
    CLIENT_V4,
    CLIENT_V6,
    DNS_PORT,
    ECHO_PORT,
    KINDS,
    LISTEN_PORT,
    SINK_PORT,
    SOURCE_PORT,
    TUNNEL_V4,
    TUNNEL_V6,
    Upstream,
    pattern,
)
from mitmproxy_wireguard._program import host_port

pytestmark = [needs_client, pytest.mark.cheap, pytest.mark.timeout(120)]

Upstreams = Callable[..., Awaitable[Upstream]]
BIG = 16 << 20


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def open_tcp(
    namespace: Namespace | None, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from `namespace` (None: the test namespace) to `host`."""
    if namespace is None:
        return await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    sock = namespace.socket(family(host))
    try:
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 10)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


def udp_socket(namespace: Namespace | None, host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket in `namespace`, connected to `host`."""
    kind = socket.SOCK_DGRAM
    sock = socket.socket(family(host), kind) if namespace is None else namespace.socket(family(host), kind)
    sock.setblocking(False)
    sock.connect((host, port))
    return sock


async def check_echo(namespace: Namespace | None, host: str) -> None:
    """The echo sends back all that came before the client's FIN, then its own FIN: the client's half-close
    leaves the other direction open."""
    reader, writer = await open_tcp(namespace, host, ECHO_PORT)
    data = os.urandom(200_000)

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    try:
        # Reading while sending: the echo's way back never has to fit in the buffers.
        received, _ = await asyncio.wait_for(asyncio.gather(reader.read(), send()), 30)
        assert received == data
    finally:
        await close_writer(writer)


async def check_sink(namespace: Namespace | None, host: str, size: int) -> None:
    reader, writer = await open_tcp(namespace, host, SINK_PORT)
    try:
        data = os.urandom(size)
        writer.write(data)
        await asyncio.wait_for(writer.drain(), 60)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 60)
        assert answer == f"{hashlib.sha256(data).hexdigest()} {size}\n".encode()
    finally:
        await close_writer(writer)


async def check_source(namespace: Namespace | None, host: str, size: int) -> None:
    reader, writer = await open_tcp(namespace, host, SOURCE_PORT)
    try:
        writer.write(f"{size}\n".encode())
        received = await asyncio.wait_for(reader.read(), 60)
        assert len(received) == size
        assert received == pattern(size)
    finally:
        await close_writer(writer)


async def resolve(namespace: Namespace | None, name: str, kind: str) -> dns.message.Message:
    """A DNS query over UDP to the configuration's DNS server."""
    loop = asyncio.get_running_loop()
    query = dns.message.make_query(name, kind)
    with udp_socket(namespace, TUNNEL_V4, DNS_PORT) as sock:
        await loop.sock_sendall(sock, query.to_wire())
        response = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 65536), 10))
    assert response.id == query.id
    return response


async def resolve_tcp(namespace: Namespace | None, host: str, name: str, kind: str) -> dns.message.Message:
    """A DNS query over TCP (two bytes of length before each message)."""
    query = dns.message.make_query(name, kind)
    reader, writer = await open_tcp(namespace, host, DNS_PORT)
    try:
        wire = query.to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
        response = dns.message.from_wire(await asyncio.wait_for(reader.readexactly(length), 10))
    finally:
        await close_writer(writer)
    assert response.id == query.id
    return response


def addresses(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


@pytest.mark.parametrize("kind", KINDS)
async def test_services_through_the_tunnel(kind: str, upstreams: Upstreams, namespaces: Any) -> None:
    upstream = await upstreams(kind)
    fields = config_fields(upstream.client_config)
    assert fields["Address"] == f"{CLIENT_V4}/32, {CLIENT_V6}/128"
    assert fields["DNS"] == TUNNEL_V4
    assert fields["Peer.AllowedIPs"] == "0.0.0.0/0, ::/0"
    assert fields["Peer.Endpoint"] == host_port(*upstream.endpoint)
    assert upstream.latest_handshake() == 0

    client_ns = namespaces()
    before = time.time()
    client = await upstream.start_reference_client(client_ns)
    for host in (TUNNEL_V4, TUNNEL_V6):
        await check_echo(client_ns, host)
    await check_sink(client_ns, TUNNEL_V4, BIG)
    await check_source(client_ns, TUNNEL_V6, BIG)
    for host in (TUNNEL_V4, TUNNEL_V6):
        with udp_socket(client_ns, host, ECHO_PORT) as sock:
            await assert_udp_echo(sock, [b"one datagram", os.urandom(1200)])

    response = await resolve(client_ns, "dest.test", "A")
    assert response.rcode() == dns.rcode.NOERROR and addresses(response) == [TUNNEL_V4]
    response = await resolve(client_ns, "dest.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR and addresses(response) == [TUNNEL_V6]
    response = await resolve(client_ns, "v4only.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR and addresses(response) == []
    response = await resolve(client_ns, "unknown.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    response = await resolve_tcp(client_ns, TUNNEL_V6, "v6only.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR and addresses(response) == [TUNNEL_V6]

    # The server saw the client come through the test namespace, unchanged.
    stats = upstream.peer_stats()
    assert stats.endpoint == host_port(client_ns.there, client.listen_port)
    assert 0 < stats.latest_handshake <= time.time()
    if kind == "wireguard-go":
        # To the nanosecond (boringtun-cli's may be a timer tick early).
        assert stats.latest_handshake >= before
    assert stats.rx_bytes > BIG and stats.tx_bytes > BIG


@pytest.mark.parametrize("kind", KINDS)
async def test_restart_keeps_keys_and_port(kind: str, upstreams: Upstreams, namespaces: Any) -> None:
    upstream = await upstreams(kind)
    client_ns = namespaces()
    client = await upstream.start_reference_client(client_ns)
    await check_echo(client_ns, TUNNEL_V4)
    assert upstream.latest_handshake() > 0
    old_server = upstream.server
    # Gone first, so that nothing of the old session reaches the new server.
    client.stop()

    await upstream.restart()
    assert upstream.server is not old_server and upstream.server is not None
    assert upstream.server.poll() is None
    # A new process: no session with the client.
    assert upstream.latest_handshake() == 0
    shown = subprocess.run(
        ["wg", "show", upstream.interface, "listen-port"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert shown.stdout.strip() == str(LISTEN_PORT)
    # A new client from the same configuration: its first packet starts a handshake with the new server, which
    # completes only if the server kept its key.
    await upstream.start_reference_client(client_ns)
    await check_echo(client_ns, TUNNEL_V6)
    assert upstream.latest_handshake() > 0


@pytest.mark.parametrize("kind", KINDS)
async def test_ipv6_endpoint_with_preshared_key(kind: str, upstreams: Upstreams) -> None:
    """The IPv6 endpoint, a preshared key and PersistentKeepalive, with the client in the test namespace."""
    upstream = await upstreams(kind, preshared_key=True, keepalive=25)
    fields = config_fields(upstream.client_config_v6)
    assert fields["Peer.Endpoint"] == host_port(*upstream.endpoint_v6)
    assert fields["Peer.PresharedKey"] == upstream.preshared_key
    assert fields["Peer.PersistentKeepalive"] == "25"
    client = await upstream.start_reference_client(endpoint_v6=True)
    await check_echo(None, TUNNEL_V4)
    with udp_socket(None, TUNNEL_V6, ECHO_PORT) as sock:
        await assert_udp_echo(sock, [b"over the IPv6 endpoint"])
    assert upstream.peer_stats().endpoint == host_port(upstream.here_v6, client.listen_port)


def test_ci_installs_the_boringtun_cli_named_here() -> None:
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert f"\nboringtun_version={BORINGTUN_VERSION}\n" in ci
