"""Handshakes under attack, through real clients: a flood of handshake initiations from unknown keys gets cookie
replies instead of a Diffie-Hellman each, one initiation with a valid MAC2 replayed gets no more than its source's
share, connected peers keep their pace, and a known peer still completes a new handshake."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import mitmproxy_wireguard as wg
from flood import hchacha20
from helpers import close_writer, echo, needs_client, open_connection, round_trip_rate, start_client

pytestmark = [needs_client, pytest.mark.timeout(120)]

FLOOD_RATE = int(os.environ.get("FLOOD_RATE", 20_000))
FLOOD_SECONDS = 8
REPLAY_SECONDS = 12


async def second_peer_joins(setup: Any) -> float:
    """A known peer that starts now: the seconds until its handshake completed and its connection echoed."""
    started = time.monotonic()
    second = await start_client(
        setup.server,
        setup.cfg.server_public_key,
        setup.cfg.client_private_keys[1],
        addresses=tuple(setup.cfg.peers[1]["allowed_ips"]),
        routes=("10.0.1.0/24",),
    )
    try:
        r2, w2 = await open_connection("10.0.1.42", 7, timeout=10)
        w2.write(b"second peer")
        assert await asyncio.wait_for(r2.readexactly(11), 10) == b"second peer"
        handshake_time = time.monotonic() - started
        await close_writer(w2)
    finally:
        second.stop()
    return handshake_time


async def flood_rate_here(seconds: float = 2) -> float:
    """The control for a flood's rate: what the flood process reaches on this machine now, sending to a socket
    that nobody reads. A flood against the server must come near it; a fixed figure failed on a loaded machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("flood.py")),
            "127.0.0.1",
            str(sink.getsockname()[1]),
            wg.pubkey(wg.genkey()),
            str(FLOOD_RATE),
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(flood.communicate(), seconds + 60)
    result = json.loads(out)
    return float(result["sent"] / result["seconds"])


def assert_flood_rate(rate: float, control: float, what: str) -> None:
    """The flood ran at the rate asked for, or as near it as this machine's control reached."""
    target = min(FLOOD_RATE, control)
    assert rate > target * 0.8, f"the {what} reached only {rate:.0f} initiations/s, the control {control:.0f}"


async def test_a_handshake_flood_gets_cookies_and_peers_keep_their_pace(start):
    setup = await start(peers=2)
    host, port = setup.server.getsockname()
    reader, writer = await open_connection("10.0.0.42", 7)
    try:
        alone = await round_trip_rate(reader, writer, 0.5, windows=4)

        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("flood.py")),
            host,
            str(port),
            setup.cfg.server_public_key,
            str(FLOOD_RATE),
            str(FLOOD_SECONDS),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            await asyncio.sleep(1.5)  # building the initiations, then the flood is on
            during = await round_trip_rate(reader, writer, 0.5, windows=4)

            # A known peer that starts now completes its handshake (with a cookie, as the server is under load).
            handshake_time = await second_peer_joins(setup)
            flood_out, _ = await asyncio.wait_for(flood.communicate(), FLOOD_SECONDS + 30)
        finally:
            if flood.returncode is None:
                flood.kill()
                await flood.wait()
    finally:
        await close_writer(writer)

    result = json.loads(flood_out)
    rate = result["sent"] / result["seconds"]
    print(
        f"flood {rate:.0f}/s, {result['cookies']} cookie replies; {alone:.0f} rt/s alone, {during:.0f} during; "
        f"second peer's handshake in {handshake_time:.1f} s"
    )
    assert_flood_rate(rate, await flood_rate_here(), "flood")
    assert result["cookies"] > result["sent"] / 2, result
    assert during >= alone / 2, f"{during:.0f} round trips/s under the flood, {alone:.0f} without"
    assert handshake_time < 10


