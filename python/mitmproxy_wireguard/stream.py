"""TCP connections from WireGuard peers, as asyncio streams.

`_Transport` is an asyncio transport whose socket is a connection in the engine; asyncio's own `StreamReader`
and `StreamWriter` sit on top of it, so reads, writes, flow control and EOF behave exactly as with
`asyncio.open_connection`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ._mitmproxy_wireguard import WRITE_HIGH_WATER, WRITE_LOW_WATER

if TYPE_CHECKING:
    from ._mitmproxy_wireguard import Engine


class _Transport(asyncio.Transport):
    def __init__(
        self,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        id: int,
        extra: dict[str, Any],
        forget: Callable[[int], object],
    ):
        super().__init__(extra)
        self._engine = engine
        self._forget = forget
        self._loop = loop
        self._id = id
        self._protocol: asyncio.BaseProtocol | None = None
        self._closing = False
        self._lost = False
        self._reading = True
        self._eof_written = False
        # Bytes written and not yet confirmed by the engine (`drained`); the engine uses the same high water.
        self._pending = 0
        self._writing_paused = False

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._call_engine(self._engine.close_connection)
        self._loop.call_soon(self.connection_lost, None)

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._call_engine(self._engine.abort_connection)
        self._loop.call_soon(self.connection_lost, None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing:
            return
        self._engine.write(self._id, bytes(data))
        self._pending += len(data)
        if not self._writing_paused and self._pending > WRITE_HIGH_WATER:
            self._writing_paused = True
            self._protocol.pause_writing()  # type: ignore[union-attr]

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._call_engine(self._engine.write_eof)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._pending

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (WRITE_LOW_WATER, WRITE_HIGH_WATER)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._call_engine(self._engine.pause_reading)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._call_engine(self._engine.resume_reading)

    # Events from the engine.

    def data_received(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)  # type: ignore[union-attr]

    def eof_received(self) -> None:
        if not self._closing and not self._protocol.eof_received():  # type: ignore[union-attr]
            self.close()

    def drained(self, nbytes: int) -> None:
        self._pending -= nbytes
        if self._writing_paused and self._pending <= WRITE_LOW_WATER:
            self._writing_paused = False
            self._protocol.resume_writing()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._forget(self._id)
        self._protocol.connection_lost(exc)  # type: ignore[union-attr]

    def _call_engine(self, method: Any) -> None:
        try:
            method(self._id)
        except RuntimeError:
            pass  # The server is closed; the connection is gone with it.


class TcpStream:
    """A TCP connection from a WireGuard peer, with the methods of `asyncio.StreamReader` and
    `asyncio.StreamWriter` and their semantics."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)

    async def readline(self) -> bytes:
        return await self._reader.readline()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        return await self._reader.readuntil(separator)

    def at_eof(self) -> bool:
        return self._reader.at_eof()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writer.write(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._writer.writelines(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        self._writer.write_eof()

    def can_write_eof(self) -> bool:
        return self._writer.can_write_eof()

    def close(self) -> None:
        self._writer.close()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    def __repr__(self) -> str:
        peer = self.get_extra_info("peer_public_key", "?")
        return (
            f"TcpStream(peername={self.get_extra_info('peername')}, "
            f"original_dst={self.get_extra_info('original_dst')}, peer_public_key={peer!r})"
        )
