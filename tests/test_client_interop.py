"""The package's WireGuard client (`connect`) against other WireGuard servers, wireguard-go and boringtun-cli, each
in a namespace with the kernel's TCP/IP stack behind its tunnel (helpers_upstream.py): TCP over IPv4 and IPv6,
16 MiB each way with half-close, UDP, DNS through the tunnel, a server restart in the middle, and rekeys.
(Against the package's own server: test_client.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any, Awaitable, Callable

import pytest

import mitmproxy_wireguard as wg
from helpers import needs_client
from helpers_upstream import (
    CLIENT_V4,
    CLIENT_V6,
    ECHO_PORT,
    KINDS,
    SINK_PORT,
    SOURCE_PORT,
    TUNNEL_V4,
    TUNNEL_V6,
    Upstream,
    pattern,
)

pytestmark = [needs_client, pytest.mark.timeout(180)]

Upstreams = Callable[..., Awaitable[Upstream]]
MIB = 1 << 20


async def echo_both_ways(tunnel: wg.Tunnel, host: str, size: int) -> None:
    """`size` bytes to the echo and back, reading while writing; the client half-closes after its data, and the
    echo's FIN follows all of it."""
    reader, writer = await tunnel.open_connection(host, ECHO_PORT)
    data = os.urandom(size)

    async def send() -> None:
        for i in range(0, size, 1 << 16):
            writer.write(data[i : i + (1 << 16)])
            await writer.drain()
        writer.write_eof()

    received, _ = await asyncio.wait_for(asyncio.gather(reader.read(), send()), 120)
    assert len(received) == size and received == data
    assert reader.at_eof()
    writer.close()
    await writer.wait_closed()


async def sink_and_source(tunnel: wg.Tunnel, host: str, size: int) -> None:
    """`size` bytes to the sink (which answers with their digest after the client's FIN), and `size` bytes from
    the source."""
    reader, writer = await tunnel.open_connection(host, SINK_PORT)
    data = os.urandom(size)
    writer.write(data)
    await asyncio.wait_for(writer.drain(), 60)
    writer.write_eof()
    assert (
        await asyncio.wait_for(reader.read(), 60) == f"{hashlib.sha256(data).hexdigest()} {size}\n".encode()
    )
    writer.close()
    reader, writer = await tunnel.open_connection(host, SOURCE_PORT)
    writer.write(f"{size}\n".encode())
    received = await asyncio.wait_for(reader.read(), 60)
    assert len(received) == size and received == pattern(size)
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("kind", KINDS)
async def test_tcp_udp_and_dns_through_a_server_with_a_kernel_behind(kind: str, upstreams: Upstreams) -> None:
    upstream = await upstreams(kind)
    async with wg.connect(upstream.client_config) as tunnel:
        for host in (TUNNEL_V4, TUNNEL_V6):
            await echo_both_ways(tunnel, host, 16 * MIB)
        await sink_and_source(tunnel, TUNNEL_V4, 16 * MIB)
        await sink_and_source(tunnel, TUNNEL_V6, 16 * MIB)
        # The kernel on the other side sees the client's tunnel addresses.
        for host, client in ((TUNNEL_V4, CLIENT_V4), (TUNNEL_V6, CLIENT_V6)):
            reader, writer = await tunnel.open_connection(host, ECHO_PORT)
            assert writer.get_extra_info("sockname")[0] == client
            writer.close()
        for host in (TUNNEL_V4, TUNNEL_V6):
            async with await tunnel.open_datagram(host, ECHO_PORT) as endpoint:
                for data in (b"one datagram", os.urandom(1200), os.urandom(3000)):
                    endpoint.send(data)
                    assert await asyncio.wait_for(endpoint.recv(), 10) == data
        # Names resolve through the DNS server the configuration names (inside the tunnel).
        assert await tunnel.resolve("dest.test") == [TUNNEL_V4, TUNNEL_V6]
        assert await tunnel.resolve("v6only.test") == [TUNNEL_V6]
        reader, writer = await tunnel.open_connection("v4only.test", ECHO_PORT)
        writer.write(b"by name")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"by name"
        writer.close()
        with pytest.raises(OSError):
            await tunnel.resolve("unknown.test")
        # A closed port of the kernel's answers with a RST.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(tunnel.open_connection(TUNNEL_V4, 1), 10)
        stats = await tunnel.stats()
        assert stats.last_handshake is not None and stats.tx_bytes > 32 * MIB
    peer = upstream.peer_stats()
    assert peer.rx_bytes > 32 * MIB and peer.tx_bytes > 32 * MIB


