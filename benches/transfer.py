"""The load generator's cases of benches/paths.py: downloads and uploads of a known pattern (the protocol in
servers/_common.py), and the round-trip time a second connection sees meanwhile.

Rates are MB/s (10^6 B/s) of bytes that arrived intact: a download is checked byte for byte as it arrives,
an upload by the server, which answers how many bytes arrived intact. A transfer fails when bytes are
missing, wrong or extra, or when the server closes early. Short transfers (`short`) are timed one by one,
each on a fresh connection. Like every case of the load generator, each is bounded by its command's `timeout`
and fails when it makes no progress for `stall` seconds (loadgen.run_case)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from conns import CaseError, EchoConn, Progress, Sockets, Writer, connect, message

sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
from _common import HEADER_SIZE, TRANSFER_PORT, PatternCheck, pattern_chunks  # noqa: E402

PROBE_SIZE = 64


class Download(asyncio.Protocol):
    """Asks for `total` bytes and checks them as they arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, total: int, progress: Progress):
        self.total = total
        self.progress = progress
        self.check = PatternCheck()
        self.done: asyncio.Future[float] = loop.create_future()  # the time the last byte arrived
        self.loop = loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(b"D" + self.total.to_bytes(HEADER_SIZE - 1, "big"))

    def data_received(self, data: bytes) -> None:
        before = self.check.received
        if not self.check.feed(data):
            self._fail(CaseError(f"wrong byte in the download after {self.check.intact} intact bytes"))
        elif self.check.received > self.total:
            self._fail(CaseError(f"got {self.check.received} bytes, asked for {self.total}"))
        elif self.check.received == self.total and not self.done.done():
            self.done.set_result(time.perf_counter())
        self.progress.count += self.check.received - before

    def eof_received(self) -> bool:
        self._fail(CaseError(f"the server closed the download after {self.check.intact} intact bytes"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or CaseError(f"download lost after {self.check.intact} intact bytes"))

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def probe_rtts(conn: EchoConn, until: asyncio.Future[Any] | None, count: int, interval: float,
                     progress: Progress) -> list[float]:  # fmt: skip
    """Round trips of PROBE_SIZE bytes, `interval` s apart: `count` of them, or until `until` is done (at
    most `count`). Seconds each."""
    rtts: list[float] = []
    msg = message(PROBE_SIZE, 50)
    while len(rtts) < count and (until is None or not until.done()):
        t0 = time.perf_counter()
        await conn.roundtrip(msg)
        rtts.append(time.perf_counter() - t0)
        progress.count += 1
        await asyncio.sleep(interval)
    return rtts


def rtt_summary(rtts: list[float]) -> dict[str, Any]:
    ms = sorted(r * 1000 for r in rtts)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
            "min_ms": ms[0], "max_ms": ms[-1]}  # fmt: skip


async def case_download(host: str, port: int, total: int, progress: Progress, sockets: Sockets, conns: int = 1,
                        probe: bool = False, probe_interval: float = 0.02, idle_probes: int = 20,
                        ) -> dict[str, Any]:  # fmt: skip
    """`conns` connections at once, each downloading `total` bytes: MB/s of all together. With `probe`, a
    second connection to the echo on `port` first measures the round-trip time idle (`idle_probes` round
    trips), then keeps measuring it, `probe_interval` s apart, while the downloads run."""
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = {}
    probe_conn = None
    if probe:
        probe_conn = await connect(host, port, sockets)
        result["rtt_idle"] = rtt_summary(
            await probe_rtts(probe_conn, None, idle_probes, probe_interval, progress)
        )
    t0 = time.perf_counter()
    downloads = []
    for _ in range(conns):
        transport, d = await loop.create_connection(
            lambda: Download(loop, total, progress), host, TRANSFER_PORT
        )
        sockets.transports.add(transport)
        downloads.append(d)
    all_done = asyncio.gather(*(d.done for d in downloads))
    if probe_conn is not None:
        loaded = await probe_rtts(probe_conn, all_done, 1 << 20, probe_interval, progress)
        result["rtt_loaded"] = rtt_summary(loaded)
        probe_conn.close()
    ends = await all_done
    elapsed = max(ends) - t0
    for d in downloads:
        d.transport.close()
    result.update(value=conns * total / elapsed / 1e6, elapsed=elapsed, bytes_intact=conns * total,
                  per_conn_s=[round(e - t0, 3) for e in ends])  # fmt: skip
    return result


