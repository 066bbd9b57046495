"""The Python API without a tunnel: keys, configurations, binding, errors."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import mitmproxy_wireguard as wg
from helpers import NAMESPACE_PROBLEM, echo


def ignore_datagram(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
    pass


def test_public_names():
    assert set(wg.__all__) == {
        "Configuration",
        "DatagramEndpoint",
        "NoHandshake",
        "PeerStats",
        "Refusal",
        "Server",
        "ServerError",
        "TcpStream",
        "Tunnel",
        "TunnelClosed",
        "connect",
        "genkey",
        "pubkey",
        "start_server",
    }
    assert wg._mitmproxy_wireguard.__name__ == "mitmproxy_wireguard._mitmproxy_wireguard"


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_keys_match_the_wg_tool():
    private = wg.genkey()
    assert len(private) == 44
    out = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
    assert wg.pubkey(private) == out.stdout.strip()
    other = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["wg", "pubkey"], input=other, capture_output=True, text=True, check=True)
    assert wg.pubkey(other) == out.stdout.strip()


def test_invalid_keys_name_the_field():
    with pytest.raises(ValueError, match="private_key"):
        wg.pubkey("not a key")
    with pytest.raises(ValueError, match="server_private_key"):
        wg.Configuration.custom(51820, "AAAA", [])
    with pytest.raises(ValueError, match=r"client_private_keys\[1\]"):
        wg.Configuration.custom(51820, wg.genkey(), [wg.genkey(), "x" * 44])
    with pytest.raises(ValueError, match="listen_port"):
        wg.Configuration.generate(listen_port=70000)
    with pytest.raises(ValueError, match="server_listen_port"):
        wg.Configuration.custom(-1, wg.genkey(), [])


def test_configuration_generate_custom_and_json():
    cfg = wg.Configuration.generate(listen_port=51999, peers=3)
    assert cfg.listen_port == 51999
    assert len(cfg.client_private_keys) == 3
    assert cfg.client_public_keys == [wg.pubkey(k) for k in cfg.client_private_keys]
    assert wg.Configuration.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())

    server_key, client_key = wg.genkey(), wg.genkey()
    custom = wg.Configuration.custom(4000, server_key, [client_key])
    assert custom.server_public_key == wg.pubkey(server_key)
    assert custom.client_private_keys == [client_key]
    assert "Configuration(listen_port=4000" in repr(custom)
    with pytest.raises(ValueError, match="JSON"):
        wg.Configuration.from_json("{not json")


def test_pretty_print_gives_one_client_config_per_peer():
    cfg = wg.Configuration.generate(listen_port=51820, peers=2)
    texts = cfg.pretty_print(address="10.0.0.7/32", allowed_ips="10.0.0.0/24", endpoint="192.0.2.1:51820")
    assert len(texts) == 2
    for text, key in zip(texts, cfg.client_private_keys):
        assert f"PrivateKey = {key}" in text
        assert f"PublicKey = {cfg.server_public_key}" in text
        assert "Address = 10.0.0.7/32" in text
        assert "AllowedIPs = 10.0.0.0/24" in text
        assert "Endpoint = 192.0.2.1:51820" in text


async def test_listen_port_zero_picks_a_free_port_and_getsockname_tells_it():
    async with await wg.start_server(
        "127.0.0.1", wg.Configuration.generate(listen_port=0), echo, ignore_datagram
    ) as server:
        host, port = server.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert f"port={port}" in repr(server)


@pytest.mark.skipif(NAMESPACE_PROBLEM is not None, reason="IPv6 loopback needs the test namespace")
async def test_ipv6_host():
    server = await wg.start_server("::1", wg.Configuration.generate(listen_port=0), echo, ignore_datagram)
    assert server.getsockname()[0] == "::1"
    server.close()
    await server.wait_closed()


async def test_a_port_in_use_is_an_os_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await wg.start_server(
                "127.0.0.1", wg.Configuration.generate(listen_port=port), echo, ignore_datagram
            )


async def test_a_port_in_use_names_the_address_and_keeps_the_errno():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as e:
            await wg.start_server(
                "127.0.0.1", wg.Configuration.generate(listen_port=port), echo, ignore_datagram
            )
    assert e.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in str(e.value)


@pytest.mark.parametrize(
    "args, kwargs, missing",
    [
        ((echo,), {}, "receive_datagram"),
        ((), {"receive_datagram": ignore_datagram}, "handle_connection"),
    ],
)
async def test_a_missing_handler_is_a_type_error_naming_the_public_call(args, kwargs, missing):
    with pytest.raises(TypeError) as e:
        await wg.start_server("127.0.0.1", wg.Configuration.generate(listen_port=0), *args, **kwargs)
    assert str(e.value).startswith("start_server(host, cfg, handle_connection, receive_datagram):"), e.value
    assert repr(missing) in str(e.value) and "_start" not in str(e.value)
    with pytest.raises(TypeError) as e:
        await wg.start_server("127.0.0.1", 0, wg.genkey(), [], echo)
    assert str(e.value).startswith(
        "start_server(host, port, private_key, peer_public_keys, handle_connection"
    )
    assert "'receive_datagram'" in str(e.value) and "_start" not in str(e.value)


async def test_bad_addresses_are_value_errors():
    async with await wg.start_server(
        "127.0.0.1", wg.Configuration.generate(listen_port=0), echo, ignore_datagram
    ) as server:
        with pytest.raises(ValueError, match="src_addr"):
            server.send_datagram(b"x", ("not an address", 1), ("10.0.0.1", 1))
        with pytest.raises(ValueError, match="dst_addr"):
            server.send_datagram(b"x", ("10.0.0.42", 1), ("::1", 1))


@pytest.mark.skipif(NAMESPACE_PROBLEM is not None, reason="name lookups must not leave the test namespace")
async def test_a_host_that_does_not_resolve_is_a_value_error():
    with pytest.raises(ValueError, match="host"):
        await wg.start_server(
            "no.such.host.invalid", wg.Configuration.generate(listen_port=0), echo, ignore_datagram
        )


async def test_close_is_idempotent_and_wait_closed_returns():
    server = await wg.start_server(
        "127.0.0.1", wg.Configuration.generate(listen_port=0), echo, ignore_datagram
    )
    server.close()
    server.close()
    await server.wait_closed()
    await server.wait_closed()


NEVER_CLOSED = """
import asyncio, gc, logging
import mitmproxy_wireguard as wg

