"""TCP flows: each connection of a peer is relayed to its destination, both ways, with half-close and
backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, Callable

from ..stream import TcpStream
from .flows import Flow, reason

CHUNK = 65536
CONNECT_TIMEOUT = 10.0


async def forward_connection(stream: TcpStream, flow: Flow) -> None:
    """Connects to the flow's destination and relays until both ways have ended; a destination that cannot be
    reached resets the client's connection."""
    dst = flow.destination
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(dst[0], dst[1]), timeout=CONNECT_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError) as e:
        flow.outcome = f"unreachable: {reason(e)}"
        stream.abort()
        return
    try:
        flow.outcome = await relay(stream, reader, writer, flow)
    finally:
        writer.close()


async def relay(
    stream: TcpStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flow: Flow
) -> str:
    """Copies both ways until both ways have ended and returns the outcome. The end of one way's data is passed
    on as such (half-close); a reset on one side resets the other."""

    def up(n: int) -> None:
        flow.bytes_up += n

    def down(n: int) -> None:
        flow.bytes_down += n

    upstream = asyncio.ensure_future(_copy(stream, writer, up, "client", "destination"))
    downstream = asyncio.ensure_future(_copy(reader, stream, down, "destination", "client"))
    try:
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        failed = [t for t in (upstream, downstream) if t.done() and t.exception() is not None]
        if failed or not (upstream.done() and downstream.done()):
            upstream.cancel()
            downstream.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            abort(writer)
            stream.abort()
    if failed:
        return str(failed[0].exception())
    return "closed"


class _Broken(Exception):
    """One side of a relayed connection failed."""


async def _copy(src: Any, dst: Any, count: Callable[[int], None], src_name: str, dst_name: str) -> None:
    while True:
        try:
            data = await src.read(CHUNK)
        except OSError as e:
            raise _Broken(f"reset by {src_name}: {reason(e)}") from e
        if not data:
            break
        try:
            dst.write(data)
            count(len(data))
            await dst.drain()
        except OSError as e:
            raise _Broken(f"reset by {dst_name}: {reason(e)}") from e
    if dst.can_write_eof() and not dst.is_closing():
        with contextlib.suppress(OSError):
            dst.write_eof()


def abort(writer: asyncio.StreamWriter) -> None:
    """Ends a connection to a destination with a reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
