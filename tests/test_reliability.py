"""WireGuard's promises and more, through real clients: roaming, both address families on one listener, ping,
datagrams larger than the MTU, peers kept apart, bounded memory."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess

import pytest

import mitmproxy_wireguard as wg
from helpers import assert_udp_echo, close_writer, connect_from, needs_client, open_connection

pytestmark = [needs_client, pytest.mark.timeout(120)]


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> None:
    writer.write(message + b"\n")
    assert await asyncio.wait_for(reader.readline(), 10) == message + b"\n"


async def test_roaming_client_is_answered_at_its_new_address(start):
    ports = []

    async def handle(stream: wg.TcpStream) -> None:
        ports.append(stream.get_extra_info("original_src"))
        while line := await stream.readline():
            stream.write(line)

    setup = await start(handle)
    reader, writer = await open_connection("10.0.0.42", 80)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setblocking(False)
        udp.connect(("10.0.0.42", 53))

        await round_trip(reader, writer, b"before")
        await assert_udp_echo(udp, [b"before"])
        for new_port in (41234, 41235):
            # The client's outer address changes mid-connection, as a phone's does between networks.
            setup.client.set("listen-port", str(new_port))
            for i in range(3):
                await round_trip(reader, writer, b"after %d %d" % (new_port, i))
                await assert_udp_echo(udp, [b"after %d %d" % (new_port, i)])
        # The UDP flow's datagrams all came from one inner address, whatever the outer one was.
        assert len({src for _, src, _ in setup.datagrams}) == 1
    await close_writer(writer)
    assert ports == [("127.0.0.1", setup.client.listen_port)]


async def test_one_listener_serves_both_families_and_a_peer_may_move_between_them(start):
    setup = await start(host="")
    host, port = setup.server.getsockname()
    assert host == "::"
    reader, writer = await open_connection("10.0.0.42", 80)
    writer.write(b"over IPv4\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"over IPv4\n"
    # Now the same peer reaches the server over IPv6.
    setup.client.set("peer", setup.cfg.server_public_key, "endpoint", f"[::1]:{port}")
    for i in range(3):
        writer.write(b"over IPv6 %d\n" % i)
        assert await asyncio.wait_for(reader.readline(), 10) == b"over IPv6 %d\n" % i
    await close_writer(writer)


@pytest.mark.parametrize("target", ["10.0.0.42", "198.51.100.1", "fd00::42", "2001:db8::1"])
async def test_ping_any_address_in_the_tunnel(start, target):
    await start(routes=("10.0.0.0/24", "198.51.100.0/24", "fd00::/64", "2001:db8::/64"))
    proc = await asyncio.create_subprocess_exec(
        "ping", "-c", "3", "-i", "0.2", "-W", "3", target, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    assert b"3 received" in out


@pytest.mark.parametrize(
    "host,size,mtu",
    [
        pytest.param("10.0.0.42", 16000, None, id="ipv4-fragments"),
        pytest.param("fd00::42", 16000, None, id="ipv6-fragments"),
        pytest.param("10.0.0.42", 7000, 8000, id="ipv4-large-client-mtu"),
        pytest.param("fd00::42", 7000, 8000, id="ipv6-large-client-mtu"),
    ],
)
async def test_datagrams_larger_than_the_tunnel_mtu_arrive_whole(start, host, size, mtu):
    setup = await start(mtu=mtu)
    family = socket.AF_INET if "." in host else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, 9999))
        # The echo comes back fragmented to the server's MTU; the client's kernel reassembles it.
        await assert_udp_echo(sock, (os.urandom(size) for _ in range(3)), timeout=5)
    assert [len(d) for d, _, _ in setup.datagrams] == [size] * 3


async def test_tcp_with_a_large_client_mtu(start):
    await start(mtu=8000)
    reader, writer = await open_connection("10.0.0.42", 80)
    payload = os.urandom(2 << 20)
    writer.write(payload)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 30) == payload
    await close_writer(writer)


async def test_two_peers_with_one_tunnel_address_are_kept_apart(namespaces, wg_clients):
    """Everyone who copies one config gets 10.0.0.1: same address, same source port, same destination, same
    moment. Each peer gets exactly its own data back, TCP and UDP. The peers are configured without tunnel
    addresses (AllowedIPs), so they may use any."""
    settings = json.loads(wg.Configuration.generate(listen_port=0, peers=2).to_json())
    for peer in settings["peers"]:
        del peer["allowed_ips"]
    cfg = wg.Configuration.from_json(json.dumps(settings))
    server: wg.Server

    async def handle(stream: wg.TcpStream) -> None:
        data = await stream.readexactly(64 << 10)
        stream.write(stream.get_extra_info("peer_public_key").encode() + data)
        stream.close()

    def echo_datagram(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        server.send_datagram(data, dst, src)

    server = await wg.start_server("0.0.0.0", cfg, handle, echo_datagram)
    try:
        sides = []
        for key in cfg.client_private_keys:
            ns = namespaces()
            await wg_clients(
                server,
                cfg.server_public_key,
                key,
                addresses=("10.0.0.1/32",),
                routes=("10.0.0.0/24",),
                namespace=ns,
            )
            sides.append(ns)

        async def tcp(ns, key: str) -> None:
            reader, writer = await connect_from(ns, ("10.0.0.1", 40000), ("10.0.0.42", 443))
            mine = os.urandom(64 << 10)
            writer.write(mine)
            reply = await asyncio.wait_for(reader.read(), 10)
            assert reply == wg.pubkey(key).encode() + mine
            await close_writer(writer)

        async def udp(ns) -> None:
            with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("10.0.0.1", 5000))
                sock.setblocking(False)
                sock.connect(("10.0.0.42", 53))
                await assert_udp_echo(sock, (os.urandom(200) for _ in range(5)), timeout=5)

        for _ in range(3):
            await asyncio.gather(*(tcp(ns, key) for ns, key in zip(sides, cfg.client_private_keys)))
            await asyncio.gather(*(udp(ns) for ns in sides))
    finally:
        server.close()
        await server.wait_closed()