@pytest.mark.parametrize("kind", KINDS)
async def test_an_ipv6_endpoint_with_a_preshared_key_and_keepalive(kind: str, upstreams: Upstreams) -> None:
    upstream = await upstreams(kind, keepalive=1, preshared_key=True)
    async with wg.connect(upstream.client_config_v6) as tunnel:
        await echo_both_ways(tunnel, TUNNEL_V4, 1 * MIB)
        # With nothing else to send, the client sends a keepalive every second (a data message of 32 bytes,
        # as WireGuard's are).
        # The server's counters are read before the client's at the start and after them at the end (with time
        # for the last datagram to arrive), so that what the client counts between its two readings (the echo's
        # last ACK included, sent while the first readings are taken) arrives between the server's.
        server_before = upstream.peer_stats()
        before = await tunnel.stats()
        await asyncio.sleep(3.5)
        after = await tunnel.stats()
        await asyncio.sleep(0.2)
        server_after = upstream.peer_stats()
        assert after.tx_packets - before.tx_packets >= 3
        assert after.tx_bytes - before.tx_bytes >= 3 * 32
        if kind == "wireguard-go":
            # It counts the bytes of each datagram it receives as the client counts each it sends: over the
            # quiet seconds, the keepalives arrive all. Not over the echo before: a datagram lost in a burst on
            # the way counts on one side only.
            sent = after.tx_bytes - before.tx_bytes
            assert server_after.rx_bytes - server_before.rx_bytes >= sent
        assert upstream.peer_stats().endpoint is not None


@pytest.mark.parametrize("kind", KINDS)
async def test_a_server_restart_in_the_middle_of_a_connection(kind: str, upstreams: Upstreams) -> None:
    """The WireGuard server restarts (the kernel behind it keeps its connections): the client's session is
    unknown to the new process, so its data goes unanswered until WireGuard's timers start a new handshake;
    then the same TCP connection goes on, nothing lost."""
    upstream = await upstreams(kind)
    async with wg.connect(upstream.client_config) as tunnel:
        reader, writer = await tunnel.open_connection(TUNNEL_V4, ECHO_PORT)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"
        first = (await tunnel.stats()).last_handshake
        assert first is not None
        await upstream.restart()
        data = os.urandom(256 * 1024)
        writer.write(data)
        assert await asyncio.wait_for(reader.readexactly(len(data)), 60) == data
        assert ((await tunnel.stats()).last_handshake or 0) > first
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_rekeys_over_270_s_against_each_server(upstreams: Upstreams) -> None:
    """WireGuard renews the keys every 120 s while traffic flows. A connection through each server (the
    package's own, wireguard-go, boringtun-cli; at the same time) exchanges a message a second for 270 s: each
    sees at least two new handshakes and loses nothing."""

    async def own_echo(stream: wg.TcpStream) -> None:
        while data := await stream.read(65536):
            stream.write(data)
        stream.close()

    cfg = wg.Configuration.generate(listen_port=0, peers=1)
    server = await wg.start_server("127.0.0.1", cfg, own_echo, lambda *a: None)
    configs = [cfg.pretty_print(endpoint=f"127.0.0.1:{server.getsockname()[1]}", dns="")[0]]
    for kind in KINDS:
        configs.append((await upstreams(kind)).client_config)

    async def talk(text: str, host: str) -> set[float]:
        handshakes: set[float] = set()
        async with wg.connect(text) as tunnel:
            reader, writer = await tunnel.open_connection(host, ECHO_PORT)
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < 270:
                message = f"{i:08d}".encode()
                writer.write(message)
                assert await asyncio.wait_for(reader.readexactly(8), 30) == message
                handshake = (await tunnel.stats()).last_handshake
                assert handshake is not None
                handshakes.add(handshake)
                i += 1
                await asyncio.sleep(1)
            writer.close()
        return handshakes

    async with server:
        results = await asyncio.gather(
            talk(configs[0], "192.0.2.1"), *(talk(text, TUNNEL_V4) for text in configs[1:])
        )
    for name, handshakes in zip(["own", *KINDS], results):
        assert len(handshakes) >= 3, (name, sorted(handshakes))
