"""A peer that floods the server with SYNs it never completes takes no more than its share: the server's memory
stays bounded, its connections keep working, new ones of its own open, and the half-open connections go away.

The SYNs are crafted with a raw socket in this namespace and routed into a real WireGuard client's tunnel; the
server runs in a process of its own (server_process.py) so that its memory is measured apart from the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import CI, close_writer, needs_client, open_connection, round_trip_rate

# The flood needs nftables to keep this namespace's kernel from resetting the half-open connections.
needs_nft = pytest.mark.skipif(shutil.which("nft") is None and not CI, reason="nft is not installed")
pytestmark = [needs_client, needs_nft]

MB = 1 << 20

# The flood's source ports: below the kernel's ephemeral range, so that the test's own connections are not among
# them.
FLOOD_PORTS = (1024, 9999)


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
    `seconds`, sent by a process of its own (syn_flood.py) so that the test's connections do not wait on it;
    returns how many were sent."""
    low, high = FLOOD_PORTS
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("syn_flood.py")),
        src,
        str(count),
        str(seconds),
        str(low),
        str(high),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds * 3 + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return int(out)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> None:
    writer.write(message)
    assert await asyncio.wait_for(reader.readexactly(len(message)), 10) == message


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_syn_flood_is_bounded_and_the_client_still_opens_connections_of_its_own(server_process):
    """100,000 SYNs in about 10 s from the client's own tunnel address to random destinations, their SYN-ACKs
    dropped on the client's side (a spoofer's view): the server keeps at most its per-peer limit of 4,096
    half-open connections, each new SYN taking the place of the oldest, so that a new connection of the same
    client completes during the flood and keeps at least half the ping-pong rate the client had alone; an open
    connection keeps working; and 90 s later (the half-open connections timed out after 63 s) the server's
    memory is within 16 MB of what it was before."""
    server = await server_process()
    reader, writer = await open_connection("10.0.0.42", 7)
    await round_trip(reader, writer, b"before")
    alone = await round_trip_rate(reader, writer, 2, windows=1, size=100)
    before = server.rss()
    server.reset_peak()

    try:
        with kernel_resets_dropped():
            flood = asyncio.create_task(syn_flood(100_000, seconds=10))
            await asyncio.sleep(3)
            started = time.monotonic()
            new_reader, new_writer = await asyncio.wait_for(open_connection("10.0.0.43", 7), 10)
            connect_time = time.monotonic() - started
            during = await round_trip_rate(new_reader, new_writer, 2, windows=1, size=100)
            flood_was_on = not flood.done()
            await round_trip(reader, writer, b"the open one, during")
            sent = await flood
            await close_writer(new_writer)
            peak = server.peak_rss() - before
            await asyncio.sleep(90)
            await round_trip(reader, writer, b"much later")
            later = server.rss() - before
    finally:
        await close_writer(writer)
    print(
        f"sent {sent} SYNs; new connection in {connect_time:.2f} s; {alone:.0f} round trips/s alone, "
        f"{during:.0f} during; memory +{peak / MB:.1f} MB at the peak, {later / MB:+.1f} MB 90 s later"
    )
    assert sent == 100_000
    assert flood_was_on, "the flood ended before the new connection was measured"
    assert during >= alone / 2, f"{during:.0f} round trips/s during the flood, {alone:.0f} alone"
    assert peak < 40 * MB, f"memory grew by {peak / MB:.1f} MB"
    assert later < 16 * MB, f"memory 90 s later: {later / MB:+.1f} MB"
