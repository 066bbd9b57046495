"""What the package's programs (the echo server, the proxy and the command line over them) share: how they write
an address and which signals stop them."""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[fd00::2]:80`): as a WireGuard Endpoint and the logs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def stop_requested() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets from now on, instead of ending the process: the program then stops
    its server in order. Call it before telling users the server runs, so that no signal falls in between."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop
