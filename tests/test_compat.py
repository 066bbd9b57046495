"""The call form of mitmproxy_wireguard 0.1.x, `start_server(host, port, private_key, peer_public_keys,
handle_connection, receive_datagram)`, through real WireGuard clients: what mitmproxy 9 relies on. Its clients
all use 10.0.0.1, the server's own address in a generated configuration."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

import mitmproxy_wireguard as wg
from helpers import Namespace, assert_udp_echo, close_writer, connect_from, needs_client, open_connection

pytestmark = [needs_client, pytest.mark.timeout(60)]

MITMPROXY_ADDRESS = ("10.0.0.1/32",)
ROUTES = ("10.0.0.0/24",)
Datagram = tuple[bytes, tuple[str, int], tuple[str, int]]


@pytest.fixture
async def servers() -> AsyncIterator[list[wg.Server]]:
    """Servers to close at the end of the test."""
    started: list[wg.Server] = []
    yield started
    for server in started:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def echo_handlers(
    servers: list[wg.Server], datagrams: list[Datagram]
) -> tuple[Callable[[wg.TcpStream], Awaitable[None]], Callable[[bytes, Any, Any], None]]:
    """A TCP handler that answers with the peer's key, the connection's addresses and the data it got, and a
    UDP echo that records what it got; both for the last server in `servers`."""

    async def handle_connection(stream: wg.TcpStream) -> None:
        data = await stream.readexactly(32 << 10)
        info = [stream.get_extra_info(name) for name in ("peername", "sockname", "original_dst")]
        stream.write(stream.get_extra_info("peer_public_key").encode() + repr(info).encode() + b"\n" + data)
        await stream.drain()
        stream.close()

    def receive_datagram(data: bytes, src_addr: Any, dst_addr: Any) -> None:
        datagrams.append((data, src_addr, dst_addr))
        servers[-1].send_datagram(data, dst_addr, src_addr)

    return handle_connection, receive_datagram


async def tcp_round_trip(ns: Namespace | None, public_key: str, source_port: int = 0) -> tuple[str, int]:
    """A connection from 10.0.0.1 to 10.0.0.42:443 through the client's tunnel; checks the reply and returns
    the connection's source address."""
    if ns is None:
        reader, writer = await open_connection("10.0.0.42", 443)
    else:
        reader, writer = await connect_from(ns, ("10.0.0.1", source_port), ("10.0.0.42", 443))
    source = writer.get_extra_info("sockname")[:2]
    mine = os.urandom(32 << 10)
    writer.write(mine)
    reply = await asyncio.wait_for(reader.read(), 10)
    await close_writer(writer)
    info = repr([source, ("10.0.0.42", 443), ("10.0.0.42", 443)]).encode()
    assert reply == public_key.encode() + info + b"\n" + mine
    return source


async def udp_round_trip(ns: Namespace | None, source_port: int = 0) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if ns is None
        else ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ) as sock:
        sock.bind(("10.0.0.1", source_port))
        sock.setblocking(False)
        sock.connect(("10.0.0.42", 53))
        await assert_udp_echo(sock, (os.urandom(200) for _ in range(3)), timeout=5)


@pytest.mark.parametrize("by_name", [False, True], ids=["by-position", "by-name"])
async def test_the_0_1_call_form_serves_tcp_and_udp_of_a_client_at_10_0_0_1(servers, wg_clients, by_name):
    server_key, client_key = wg.genkey(), wg.genkey()
    datagrams: list[Datagram] = []
    handle_connection, receive_datagram = echo_handlers(servers, datagrams)
    if by_name:
        server = await wg.start_server(
            host="127.0.0.1",
            port=0,
            private_key=server_key,
            peer_public_keys=[wg.pubkey(client_key)],
            handle_connection=handle_connection,
            receive_datagram=receive_datagram,
        )
    else:
        server = await wg.start_server(
            "127.0.0.1", 0, server_key, [wg.pubkey(client_key)], handle_connection, receive_datagram
        )
    servers.append(server)
    host, port = server.getsockname()
    assert host == "127.0.0.1" and port > 0
    await wg_clients(server, wg.pubkey(server_key), client_key, addresses=MITMPROXY_ADDRESS, routes=ROUTES)

    source = await tcp_round_trip(None, wg.pubkey(client_key))
    assert source[0] == "10.0.0.1"
    await udp_round_trip(None)
    assert {(src[0], dst) for _, src, dst in datagrams} == {("10.0.0.1", ("10.0.0.42", 53))}

    server.close()
    await asyncio.wait_for(server.wait_closed(), 5)
    assert server.is_closing()


