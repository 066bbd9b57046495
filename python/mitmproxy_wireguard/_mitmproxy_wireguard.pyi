"""Type stubs of the native module. The public names are re-exported by `mitmproxy_wireguard`."""

import os
from typing import Any, Final, TypeAlias, Union, final

__all__ = [
    "genkey",
    "pubkey",
    "Configuration",
    "Engine",
    "start_engine",
    "start_client_engine",
    "WRITE_HIGH_WATER",
    "WRITE_LOW_WATER",
    "ConnectionRequested",
    "ConnectionEstablished",
    "ConnectionData",
    "ConnectionEof",
    "ConnectionDrained",
    "ConnectionClosed",
    "DatagramReceived",
    "ConnectFailed",
    "HandshakeFailed",
    "RequestDone",
    "ServerClosed",
]

@final
class Configuration:
    """The server's key, listen port and tunnel settings, and the WireGuard peers (clients) allowed to connect.

    Keys are base64 strings as WireGuard configuration files write them. Invalid values raise `ValueError`
    naming the field; a configuration file's errors name the file and line too.

    Tunnel addresses: the server's `address` (10.0.0.1/16 and fd00::1/64 unless a file says otherwise) names
    the tunnel's networks. A peer added without an address gets host number n of each network, 10.0.0.n/32 and
    fd00::n/128 (n in hex there), for the lowest n whose addresses are free: not the server's, not a DNS
    address, not another peer's. So the first peers get 10.0.0.2 and fd00::2, 10.0.0.3 and fd00::3, ...
    A peer's addresses are its AllowedIPs: the server drops its packets from any other source address, as
    WireGuard does. A peer without addresses (as in JSON of earlier versions) may use any.

    ```python
    cfg = Configuration.generate(listen_port=51820, peers=2)
    cfg.add_peer(public_key=phone_public_key)  # a device with its own key
    cfg.to_file("wg0.conf")
    for text in cfg.pretty_print(endpoint="192.0.2.1:51820"):
        print(text)  # one client configuration per peer
    ```
    """

    @staticmethod
    def generate(listen_port: int = 51820, peers: int = 1) -> Configuration:
        """Fresh keys for the server and `peers` clients, each with its own tunnel addresses, and the default
        tunnel settings: address 10.0.0.1/16 and fd00::1/64, DNS 10.0.0.53 and fd00::53, MTU 1420. A
        `listen_port` of 0 lets the system pick a port."""

    @staticmethod
    def custom(
        server_listen_port: int, server_private_key: str, client_private_keys: list[str]
    ) -> Configuration:
        """A configuration from existing keys, with the default tunnel settings."""

    @staticmethod
    def _from_keys(listen_port: int, private_key: str, peer_public_keys: list[str]) -> Configuration: ...
    @staticmethod
    def _from_bytes(data: bytes, file: str) -> Configuration: ...
    @staticmethod
    def _client_from_text(text: str, file: str) -> Configuration: ...
    @staticmethod
    def _client_from_keys(
        private_key: str,
        public_key: str,
        endpoint: str,
        address: str,
        dns: str | None = None,
        preshared_key: str | None = None,
        persistent_keepalive: int | None = None,
        allowed_ips: str | None = None,
        mtu: int | None = None,
    ) -> Configuration: ...
    @property
    def _endpoint(self) -> str | None: ...
    def to_json(self) -> str:
        """The configuration as JSON, private keys included."""

    @staticmethod
    def from_json(s: str) -> Configuration:
        """Reads what `to_json` wrote."""

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Configuration:
        """Reads a WireGuard configuration file in wg-quick's format.

        `[Interface]`: PrivateKey, ListenPort, Address (the server's tunnel addresses), DNS and MTU (what client
        configurations get). `[Peer]`, one for each peer: PublicKey, PresharedKey, AllowedIPs (the peer's tunnel
        addresses), PersistentKeepalive. Names are case-insensitive, `#` starts a comment. A comment
        `# PrivateKey = <key>` in a `[Peer]` section is the client's private key, which `to_file` writes for the
        peers whose keys were generated here. Any other key is an error: `ValueError` names the file, the line
        and the field.
        """

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Writes the configuration as a WireGuard configuration file that `from_file` reads back unchanged,
        readable by its owner only."""

    def add_peer(
        self,
        public_key: str | None = None,
        preshared_key: str | None = None,
        *,
        private_key: str | None = None,
        address: str | None = None,
        persistent_keepalive: int | None = None,
    ) -> str:
        """Adds a peer and returns its public key.

        Without keys, a private key is generated (and kept, for its client configuration). `address` is the
        peer's tunnel addresses, comma-separated (default: the next free ones). A running server keeps the peers
        it was started with: see `Server.add_peer`.
        """

    def remove_peer(self, public_key: str) -> None:
        """Removes the peer with this public key; `ValueError` if there is none."""

    def pretty_print(
        self,
        address: str | None = None,
        allowed_ips: str = "0.0.0.0/0, ::/0",
        endpoint: str | None = None,
        *,
        dns: str | None = None,
        mtu: int | None = None,
    ) -> list[str]:
        """One WireGuard client configuration text per peer, ready to import into a WireGuard client.

        `address` is the client's tunnel address (default: each peer's own; the server drops packets from
        addresses that are not the peer's), `allowed_ips` what it routes into the tunnel, `endpoint` the
        server's address as the client reaches it (default: `127.0.0.1:<listen_port>`), `dns` its resolvers,
        comma-separated ("" for none; default: the configuration's DNS) and `mtu` its MTU (0 for none;
        default: the configuration's MTU, else 1420).

        A peer whose private key is not here (the device made its own) gets a template: its `PrivateKey` is the
        placeholder `<the device's own key>`, for the device's key.
        """

    @property
    def listen_port(self) -> int:
        """The UDP port the server listens on (0: any free port)."""

    @listen_port.setter
    def listen_port(self, value: int) -> None: ...
    @property
    def server_public_key(self) -> str: ...
    @property
    def client_public_keys(self) -> list[str]: ...
    @property
    def client_private_keys(self) -> list[str]:
        """The private keys of the peers whose keys were generated here."""

    @property
    def address(self) -> list[str]:
        """The server's tunnel addresses, with their networks' prefix lengths."""

    @property
    def dns(self) -> list[str]:
        """The resolvers that client configurations name."""

    @property
    def mtu(self) -> int | None:
        """The MTU that client configurations name."""

    @property
    def peers(self) -> list[dict[str, Any]]:
        """Each peer: `public_key`, `private_key` and `preshared_key` (or None), `allowed_ips` (a list) and
        `persistent_keepalive` (seconds, or None)."""

    def __eq__(self, value: object, /) -> bool: ...

def genkey() -> str:
    """A new private key, base64-encoded as `wg genkey` prints it."""

def pubkey(private_key: str) -> str:
    """The public key of a private key, as `wg pubkey` prints it. Raises `ValueError` for an invalid key."""

# The engine below is the package's own plumbing; applications use `start_server`.

WRITE_HIGH_WATER: Final[int]
WRITE_LOW_WATER: Final[int]

# `Engine.take_events` returns the events of the engine, an object of one of these classes each: the one
# description of the format. `id` names a connection, `peer` a peer by its id; addresses are `(host, port)`.
_Address: TypeAlias = tuple[str, int]

@final
class ConnectionRequested:
    """A client's SYN, which waits for `Engine.answer_connection` (only from an engine started with
    `ask_first`). `endpoint` is the peer's outer UDP address, `src` the client's address inside the tunnel,
    `dst` the destination it asked for."""

    @property
    def id(self) -> int: ...
    @property
    def peer_public_key(self) -> str: ...
    @property
    def endpoint(self) -> _Address: ...
    @property
    def src(self) -> _Address: ...
    @property
    def dst(self) -> _Address: ...

@final
class ConnectionEstablished:
    """A TCP handshake completed. `endpoint` is the peer's outer UDP address, `src` the client's address inside
    the tunnel, `dst` the destination it asked for."""

    @property
    def id(self) -> int: ...
    @property
    def peer_public_key(self) -> str: ...
    @property
    def endpoint(self) -> _Address: ...
    @property
    def src(self) -> _Address: ...
    @property
    def dst(self) -> _Address: ...

@final
class ConnectionData:
    """Bytes the client sent."""

    @property
    def id(self) -> int: ...
    @property
    def data(self) -> bytes: ...

@final
class ConnectionEof:
    """The client sent FIN."""

    @property
    def id(self) -> int: ...

@final
class ConnectionDrained:
    """This many written bytes were handed to the TCP stack."""

    @property
    def id(self) -> int: ...
    @property
    def bytes(self) -> int: ...

@final
class ConnectionClosed:
    """The connection is gone; `reset` if by an abort or a timeout, not an orderly close."""

    @property
    def id(self) -> int: ...
    @property
    def reset(self) -> bool: ...

@final
class DatagramReceived:
    """A UDP datagram from a peer: `peer` is its id (a reply sent with it reaches that peer), `peer_public_key`
    its key."""

    @property
    def data(self) -> bytes: ...
    @property
    def src(self) -> _Address: ...
    @property
    def dst(self) -> _Address: ...
    @property
    def peer(self) -> int: ...
    @property
    def peer_public_key(self) -> str: ...

@final
class RequestDone:
    """The answer to the request numbered `request` (`add_peer`, `remove_peer`, `request_stats`), after every
    event it caused. `error` is why it was refused (a ValueError), else None; `stats` the peers' statistics for
    `request_stats` (the fields of `PeerStats`), else None; `allowed_ips` the AllowedIPs a peer got from
    `add_peer`, else None."""

    @property
    def request(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def stats(self) -> list[dict[str, Any]] | None: ...
    @property
    def allowed_ips(self) -> list[str] | None: ...

@final
class ServerClosed:
    """Every task of the engine ended; `error` says why if it was not asked to close (a task failed), else
    None."""

    def __new__(cls, error: str | None = None) -> ServerClosed: ...
    @property
    def error(self) -> str | None: ...

@final
class ConnectFailed:
    """A connection that Python opened (`Engine.connect`) was not established: `reason` is "refused" (a RST
    answered), "timed-out" (no answer), "no-room" (no free port, or the connection limit), or from an ICMP
    destination unreachable, "host-unreachable", "network-unreachable" or "prohibited"."""

    @property
    def id(self) -> int: ...
    @property
    def reason(self) -> str: ...

@final
class HandshakeFailed:
    """No WireGuard handshake with the peer completed within 90 s of trying; `endpoint` is where they were sent."""

    @property
    def peer_public_key(self) -> str: ...
    @property
    def endpoint(self) -> _Address: ...

_Event: TypeAlias = Union[
    ConnectionRequested,
    ConnectionEstablished,
    ConnectionData,
    ConnectionEof,
    ConnectionDrained,
    ConnectionClosed,
    DatagramReceived,
    ConnectFailed,
    HandshakeFailed,
    RequestDone,
    ServerClosed,
]

@final
class Engine:
    def getsockname(self) -> _Address: ...
    def wakeup_fd(self) -> int: ...
    def take_events(self) -> list[_Event]: ...
    def answer_connection(self, id: int, answer: str) -> None:
        """Answers a `ConnectionRequested`: "accept" (the SYN-ACK), "reset" (a RST), "host-unreachable",
        "network-unreachable" or "prohibited" (an ICMP destination unreachable with that code) or "silence"
        (nothing, until the handshake times out). `ValueError` for any other answer."""

    def connect(self, src_addr: _Address, dst_addr: _Address) -> int:
        """Opens a TCP connection to `dst_addr` through the tunnel to the first peer (a client's server), from
        `src_addr` (port 0: a free one). Returns its id at once; `ConnectionEstablished` with it follows the
        handshake, or `ConnectFailed`."""

    def write(self, id: int, data: bytes) -> None: ...
    def write_eof(self, id: int) -> None: ...
    def close_connection(self, id: int) -> None: ...
    def abort_connection(self, id: int) -> None: ...
    def pause_reading(self, id: int) -> None: ...
    def resume_reading(self, id: int) -> None: ...
    def send_datagram(
        self, data: bytes, src_addr: _Address, dst_addr: _Address, peer: int | None = None
    ) -> None: ...
    def start_capture(self, path: str | os.PathLike[str]) -> None: ...
    def stop_capture(self) -> None: ...
    def add_peer(
        self,
        request: int,
        public_key: str,
        allowed_ips: str | None = None,
        preshared_key: str | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        """Adds a peer to the running server: `RequestDone` with `request` follows once it may handshake, with its
        AllowedIPs (given, or the next free tunnel addresses), or the error that refused it (a key or addresses
        another peer has)."""

    def remove_peer(self, request: int, public_key: str) -> None:
        """Removes a peer from the running server; `RequestDone` with `request` follows once its connections were
        reset, or with the error if the server has no such peer."""

    def request_stats(self, request: int) -> None: ...
    def close(self) -> None: ...
    def join(self) -> None: ...

def start_engine(host: str, config: Configuration, ask_first: bool = False) -> Engine: ...
def start_client_engine(config: Configuration) -> Engine: ...
