"""The echo (and transfers) behind mitmproxy_rs 0.11.5's WireGuard mode (from PyPI, in a venv of its own).

mitmproxy_rs imports mitmproxy_linux, which has no wheel for this machine; its WireGuard mode never calls it,
so benches/build.py puts an empty stand-in module in that venv."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging

from _common import TRANSFER_PORT, config, echo_stream, raise_file_limit, ready, serve_transfer, wait_for_stop
from mitmproxy_rs import Stream
from mitmproxy_rs.wireguard import start_wireguard_server


async def echo_tcp(stream: Stream) -> None:
    # here "sockname" is the address the client connected to ("original_dst" is the WireGuard socket's)
    if stream.get_extra_info("sockname")[1] == TRANSFER_PORT:
        return await serve_transfer(stream, stream)
    await echo_stream(stream)


async def echo_udp(stream: Stream) -> None:
    """One stream per client address and port; each read is one datagram."""
    try:
        while data := await stream.read(65536):
            stream.write(data)
    except OSError:  # mitmproxy_rs raises a plain OSError when the connection or server closes
        pass
    finally:
        stream.close()


async def main() -> None:
    cfg = config()
    server = await start_wireguard_server(
        cfg["host"], cfg["wg_port"], cfg["server_key"], [cfg["client_pub"]], echo_tcp, echo_udp
    )
    ready(sockname=list(server.getsockname()), version=importlib.metadata.version("mitmproxy_rs"))
    await wait_for_stop()
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise_file_limit()
    asyncio.run(main())
