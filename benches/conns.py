"""What the load generator's cases share: the progress a case reports to its watchdog, the sockets it
aborts when the case fails, and a TCP connection that sends a message and waits for its echo."""

from __future__ import annotations

import asyncio
import random
from typing import Any


class CaseError(Exception):
    pass


class Progress:
    def __init__(self, unit: str):
        self.count = 0
        self.unit = unit


class Sockets:
    """The transports a case opened: all aborted when the case ends badly."""

    def __init__(self) -> None:
        self.transports: set[asyncio.BaseTransport] = set()

    def abort_all(self) -> None:
        for t in self.transports:
            abort = getattr(t, "abort", None)
            (abort or t.close)()
        self.transports.clear()


class Writer(asyncio.Protocol):
    """A connection that writes a lot: `can_write` is clear while the transport's buffer (1 MiB) is full, and
    set again when it drains or the connection is lost. `done` ends with the first failure."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.done: asyncio.Future[Any] = loop.create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=1 << 20)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class EchoConn(asyncio.Protocol):
    """A TCP connection that sends a message and waits for its echo."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.closing = False  # we closed it
        self.peer_gone = False  # the server closed or reset it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is not None and len(self.buf) >= self.want and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        if not self.closing:
            self.peer_gone = True
            self._fail(CaseError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.peer_gone = True
            self._fail(exc or CaseError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    async def roundtrip(self, msg: bytes) -> None:
        n = len(msg)
        assert self.transport is not None
        if self.peer_gone:
            raise CaseError("the server closed the connection")
        self.transport.write(msg)
        if len(self.buf) < n:
            self.want = n
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.buf[:n] != msg:
            raise CaseError(f"echo mismatch: sent {n} bytes, got back {bytes(self.buf[:n])[:32]!r}...")
        del self.buf[:n]

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int, sockets: Sockets) -> EchoConn:
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(lambda: EchoConn(loop), host, port)
    sockets.transports.add(transport)
    return conn


def message(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)
