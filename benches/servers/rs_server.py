"""The echo (and transfers) behind mitmproxy_rs 0.11.5's WireGuard mode (from PyPI, in a venv of its own).

mitmproxy_rs imports mitmproxy_linux, which has no wheel for this machine; its WireGuard mode never calls it,
so benches/build.py puts an empty stand-in module in that venv."""

from __future__ import annotations

import importlib.metadata

from _common import config, run, serve_until_stopped, tunnel_handler
from mitmproxy_rs import Stream
from mitmproxy_rs.wireguard import start_wireguard_server


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
    # here "sockname" is the address the client connected to ("original_dst" is the WireGuard socket's)
    echo_tcp = tunnel_handler("sockname")
    server = await start_wireguard_server(
        cfg["host"], cfg["wg_port"], cfg["server_key"], [cfg["client_pub"]], echo_tcp, echo_udp
    )
    await serve_until_stopped(server, importlib.metadata.version("mitmproxy_rs"))


if __name__ == "__main__":
    run(main)
