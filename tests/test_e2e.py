"""The core through a real WireGuard client (wireguard-go): what a user of the API relies on."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
import threading
import time

import pytest

import mitmproxy_wireguard as wg
from helpers import assert_udp_echo, close_writer, needs_client, open_connection

pytestmark = [needs_client, pytest.mark.timeout(90)]

FAMILIES = [pytest.param("10.0.0.42", id="ipv4"), pytest.param("fd00::42", id="ipv6")]


@pytest.mark.parametrize("host", FAMILIES)
async def test_tcp_echo_of_16_mib_with_half_close(start, host):
    seen = []

    async def handle(stream: wg.TcpStream) -> None:
        seen.append(stream)
        digest = hashlib.sha256()
        while data := await stream.read(65536):
            digest.update(data)
            stream.write(data)
            await stream.drain()
        assert stream.at_eof()
        stream.write(digest.digest())
        stream.close()

    setup = await start(handle)
    payload = os.urandom(16 << 20)
    reader, writer = await open_connection(host, 1234)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await asyncio.wait_for(reader.read(), 60)
    await sender
    await close_writer(writer)
    assert len(received) == len(payload) + 32
    assert received[: len(payload)] == payload
    assert received[len(payload) :] == hashlib.sha256(payload).digest()

    stream = seen[0]
    client_ip = "10.0.0.2" if "." in host else "fd00::2"
    assert stream.get_extra_info("peername")[0] == client_ip
    assert stream.get_extra_info("sockname") == (host, 1234)
    assert stream.get_extra_info("original_dst") == (host, 1234)
    assert stream.get_extra_info("original_src") == ("127.0.0.1", setup.client.listen_port)
    assert stream.get_extra_info("peer_public_key") == setup.client.public_key
    assert stream.get_extra_info("no such thing", "default") == "default"
    assert host in repr(stream)


async def test_any_destination_address_and_port(start):
    destinations = [("10.0.0.42", 1234), ("203.0.113.7", 443), ("198.51.100.9", 8080), ("2001:db8::7", 80)]
    seen = []

    async def handle(stream: wg.TcpStream) -> None:
        seen.append(stream.get_extra_info("original_dst"))
        stream.write(repr(stream.get_extra_info("original_dst")).encode())
        stream.close()

    await start(handle, routes=("10.0.0.0/24", "203.0.113.0/24", "198.51.100.0/24", "2001:db8::/64"))
    for host, port in destinations:
        reader, writer = await open_connection(host, port)
        assert await asyncio.wait_for(reader.read(), 10) == repr((host, port)).encode()
        await close_writer(writer)
    assert seen == destinations


@pytest.mark.parametrize("host", FAMILIES)
async def test_udp_echo(start, host):
    setup = await start()
    family = socket.AF_INET if "." in host else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, 5353))
        await assert_udp_echo(sock, (f"datagram {i}".encode() * 10 for i in range(5)), timeout=5)
        client_port = sock.getsockname()[1]
    data, src, dst = setup.datagrams[0]
    assert src == ("10.0.0.2" if family == socket.AF_INET else "fd00::2", client_port)
    assert dst == (host, 5353)


async def test_500_concurrent_connections(start):
    await start()
    _, writer = await open_connection("10.0.0.42", 1)  # the WireGuard handshake, once
    await close_writer(writer)

    async def one(i: int) -> bytes:
        reader, writer = await open_connection("10.0.0.42", 1000 + i)
        message = f"connection {i}\n".encode()
        writer.write(message)
        line = await asyncio.wait_for(reader.readline(), 30)
        await close_writer(writer)
        return line == message

    results = await asyncio.gather(*(one(i) for i in range(500)))
    assert all(results)


async def test_a_client_with_an_unknown_key_gets_nothing(start, wg_clients):
    handled = []

    async def handle(stream: wg.TcpStream) -> None:
        handled.append(stream.get_extra_info("peer_public_key"))
        await wg.TcpStream.read(stream)
        stream.close()

    setup = await start(handle)
    stranger = await wg_clients(
        setup.server,
        setup.cfg.server_public_key,
        wg.genkey(),
        addresses=("10.0.1.1/32",),
        routes=("10.0.1.0/24",),
    )
    with pytest.raises((asyncio.TimeoutError, OSError)):
        await open_connection("10.0.1.42", 80, timeout=2)
    assert handled == []
    # The configured client is still served.
    reader, writer = await open_connection("10.0.0.42", 80)
    await close_writer(writer)
    await asyncio.sleep(0.1)
    assert handled == [setup.client.public_key]
    assert stranger.public_key != setup.client.public_key


def handshake_type(message_type: int, length: int) -> bytes:
    return struct.pack("<I", message_type) + os.urandom(length - 4)


async def test_junk_datagrams_are_dropped_and_everyone_else_is_served(start):
    setup = await start()
    reader, writer = await open_connection("10.0.0.42", 7)
    host, port = setup.server.getsockname()
    junk = [
        b"",
        b"\x01",
        os.urandom(3),
        os.urandom(1500),
        handshake_type(1, 148),  # a handshake initiation with a bad MAC
        handshake_type(1, 100),  # a truncated one
        handshake_type(2, 92),
        handshake_type(3, 64),
        handshake_type(4, 32),  # data for an index nobody has
        handshake_type(4, 1000),
        handshake_type(9, 200),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(20):
            for datagram in junk:
                sock.sendto(datagram, (host, port))
    for i in range(20):
        writer.write(b"still here %d\n" % i)
        assert await asyncio.wait_for(reader.readline(), 5) == b"still here %d\n" % i
    await close_writer(writer)


async def test_server_close_ends_open_connections_at_once(start):
    started = asyncio.Event()

    async def handle(stream: wg.TcpStream) -> None:
        started.set()
        await stream.read()  # blocks until the server goes away

    before = asyncio.all_tasks()
    setup = await start(handle)
    connections = [await open_connection("10.0.0.42", 80 + i) for i in range(5)]
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.2)

    setup.server.close()
    await asyncio.wait_for(setup.server.wait_closed(), 1.0)
    for reader, writer in connections:
        try:
            assert await asyncio.wait_for(reader.read(), 2) == b""
        except ConnectionResetError:
            pass
        await close_writer(writer)
    left = {t for t in asyncio.all_tasks() - before if not t.done()} - {asyncio.current_task()}
    assert left == set()


async def test_a_failing_handler_is_logged_and_harms_no_one(wg_pair, caplog):
    """What the handler does is the point, not the client: the package's own client (`wg_pair`) talks to it."""
    calls = []

    async def handle(stream: wg.TcpStream) -> None:
        calls.append(stream)
        if len(calls) == 1:
            raise ValueError("the handler broke")
        await stream.read(1)
        stream.write(b"fine")
        stream.close()

    pair = await wg_pair(handle)
    with caplog.at_level(logging.ERROR, logger="mitmproxy_wireguard"):
        reader, writer = await pair.tunnel.open_connection("10.0.0.42", 80)
        # The failed connection is closed, not left hanging.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close_writer(writer)
    failures = [r for r in caplog.records if r.name == "mitmproxy_wireguard" and r.exc_info]
    assert len(failures) == 1
    assert "the handler broke" in str(failures[0].exc_info[1])

    reader, writer = await pair.tunnel.open_connection("10.0.0.42", 80)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.read(), 5) == b"fine"
    await close_writer(writer)


