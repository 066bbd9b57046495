"""The echo behind this project's server (the package installed in the venv that runs this script)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging

import mitmproxy_wireguard as wg
from _common import TRANSFER_PORT, config, raise_file_limit, ready, serve_transfer, wait_for_stop


async def echo(stream: wg.TcpStream) -> None:
    if stream.get_extra_info("original_dst")[1] == TRANSFER_PORT:
        return await serve_transfer(stream, stream)
    try:
        while data := await stream.read(65536):
            stream.write(data)
            await stream.drain()
    except ConnectionError:
        pass
    finally:
        stream.close()
    try:
        await stream.wait_closed()
    except ConnectionError:
        pass


async def main() -> None:
    cfg = config()
    server: wg.Server

    def echo_datagram(data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int]) -> None:
        server.send_datagram(data, dst_addr, src_addr)

    # The client's tunnel address is its AllowedIPs: the server drops packets from any other source.
    conf = wg.Configuration.custom(cfg["wg_port"], cfg["server_key"], [])
    conf.add_peer(private_key=cfg["client_key"], address=cfg["client_address"])
    server = await wg.start_server(cfg["host"], conf, echo, echo_datagram)
    ready(sockname=list(server.getsockname()), version=importlib.metadata.version("mitmproxy_wireguard"))
    await wait_for_stop()
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise_file_limit()
    asyncio.run(main())
