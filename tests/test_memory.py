"""Memory stays bounded whatever Python and the clients do: a handler that does not read, an event loop that is
blocked, churn of connections and UDP source ports, and 10,000 idle connections.

The server runs in a process of its own (server_process.py), so that its memory is measured apart from the
test's clients; a real WireGuard client in this namespace carries the traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import resource
import socket
import time

from helpers import close_writer, needs_client, open_connection, round_trip_rate

pytestmark = needs_client

MB = 1 << 20


def _raise_open_file_limit(needed: int = 32_768) -> None:
    """The test's clients hold thousands of sockets open. Root may raise the hard limit too, unless the machine
    forbids it; then the soft limit goes as far as the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(needed, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def echo_once(host: str, port: int, payload: bytes = b"x" * 100) -> None:
    reader, writer = await open_connection(host, port)
    try:
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    finally:
        await close_writer(writer)


async def ping_pong_rate(host: str, port: int, seconds: float = 1.0, windows: int = 3) -> float:
    """`round_trip_rate` on a new connection to `host`:`port`."""
    reader, writer = await open_connection(host, port)
    try:
        return await round_trip_rate(reader, writer, seconds, windows)
    finally:
        await close_writer(writer)


async def test_a_handler_that_does_not_read_costs_only_its_windows(server_process):
    """20 clients send 8 MiB each to handlers that do not read for seconds: memory grows by the windows (the
    first one, 64 KiB: a window grows only while its handler reads), not by what the clients offered (160 MiB;
    more than a window and a client's kernel buffers), and every byte arrives once the handlers read."""
    server = await server_process()
    await echo_once("10.0.0.42", 7)  # handshake done, first buffers touched
    await server.command("hold")
    before = server.rss()
    server.reset_peak()

    payloads = [os.urandom(8 * MB) for _ in range(20)]
    connections = [await open_connection("10.0.0.42", 1000 + i) for i in range(len(payloads))]

    async def send(writer: asyncio.StreamWriter, payload: bytes) -> None:
        writer.write(payload)
        writer.write_eof()
        await writer.drain()

    senders = [asyncio.create_task(send(w, p)) for (_, w), p in zip(connections, payloads)]
    # The clients push for three seconds; their writes stay blocked on closed windows.
    done, _ = await asyncio.wait(senders, timeout=3)
    assert not done, "a client sent 8 MiB to a handler that does not read"
    growth = server.peak_rss() - before
    assert growth < 32 * MB, f"memory grew by {growth / MB:.1f} MB while handlers did not read"

    await server.command("release")
    await asyncio.wait_for(asyncio.gather(*senders), 60)
    for (reader, writer), payload in zip(connections, payloads):
        answer = await asyncio.wait_for(reader.readline(), 30)
        assert answer.decode().split() == [hashlib.sha256(payload).hexdigest(), str(len(payload))]
        await close_writer(writer)
    print(f"growth while held: {growth / MB:.1f} MB")


async def test_a_blocked_event_loop_drops_datagrams_at_a_bounded_queue(server_process):
    """The event loop is blocked for 4 s while the client floods UDP: datagrams beyond the queue are dropped
    (and counted in the log), memory grows by less than 64 MB, and the server serves normally afterwards."""
    server = await server_process()
    await echo_once("10.0.0.42", 7)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.0.0.42", 53))
        sock.setblocking(False)
        sock.send(b"warm-up")
        assert await asyncio.wait_for(loop.sock_recv(sock, 2048), 10) == b"warm-up"
        received_before = (await server.command("stats"))["datagrams"]

        before = server.rss()
        server.reset_peak()
        await server.command("block 4")
        payload = b"f" * 1200
        sent = 0
        deadline = time.monotonic() + 3
        while sent < 200_000 and time.monotonic() < deadline:
            try:
                sock.send(payload)
                sent += 1
            except BlockingIOError:
                await asyncio.sleep(0.001)
            if sent % 256 == 0:
                await asyncio.sleep(0)
        growth = server.peak_rss() - before

        # The loop runs again: answers come, and the server works as before.
        stats = await server.command("stats", timeout=30)
        received = stats["datagrams"] - received_before
        assert 0 < received < sent, f"received {received} of {sent} datagrams"
        assert growth < 64 * MB, f"memory grew by {growth / MB:.1f} MB while the loop was blocked"
        sock.send(b"after")
        reply = b""
        for _ in range(sent + 1):  # the echoes of the flood come first
            reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 10)
            if reply == b"after":
                break
        assert reply == b"after"
    await echo_once("10.0.0.42", 8, os.urandom(100_000))
    log = await server.close()
    dropped = [int(n) for n in re.findall(r"dropped (\d+) datagrams", log)]
    assert dropped and max(dropped) > 0, "the drops were not logged"
    print(f"sent {sent}, handled {received}, growth {growth / MB:.1f} MB, logged drops up to {max(dropped)}")


