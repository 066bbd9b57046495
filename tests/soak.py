"""Load for a soak: everything at once, for as long as asked, with the server's memory and open files
sampled throughout. tests/test_soak.py runs it against the server in a process of its own (server_process.py)
and a real WireGuard client.

- Churn: short TCP connections through the tunnel, each to an address and port of its own, each echoing a
  payload of its own and then closed from both sides; at a steady rate, a few at a time.
- A stream: one connection that trickles data for the whole run; every echoed byte is checked.
- A handshake flood: flood.py (initiations with a valid MAC1 from keys the server does not know), in a
  process of its own.
- Junk: datagrams to the server's port from another address that are no WireGuard message or only look like
  one (right type and length, wrong MAC, unknown receiver index, cut short); none may get an answer.

Every part is bounded by the run's duration and paced to a rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import ServerProcess, close_writer, open_connection

MB = 1 << 20


@dataclass
class Load:
    """How much of each kind of load, and for how long."""

    seconds: float
    churn_rate: float = 100.0  # connections a second
    churn_parallel: int = 16
    churn_max_payload: int = 16_384
    flood_rate: int = 1_000  # handshake initiations a second
    junk_rate: float = 200.0  # datagrams a second
    interval: float = 1.0  # seconds between samples


@dataclass
class Sample:
    """The server process at one moment, and the load's progress by then."""

    seconds: float
    rss: int
    fds: int
    churned: int
    streamed: int


@dataclass
class Progress:
    churned: int = 0
    churn_failures: int = 0
    first_failures: list[str] = field(default_factory=list)
    streamed: int = 0
    stream_error: str | None = None
    junk_sent: int = 0
    junk_answers: int = 0

    def fail(self, what: str) -> None:
        self.churn_failures += 1
        if len(self.first_failures) < 10:
            self.first_failures.append(what)


@dataclass
class Report:
    samples: list[Sample]
    progress: Progress
    flood: dict[str, float]


async def paced(rate: float, until: float) -> None:
    """Sleeps 1/`rate` of a second, but not past `until`: a little under `rate` events a second."""
    await asyncio.sleep(max(0.0, min(until, time.monotonic() + 1 / rate) - time.monotonic()))


async def churn(load: Load, until: float, progress: Progress) -> None:
    """Connections at `load.churn_rate` a second, `load.churn_parallel` at a time, until `until`."""
    start = time.monotonic()
    numbers = iter(range(10**9))

    async def worker() -> None:
        for i in numbers:
            # Connection i is due at start + i / rate; a worker that falls behind does not sleep.
            due = start + i / load.churn_rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() >= until:
                return
            # Destinations vary, so that the client's TIME-WAIT entries never run out of ports.
            host, port = f"10.0.{1 + i % 200}.{1 + i // 200 % 250}", 1000 + i // 50_000 % 7
            try:
                await echo_and_close(host, port, os.urandom(random.randrange(1, load.churn_max_payload)))
                progress.churned += 1
            except (OSError, EOFError, asyncio.TimeoutError, AssertionError) as e:
                progress.fail(f"connection {i} to {host}:{port}: {e!r}")

    await asyncio.gather(*(worker() for _ in range(load.churn_parallel)))


async def echo_and_close(host: str, port: int, payload: bytes) -> None:
    """One connection: `payload` sent and echoed, then closed by the client and by the server."""
    reader, writer = await open_connection(host, port)
    try:
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert echoed == payload, "the echo differs"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(1), 10) == b"", "data after the echo"
    finally:
        await close_writer(writer)


