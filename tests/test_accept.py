"""`start_server(accept_connection=...)` through a real WireGuard client (wireguard-go): the client's SYN waits
for the answer, and the client's connect call sees what the answer says, as from a real destination."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

import pytest

import mitmproxy_wireguard as wg
from helpers import close_writer, needs_client, open_connection

pytestmark = [needs_client, pytest.mark.timeout(60)]

DESTINATIONS = {"ipv4": ("10.0.0.42", "10.0.0.2"), "ipv6": ("fd00::42", "fd00::2")}


async def test_an_accepted_connection_waits_for_the_answer_then_reaches_the_handler(start):
    asked: list[tuple[str, Any, Any]] = []
    release = asyncio.Event()
    handled: list[wg.TcpStream] = []

    async def accept(peer_public_key: str, src: Any, dst: Any) -> bool:
        asked.append((peer_public_key, src, dst))
        if dst[1] == 1235:
            await release.wait()
        return True

    async def echo(stream: wg.TcpStream) -> None:
        handled.append(stream)
        while data := await stream.read(65536):
            stream.write(data)
        stream.close()

    setup = await start(echo, accept_connection=accept)
    reader, writer = await open_connection("10.0.0.42", 1234)
    writer.write(b"first")
    assert await asyncio.wait_for(reader.readexactly(5), 10) == b"first"
    await close_writer(writer)
    peer, src, dst = asked[0]
    assert peer == setup.client.public_key
    assert src[0] == "10.0.0.2" and dst == ("10.0.0.42", 1234)
    assert handled[0].get_extra_info("peername") == src

    # No SYN-ACK while the answer is awaited: the client's connect call waits too (and sends its SYN again).
    pending = asyncio.ensure_future(open_connection("10.0.0.42", 1235))
    await asyncio.sleep(1.5)
    assert not pending.done()
    assert len(asked) == 2 and len(handled) == 1
    release.set()
    reader, writer = await pending
    writer.write(b"second")
    assert await asyncio.wait_for(reader.readexactly(6), 10) == b"second"
    await close_writer(writer)
    assert len(asked) == 2, "asked once per connection, not per SYN"


async def connect_error(host: str, timeout: float = 10) -> tuple[int | None, float]:
    """The errno the client's connect call failed with (None for a timeout), and how long it took."""
    started = time.monotonic()
    try:
        _, writer = await open_connection(host, 1234, timeout)
    except asyncio.TimeoutError:
        return None, time.monotonic() - started
    except OSError as e:
        return e.errno, time.monotonic() - started
    await close_writer(writer)
    raise AssertionError("the connection was accepted")


def answer_with(value: Any) -> Any:
    def accept(peer_public_key: str, src: Any, dst: Any) -> Any:
        return value

    return accept


def raising(peer_public_key: str, src: Any, dst: Any) -> bool:
    raise RuntimeError("the acceptor's bug")


async def awaited_false(peer_public_key: str, src: Any, dst: Any) -> bool:
    await asyncio.sleep(0.1)
    return False


async def awaited_raising(peer_public_key: str, src: Any, dst: Any) -> bool:
    await asyncio.sleep(0.1)
    raise RuntimeError("the acceptor's bug")


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param(answer_with(False), id="false"),
        pytest.param(answer_with(wg.Refusal.RESET), id="reset"),
        pytest.param(awaited_false, id="awaitable"),
        pytest.param(raising, id="exception"),
        pytest.param(awaited_raising, id="awaited-exception"),
        pytest.param(answer_with("yes"), id="not-an-answer"),
    ],
)
async def test_a_refused_connection_is_refused_as_by_a_closed_port(start, accept, caplog):
    handled: list[wg.TcpStream] = []

    async def handle(stream: wg.TcpStream) -> None:
        handled.append(stream)

    await start(handle, accept_connection=accept)
    error, took = await connect_error("10.0.0.42")
    assert error == errno.ECONNREFUSED
    assert took < 5
    assert handled == []
    if "raising" in getattr(accept, "__name__", ""):
        assert any(
            r.levelno == logging.ERROR and "accept_connection failed" in r.getMessage()
            for r in caplog.records
        )


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize(
    "refusal, errnos",
    [
        (wg.Refusal.HOST_UNREACHABLE, {"ipv4": errno.EHOSTUNREACH, "ipv6": errno.EHOSTUNREACH}),
        (wg.Refusal.NETWORK_UNREACHABLE, {"ipv4": errno.ENETUNREACH, "ipv6": errno.ENETUNREACH}),
        # Linux reads "communication administratively prohibited" as EHOSTUNREACH for IPv4, EACCES for IPv6.
        (wg.Refusal.PROHIBITED, {"ipv4": errno.EHOSTUNREACH, "ipv6": errno.EACCES}),
    ],
)
async def test_an_unreachable_answer_is_an_icmp_error_the_client_reports(start, family, refusal, errnos):
    await start(accept_connection=answer_with(refusal))
    error, took = await connect_error(DESTINATIONS[family][0])
    assert error == errnos[family], errno.errorcode.get(error or 0)
    assert took < 5


async def test_a_silent_answer_leaves_the_client_waiting(start):
    asked: list[Any] = []

    def silence(peer_public_key: str, src: Any, dst: Any) -> wg.Refusal:
        asked.append(dst)
        return wg.Refusal.SILENCE

    await start(accept_connection=silence)
    error, took = await connect_error("10.0.0.42", timeout=4)
    assert error is None and took >= 4
    assert len(asked) == 1, "the SYN's retransmissions are swallowed, not asked about again"
