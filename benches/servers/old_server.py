"""The echo behind mitmproxy_wireguard 0.1.23 (from PyPI, in a venv of its own)."""

from __future__ import annotations

import importlib.metadata

import mitmproxy_wireguard as wg
from _common import config, run, serve_until_stopped, tunnel_handler


async def main() -> None:
    cfg = config()
    server = None

    def echo_datagram(data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int]) -> None:
        server.send_datagram(data, dst_addr, src_addr)

    echo = tunnel_handler("original_dst")
    server = await wg.start_server(
        cfg["host"], cfg["wg_port"], cfg["server_key"], [cfg["client_pub"]], echo, echo_datagram
    )
    await serve_until_stopped(server, importlib.metadata.version("mitmproxy_wireguard"))


if __name__ == "__main__":
    run(main)
