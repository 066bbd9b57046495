"""The sockets inside a client's tunnel: a TCP connection as an asyncio transport (`_Transport`, under asyncio's
own streams) and a UDP endpoint (`DatagramEndpoint`), with the errors they raise. `Tunnel` (client.py) makes them
and feeds them its engine's events."""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
from typing import TYPE_CHECKING, Any

from ._mitmproxy_wireguard import WRITE_HIGH_WATER, WRITE_LOW_WATER

if TYPE_CHECKING:
    from .client import Tunnel

Address = tuple[str, int]

# Datagrams kept for an endpoint that is not read, as a socket's receive buffer keeps them; more are dropped.
DATAGRAM_QUEUE = 1024


class NoHandshake(ConnectionError):
    """No WireGuard handshake with the server completed within 90 s: the connections that waited for one, and
    those open, fail with it; its message names the endpoint."""


class TunnelClosed(ConnectionError):
    """The tunnel was closed (`connect`'s block ended) while a connection or datagram endpoint was open."""


class _Transport(asyncio.Transport):
    """One TCP connection through the tunnel, as an asyncio transport: asyncio's own `StreamReader` and
    `StreamWriter` (or any `asyncio.Protocol`) run on it, with their semantics."""

    def __init__(self, tunnel: Tunnel, id: int, protocol: asyncio.Protocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._tunnel = tunnel
        self._engine = tunnel._engine
        self._id = id
        self._protocol = protocol
        self._closing = False
        self._lost = False
        self._reading = True
        self._eof_written = False
        self._write_paused = False
        # Bytes written and not yet confirmed by the engine (`ConnectionDrained`).
        self._pending = 0

    # The asyncio.Transport interface.

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._call(self._engine.pause_reading)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._call(self._engine.resume_reading)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing:
            return
        self._call(self._engine.write, bytes(data))
        self._pending += len(data)
        if self._pending > WRITE_HIGH_WATER and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def write_eof(self) -> None:
        if not self._closing and not self._eof_written:
            self._eof_written = True
            self._call(self._engine.write_eof)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return max(self._pending, 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (WRITE_LOW_WATER, WRITE_HIGH_WATER)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The engine's marks are fixed (`WRITE_HIGH_WATER`, `WRITE_LOW_WATER`): the call is accepted and has
        no effect."""

    def close(self) -> None:
        """Sends what was written, then FIN; what the other end sends afterwards is not read."""
        if not self._closing:
            self._closing = True
            self._call(self._engine.close_connection)
            self._tunnel._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        """Resets the connection at once, dropping what was not sent yet."""
        if not self._lost:
            self._closing = True
            self._call(self._engine.abort_connection)
            self._tunnel._loop.call_soon(self._connection_lost, None)

    # Events from the engine.

    def _data(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def _eof(self) -> None:
        if not self._closing and not self._protocol.eof_received():
            self.close()

    def _drained(self, nbytes: int) -> None:
        self._pending -= nbytes
        if self._write_paused and self._pending <= WRITE_LOW_WATER:
            self._write_paused = False
            self._protocol.resume_writing()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._tunnel._connections.pop(self._id, None)
        self._protocol.connection_lost(exc)

    def _call(self, method: Any, *args: Any) -> None:
        try:
            method(self._id, *args)
        except RuntimeError:
            pass  # The tunnel is closed; the connection went with it.


class _DatagramQueue:
    """What a datagram endpoint received and was not read yet."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: collections.deque[tuple[bytes, Address]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.loop = loop
        self.dropped = 0

    def put(self, data: bytes, src: Address) -> None:
        if len(self.items) >= DATAGRAM_QUEUE:
            self.dropped += 1
            return
        self.items.append((data, src))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class DatagramEndpoint:
    """A UDP socket inside the tunnel, from `Tunnel.open_datagram`: its own tunnel address and port, and, if it
    was opened with a remote address, that one as its only peer (as a connected UDP socket: `send` goes there,
    and only its datagrams are received)."""

    def __init__(self, tunnel: Tunnel, local: Address, remote: Address | None) -> None:
        self._tunnel = tunnel
        self._local = local
        self._remote = remote
        self._queue = _DatagramQueue(tunnel._loop)
        self._closed = False

    def send(self, data: bytes) -> None:
        """Sends `data` to the remote address the endpoint was opened with."""
        if self._remote is None:
            raise ValueError("invalid remote_addr: the endpoint was opened without one: use sendto")
        self.sendto(data, self._remote)

    def sendto(self, data: bytes, addr: Address) -> None:
        """Sends `data` to `addr`, an IP address and port (of the endpoint's address family). A datagram for
        which the tunnel has no room is dropped, as a full socket buffer drops it."""
        if self._closed:
            raise OSError(errno.EBADF, "the datagram endpoint is closed")
        host, port = addr
        self._tunnel._engine.send_datagram(bytes(data), self._local, (str(ipaddress.ip_address(host)), port))

    async def recv(self) -> bytes:
        """The next datagram's data."""
        return (await self.recvfrom())[0]

    async def recvfrom(self) -> tuple[bytes, Address]:
        """The next datagram and where it came from. Raises `TunnelClosed` once the tunnel is closed, or
        `OSError` if the endpoint is."""
        queue = self._queue
        while not queue.items:
            if self._closed:
                if self._tunnel._closing:
                    raise TunnelClosed("the tunnel is closed")
                raise OSError(errno.EBADF, "the datagram endpoint is closed")
            queue.waiter = self._tunnel._loop.create_future()
            try:
                await queue.waiter
            finally:
                queue.waiter = None
        return queue.items.popleft()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """`sockname` (its tunnel address and port) and `peername` (the remote address, if it has one)."""
        return {"sockname": self._local, "peername": self._remote}.get(name, default)

    @property
    def dropped(self) -> int:
        """Datagrams dropped because they were not read fast enough."""
        return self._queue.dropped

    def close(self) -> None:
        """Closes the endpoint: its port is free again, and `recv` raises."""
        if not self._closed:
            self._closed = True
            self._tunnel._datagrams.pop(self._local[1], None)
            waiter = self._queue.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _receive(self, data: bytes, src: Address) -> None:
        if self._remote is not None and (src[1] != self._remote[1] or not _same_ip(src[0], self._remote[0])):
            return
        self._queue.put(data, src)

    async def __aenter__(self) -> DatagramEndpoint:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()


def _same_ip(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)
