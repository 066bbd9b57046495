"""Transparently proxy any device that can be configured as a WireGuard client.

Every TCP connection and UDP datagram that a WireGuard peer sends through the tunnel, to whatever address, is
handed to asyncio code: see `start_server`. The other end of such a tunnel is here too: `connect` opens one
to a WireGuard server, and connections and datagrams through it.
"""

from ._mitmproxy_wireguard import Configuration, genkey, pubkey
from .client import Tunnel, connect
from .client_sockets import DatagramEndpoint, NoHandshake, TunnelClosed
from .peers import PeerStats
from .server import Refusal, Server, ServerError, start_server
from .stream import TcpStream

__all__ = [
    "Configuration",
    "DatagramEndpoint",
    "NoHandshake",
    "PeerStats",
    "Refusal",
    "Server",
    "ServerError",
    "TcpStream",
    "Tunnel",
    "TunnelClosed",
    "connect",
    "genkey",
    "pubkey",
    "start_server",
]
