"""A peer cannot take the queues between the tasks from the others: neither the queue of datagrams that wait
for Python (each peer has a share of it), nor the way back into the tunnel (bounded by bytes; datagrams beyond
it are dropped, TCP waits in its connection's buffers).

Each test has one peer misbehave through a real client and measures another peer's service, during and after.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from helpers import close_writer, needs_client, round_trip_rate

pytestmark = needs_client

MB = 1 << 20

# Sends UDP from SOURCE to HOST:PORT, SIZE bytes each, for SECONDS, at most RATE a second (0: as fast as it
# can), and never more than 5,000,000 datagrams; prints how many it sent. A process of its own, so that the
# flood takes no GIL from the handler.
FLOOD = """
import socket, sys, time
source, host, port, size, seconds, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \\
    float(sys.argv[5]), float(sys.argv[6])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((source, 0))
payload = b"f" * size
sent = 0
start = time.monotonic()
while sent < 5_000_000 and (now := time.monotonic()) < start + seconds:
    if rate and sent >= rate * (now - start):
        time.sleep(1 / rate)
        continue
    try:
        sock.sendto(payload, (host, port))
        sent += 1
    except OSError:
        pass
print(sent)
"""


def flood(
    source: str, destination: tuple[str, int], seconds: float, size: int = 200, rate: float = 0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            FLOOD,
            source,
            destination[0],
            str(destination[1]),
            str(size),
            str(seconds),
            str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def udp_echoes(
    source: str, destination: tuple[str, int], count: int, until: float, timeout: float
) -> tuple[int, int]:
    """Sends up to `count` datagrams one after the other, until `until`, each waiting up to `timeout` for its
    echo. Returns how many were sent and how many answered."""
    sent = answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.connect(destination)
        while sent < count and time.monotonic() < until:
            message = b"other peer %d" % sent
            sock.send(message)
            sent += 1
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    if sock.recv(2048) == message:
                        answered += 1
                        break
                except TimeoutError:
                    break
    return sent, answered


def paced_udp_echoes(
    source: str, destination: tuple[str, int], interval: float, seconds: float, grace: float = 3
) -> tuple[int, int]:
    """Sends a datagram every `interval` for `seconds`, whether or not earlier ones were answered (as a DNS
    client's queries come), and waits `grace` more for the last echoes. Returns how many were sent and how many
    distinct ones came back."""
    sent = 0
    answered: set[bytes] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.connect(destination)
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds + grace:
            if now < start + seconds and sent <= (now - start) / interval:
                sock.send(b"other peer %d" % sent)
                sent += 1
            sock.settimeout(max(0.001, min(interval, start + seconds + grace - now)))
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                continue
            if reply.startswith(b"other peer "):
                answered.add(reply)
    return sent, len(answered)


def peer_address(cfg: Any, index: int) -> str:
    return next(a.split("/")[0] for a in cfg.peers[index]["allowed_ips"] if ":" not in a)


def kernel_drops(port: int) -> int:
    """How many datagrams the kernel dropped at this namespace's UDP socket on `port`, for want of room in its
    receive buffer: before the engine saw them, of every peer alike."""
    drops = 0
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    drops += int(fields[-1])
    return drops


def stop(process: subprocess.Popen[str]) -> int:
    """Waits for a flood to end (it ends on its own); returns how many datagrams it sent."""
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return -1
    return int(out or 0)


@pytest.mark.timeout(90)
async def test_a_flooding_peer_leaves_the_others_their_share_of_pythons_queue(start, wg_clients, caplog):
    """Peer 0 sends UDP as fast as it can for 10 s while the handler's event loop is blocked for 0.7 s of each
    1.2 s; peer 1 sends a datagram every 20 ms meanwhile, and one every 50 ms for a second after the flood:
    at least 95% of them are answered."""
    setup = await start(peers=2)
    cfg = setup.cfg
    other = peer_address(cfg, 1)
    await wg_clients(
        setup.server,
        cfg.server_public_key,
        cfg.client_private_keys[1],
        addresses=tuple(cfg.peers[1]["allowed_ips"]),
        routes=("10.0.1.0/24",),
    )
    destination = ("10.0.1.42", 53)
    # Both tunnels are up before the flood.
    assert await asyncio.to_thread(udp_echoes, other, destination, 3, time.monotonic() + 10, 5) == (3, 3)
    assert await asyncio.to_thread(
        udp_echoes, peer_address(cfg, 0), ("10.0.0.42", 9), 1, time.monotonic() + 10, 5
    )

    loop = asyncio.get_running_loop()
    blocking = True

    def block() -> None:
        """Blocks the handler's loop for 0.7 s of each 1.2 s, as slow callbacks in the user's code do."""
        if blocking:
            time.sleep(0.7)
            loop.call_later(0.5, block)

    caplog.set_level(logging.INFO, logger="mitmproxy_wireguard")
    flooder = flood(peer_address(cfg, 0), ("10.0.0.42", 9), 10)
    flood_start = time.monotonic()
    loop.call_later(0.5, block)
    try:
        during = await asyncio.to_thread(paced_udp_echoes, other, destination, 0.02, 9.5)
        flood_sent = await asyncio.to_thread(stop, flooder)
    finally:
        blocking = False
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait(5)
    after = await asyncio.to_thread(paced_udp_echoes, other, destination, 0.05, 1)
    print(
        f"flood: {flood_sent} datagrams sent; the handler took {len(setup.datagrams)} of all peers'. The other "
        f"peer's echoes: {during[1]} of {during[0]} answered during the flood, {after[1]} of {after[0]} after"
    )
    assert during[0] >= 10, "the other peer hardly sent during the flood"
    kernel = kernel_drops(setup.server.getsockname()[1])
    print(f"the kernel dropped {kernel} datagrams at the server's socket")
    assert (
        during[1] >= 0.95 * during[0]
    ), f"during the flood: {during[1]} of {during[0]} answered; the kernel dropped {kernel} at the socket"
    assert after[1] >= 0.95 * after[0], f"after the flood: {after[1]} of {after[0]} answered"
    # The drops are counted for the flooder, and logged with its key at most once a second.
    drops = {s.public_key: s.drops["python_queue"] for s in await setup.server.peers()}
    print(f"dropped at the queue to Python, by peer: {drops}")
    assert drops[setup.client.public_key] > 1000, drops
    reports = [r.getMessage() for r in caplog.records if "over their share" in r.getMessage()]
    assert reports and setup.client.public_key in reports[0], reports[:1]
    assert len(reports) <= time.monotonic() - flood_start + 1, f"{len(reports)} reports"


async def ping_pong_rate(
    source: str, destination: tuple[str, int], seconds: float = 1.0, windows: int = 3
) -> float:
    """`round_trip_rate` on a new connection from `source` to `destination`."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*destination, local_addr=(source, 0)), 10)
    try:
        return await round_trip_rate(reader, writer, seconds, windows)
    finally:
        await close_writer(writer)


# What the server process may grow by while a handler answers each datagram with 100 of 65,000 bytes: the
# queues into the tunnel (8 MiB from Python, 512 KiB of datagrams to the WireGuard task), the datagrams waiting
# for the socket (4,096 of at most 1,500 bytes), and what Python and the allocator keep besides, four times
# over. Without the bounds it grew by 5 GB within seconds.
AMPLIFIED_GROWTH = 64 * MB


def fragment_memory() -> int:
    """The memory of incomplete IP datagrams that this namespace's kernel holds for reassembly."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("FRAG:"):
                return int(line.split()[-1])
    return 0


async def fragments_expired(timeout: float = 45) -> None:
    """A flood of fragmented datagrams, some of whose fragments were dropped, leaves the kernel's reassembly
    memory full here, in the namespace that the other tests' clients share too: until its incomplete datagrams
    expire (`ipfrag_time`, 30 s), it takes no fragment, and a later test's large datagrams are lost. Waits for
    them to go."""
    deadline = time.monotonic() + timeout
    while fragment_memory() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


@pytest.mark.timeout(180)
async def test_answers_python_sends_faster_than_the_tunnel_takes_them_cost_bounded_memory(
    server_process, wg_clients
):
    """Peer 0 sends 50 datagrams a second for 20 s and the handler answers each with 100 datagrams of 65,000
    bytes (325 MB a second): the server's memory grows by less than `AMPLIFIED_GROWTH`, and peer 1's TCP
    ping-pong keeps at least half its rate, during the flood and after it."""
    server = await server_process(peers=2)
    cfg = server.cfg
    other = peer_address(cfg, 1)
    await wg_clients(
        server,
        cfg.server_public_key,
        cfg.client_private_keys[1],
        addresses=tuple(cfg.peers[1]["allowed_ips"]),
        routes=("10.1.0.0/16",),
    )
    alone = await ping_pong_rate(other, ("10.1.0.42", 7))
    assert await asyncio.to_thread(
        udp_echoes, peer_address(cfg, 0), ("10.0.0.42", 9), 1, time.monotonic() + 10, 5
    )

    await server.command("amplify 100 65000")
    before = server.rss()
    server.reset_peak()
    flooder = flood(peer_address(cfg, 0), ("10.0.0.42", 9), 20, size=100, rate=50)
    flood_start = time.monotonic()
    peak = before
    rates = []

    async def guard() -> None:
        """Ends the flood if memory runs away, so that a failing run does not take the machine's."""
        while flooder.poll() is None:
            if server.rss() - before > 1024 * MB:
                flooder.kill()
            await asyncio.sleep(0.1)

    guarding = asyncio.create_task(guard())
    try:
        deadline = time.monotonic() + 19
        while time.monotonic() < deadline and peak - before < 1024 * MB:
            try:
                rates.append(await asyncio.wait_for(ping_pong_rate(other, ("10.1.0.42", 7), 0.5, 2), 5))
            except (asyncio.TimeoutError, OSError):
                rates.append(0.0)  # no round trip in 5 s
            peak = max(peak, server.peak_rss())
        flood_sent = await asyncio.to_thread(stop, flooder)
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait(5)
        await guarding
        await fragments_expired()
    peak = max(peak, server.peak_rss())
    await server.command("amplify 1 0", timeout=60)
    try:
        after = await asyncio.wait_for(ping_pong_rate(other, ("10.1.0.42", 7)), 30)
    except (asyncio.TimeoutError, OSError):
        after = 0.0
    during = sorted(rates)[len(rates) // 2] if rates else 0.0
    log = await server.close()
    seconds = time.monotonic() - flood_start
    dropped = [line for line in log.splitlines() if "the tunnel is not keeping up" in line]
    print(
        f"flood: {flood_sent} datagrams, each answered with 100 of 65,000 bytes; memory grew by "
        f"{(peak - before) / MB:.1f} MB; the other peer's ping-pong: {alone:.0f}/s alone, {during:.0f}/s "
        f"(median of {len(rates)}) during, {after:.0f}/s after; {len(dropped)} log records of drops in {seconds:.0f} s"
    )
    assert peak - before < AMPLIFIED_GROWTH, f"memory grew by {(peak - before) / MB:.1f} MB"
    assert during >= alone / 2, f"{during:.0f} round trips/s during the flood, {alone:.0f} alone"
    assert after >= alone / 2, f"{after:.0f} round trips/s after the flood, {alone:.0f} alone"
    # Drops are logged, each kind at most once a second.
    assert dropped, "the drops were not logged"
    assert len(dropped) <= 2 * (seconds + 1), f"{len(dropped)} records of drops in {seconds:.0f} s"