TCPI_OPT_TIMESTAMPS = 1  # tcp_info's tcpi_options (linux/tcp.h)


@pytest.mark.parametrize("timestamps", [True, False], ids=["kernel-default", "timestamps-off"])
async def test_tcp_timestamps_as_the_kernel_asks_for_them(start, timestamps):
    """Linux offers TCP timestamps (RFC 7323) by default: the connection uses them, and carries a megabyte each way
    through the stack's PAWS and echo rules. With net.ipv4.tcp_timestamps=0 (in the tests' namespace only) it offers
    none, and works without them."""
    setting = "/proc/sys/net/ipv4/tcp_timestamps"
    with open(setting) as f:
        before = f.read()
    with open(setting, "w") as f:
        f.write("1" if timestamps else "0")
    try:
        await start()
        reader, writer = await open_connection("10.0.0.42", 1234)
        payload = os.urandom(1 << 20)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 30) == payload
        info = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        assert bool(info[5] & TCPI_OPT_TIMESTAMPS) == timestamps
        await close_writer(writer)
    finally:
        with open(setting, "w") as f:
            f.write(before)


async def test_a_client_reset_raises_connection_reset_error(start):
    outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

    async def handle(stream: wg.TcpStream) -> None:
        try:
            data = await stream.readexactly(5)
            outcome.set_result(await stream.read())
        except BaseException as e:  # noqa: B036 - the test inspects it
            outcome.set_result(e)
        stream.close()

    await start(handle)
    reader, writer = await open_connection("10.0.0.42", 80)
    writer.write(b"hello")
    await writer.drain()
    await asyncio.sleep(0.3)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    result = await asyncio.wait_for(outcome, 5)
    assert isinstance(result, ConnectionResetError), result


