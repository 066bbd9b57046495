"""The echo behind this project's server (the package installed in the venv that runs this script)."""

from __future__ import annotations

import importlib.metadata

import mitmproxy_wireguard as wg
from _common import config, run, serve_until_stopped, tunnel_handler


async def main() -> None:
    cfg = config()
    server: wg.Server

    def echo_datagram(data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int]) -> None:
        server.send_datagram(data, dst_addr, src_addr)

    # The client's tunnel address is its AllowedIPs: the server drops packets from any other source.
    conf = wg.Configuration.custom(cfg["wg_port"], cfg["server_key"], [])
    conf.add_peer(private_key=cfg["client_key"], address=cfg["client_address"])
    echo = tunnel_handler("original_dst", wait_closed=True)
    server = await wg.start_server(cfg["host"], conf, echo, echo_datagram)
    await serve_until_stopped(server, importlib.metadata.version("mitmproxy_wireguard"))


if __name__ == "__main__":
    run(main)