class Upload(Writer):
    """Sends the header, then (written by case_upload) `total` bytes; waits for the server's two counts."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.answer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.answer += data
        if len(self.answer) >= 16 and not self.done.done():
            self.done.set_result(time.perf_counter())

    def eof_received(self) -> bool:
        self._fail(CaseError("the server closed the upload before answering"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or CaseError("upload lost before the server answered"))
        super().connection_lost(exc)


async def write_upload(transport: asyncio.Transport, up: Upload, total: int, progress: Progress) -> None:
    """The header and `total` bytes of the pattern, as fast as the connection takes them."""
    transport.write(b"U" + total.to_bytes(HEADER_SIZE - 1, "big"))
    for chunk in pattern_chunks(total):
        if not up.can_write.is_set():
            await up.can_write.wait()
        if up.done.done():
            break
        transport.write(chunk)
        progress.count += len(chunk)


def check_upload(up: Upload, total: int) -> None:
    """Fails unless the server answered that all `total` bytes arrived, intact."""
    intact, received = int.from_bytes(up.answer[:8], "big"), int.from_bytes(up.answer[8:16], "big")
    if intact != total or received != total:
        raise CaseError(f"the server got {received} bytes of {total}, {intact} of them intact")


async def case_upload(
    host: str, port: int, total: int, progress: Progress, sockets: Sockets
) -> dict[str, Any]:
    """One connection uploading `total` bytes: MB/s, until the server's answer that all arrived intact."""
    loop = asyncio.get_running_loop()
    transport, up = await loop.create_connection(lambda: Upload(loop), host, TRANSFER_PORT)
    sockets.transports.add(transport)
    t0 = time.perf_counter()
    await write_upload(transport, up, total, progress)
    end = await up.done
    transport.close()
    check_upload(up, total)
    return {"value": total / (end - t0) / 1e6, "elapsed": end - t0, "bytes_intact": total}


# ---------------------------------------------------------------------------------------------------------
# short transfers, as a browser makes them: each on a fresh connection, timed from the connect


async def timed_transfer(
    host: str, direction: str, total: int, progress: Progress, sockets: Sockets
) -> float:
    """One fresh connection downloading or uploading `total` bytes: seconds from the start of the connect
    (the handshake is part of what a user waits for) to the last byte checked (down) or the server's answer
    that all arrived intact (up). The client closes it right then, and the next transfer does not wait for
    the close to finish."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    if direction == "down":
        transport, d = await loop.create_connection(
            lambda: Download(loop, total, progress), host, TRANSFER_PORT
        )
        sockets.transports.add(transport)
        end = await d.done
    else:
        transport, up = await loop.create_connection(lambda: Upload(loop), host, TRANSFER_PORT)
        sockets.transports.add(transport)
        await write_upload(transport, up, total, progress)
        end = await up.done
        check_upload(up, total)
    transport.close()
    sockets.transports.discard(transport)
    progress.count += 1  # a transfer whose last bytes took long still moves the watchdog on
    return end - t0


async def case_short(host: str, port: int, direction: str, sizes: list[int], repeats: int, at_once: int,
                     progress: Progress, sockets: Sockets) -> dict[str, Any]:  # fmt: skip
    """Short transfers in `direction` ("down": server to client, "up"), each on a fresh connection: `repeats`
    times through `sizes`, one size after the other (a page's mix, not one size in a block: a slow spell of
    the path falls on every size alike). `at_once` 1: one transfer after the other; more: that many
    transfers of the size at once, as a browser's connections to one host, the next batch after the
    slowest. The completion time of each, seconds, per size; `value`: how many there were."""
    if direction not in ("down", "up"):
        raise CaseError(f"unknown direction {direction!r}")
    times: dict[str, list[float]] = {str(size): [] for size in sizes}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for size in sizes:
            batch = [timed_transfer(host, direction, size, progress, sockets) for _ in range(at_once)]
            times[str(size)] += await asyncio.gather(*batch)
    elapsed = time.perf_counter() - t0
    return {"value": sum(map(len, times.values())), "elapsed": elapsed, "times_s": times}


TRANSFER_CASES = {
    "download": (case_download, "bytes downloaded + round trips"),
    "upload": (case_upload, "bytes written"),
    "short": (case_short, "bytes moved + transfers"),
}
