"""Shared fixtures. The helpers they build on are in helpers.py, whose import, here and before any test, moves the
test session into a network namespace of its own."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

import mitmproxy_wireguard as wg
from helpers import Namespace, ServerProcess, WireGuardClient, echo, start_client
from helpers_cli import LISTENING, Cli, Listening, client_configs, client_settings, config_fields
from helpers_upstream import Upstream, start_upstream


@pytest.fixture
def namespaces() -> Iterator[Callable[[], Namespace]]:
    """Factory of namespaces; all are deleted at the end of the test."""
    made: list[Namespace] = []

    def factory() -> Namespace:
        made.append(Namespace())
        return made[-1]

    yield factory
    for namespace in made:
        namespace.delete()


@pytest.fixture
async def wg_clients() -> AsyncIterator[Callable[..., Awaitable[WireGuardClient]]]:
    """Factory of WireGuard clients; all are stopped at the end of the test."""
    clients: list[WireGuardClient] = []

    async def factory(*args: Any, **kwargs: Any) -> WireGuardClient:
        client = await start_client(*args, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.stop()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    """Factory of WireGuard servers of the tests' own (helpers_upstream.start_upstream, e.g.
    `await upstreams("boringtun")`), each in its namespace with the test services behind it; all are stopped,
    their namespaces deleted, at the end of the test."""
    made: list[Upstream] = []

    async def factory(kind: str, **kwargs: Any) -> Upstream:
        upstream = await start_upstream(kind, **kwargs)
        made.append(upstream)
        return upstream

    yield factory
    for upstream in made:
        upstream.stop()


@dataclass
class Setup:
    """A running server, its configuration, and a WireGuard client connected to it."""

    server: wg.Server
    cfg: wg.Configuration
    client: WireGuardClient
    datagrams: list[tuple[bytes, tuple[str, int], tuple[str, int]]]


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Setup]]]:
    """Starts a server (echo handlers by default) and one real client for it; both end with the test."""
    servers: list[wg.Server] = []
    clients: list[WireGuardClient] = []

    async def factory(
        handle_connection: Callable[[wg.TcpStream], Awaitable[None]] = echo,
        receive_datagram: Callable[[bytes, tuple[str, int], tuple[str, int]], None] | None = None,
        host: str = "127.0.0.1",
        peers: int = 1,
        accept_connection: Callable[..., Any] | None = None,
        **client_args: Any,
    ) -> Setup:
        cfg = wg.Configuration.generate(listen_port=0, peers=peers)
        datagrams: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []

        def echo_datagram(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
            datagrams.append((data, src, dst))
            server.send_datagram(data, dst, src)

        # Without `accept_connection`, the call as every earlier version made it.
        extra = {} if accept_connection is None else {"accept_connection": accept_connection}
        server = await wg.start_server(
            host, cfg, handle_connection, receive_datagram or echo_datagram, **extra
        )
        servers.append(server)
        client_args.setdefault("addresses", tuple(cfg.peers[0]["allowed_ips"]))
        client = await start_client(server, cfg.server_public_key, cfg.client_private_keys[0], **client_args)
        clients.append(client)
        return Setup(server, cfg, client, datagrams)

    yield factory
    for client in clients:
        client.stop()
    for server in servers:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


@pytest.fixture
async def server_process() -> AsyncIterator[Callable[[], Awaitable[ServerProcess]]]:
    """Starts the server process (with `peers` peers) and a real WireGuard client for its first peer, routing
    10.0.0.0/16; both end with the test."""
    made: list[tuple[ServerProcess, Any]] = []

    async def factory(peers: int = 1) -> ServerProcess:
        server = ServerProcess(peers)
        client = await start_client(
            server, server.cfg.server_public_key, server.cfg.client_private_keys[0], routes=("10.0.0.0/16",)
        )
        made.append((server, client))
        return server

    yield factory
    for server, client in made:
        client.stop()
        await server.close()


@pytest.fixture
async def forward_cli(namespaces, tmp_path) -> AsyncIterator[Callable[..., Awaitable[tuple[Any, ...]]]]:
    """Starts `forward` with JSON logs and the given options (run by `prefix`, if given), and a client namespace
    for each of `peers` clients, whose wireguard-go is set up from the printed configuration. Returns the
    process and the clients' namespaces; all end with the test."""
    started: list[Cli] = []
    clients: list[WireGuardClient] = []

    async def start(*extra: str, peers: int = 1, prefix: tuple[str, ...] = ()) -> tuple[Any, ...]:
        args = ("forward", "--conf", str(tmp_path / "server.conf"), "--port", "0", "--json-log", *extra)
        process = Cli(*args, "--peers", str(peers), prefix=prefix)
        started.append(process)
        port = int(process.wait_for_stdout(LISTENING).group(1))
        texts = process.wait_for(
            lambda: len(client_configs(process.stdout)) == peers and client_configs(process.stdout)
        )
        client_namespaces = []
        for text in texts:
            assert config_fields(text)["DNS"] and config_fields(text)["MTU"]
            client_ns = namespaces()
            clients.append(await start_client(Listening(port), **client_settings(text), namespace=client_ns))
            client_namespaces.append(client_ns)
        return (process, *client_namespaces)

    yield start
    for client in clients:
        client.stop()
    for process in started:
        process.kill()