async def test_two_peers_of_the_0_1_call_form_may_use_one_address(servers, namespaces, wg_clients):
    """Both peers copied mitmproxy's config: same tunnel address, same source ports. Each gets its own."""
    server_key = wg.genkey()
    client_keys = [wg.genkey(), wg.genkey()]
    datagrams: list[Datagram] = []
    handlers = echo_handlers(servers, datagrams)
    server = await wg.start_server("0.0.0.0", 0, server_key, [wg.pubkey(k) for k in client_keys], *handlers)
    servers.append(server)
    sides = []
    for key in client_keys:
        ns = namespaces()
        await wg_clients(
            server, wg.pubkey(server_key), key, addresses=MITMPROXY_ADDRESS, routes=ROUTES, namespace=ns
        )
        sides.append(ns)
    await asyncio.gather(*(tcp_round_trip(ns, wg.pubkey(k), 40000) for ns, k in zip(sides, client_keys)))
    await asyncio.gather(*(udp_round_trip(ns, 5000) for ns in sides))
    assert len(datagrams) == 6


@pytest.mark.parametrize(
    "args, message",
    [
        ((70000, "server", ["peer"]), "invalid port: 70000 is not a port"),
        ((0, "not a key", ["peer"]), "invalid private_key: "),
        ((0, "server", ["peer", "AAAA"]), r"invalid peer_public_keys\[1\]: "),
        ((0, "server", ["peer", "peer"]), r"invalid peer_public_keys\[1\]: the same peer is listed twice"),
    ],
)
async def test_bad_arguments_of_the_0_1_call_form_are_value_errors_naming_them(args, message):
    keys = {"server": wg.genkey(), "peer": wg.pubkey(wg.genkey())}
    port, private_key, peers = args
    private_key = keys.get(private_key, private_key)
    peers = [keys.get(p, p) for p in peers]
    with pytest.raises(ValueError, match=message):
        await wg.start_server("127.0.0.1", port, private_key, peers, *echo_handlers([], []))


async def test_arguments_of_neither_form_are_type_errors():
    handlers = echo_handlers([], [])
    with pytest.raises(TypeError, match="a Configuration or a port after host, not str"):
        await wg.start_server("127.0.0.1", "51820", wg.genkey(), [], *handlers)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        await wg.start_server("127.0.0.1", 0, wg.genkey(), *handlers)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        await wg.start_server(
            "127.0.0.1", 0, wg.genkey(), wg.pubkey(wg.genkey()), *handlers  # type: ignore[call-overload]
        )


@pytest.mark.parametrize("by_name", [False, True], ids=["by-position", "by-name"])
async def test_the_0_1_call_form_takes_accept_connection_as_a_keyword(servers, wg_clients, by_name):
    server_key, client_key = wg.genkey(), wg.genkey()
    asked: list[tuple[str, tuple[str, int], tuple[str, int]]] = []

    def accept(peer_public_key: str, src: tuple[str, int], dst: tuple[str, int]) -> bool | wg.Refusal:
        asked.append((peer_public_key, src, dst))
        return dst[1] == 443 or wg.Refusal.RESET

    handle_connection, receive_datagram = echo_handlers(servers, [])
    if by_name:
        server = await wg.start_server(
            host="127.0.0.1",
            port=0,
            private_key=server_key,
            peer_public_keys=[wg.pubkey(client_key)],
            handle_connection=handle_connection,
            receive_datagram=receive_datagram,
            accept_connection=accept,
        )
    else:
        server = await wg.start_server(
            "127.0.0.1",
            0,
            server_key,
            [wg.pubkey(client_key)],
            handle_connection,
            receive_datagram,
            accept_connection=accept,
        )
    servers.append(server)
    await wg_clients(server, wg.pubkey(server_key), client_key, addresses=MITMPROXY_ADDRESS, routes=ROUTES)
    await tcp_round_trip(None, wg.pubkey(client_key))
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(asyncio.open_connection("10.0.0.42", 1235), 10)
    assert [(key, dst) for key, _, dst in asked] == [
        (wg.pubkey(client_key), ("10.0.0.42", 443)),
        (wg.pubkey(client_key), ("10.0.0.42", 1235)),
    ]