async def test_close_flushes_everything_written_then_sends_fin(start):
    payload = os.urandom(1 << 20)

    async def handle(stream: wg.TcpStream) -> None:
        stream.write(payload)
        stream.close()  # no drain: close() must still deliver it all

    await start(handle)
    reader, writer = await open_connection("10.0.0.42", 80)
    received = await asyncio.wait_for(reader.read(), 30)  # raises on a reset
    assert received == payload
    await close_writer(writer)


async def test_a_slow_handler_slows_the_client_and_loses_nothing(start):
    payload = os.urandom(4 << 20)
    digest: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(stream: wg.TcpStream) -> None:
        await asyncio.sleep(2)
        h = hashlib.sha256()
        while data := await stream.read(65536):
            h.update(data)
        digest.set_result(h.digest())
        stream.close()

    await start(handle)
    reader, writer = await open_connection("10.0.0.42", 80)
    writer.write(payload)
    await asyncio.sleep(1)
    # The client could not send it all: the server's window closed while the handler slept.
    assert writer.transport.get_write_buffer_size() > 0
    await asyncio.wait_for(writer.drain(), 30)
    writer.write_eof()
    assert await asyncio.wait_for(digest, 30) == hashlib.sha256(payload).digest()
    await close_writer(writer)


@pytest.mark.parametrize(
    "host, size",
    [pytest.param("10.0.0.42", 65507, id="ipv4"), pytest.param("fd00::42", 65500, id="ipv6")],
)
async def test_the_largest_ping_is_answered_and_the_server_keeps_serving(start, host, size):
    """A peer's largest echo request (fragments that reassemble to nearly 64 KiB) gets its reply, in fragments
    the tunnel carries; it once made a reply too large to encrypt and killed the server for every peer."""
    setup = await start()
    ping = await asyncio.create_subprocess_exec(
        "ping", "-c", "1", "-W", "5", "-s", str(size), host, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(ping.communicate(), 20)
    assert ping.returncode == 0, out.decode()
    assert f"{size + 8} bytes from {host}" in out.decode()

    reader, writer = await open_connection(host, 1234)
    writer.write(b"still here")
    assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
    await close_writer(writer)
    assert not setup.server.is_closing()


async def test_closing_while_python_is_behind_still_ends_wait_closed(start):
    """The engine stops while connections wait for room in Python's queue: the batch of events that reaches
    Python then holds the server-closed event, and the request to resume reading can no longer be delivered.
    That failed request once cost the whole batch, and `wait_closed` never returned."""
    connected = asyncio.Event()

    async def handle(stream: wg.TcpStream) -> None:
        connected.set()
        await asyncio.Event().wait()

    setup = await start(handle)
    sock = socket.create_connection(("10.0.0.42", 80), timeout=10)

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(os.urandom(24 << 20))

    sender = threading.Thread(target=send)
    sender.start()
    await asyncio.wait_for(connected.wait(), 10)
    # Python falls behind by more than its queue holds, and the engine stops meanwhile.
    time.sleep(3)
    setup.server.close()
    time.sleep(1)
    await asyncio.wait_for(setup.server.wait_closed(), 10)
    sock.close()
    sender.join(10)