def test_hchacha20_matches_the_draft() -> None:
    """The test vector of draft-irtf-cfrg-xchacha-03, 2.2.1: the replay flood decrypts cookies with it."""
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(bytes(range(32)), nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


@pytest.mark.parametrize("claim", [False, True], ids=["unknown key", "a peer's key"])
async def test_one_initiation_with_a_valid_mac2_replayed_does_not_slow_peers_down(start, claim):
    """A stranger gets the server under load, decrypts the cookie reply meant for its own address, and replays
    its one initiation with the MAC2 from it: a valid MAC2 passes the cookie check each time. With a peer's
    public key in it (but not the peer's private key), each copy reaches the peer's handshake state before it
    fails at the timestamp."""
    setup = await start(peers=3)
    host, port = setup.server.getsockname()
    reader, writer = await open_connection("10.0.0.42", 7)
    try:
        alone = await round_trip_rate(reader, writer, 0.5, windows=4)

        claimed = ["--claim", setup.cfg.client_public_keys[2]] if claim else []
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("flood.py")),
            host,
            str(port),
            setup.cfg.server_public_key,
            str(FLOOD_RATE),
            str(REPLAY_SECONDS),
            "--replay",
            *claimed,
            # An address of the stranger's own: one shared with a peer shares its limit too.
            "--source",
            "127.0.0.2",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            await asyncio.sleep(2)  # the cookie, then the replay is on
            try:
                during = await round_trip_rate(reader, writer, 0.5, windows=4)
            except TimeoutError:
                during = 0.0  # one round trip took more than 10 s

            # A known peer that starts now completes its handshake while the replay goes on.
            handshake_time = await second_peer_joins(setup)
            replay_on = flood.returncode is None
            flood_out, _ = await asyncio.wait_for(flood.communicate(), REPLAY_SECONDS + 30)
        finally:
            if flood.returncode is None:
                flood.kill()
                await flood.wait()
    finally:
        await close_writer(writer)

    result = json.loads(flood_out)
    assert "error" not in result, result
    rate = result["sent"] / result["seconds"]
    print(
        f"replay {rate:.0f}/s, {result['cookies']} cookie replies during it; {alone:.0f} rt/s alone, "
        f"{during:.0f} during ({during / alone:.2f}x); second peer's handshake in {handshake_time:.1f} s"
    )
    assert_flood_rate(rate, await flood_rate_here(), "replay")
    assert during >= alone / 2, f"{during:.0f} round trips/s under the replay, {alone:.0f} without"
    assert handshake_time < 10
    assert replay_on, "the replay ended before the second peer's handshake completed"


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_data_for_a_peer_whose_session_expired_starts_a_handshake_and_arrives(start):
    """The client is silent for 200 s: its session has expired (WireGuard rejects a session after 180 s). Then the
    server has data for it: a new handshake starts, the data arrives, and the connection carries on."""
    go = asyncio.Event()

    async def handle(stream) -> None:
        stream.write(await stream.readline())
        await go.wait()
        stream.write(b"after the silence\n")
        while line := await stream.readline():
            stream.write(line)
        stream.close()

    setup = await start(handle, addresses=("10.0.0.2/32",), routes=("10.0.0.0/24",))
    # Silence means silence: no IPv6 router or multicast messages from the client's kernel either.
    with open(f"/proc/sys/net/ipv6/conf/{setup.client.interface}/disable_ipv6", "w") as f:
        f.write("1")
    reader, writer = await open_connection("10.0.0.42", 80)
    writer.write(b"before\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"before\n"
    # The last packets of the exchange may still renew the session (a handshake 15 s after a packet that got
    # no answer): the silence starts once that has settled.
    await asyncio.sleep(20)
    first = setup.client.latest_handshake()
    await asyncio.sleep(max(0.0, first + 200 - time.time()))
    assert setup.client.latest_handshake() == first, "the client was not silent"
    go.set()
    assert await asyncio.wait_for(reader.readline(), 20) == b"after the silence\n"
    assert setup.client.latest_handshake() > first, "no new handshake"
    for i in range(3):
        writer.write(b"still here %d\n" % i)
        assert await asyncio.wait_for(reader.readline(), 10) == b"still here %d\n" % i
    await close_writer(writer)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_busy_connection_carries_on_across_rekeys(start):
    """WireGuard renews a session after 120 s of use: a connection that carries traffic throughout never
    notices, not one round trip is lost or late."""
    setup = await start()
    reader, writer = await open_connection("10.0.0.42", 80)
    writer.write(b"first\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"first\n"
    first = setup.client.latest_handshake()
    deadline = time.monotonic() + 135
    count = 0
    while time.monotonic() < deadline:
        message = b"%d %s\n" % (count, os.urandom(8).hex().encode())
        writer.write(message)
        assert await asyncio.wait_for(reader.readline(), 5) == message
        count += 1
        await asyncio.sleep(0.2)
    assert setup.client.latest_handshake() > first, "no new handshake in 135 s of traffic"
    await close_writer(writer)


@needs_client
async def test_a_client_with_the_wrong_server_key_is_told_in_the_log(wg_clients, caplog):
    """The client holds another server's public key: its handshakes carry a MAC1 for that key, which the server
    drops; the log says what is likely wrong, at a level the command line shows."""
    cfg = wg.Configuration.generate(listen_port=0)
    server = await wg.start_server("127.0.0.1", cfg, echo, lambda *args: None)
    try:
        wrong_key = wg.Configuration.generate().server_public_key
        await wg_clients(server, wrong_key, cfg.client_private_keys[0], keepalive=1)
        hint = "the client may hold the wrong server PublicKey"
        deadline = time.monotonic() + 15
        found = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not found and time.monotonic() < deadline:
                s.sendto(b"hello", ("10.0.0.42", 1234))  # traffic for the tunnel: the client handshakes
                await asyncio.sleep(0.5)
                found = [r for r in caplog.records if hint in r.getMessage()]
        assert found, "no hint in the log"
        assert found[0].levelno >= logging.INFO
        assert f"this server's is {cfg.server_public_key}" in found[0].getMessage()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
