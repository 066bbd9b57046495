"""What the server scripts share: their configuration file, the ready line, raised file limits, a stop on
SIGTERM/SIGINT, and the download/upload protocol of benches/paths.py. Each server runs in its own process so
that the runner can read its CPU time and RSS from /proc; the echo itself is the same asyncio stream loop in
all of them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import resource
import signal
import sys
from typing import Any, Awaitable, Callable, Iterator


def config() -> dict[str, Any]:
    with open(sys.argv[1]) as f:
        return json.load(f)


def raise_file_limit(wanted: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def ready(**info: Any) -> None:
    """Tells the runner that the server listens, and its pid (the one to read /proc of)."""
    print(json.dumps({"pid": os.getpid(), **info}), flush=True)


async def echo_stream(reader: Any, writer: Any = None, wait_closed: bool = False) -> None:
    """The echo of every server. `reader`/`writer` have asyncio's stream methods (a tunnel server's stream has
    both: pass it alone); with `wait_closed`, the echo also waits until the connection has closed, where the
    stream can tell."""
    writer = reader if writer is None else writer
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:  # ConnectionError, and mitmproxy_rs's plain OSError for a closed connection
        pass
    finally:
        writer.close()
    if wait_closed:
        try:
            await writer.wait_closed()
        except OSError:
            pass


def tunnel_handler(port_key: str, wait_closed: bool = False) -> Callable[[Any], Awaitable[None]]:
    """A tunnel server's TCP handler: downloads and uploads for TRANSFER_PORT, the echo for any other port.
    `port_key` is the extra-info key whose port is the one the client connected to."""

    async def handle(stream: Any) -> None:
        if stream.get_extra_info(port_key)[1] == TRANSFER_PORT:
            return await serve_transfer(stream, stream)
        await echo_stream(stream, wait_closed=wait_closed)

    return handle


async def serve_until_stopped(server: Any, version: str) -> None:
    """Tells the runner that the tunnel server listens, then closes it on SIGTERM/SIGINT."""
    ready(sockname=list(server.getsockname()), version=version)
    await wait_for_stop()
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Runs a server script's `main` with warnings logged and the file limit raised."""
    logging.basicConfig(level=logging.WARNING)
    raise_file_limit()
    asyncio.run(main())


async def wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# ---------------------------------------------------------------------------------------------------------
# downloads and uploads (benches/paths.py): the same protocol on TRANSFER_PORT in every server
#
# The client sends a 9-byte header: b"D" or b"U" and a byte count N (8 bytes, big-endian).
# D (download, server to client): the server writes N bytes of the pattern; the client checks them.
# U (upload, client to server): the client writes N bytes of the pattern; the server checks them and answers
#   with two 8-byte counts: the bytes that arrived intact (in order, up to the first wrong byte), and all
#   bytes that arrived.
# Either way the server then waits for the client to close first, so that closing loses nothing.

TRANSFER_PORT = 9
HEADER_SIZE = 9
PATTERN = random.Random(7).randbytes(1 << 18)  # repeated: a transfer's byte i is PATTERN[i % len(PATTERN)]
CHUNK = 1 << 16


class PatternCheck:
    """Checks a byte stream against the repeated pattern: `intact` bytes so far, until the first wrong one."""

    def __init__(self) -> None:
        self.received = 0
        self.intact = 0
        self.ok = True
        self._twice = PATTERN + PATTERN

    def feed(self, data: bytes) -> bool:
        size, i, m = len(PATTERN), 0, len(data)
        if self.ok:
            offset = self.received % size
            while i < m:
                k = min(m - i, size)
                if data[i : i + k] != self._twice[offset : offset + k]:
                    self.ok = False
                    break
                offset = (offset + k) % size
                i += k
            self.intact += i
        self.received += m
        return self.ok


def pattern_chunks(total: int) -> Iterator[bytes]:
    """The first `total` bytes of the repeated pattern, in chunks of at most CHUNK bytes."""
    sent, size = 0, len(PATTERN)
    while sent < total:
        offset = sent % size
        k = min(CHUNK, size - offset, total - sent)
        yield PATTERN[offset : offset + k]
        sent += k


async def serve_transfer(reader: Any, writer: Any) -> None:
    """One download or upload (see above); `reader`/`writer` have asyncio's stream methods (the tunnel
    servers' streams have both: pass the stream twice)."""
    try:
        header = b""
        while len(header) < HEADER_SIZE and (data := await reader.read(HEADER_SIZE - len(header))):
            header += data
        if len(header) < HEADER_SIZE or header[:1] not in (b"D", b"U"):
            return
        total = int.from_bytes(header[1:], "big")
        if header[:1] == b"D":
            for chunk in pattern_chunks(total):
                writer.write(chunk)
                await writer.drain()
        else:
            check = PatternCheck()
            while check.received < total and (data := await reader.read(CHUNK)):
                check.feed(data)
            writer.write(check.intact.to_bytes(8, "big") + check.received.to_bytes(8, "big"))
            await writer.drain()
        while await reader.read(CHUNK):  # until the client closes
            pass
    except OSError:  # ConnectionError, and mitmproxy_rs's plain OSError for a closed connection
        pass
    finally:
        writer.close()