async def stream(until: float, progress: Progress, host: str = "10.0.0.42", port: int = 9) -> None:
    """One connection that sends a little, every so often, until `until`; checks every byte of the echo, and
    that it ends with the client's end."""
    reader, writer = await open_connection(host, port)
    pending = bytearray()  # sent, not echoed yet
    rng = random.Random(14)

    async def send() -> None:
        while time.monotonic() < until:
            chunk = rng.randbytes(rng.randrange(1, 2000))
            pending.extend(chunk)
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(rng.uniform(0.02, 0.2))
        writer.write_eof()

    async def receive() -> None:
        while data := await asyncio.wait_for(reader.read(65536), 30):
            if data != pending[: len(data)]:
                raise AssertionError(f"the stream's echo differs after {progress.streamed} bytes")
            del pending[: len(data)]
            progress.streamed += len(data)
        if pending:
            raise AssertionError(f"the stream ended with {len(pending)} bytes not echoed")

    try:
        await asyncio.gather(send(), receive())
    except (OSError, asyncio.TimeoutError, AssertionError) as e:
        progress.stream_error = repr(e)
    finally:
        await close_writer(writer)


def junk(rng: random.Random) -> bytes:
    """A datagram no server should answer: random bytes, or a WireGuard message type with the message's length
    (or cut short) and nothing right in it."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    if kind == 4:  # a data message for a receiver index nobody has
        return struct.pack("<I", 4) + rng.randbytes(rng.choice((12, 28, 32, rng.randrange(16, 1500))))
    if kind == 5:  # cut short: only the first bytes of a message
        return struct.pack("<I", rng.randrange(1, 5)) + rng.randbytes(rng.randrange(0, 60))
    length = {1: 148, 2: 92, 3: 64}[kind]  # initiation, response, cookie reply; wrong MACs, unknown indexes
    return struct.pack("<I", kind) + rng.randbytes(length - 4)


async def send_junk(
    address: tuple[str, int], load: Load, until: float, progress: Progress, source: str = "127.0.0.3"
) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(15)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        while time.monotonic() < until:
            try:
                sock.sendto(junk(rng), address)
                progress.junk_sent += 1
            except BlockingIOError:
                pass
            while True:
                try:
                    sock.recv(65536)
                    progress.junk_answers += 1
                except (BlockingIOError, ConnectionRefusedError):
                    break
            await paced(load.junk_rate, until)
        # Answers to the last datagrams would come soon after.
        await asyncio.sleep(0.5)
        while True:
            try:
                await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.1)
                progress.junk_answers += 1
            except asyncio.TimeoutError:
                break


async def flood(address: tuple[str, int], server_public_key: str, load: Load) -> dict[str, float]:
    """flood.py for the run's duration; what it reports."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("flood.py")),
        address[0],
        str(address[1]),
        server_public_key,
        str(load.flood_rate),
        str(load.seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), load.seconds + 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    result: dict[str, float] = json.loads(out)
    return result


async def sample(
    server: ServerProcess, load: Load, until: float, progress: Progress, samples: list[Sample]
) -> None:
    start = time.monotonic()
    while True:
        now = time.monotonic()
        samples.append(
            Sample(now - start, server.rss(), server.open_files(), progress.churned, progress.streamed)
        )
        if now >= until:
            return
        await asyncio.sleep(min(load.interval, max(0.0, until - now)))


async def run(server: ServerProcess, load: Load) -> Report:
    """All the load at once against `server` for `load.seconds`, its memory and open files sampled every
    `load.interval` seconds. A WireGuard client of the server's first peer must route 10.0.0.0/16 into its
    tunnel (the server_process fixture starts one)."""
    address, server_public_key = server.getsockname(), server.cfg.server_public_key
    progress = Progress()
    samples: list[Sample] = []
    until = time.monotonic() + load.seconds
    flooding = asyncio.create_task(flood(address, server_public_key, load))
    await asyncio.gather(
        churn(load, until, progress),
        stream(until, progress),
        send_junk(address, load, until, progress),
        sample(server, load, until, progress, samples),
    )
    return Report(samples, progress, await flooding)


def summary(samples: list[Sample]) -> str:
    """The samples as a table, at most 40 rows."""
    step = max(1, len(samples) // 40)
    rows = [f"{'s':>6} {'RSS MB':>8} {'fds':>4} {'churned':>8} {'streamed':>9}"]
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        rows.append(f"{s.seconds:6.0f} {s.rss / MB:8.1f} {s.fds:4d} {s.churned:8d} {s.streamed:9d}")
    return "\n".join(rows)
