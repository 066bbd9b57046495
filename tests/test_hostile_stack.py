"""A peer that floods the server with SYNs it never completes takes no more than its share: the server's memory
stays bounded, its other connections keep working, and the half-open connections go away.

The SYNs are crafted with a raw socket in this namespace and routed into a real WireGuard client's tunnel; the
server runs in a process of its own (server_process.py) so that its memory is measured apart from the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from typing import Iterator

import pytest

from helpers import CI, close_writer, needs_client, open_connection

# The flood needs nftables to keep this namespace's kernel from resetting the half-open connections.
needs_nft = pytest.mark.skipif(shutil.which("nft") is None and not CI, reason="nft is not installed")
pytestmark = [needs_client, needs_nft]

MB = 1 << 20

# The server's limit on one peer's connections (MAX_CONNECTIONS_PER_PEER) and its handshake timeout
# (HANDSHAKE_TIMEOUT), in src/network/stack/.
PER_PEER_LIMIT = 16_384
HANDSHAKE_TIMEOUT = 63

# The flood's source ports: below the kernel's ephemeral range, so that the test's own connections are not among
# them.
FLOOD_PORTS = (1024, 9999)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A TCP header with SYN set, checksummed for `src` and `dst` (the kernel adds the IP header)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    return header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]


@contextlib.contextmanager
def kernel_resets_dropped() -> Iterator[None]:
    """The kernel here answers the server's SYN-ACKs to the flood's ports with RSTs, which would end the
    half-open connections at once: they are dropped, as a flooder's would be."""
    table = f"synflood{os.getpid()}"
    subprocess.run(["nft", "add", "table", "inet", table], check=True)
    try:
        subprocess.run(
            ["nft", "add", "chain", "inet", table, "out", "{ type filter hook output priority 0; }"],
            check=True,
        )
        low, high = FLOOD_PORTS
        subprocess.run(
            ["nft", "add", "rule", "inet", table, "out", "tcp", "sport", f"{low}-{high}"]
            + ["tcp flags & rst != 0", "drop"],
            check=True,
        )
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=True)


async def syn_flood(count: int, seconds: float, src: str = "10.0.0.2") -> int:
    """`count` SYNs from `src` to random destinations in 10.0.0.0/16 behind the tunnel, spread over about
    `seconds`; returns how many were sent."""
    rng = random.Random(14)
    low, high = FLOOD_PORTS
    sent = 0
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as sock:
        sock.bind((src, 0))
        sock.setblocking(False)
        while sent < count and time.monotonic() - start < seconds * 3:
            dst = f"10.0.{rng.randrange(1, 256)}.{rng.randrange(1, 255)}"
            sport = low + sent % (high - low + 1)
            try:
                sock.sendto(tcp_syn(src, dst, sport, rng.randrange(1, 65536), rng.getrandbits(32)), (dst, 0))
                sent += 1
            except BlockingIOError:
                await asyncio.sleep(0.001)
            if sent % 500 == 0:
                # Paced, and the event loop runs the test's other connections meanwhile.
                await asyncio.sleep(max(0.0, start + seconds * sent / count - time.monotonic()))
    return sent


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> None:
    writer.write(message)
    assert await asyncio.wait_for(reader.readexactly(len(message)), 10) == message


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_syn_flood_is_bounded_and_the_peer_keeps_its_open_connection(server_process):
    """40,000 SYNs to random destinations, never completed: the server keeps at most its per-peer limit of 4,096
    half-open connections, so its memory grows by less than 40 MB (a half-open connection costs about 4.5 KB with
    the state of congestion control: 18 MB at the limit; at the limit of 16,384 connections in all, 72 MB), and it
    logs the SYNs it drops. An open connection from the same client keeps working during the flood and after; once
    the half-open connections timed out, the client opens new connections again (until then its new SYNs are
    dropped too: the limit is the peer's)."""
    server = await server_process()
    reader, writer = await open_connection("10.0.0.42", 7)
    await round_trip(reader, writer, b"before")
    before = server.rss()
    server.reset_peak()

    try:
        with kernel_resets_dropped():
            flood = asyncio.create_task(syn_flood(40_000, seconds=8))
            rounds = 0
            while not flood.done():
                await round_trip(reader, writer, b"during %d" % rounds)
                rounds += 1
                await asyncio.sleep(0.05)
            sent = await flood
            # Let the server take in what is still on its way.
            await asyncio.sleep(2)
            await round_trip(reader, writer, b"after")
            growth = server.peak_rss() - before
            print(f"sent {sent} SYNs; {rounds} round trips meanwhile; memory grew by {growth / MB:.1f} MB")
            assert sent == 40_000
            assert rounds > 10, "the open connection was served during the flood"
            log = server.stderr()
            dropped = [int(n) for n in re.findall(r"dropped (\d+) SYN\(s\) over the connection limits", log)]
            assert dropped, "no SYN was dropped over the limit"
            assert growth < 40 * MB, f"memory grew by {growth / MB:.1f} MB"

            # The half-open connections time out; the open connection lives on, and new ones open again.
            await asyncio.sleep(HANDSHAKE_TIMEOUT + 5)
            await round_trip(reader, writer, b"much later")
            new_reader, new_writer = await asyncio.wait_for(open_connection("10.0.0.43", 7), 10)
            await round_trip(new_reader, new_writer, b"a new connection")
            await close_writer(new_writer)
    finally:
        await close_writer(writer)
    print(f"dropped SYNs logged: {dropped}")
