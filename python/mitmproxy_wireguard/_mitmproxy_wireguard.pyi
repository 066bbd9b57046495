"""Type stubs of the native module. The public names are re-exported by `mitmproxy_wireguard`."""

from typing import Final

class Configuration:
    """The server's key and listen port, and the WireGuard peers (clients) allowed to connect.

    Keys are base64 strings as WireGuard configuration files write them. Invalid values raise `ValueError`
    naming the field.

    ```python
    cfg = Configuration.generate(listen_port=51820, peers=2)
    for text in cfg.pretty_print(endpoint="192.0.2.1:51820"):
        print(text)  # one client configuration per peer
    ```
    """

    @staticmethod
    def generate(listen_port: int = 51820, peers: int = 1) -> Configuration:
        """Fresh keys for the server and `peers` clients. A `listen_port` of 0 lets the system pick a port."""

    @staticmethod
    def custom(
        server_listen_port: int, server_private_key: str, client_private_keys: list[str]
    ) -> Configuration:
        """A configuration from existing keys."""

    def to_json(self) -> str:
        """The configuration as JSON, private keys included."""

    @staticmethod
    def from_json(s: str) -> Configuration:
        """Reads what `to_json` wrote."""

    def pretty_print(
        self, address: str = "10.0.0.1/32", allowed_ips: str = "0.0.0.0/0, ::/0", endpoint: str | None = None
    ) -> list[str]:
        """One WireGuard client configuration text per peer, ready to import into a WireGuard client.

        `address` is the client's tunnel address, `allowed_ips` what it routes into the tunnel, `endpoint` the
        server's address as the client reaches it (default: `127.0.0.1:<listen_port>`).
        """

    @property
    def listen_port(self) -> int:
        """The UDP port the server listens on (0: any free port)."""

    @property
    def server_public_key(self) -> str: ...
    @property
    def client_public_keys(self) -> list[str]: ...
    @property
    def client_private_keys(self) -> list[str]:
        """The private keys of the peers whose keys were generated here."""

    def __eq__(self, other: object) -> bool: ...

def genkey() -> str:
    """A new private key, base64-encoded as `wg genkey` prints it."""

def pubkey(private_key: str) -> str:
    """The public key of a private key, as `wg pubkey` prints it. Raises `ValueError` for an invalid key."""

# The engine below is the package's own plumbing; applications use `start_server`.

WRITE_HIGH_WATER: Final[int]
WRITE_LOW_WATER: Final[int]
EVENT_ESTABLISHED: Final[int]
EVENT_DATA: Final[int]
EVENT_EOF: Final[int]
EVENT_DRAINED: Final[int]
EVENT_CLOSED: Final[int]
EVENT_DATAGRAM: Final[int]
EVENT_SERVER_CLOSED: Final[int]

class Engine:
    def getsockname(self) -> tuple[str, int]: ...
    def wakeup_fd(self) -> int: ...
    def take_events(self) -> list[tuple]: ...  # type: ignore[type-arg]
    def write(self, id: int, data: bytes) -> None: ...
    def write_eof(self, id: int) -> None: ...
    def close_connection(self, id: int) -> None: ...
    def abort_connection(self, id: int) -> None: ...
    def pause_reading(self, id: int) -> None: ...
    def resume_reading(self, id: int) -> None: ...
    def send_datagram(
        self, data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int], peer: int | None = None
    ) -> None: ...
    def close(self) -> None: ...
    def join(self) -> None: ...

def start_engine(host: str, config: Configuration) -> Engine: ...