async def test_churn_leaves_nothing_behind(server_process):
    """20,000 connections opened and closed and UDP from 20,000 source ports: no task, stream or socket is left
    behind, and memory ends within 8 MB of where it was after the first 2,000."""
    _raise_open_file_limit()
    server = await server_process()
    loop = asyncio.get_running_loop()
    idle_tasks = (await server.command("stats"))["tasks"]

    async def connection(i: int) -> None:
        # Destinations vary, so that the client's own TIME-WAIT entries never run out of ports.
        await echo_once(f"10.0.{1 + i % 200}.{1 + i // 200 % 250}", 80 + i % 7, b"churn %d" % i)

    async def datagram(i: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("10.0.0.42", 53))
            message = b"port %d" % i
            for _ in range(3):  # a datagram may be lost; try again
                sock.send(message)
                try:
                    assert await asyncio.wait_for(loop.sock_recv(sock, 2048), 2) == message
                    return
                except asyncio.TimeoutError:
                    pass
            raise AssertionError(f"no echo for datagram {i}")

    async def batch(start: int, end: int, parallel: int = 100) -> None:
        for first in range(start, end, parallel):
            last = min(end, first + parallel)
            await asyncio.gather(*(connection(i) for i in range(first, last)))
            await asyncio.gather(*(datagram(i) for i in range(first, last)))

    await batch(0, 2_000)
    baseline = server.rss()
    await batch(2_000, 20_000)
    # Handlers end when their connection has closed: give the last ones a moment.
    for _ in range(50):
        stats = await server.command("stats")
        if stats["streams"] == 0 and stats["tasks"] == idle_tasks:
            break
        await asyncio.sleep(0.1)
    growth = server.rss() - baseline
    assert stats["streams"] == 0 and stats["tasks"] == idle_tasks, stats
    assert growth <= 8 * MB, f"memory grew by {growth / MB:.1f} MB from 2,000 to 20,000"
    log = await server.close()
    assert "network task: shutting down with 0 connections" in log
    print(f"growth from 2,000 to 20,000: {growth / MB:.2f} MB")


async def test_ten_thousand_idle_connections(server_process):
    """10,000 idle connections held open cost at most 12 KB each and leave a busy connection at least half
    its round-trip rate."""
    _raise_open_file_limit()
    server = await server_process()
    await echo_once("10.0.0.42", 7)
    alone = await ping_pong_rate("10.0.0.42", 7)

    before = server.rss()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for first in range(0, 10_000, 200):
            opened = await asyncio.gather(
                *(
                    open_connection(f"10.0.{1 + i % 200}.{1 + i // 200}", 443)
                    for i in range(first, first + 200)
                )
            )
            held.extend(opened)
        # Each connection carried one message, as a real one would have.
        for first in range(0, len(held), 500):
            group = held[first : first + 500]
            for _, writer in group:
                writer.write(b"hello")
            for reader, _ in group:
                assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        assert (await server.command("stats"))["streams"] == 10_000
        # Now idle: a connection's emptied buffers are given back after a second without traffic.
        await asyncio.sleep(1.2)
        per_connection = (server.rss() - before) / len(held)
        with_many = await ping_pong_rate("10.0.0.42", 7)
    finally:
        for first in range(0, len(held), 500):
            await asyncio.gather(*(close_writer(w) for _, w in held[first : first + 500]))
    print(
        f"{per_connection / 1024:.1f} KB per idle connection; {alone:.0f} rt/s alone, {with_many:.0f} with 10,000"
    )
    assert per_connection <= 12 * 1024, f"{per_connection / 1024:.1f} KB per idle connection"
    assert with_many >= alone / 2, f"{with_many:.0f} round trips/s with 10,000 open, {alone:.0f} alone"
