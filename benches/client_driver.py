"""The driver of benches/client_paths.py: the same asyncio stream code on top of either client.

    ip netns exec NS python client_driver.py             # the reference: the kernel's sockets (wireguard-go)
    ip netns exec NS python client_driver.py CLIENT.conf # the package's client: a Tunnel from this config

One process per client, in the client namespace. With a configuration, this process is the package's client:
it opens the Tunnel (`mitmproxy_wireguard.connect`) at start and keeps it open until its standard input
closes, and its CPU time is the package's. Without, it opens kernel sockets (`asyncio.open_connection`), whose
packets go through wireguard-go. Either way the application's work is the same code: only the transport
under the `StreamReader`/`StreamWriter` differs.

One JSON command per line on stdin, one JSON answer per line on stdout (children.LoadGen speaks it):

    {"op": "hello"}                                   -> pid, and whether this is the tunnel
    {"op": "prepare", "sizes": [N, ...]}              the expected bytes of those sizes, before any clock
    {"op": "ping", "host": H}                         a few round trips: the handshake is done, the path works
    {"op": "download", "host": H, "total": N}         N bytes from the source, checked byte for byte: MB/s
    {"op": "upload", "host": H, "total": N}           N bytes to the sink, which answers their digest: MB/s
    {"op": "echo", "host": H, "total": N}             N bytes to the echo and back, both ways at once: MB/s
    {"op": "pingpong", "host": H, "n": K, "size": S}  K round trips of S bytes: round trips/s, and their times

Each command may carry "timeout" and "stall" (seconds): it fails when it takes longer, or makes no progress
for that long, and its connection is aborted. Rates are MB/s (10^6 B/s) of bytes that arrived intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conns import CaseError, Progress  # noqa: E402
from upstream_services import ECHO_PORT, SINK_PORT, SOURCE_PORT, pattern  # noqa: E402

CHUNK = 1 << 16  # what each write and each read moves at most

Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Driver:
    """The commands, on one opener of connections: the tunnel's or the kernel's. The expected bytes of each
    size are made once, before the first measure (`prepare`): making them is CPU time of this process, which
    is the package's client, and checking them then costs a comparison."""

    def __init__(self, opener: Opener):
        self.open = opener
        self.writers: set[asyncio.StreamWriter] = set()  # what a failed command aborts
        self.patterns: dict[int, bytes] = {}
        self.digests: dict[int, str] = {}

    def expected(self, total: int) -> bytes:
        if total not in self.patterns:
            self.patterns[total] = pattern(total)
            self.digests[total] = hashlib.sha256(self.patterns[total]).hexdigest()
        return self.patterns[total]

    def prepare(self, sizes: list[int]) -> dict[str, Any]:
        for total in sizes:
            self.expected(total)
        return {"ok": True}

    async def connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.open(host, port)
        self.writers.add(writer)
        return reader, writer

    def done_with(self, writer: asyncio.StreamWriter) -> None:
        self.writers.discard(writer)
        writer.close()

    def abort_all(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def ping(self, host: str, progress: Progress) -> dict[str, Any]:
        reader, writer = await self.connect(host, ECHO_PORT)
        t0 = time.perf_counter()
        for i in range(10):
            await roundtrip(reader, writer, f"ping {i}".encode())
            progress.count += 1
        elapsed = time.perf_counter() - t0
        self.done_with(writer)
        return {"value": 10 / elapsed, "elapsed": elapsed}

    async def download(self, host: str, total: int, progress: Progress) -> dict[str, Any]:
        """Asks the source for `total` bytes; the clock runs from the request to the source's FIN."""
        expected = memoryview(self.expected(total))
        reader, writer = await self.connect(host, SOURCE_PORT)
        t0 = time.perf_counter()
        writer.write(f"{total}\n".encode())
        got = 0
        while data := await reader.read(CHUNK):
            end = got + len(data)
            if end > total:
                raise CaseError(f"got {end} bytes, asked for {total}")
            if expected[got:end] != data:
                raise CaseError(f"wrong byte in the download after {got} bytes")
            got = progress.count = end
        elapsed = time.perf_counter() - t0
        self.done_with(writer)
        if got != total:
            raise CaseError(f"the source closed after {got} of {total} bytes")
        return {"value": total / elapsed / 1e6, "elapsed": elapsed}

    async def upload(self, host: str, total: int, progress: Progress) -> dict[str, Any]:
        """`total` bytes to the sink, then FIN; the clock runs until the sink's answer (its digest and count
        of what arrived), which is checked."""
        data = memoryview(self.expected(total))
        reader, writer = await self.connect(host, SINK_PORT)
        t0 = time.perf_counter()
        for i in range(0, total, CHUNK):
            writer.write(data[i : i + CHUNK])
            await writer.drain()
            progress.count = i
        writer.write_eof()
        answer = await reader.read()
        elapsed = time.perf_counter() - t0
        self.done_with(writer)
        if answer != f"{self.digests[total]} {total}\n".encode():
            raise CaseError(f"the sink answered {answer[:100]!r} for {total} bytes")
        return {"value": total / elapsed / 1e6, "elapsed": elapsed}

    async def echo(self, host: str, total: int, progress: Progress) -> dict[str, Any]:
        """`total` bytes to the echo while reading them back, then FIN: MB/s of each direction."""
        expected = memoryview(self.expected(total))
        reader, writer = await self.connect(host, ECHO_PORT)

        async def send() -> None:
            for i in range(0, total, CHUNK):
                writer.write(expected[i : i + CHUNK])
                await writer.drain()
            writer.write_eof()

        async def receive() -> int:
            got = 0
            while data := await reader.read(CHUNK):
                end = got + len(data)
                if end > total or expected[got:end] != data:
                    raise CaseError(f"echo mismatch after {got} bytes")
                got = progress.count = end
            return got

        t0 = time.perf_counter()
        got, _ = await asyncio.gather(receive(), send())
        elapsed = time.perf_counter() - t0
        self.done_with(writer)
        if got != total:
            raise CaseError(f"the echo closed after {got} of {total} bytes")
        return {"value": total / elapsed / 1e6, "elapsed": elapsed}

    async def pingpong(self, host: str, n: int, size: int, progress: Progress) -> dict[str, Any]:
        """`n` round trips of `size` bytes on one connection, one after the other: round trips/s, and the
        percentiles of their times (enough samples for a p95 in one run, unlike the rates)."""
        reader, writer = await self.connect(host, ECHO_PORT)
        rng = random.Random(size)
        messages = [rng.randbytes(size), rng.randbytes(size)]
        await roundtrip(reader, writer, messages[0])  # the connection is up before the clock starts
        times = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await roundtrip(reader, writer, messages[i & 1])
            times.append(time.perf_counter() - t)
            progress.count += 1
        elapsed = time.perf_counter() - t0
        self.done_with(writer)
        us = sorted(t * 1e6 for t in times)
        rtt = {f"p{p}_us": round(us[min(len(us) - 1, int(p / 100 * len(us)))], 1) for p in (50, 95, 99)}
        return {"value": n / elapsed, "elapsed": elapsed, "rtt": {**rtt, "min_us": round(us[0], 1)}}


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> None:
    writer.write(message)
    if await reader.readexactly(len(message)) != message:
        raise CaseError(f"echo mismatch for a message of {len(message)} bytes")


async def watched(driver: Driver, command: dict[str, Any]) -> dict[str, Any]:
    """Runs one command, bounded: it fails after `timeout` s, or after `stall` s without progress; then its
    connections are aborted. Failures are answers ({"ok": false, "error": ...}), never an exit."""
    op = command.pop("op")
    timeout, stall = command.pop("timeout", 120.0), command.pop("stall", 15.0)
    progress = Progress(op)
    task = asyncio.ensure_future(getattr(driver, op)(**command, progress=progress))
    loop = asyncio.get_running_loop()
    start = last_change = loop.time()
    last = progress.count
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return {"ok": True, **task.result()}
            now = loop.time()
            if progress.count != last:
                last, last_change = progress.count, now
            elif now - last_change > stall:
                raise CaseError(f"stalled: no progress for {stall:.0f} s after {progress.count}")
            if now - start > timeout:
                raise CaseError(f"timed out after {timeout:.0f} s at {progress.count}")
    except Exception as e:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        driver.abort_all()
        return {"ok": False, "error": f"{type(e).__name__}: {e}" if str(e) else repr(e)}


async def serve(driver: Driver, tunnel: bool) -> None:
    """The command loop, until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["op"] == "hello":
            answer: dict[str, Any] = {"ok": True, "pid": os.getpid(), "tunnel": tunnel}
        elif command["op"] == "prepare":
            answer = driver.prepare(command["sizes"])
        elif command["op"] in ("ping", "download", "upload", "echo", "pingpong"):
            answer = await watched(driver, command)
        else:
            answer = {"ok": False, "error": f"unknown op {command['op']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


async def main() -> None:
    if len(sys.argv) < 2:
        await serve(Driver(asyncio.open_connection), tunnel=False)
        return
    import mitmproxy_wireguard

    config = Path(sys.argv[1]).read_text()
    async with mitmproxy_wireguard.connect(config) as tunnel:  # type: ignore[attr-defined, unused-ignore]
        await serve(Driver(tunnel.open_connection), tunnel=True)


if __name__ == "__main__":
    asyncio.run(main())
