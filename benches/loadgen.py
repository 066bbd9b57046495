"""The load generator. It runs in the client namespace, so every connection it opens goes through the
wireguard-go client, and executes the runner's cases one at a time: one JSON command per line on stdin, one
JSON result per line on stdout.

It is plain asyncio on low-level protocols (no streams): a few microseconds of Python per message, far below
what a round trip through two WireGuard implementations costs. Every echo is checked byte for byte: a server
that loses or garbles data fails the case instead of looking fast. Every case is bounded: it fails when it
makes no progress for `stall` seconds or runs longer than `timeout` seconds, and then aborts its sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import resource
import socket
import sys
import time
from typing import Any, Awaitable, Callable

from conns import CaseError, EchoConn, Progress, Sockets, Writer, connect, message
from transfer import TRANSFER_CASES

# ---------------------------------------------------------------------------------------------------------
# cases: each returns a dict with at least "value" (the figure of merit) and "elapsed" (seconds measured)


async def case_ping(host: str, port: int, progress: Progress, sockets: Sockets) -> dict[str, Any]:
    """A few round trips: that the server answers (and the WireGuard handshake is done)."""
    conn = await connect(host, port, sockets)
    t0 = time.perf_counter()
    for i in range(10):
        await conn.roundtrip(message(100, i))
        progress.count += 1
    elapsed = time.perf_counter() - t0
    conn.close()
    await conn.lost
    udp = await case_udp(host, port, 10, 100, progress, sockets, Stop())
    return {"value": 10 / elapsed, "elapsed": elapsed, "udp_lost": udp["lost"]}


class Stop:
    """Set by the watchdog when a case running in a thread must give up."""

    def __init__(self) -> None:
        self.flag = False


def blocking_connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def blocking_roundtrip(sock: socket.socket, msg: bytes, buf: bytearray) -> None:
    sock.sendall(msg)
    n = len(msg)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:n])
        if not k:
            raise CaseError("the server closed the connection")
        got += k
    if view[:n] != msg:
        raise CaseError(f"echo mismatch: sent {n} bytes, got back {bytes(view[:32])!r}...")


async def case_pingpong(host: str, port: int, n: int, size: int, progress: Progress, sockets: Sockets,
                        stop: Stop) -> dict[str, Any]:  # fmt: skip
    """`n` sequential round trips of `size` bytes on one connection: round trips per second.

    A strictly sequential exchange gains nothing from an event loop, and a blocking socket costs the client a
    fifth of the CPU per round trip (see README): it runs in a thread, bounded by socket timeouts."""

    def run() -> dict[str, Any]:
        sock = blocking_connect(host, port, timeout=10)
        try:
            msgs = [message(size, 1), message(size, 2)]
            buf = bytearray(size)
            blocking_roundtrip(sock, msgs[0], buf)  # connection and handler are up before the clock starts
            t0 = time.perf_counter()
            for i in range(n):
                blocking_roundtrip(sock, msgs[i & 1], buf)
                progress.count += 1
                if stop.flag:
                    raise CaseError("stopped")
            elapsed = time.perf_counter() - t0
        finally:
            sock.close()
        return {"value": n / elapsed, "elapsed": elapsed, "round_trips": n}

    return await asyncio.to_thread(run)


class BulkConn(Writer):
    """Writes `total` bytes of a repeating pseudo-random pattern and checks the echo as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, block: bytes, total: int, progress: Progress):
        super().__init__(loop)
        self.block = block
        self.pattern = block + block
        self.total = total
        self.progress = progress
        self.received = 0
        self.closing = False

    def data_received(self, data: bytes) -> None:
        size = len(self.block)
        offset, i, m = self.received % size, 0, len(data)
        while i < m:
            k = min(m - i, size)
            piece = data[i : i + k] if (i or k < m) else data
            if piece != self.pattern[offset : offset + k]:
                self._fail(CaseError(f"echo mismatch at byte {self.received + i}"))
                return
            offset = (offset + k) % size
            i += k
        self.received += m
        self.progress.count = self.received
        if self.received >= self.total and not self.done.done():
            if self.received > self.total:
                self._fail(CaseError(f"got {self.received} bytes back, sent {self.total}"))
            else:
                self.done.set_result(None)

    def eof_received(self) -> bool:
        self._fail(CaseError(f"the server closed the connection after echoing {self.received} bytes"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self._fail(exc or CaseError(f"connection lost after {self.received} bytes echoed"))
        super().connection_lost(exc)


async def case_bulk(
    host: str, port: int, total: int, chunk: int, progress: Progress, sockets: Sockets
) -> dict[str, Any]:
    """`total` bytes sent and echoed back on one connection, both directions at once: MB/s (10^6 B/s) of the
    echo, i.e. of each direction."""
    loop = asyncio.get_running_loop()
    block = message(256 * 1024, 3)
    transport, conn = await loop.create_connection(lambda: BulkConn(loop, block, total, progress), host, port)
    sockets.transports.add(transport)
    view = memoryview(block)
    size = len(block)
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        if not conn.can_write.is_set():
            await conn.can_write.wait()
        if conn.done.done():
            break
        offset = sent % size
        k = min(chunk, size - offset, total - sent)
        transport.write(view[offset : offset + k])
        sent += k
    await conn.done
    elapsed = time.perf_counter() - t0
    conn.closing = True
    transport.close()
    return {"value": total / elapsed / 1e6, "elapsed": elapsed, "bytes_each_way": total}


async def case_concurrent(host: str, port: int, conns: int, rts: int, size: int, progress: Progress,
                          sockets: Sockets) -> dict[str, Any]:  # fmt: skip
    """`conns` connections opened at once; then each does `rts` round trips of `size` bytes, all at the same
    time: round trips per second of that second phase (the opening is timed apart, `connect_s`)."""
    t0 = time.perf_counter()

    async def open_one() -> EchoConn:
        conn = await connect(host, port, sockets)
        progress.count += 1
        return conn

    opened = await asyncio.gather(*(open_one() for _ in range(conns)))
    t1 = time.perf_counter()
    msgs = [message(size, 10 + i) for i in range(4)]

    async def work(conn: EchoConn, j: int) -> None:
        for i in range(rts):
            await conn.roundtrip(msgs[(i + j) & 3])
            progress.count += 1

    await asyncio.gather(*(work(c, j) for j, c in enumerate(opened)))
    t2 = time.perf_counter()
    for c in opened:
        c.close()
    await asyncio.gather(*(c.lost for c in opened))
    return {
        "value": conns * rts / (t2 - t1),
        "elapsed": t2 - t1,
        "connect_s": t1 - t0,
        "round_trips": conns * rts,
    }


async def case_connrate(host: str, port: int, total: int, parallel: int, size: int, progress: Progress,
                        sockets: Sockets) -> dict[str, Any]:  # fmt: skip
    """`total` connections, `parallel` at a time, each: connect, one round trip of `size` bytes, close.
    Connections per second."""
    msg = message(size, 20)
    started = 0

    async def worker() -> None:
        nonlocal started
        while started < total:
            started += 1
            conn = await connect(host, port, sockets)
            await conn.roundtrip(msg)
            conn.close()
            await conn.lost
            assert conn.transport is not None
            sockets.transports.discard(conn.transport)
            progress.count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.perf_counter() - t0
    return {"value": total / elapsed, "elapsed": elapsed, "connections": total}


async def case_udp(host: str, port: int, n: int, size: int, progress: Progress, sockets: Sockets, stop: Stop,
                   resend_after: float = 0.25, max_tries: int = 20) -> dict[str, Any]:  # fmt: skip
    """`n` sequential UDP round trips of `size` bytes (a sequence number in the first 8): round trips per
    second. A datagram without answer after `resend_after` s is sent again and counted as lost. Blocking
    socket in a thread, as for the TCP ping-pong."""

    def run() -> dict[str, Any]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.connect((host, port))
            sock.settimeout(resend_after)
            payload = message(size, 30)
            lost = stale = 0
            t0 = time.perf_counter()
            for i in range(n):
                seq = i.to_bytes(8, "big")
                msg = seq + payload[8:]
                for _ in range(max_tries):
                    if stop.flag:
                        raise CaseError("stopped")
                    sock.send(msg)
                    try:
                        while (reply := sock.recv(65536))[:8] != seq:
                            stale += 1
                        break
                    except TimeoutError:
                        lost += 1
                else:
                    raise CaseError(f"UDP datagram {i} unanswered {max_tries} times")
                if reply != msg:
                    raise CaseError(f"UDP echo mismatch in datagram {i}")
                progress.count += 1
            elapsed = time.perf_counter() - t0
        finally:
            sock.close()
        return {"value": n / elapsed, "elapsed": elapsed, "round_trips": n, "lost": lost, "stale": stale}

    return await asyncio.to_thread(run)


class Idle:
    """Connections held open across commands (open_idle ... close_idle)."""

    conns: list[EchoConn] = []
    sockets = Sockets()


async def case_open_idle(host: str, port: int, n: int, parallel: int, size: int, progress: Progress,
                         sockets: Sockets) -> dict[str, Any]:  # fmt: skip
    """Opens `n` connections, `parallel` at a time, each doing one round trip of `size` bytes, and keeps them
    open (idle) until close_idle."""
    msg = message(size, 40)
    started = 0

    async def worker() -> None:
        nonlocal started
        while started < n:
            started += 1
            conn = await connect(host, port, sockets)
            await conn.roundtrip(msg)
            Idle.conns.append(conn)
            progress.count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.perf_counter() - t0
    Idle.sockets.transports |= sockets.transports
    sockets.transports.clear()
    return {"value": n / elapsed, "elapsed": elapsed, "open": len(Idle.conns)}


async def case_close_idle(progress: Progress, sockets: Sockets, check: int = 0) -> dict[str, Any]:
    """Closes the idle connections: reports how many the server had closed meanwhile, then shuts down the
    client's side of each and waits (10 s at most) for the server to close its side too, so that no teardown
    work spills into the next case. With `check`, first does one round trip on every `check`-th connection,
    to see that they still work."""
    conns, Idle.conns = Idle.conns, []
    gone = sum(c.peer_gone for c in conns)
    checked = failed = 0
    if check:
        msg = message(100, 41)
        for c in conns[::check]:
            if c.peer_gone:
                continue
            checked += 1
            try:
                await asyncio.wait_for(c.roundtrip(msg), 10)
            except (CaseError, ConnectionError, asyncio.TimeoutError):
                failed += 1
            progress.count += 1
    for c in conns:
        c.closing = True
        if c.transport is not None and not c.transport.is_closing():
            c.transport.write_eof()
    pending: set[asyncio.Future[None]] = set()
    if conns:
        _, pending = await asyncio.wait([c.lost for c in conns], timeout=10)
    Idle.sockets.abort_all()
    return {"value": len(conns), "elapsed": 0.0, "closed_by_server": gone, "checked": checked,
            "check_failed": failed, "not_closed_by_server_in_10s": len(pending)}  # fmt: skip


CASES: dict[str, tuple[Callable[..., Awaitable[dict[str, Any]]], str]] = {
    "ping": (case_ping, "round trips"),
    "pingpong": (case_pingpong, "round trips"),
    "bulk": (case_bulk, "bytes echoed"),
    "concurrent": (case_concurrent, "connections opened + round trips"),
    "connrate": (case_connrate, "connections"),
    "udp": (case_udp, "round trips"),
    "open_idle": (case_open_idle, "connections opened"),
    "close_idle": (case_close_idle, "connections checked"),
    **TRANSFER_CASES,
}


async def run_case(command: dict[str, Any]) -> dict[str, Any]:
    op = command.pop("op")
    timeout = command.pop("timeout", 120.0)
    stall = command.pop("stall", 15.0)
    func, unit = CASES[op]
    progress = Progress(unit)
    sockets = Sockets()
    stop = Stop()
    if "stop" in inspect.signature(func).parameters:
        command["stop"] = stop
    task = asyncio.ensure_future(func(**command, progress=progress, sockets=sockets))
    loop = asyncio.get_running_loop()
    start = last_change = loop.time()
    last = progress.count
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                result = task.result()
                result["ok"] = True
                return result
            now = loop.time()
            if progress.count != last:
                last, last_change = progress.count, now
            elif now - last_change > stall:
                raise CaseError(f"stalled: no progress for {stall:.0f} s after {progress.count} {unit}")
            if now - start > timeout:
                raise CaseError(f"timed out after {timeout:.0f} s at {progress.count} {unit}")
    except Exception as e:
        stop.flag = True
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        sockets.abort_all()
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {e}" if str(e) else repr(e),
            "progress": progress.count,
        }


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["op"] == "hello":
            result: dict[str, Any] = {"ok": True, "pid": os.getpid()}
        else:
            result = await run_case(command)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
