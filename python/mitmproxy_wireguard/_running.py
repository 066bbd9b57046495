"""Running a server the way the command line does: until a signal, or until the server stops on its own."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

from .server import Server


async def serve_until_signal(server: Server, ready: Callable[[], None]) -> None:
    """Serves until SIGINT or SIGTERM, then closes `server` and waits for it. If the server stops on its own
    first (its engine failed), returns at once with its `ServerError`: a command line must not keep running
    without a server. `ready()` tells the user that the server runs, once a signal would stop it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    ready()
    stopped = asyncio.ensure_future(stop.wait())
    closed = asyncio.ensure_future(server.wait_closed())
    try:
        await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        stopped.cancel()
        server.close()
        await closed
