"""TCP flows: each connection of a peer is relayed to its destination, both ways, with half-close and
backpressure. A connection with no data either way for `Limits.tcp_idle_timeout` is reset on both sides, and the
connection to the destination has TCP keepalive on, so that a destination that vanished frees the flow."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from typing import Any, Callable

from ..server import Address, Refusal
from ..stream import TcpStream
from .flows import Flow, reason, unreachable
from .limits import Limits
from .upstream import UpstreamError, UpstreamLost
from .wireguard import AnyUpstream

CHUNK = 65536
# Keepalive on the connection to the destination: the first probe after a minute without traffic, then one
# every 10 s; after 6 unanswered (or data unacknowledged for as long) the connection has failed.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 6


Dialed = tuple[asyncio.StreamReader, asyncio.StreamWriter]

# How the client's SYN is answered when the destination could not be reached, by the errno of the failed connect:
# as the destination (or a router on the way) answered the proxy.
_REFUSALS = {
    errno.ECONNREFUSED: Refusal.RESET,
    errno.ETIMEDOUT: Refusal.SILENCE,
    errno.ENETUNREACH: Refusal.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Refusal.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Refusal.HOST_UNREACHABLE,
    errno.EACCES: Refusal.PROHIBITED,
    errno.EPERM: Refusal.PROHIBITED,
}


async def dial(dst: Address, limits: Limits, upstream: AnyUpstream | None = None) -> Dialed:
    """Connects to `dst`, through `upstream` if given, within `limits.connect_timeout`. Raises `UpstreamError`,
    `OSError` or `TimeoutError`."""
    if upstream is not None:
        return await upstream.open_connection(dst[0], dst[1], limits.connect_timeout)
    return await asyncio.wait_for(asyncio.open_connection(dst[0], dst[1]), timeout=limits.connect_timeout)


def refusal(e: BaseException) -> Refusal:
    """What the client gets for its SYN when `dial` failed with `e`: a RST for a refusal, an ICMP
    destination-unreachable for no route, silence for a timeout. An upstream's failure is a RST: the client
    cannot be told more of it."""
    if isinstance(e, UpstreamError):
        return Refusal.RESET
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)) and not getattr(e, "errno", None):
        return Refusal.SILENCE
    if isinstance(e, OSError) and e.errno in _REFUSALS:
        return _REFUSALS[e.errno]
    return Refusal.RESET


def failure(e: BaseException) -> str:
    """A flow's outcome when `dial` failed with `e`."""
    return str(e) if isinstance(e, UpstreamError) else unreachable(e)


async def forward_connection(
    stream: TcpStream,
    flow: Flow,
    limits: Limits,
    upstream: AnyUpstream | None = None,
    target: Address | None = None,
    dialed: Dialed | None = None,
) -> None:
    """Connects to `target` (by default the flow's destination), through `upstream` if given, unless `dialed`
    is that connection already, and relays until both ways have ended; a destination that cannot be reached in
    `limits.connect_timeout`, or an upstream that fails, resets the client's connection."""
    if dialed is None:
        try:
            dialed = await dial(target or flow.destination, limits, upstream)
        except (UpstreamError, OSError, asyncio.TimeoutError) as e:
            flow.outcome = failure(e)
            stream.abort()
            return
    reader, writer = dialed
    try:
        keep_alive(writer.get_extra_info("socket"))
        flow.outcome = await relay(stream, reader, writer, flow, limits.tcp_idle_timeout)
    finally:
        writer.close()


def keep_alive(sock: Any) -> None:
    """Turns TCP keepalive on for `sock`, with the timings above where the system lets them be set."""
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        # Linux: unacknowledged data (and keepalive probes) fail the connection after this many milliseconds.
        ("TCP_USER_TIMEOUT", (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT) * 1000),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


async def relay(
    stream: TcpStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    flow: Flow,
    idle_timeout: float = 3600.0,
) -> str:
    """Copies both ways until both ways have ended and returns the outcome. The end of one way's data is passed
    on as such (half-close); a reset on one side resets the other, and so does `idle_timeout` seconds without
    data either way."""
    last = time.monotonic()

    def up(n: int) -> None:
        nonlocal last
        flow.bytes_up += n
        last = time.monotonic()

    def down(n: int) -> None:
        nonlocal last
        flow.bytes_down += n
        last = time.monotonic()

    upstream = asyncio.ensure_future(_copy(stream, writer, up, "client", "destination"))
    downstream = asyncio.ensure_future(_copy(reader, stream, down, "destination", "client"))
    idle = False
    try:
        while not idle:
            remaining = last + idle_timeout - time.monotonic()
            done, pending = await asyncio.wait(
                {upstream, downstream}, timeout=max(remaining, 0), return_when=asyncio.FIRST_EXCEPTION
            )
            if not pending or any(t.exception() is not None for t in done):
                break
            idle = time.monotonic() - last >= idle_timeout
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
    if idle:
        return f"idle for {idle_timeout:g} s"
    return "closed"


class _Broken(Exception):
    """One side of a relayed connection failed."""


async def _copy(src: Any, dst: Any, count: Callable[[int], None], src_name: str, dst_name: str) -> None:
    while True:
        try:
            data = await src.read(CHUNK)
        except UpstreamLost as e:
            raise _Broken(str(e)) from e
        except OSError as e:
            raise _Broken(f"reset by {src_name}: {reason(e)}") from e
        if not data:
            break
        try:
            dst.write(data)
            count(len(data))
            await dst.drain()
        except UpstreamLost as e:
            raise _Broken(str(e)) from e
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
