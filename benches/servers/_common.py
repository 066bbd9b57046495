"""What the three server scripts share: their configuration file, the ready line, raised file limits and a
stop on SIGTERM/SIGINT. Each server runs in its own process so that the runner can read its CPU time and RSS
from /proc; the echo itself is the same asyncio stream loop in all of them."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from typing import Any


def config() -> dict[str, Any]:
    with open(sys.argv[1]) as f:
        return json.load(f)


def raise_file_limit(wanted: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def ready(**info: Any) -> None:
    """Tells the runner that the server listens, and its pid (the one to read /proc of)."""
    print(json.dumps({"pid": os.getpid(), **info}), flush=True)


async def wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
