"""An echo server behind WireGuard: every TCP connection and UDP datagram is sent back as it came, whatever its
destination. Prints a client configuration to connect with."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Callable

from . import Configuration, Server, TcpStream, start_server
from ._program import host_port, serve_until_signal

logger = logging.getLogger("mitmproxy_wireguard.echo")

ECHO_ADDRESS = "10.0.0.42"


async def echo_connection(stream: TcpStream) -> None:
    while data := await stream.read(65536):
        stream.write(data)
        await stream.drain()
    stream.close()
    await stream.wait_closed()


def endpoint_host(host: str) -> str:
    """The address a client should dial: the listen address, or this machine's name-resolved address."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def tunnel_networks(cfg: Configuration) -> str:
    """The tunnel's networks, as a client's AllowedIPs: only traffic into the tunnel goes to the server."""
    networks = [str(ipaddress.ip_interface(a).network) for a in cfg.address]
    return ", ".join(networks) or "10.0.0.0/24"


def instructions(cfg: Configuration, server: Server, host: str) -> str:
    port = server.getsockname()[1]
    configs = cfg.pretty_print(
        allowed_ips=tunnel_networks(cfg), endpoint=host_port(endpoint_host(host), port), dns=""
    )
    lines = [f"WireGuard echo server listening on {host or '*'}:{port}.", ""]
    for i, text in enumerate(configs, 1):
        lines += [f"------ client configuration {i} ------", text.rstrip(), ""]
    lines += echo_hint()
    return "\n".join(lines)


def echo_hint() -> list[str]:
    return [
        "Once connected, every address in the tunnel echoes, e.g.:",
        f"    nc {ECHO_ADDRESS} 1234",
        f"    socat - TCP:{ECHO_ADDRESS}:1234",
        f"    nc -u {ECHO_ADDRESS} 1234",
    ]


async def serve(
    host: str = "0.0.0.0",
    port: int = 51820,
    cfg: Configuration | None = None,
    *,
    announce: Callable[[Server], None] | None = None,
) -> None:
    """Runs the echo server until SIGINT or SIGTERM; raises `ServerError` if the server fails. `announce(server)` tells users how to connect once the
    server runs; by default, `instructions` are printed."""
    cfg = cfg or Configuration.generate(listen_port=port)
    server: Server

    def echo_datagram(data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int]) -> None:
        server.send_datagram(data, dst_addr, src_addr)

    server = await start_server(host, cfg, echo_connection, echo_datagram)

    def ready() -> None:
        if announce is None:
            print(instructions(cfg, server, host), flush=True)
        else:
            announce(server)

    await serve_until_signal(server, ready)
    print("Server closed.", flush=True)
