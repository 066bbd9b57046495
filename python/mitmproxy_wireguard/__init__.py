"""Transparently proxy any device that can be configured as a WireGuard client.

Every TCP connection and UDP datagram that a WireGuard peer sends through the tunnel, to whatever address, is
handed to asyncio code: see `start_server`.
"""

from ._mitmproxy_wireguard import Configuration, genkey, pubkey
from .peers import PeerStats
from .server import Refusal, Server, ServerError, start_server
from .stream import TcpStream

__all__ = [
    "Configuration",
    "PeerStats",
    "Refusal",
    "Server",
    "ServerError",
    "TcpStream",
    "genkey",
    "pubkey",
    "start_server",
]
