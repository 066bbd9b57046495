"""TCP connections from WireGuard peers, as asyncio streams.

Reading is asyncio's own `StreamReader`, fed by the engine's events, so reads behave exactly as with
`asyncio.open_connection`. Writing follows `asyncio.StreamWriter`: `write` hands data to the engine at once,
`drain` waits while more than `WRITE_HIGH_WATER` bytes are not yet taken in by the TCP stack.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ._mitmproxy_wireguard import WRITE_HIGH_WATER, WRITE_LOW_WATER

if TYPE_CHECKING:
    from ._mitmproxy_wireguard import Engine


class _Connection:
    """The engine's side of one connection: what `StreamReader` needs of a transport, and the engine's events."""

    __slots__ = (
        "engine",
        "id",
        "reader",
        "extra",
        "closing",
        "lost",
        "reading",
        "eof_written",
        "pending",
        "drain_waiter",
        "closed",
        "forget",
        "loop",
    )

    def __init__(
        self,
        engine: Engine,
        id: int,
        reader: asyncio.StreamReader,
        extra: dict[str, Any],
        forget: Callable[[int], object],
        loop: asyncio.AbstractEventLoop,
    ):
        self.engine = engine
        self.id = id
        self.reader = reader
        self.extra = extra
        self.forget = forget
        self.closing = False
        self.lost = False
        self.reading = True
        self.eof_written = False
        # Bytes written and not yet confirmed by the engine (`drained`); the engine uses the same marks.
        self.pending = 0
        self.drain_waiter: asyncio.Future[None] | None = None
        self.loop = loop
        self.closed: asyncio.Future[None] = self.loop.create_future()
        reader.set_transport(self)  # type: ignore[arg-type]

    # Called by StreamReader: its buffer is full or has room again.

    def pause_reading(self) -> None:
        if self.reading and not self.closing:
            self.reading = False
            self.call_engine(self.engine.pause_reading)

    def resume_reading(self) -> None:
        if not self.reading and not self.closing:
            self.reading = True
            self.call_engine(self.engine.resume_reading)

    # Events from the engine.

    def data_received(self, data: bytes) -> None:
        if not self.closing:
            self.reader.feed_data(data)

    def eof_received(self) -> None:
        if not self.closing:
            self.reader.feed_eof()

    def drained(self, nbytes: int) -> None:
        self.pending -= nbytes
        if self.pending <= WRITE_LOW_WATER:
            self.wake_drain(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.closing = True
        self.forget(self.id)
        if exc is None:
            self.reader.feed_eof()
            self.closed.set_result(None)
        else:
            self.reader.set_exception(exc)
            self.closed.set_exception(exc)
            # Raised to whoever awaits `wait_closed`; nobody has to.
            self.closed.exception()
        self.wake_drain(exc)

    # Used by TcpStream.

    def close(self) -> None:
        """Sends what was written, then FIN; the connection is not reset while data is left to send."""
        if not self.closing:
            self.closing = True
            self.call_engine(self.engine.close_connection)
            self.loop.call_soon(self.connection_lost, None)

    def abort(self) -> None:
        if not self.lost:
            self.closing = True
            self.call_engine(self.engine.abort_connection)
            self.loop.call_soon(self.connection_lost, None)

    def wake_drain(self, exc: Exception | None) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)
            waiter.exception()  # raised to the drain() callers; none may be left

    def call_engine(self, method: Callable[[int], None]) -> None:
        try:
            method(self.id)
        except RuntimeError:
            pass  # The server is closed; the connection is gone with it.


class TcpStream:
    """A TCP connection from a WireGuard peer, with the methods of `asyncio.StreamReader` and
    `asyncio.StreamWriter` and their semantics.

    ```python
    async def handle_connection(stream: TcpStream) -> None:
        print("connection to", stream.get_extra_info("original_dst"))
        while data := await stream.read(65536):
            stream.write(data.upper())
            await stream.drain()  # backpressure: waits while the client is slow
        stream.close()  # sends what is left, then FIN
    ```
    """

    __slots__ = ("_reader", "_conn", "__weakref__")

    def __init__(self, reader: asyncio.StreamReader, conn: _Connection):
        self._reader = reader
        self._conn = conn

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all until EOF if `n` is -1); b"" at EOF."""
        return await self._reader.read(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; `asyncio.IncompleteReadError` if EOF comes first."""
        return await self._reader.readexactly(n)

    async def readline(self) -> bytes:
        """One line, with its b"\\n"; what is left at EOF."""
        return await self._reader.readline()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Data up to and including `separator`; `asyncio.IncompleteReadError` at EOF without it."""
        return await self._reader.readuntil(separator)

    def at_eof(self) -> bool:
        """Whether the client sent FIN and everything before it has been read."""
        return self._reader.at_eof()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queues `data` for the client; `drain()` waits while much is queued."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        conn = self._conn
        if conn.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or conn.closing:
            return
        conn.engine.write(conn.id, data if type(data) is bytes else bytes(data))
        conn.pending += len(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Writes each item of `data`."""
        self.write(b"".join(data))

    async def drain(self) -> None:
        """Waits until the queued data is small again (the client's window opened); raises if the connection
        was lost."""
        conn = self._conn
        exc = self._reader.exception()
        if exc is not None:
            raise exc
        if conn.closing:
            # As asyncio does: let a pending connection_lost run, then report the connection as lost.
            await asyncio.sleep(0)
            if conn.lost:
                raise ConnectionResetError("Connection lost")
        if conn.pending <= WRITE_HIGH_WATER:
            return
        if conn.drain_waiter is None:
            conn.drain_waiter = conn.loop.create_future()
        await asyncio.shield(conn.drain_waiter)

    def write_eof(self) -> None:
        """Sends FIN after the queued data: a half-close, the client may still send."""
        conn = self._conn
        if not conn.closing and not conn.eof_written:
            conn.eof_written = True
            conn.call_engine(conn.engine.write_eof)

    def can_write_eof(self) -> bool:
        """Always True: TCP can half-close."""
        return True

    def close(self) -> None:
        """Closes the connection in order, as asyncio's `StreamWriter.close()`: what was written is still sent,
        then FIN; the connection is not reset while data is left to send. What the client sends afterwards is not
        read (reads see EOF). `abort()` ends the connection at once with a reset instead."""
        self._conn.close()

    def abort(self) -> None:
        """Ends the connection at once with a reset, dropping data not yet sent (asyncio's
        `transport.abort()`): for a proxy whose destination refused, say."""
        self._conn.abort()

    def is_closing(self) -> bool:
        """Whether `close()` or `abort()` was called or the connection was lost."""
        return self._conn.closing

    async def wait_closed(self) -> None:
        """Waits until the connection is closed; raises `ConnectionResetError` if the client reset it."""
        await self._conn.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """`peername` (the client's tunnel address), `sockname` and `original_dst` (the destination it asked
        for), `original_src` (its outer UDP endpoint) and `peer_public_key` (which WireGuard peer)."""
        return self._conn.extra.get(name, default)

    def __repr__(self) -> str:
        return (
            f"TcpStream(peername={self.get_extra_info('peername')}, "
            f"original_dst={self.get_extra_info('original_dst')}, "
            f"peer_public_key={self.get_extra_info('peer_public_key')!r})"
        )