logging.basicConfig(level=logging.DEBUG)  # the engine logs through Python while it stops

async def main():
    cfg = wg.Configuration.generate(listen_port=0)
    await wg.start_server("127.0.0.1", cfg, lambda stream: asyncio.sleep(0), lambda *args: None)

asyncio.run(main())
gc.collect()
print("stopped")
"""


def test_a_server_never_closed_stops_when_its_loop_ends():
    """Dropping a server that was never closed stops its engine; it once waited for the engine with the GIL held
    while the engine waited for the GIL to log, and the process hung."""
    done = subprocess.run([sys.executable, "-c", NEVER_CLOSED], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


async def test_records_that_come_once_a_datagram_are_aggregated_per_second(caplog):
    """At debug level, a record per dropped datagram would cross into Python once a datagram: the first of a
    second is logged, the others are counted in one record when the second is over."""
    sent = 2000
    caplog.set_level(logging.DEBUG)
    async with await wg.start_server(
        "127.0.0.1", wg.Configuration.generate(listen_port=0, peers=2), echo, ignore_datagram
    ) as server:
        # With two peers and no datagram from 10.0.0.200, a reply to it reaches no one: dropped, each.
        started = time.monotonic()
        for _ in range(sent):
            server.send_datagram(b"x", ("10.0.0.42", 53), ("10.0.0.200", 53))
        single: list[str] = []
        counted = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            messages = [r.getMessage() for r in caplog.records]
            single = [m for m in messages if m.startswith("dropped a datagram to 10.0.0.200:53")]
            summaries = [
                re.fullmatch(r"(\d+) more datagrams from Python dropped in the last second, the last: .*", m)
                for m in messages
            ]
            counted = sum(int(m.group(1)) for m in summaries if m)
            if len(single) + counted >= sent:
                break
        seconds = time.monotonic() - started
    assert len(single) + counted == sent, (len(single), counted)
    # One record at once per second that had drops, and its count at the end of the second.
    assert 1 <= len(single) <= seconds + 1, (len(single), seconds)
