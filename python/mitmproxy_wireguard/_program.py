"""What the package's programs (the echo server, the proxy and the command line over them) share: how they write
an address and which signals stop them."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

from .server import Server

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[fd00::2]:80`): as a WireGuard Endpoint and the logs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_until_signal(server: Server, ready: Callable[[], None]) -> None:
    """Serves until SIGINT or SIGTERM, then closes `server` and waits for it. If the server stops on its own
    first (its engine failed), returns at once with its `ServerError`: a program must not keep running without
    a server. `ready()` tells users that the server runs, once a signal would stop it in order (no signal falls
    in between)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    ready()
    stopped = asyncio.ensure_future(stop.wait())
    closed = asyncio.ensure_future(server.wait_closed())
    try:
        await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        stopped.cancel()
        server.close()
        await closed
