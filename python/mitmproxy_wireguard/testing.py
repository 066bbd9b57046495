"""Testing handlers without root: a server and a client in one process, over loopback, with a real WireGuard
session and the real TCP/IP stack between them, and no other program.

The package registers this module as a pytest plugin, so its `wg_pair` fixture is there in every test once the
package is installed (pytest-asyncio runs the async tests):

```python
import mitmproxy_wireguard as wg

async def handle_connection(stream: wg.TcpStream) -> None:
    stream.write((await stream.read(100)).upper())
    stream.close()

async def test_my_handler(wg_pair) -> None:
    pair = await wg_pair(handle_connection)
    reader, writer = await pair.tunnel.open_connection("192.0.2.1", 80)
    writer.write(b"hello")
    assert await reader.read() == b"HELLO"
```

Without pytest, `start_pair` does the same as an async context manager.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from ._mitmproxy_wireguard import Configuration
from .client import Tunnel, connect
from .server import ConnectionAcceptor, ConnectionHandler, DatagramHandler, Server, start_server

__all__ = ["Pair", "start_pair", "wg_pair"]


@dataclass
class Pair:
    """A server with the handlers under test, and a client's tunnel to it."""

    server: Server
    """The running server (`start_server`), on 127.0.0.1 and a free port."""
    tunnel: Tunnel
    """The client's tunnel: `open_connection` and `open_datagram` reach the server's handlers, whatever the
    destination address (the server takes every connection)."""
    config: Configuration
    """The server's configuration; the client is its one peer."""
    datagrams: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = field(default_factory=list)
    """Datagrams the server received, `(data, src_addr, dst_addr)`, when no `receive_datagram` was given."""


@contextlib.asynccontextmanager
async def start_pair(
    handle_connection: ConnectionHandler,
    receive_datagram: DatagramHandler | None = None,
    *,
    accept_connection: ConnectionAcceptor | None = None,
) -> AsyncIterator[Pair]:
    """A server running `handle_connection` (and `receive_datagram`, which by default keeps each datagram in
    `Pair.datagrams`), and a client connected to it, for the block of an `async with`; both end with it."""
    cfg = Configuration.generate(listen_port=0, peers=1)
    received: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []

    def keep(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        received.append((data, src, dst))

    extra: dict[str, Any] = {} if accept_connection is None else {"accept_connection": accept_connection}
    server = await start_server("127.0.0.1", cfg, handle_connection, receive_datagram or keep, **extra)
    async with server:
        endpoint = f"127.0.0.1:{server.getsockname()[1]}"
        text = cfg.pretty_print(endpoint=endpoint, dns="")[0]
        async with connect(text) as tunnel:
            yield Pair(server, tunnel, cfg, received)


PairFactory = Callable[..., Awaitable[Pair]]


async def _pairs() -> AsyncIterator[PairFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            handle_connection: ConnectionHandler,
            receive_datagram: DatagramHandler | None = None,
            *,
            accept_connection: ConnectionAcceptor | None = None,
        ) -> Pair:
            return await stack.enter_async_context(
                start_pair(handle_connection, receive_datagram, accept_connection=accept_connection)
            )

        yield factory


async def _wg_pair() -> AsyncIterator[PairFactory]:
    """`await wg_pair(handle_connection, receive_datagram=None, *, accept_connection=None)` starts a server with
    these handlers and a client connected to it, and returns the `Pair`; all of them end with the test."""
    async for factory in _pairs():
        yield factory


def _fixture() -> Any:
    """The `wg_pair` fixture, an async one of pytest-asyncio's; without it, one that says it is needed."""
    try:
        import pytest_asyncio
    except ImportError:
        import pytest

        def missing() -> None:
            raise RuntimeError("the wg_pair fixture needs pytest-asyncio (pip install pytest-asyncio)")

        return pytest.fixture(missing, name="wg_pair")
    return pytest_asyncio.fixture(_wg_pair, name="wg_pair")


wg_pair = _fixture()
