"""The echo behind mitmproxy_wireguard 0.1.23 (from PyPI, in a venv of its own)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging

import mitmproxy_wireguard as wg
from _common import TRANSFER_PORT, config, echo_stream, raise_file_limit, ready, serve_transfer, wait_for_stop


async def echo(stream) -> None:  # type: ignore[no-untyped-def]
    if stream.get_extra_info("original_dst")[1] == TRANSFER_PORT:
        return await serve_transfer(stream, stream)
    await echo_stream(stream)


async def main() -> None:
    cfg = config()
    server = None

    def echo_datagram(data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int]) -> None:
        server.send_datagram(data, dst_addr, src_addr)

    server = await wg.start_server(
        cfg["host"], cfg["wg_port"], cfg["server_key"], [cfg["client_pub"]], echo, echo_datagram
    )
    ready(sockname=list(server.getsockname()), version=importlib.metadata.version("mitmproxy_wireguard"))
    await wait_for_stop()
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise_file_limit()
    asyncio.run(main())
