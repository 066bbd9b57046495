"""An upstream that is a WireGuard tunnel (`forward --upstream wireguard:PATH`): every flow goes out through the
server that a client configuration (wg-quick format) describes, from the client's tunnel address there, by way
of this package's own client (`mitmproxy_wireguard.connect`).

TCP connections are the tunnel's connections, UDP flows its datagram endpoints, and DNS queries go to the
tunnel's DNS server (the configuration's DNS) through it, over UDP as they came. A destination that refuses, or
does not answer, gets the client the same answer as without an upstream. When no handshake with the server
completes within 90 s, the tunnel fails the flows it carries, each with that reason; the next packet starts a
handshake again."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from pathlib import Path
from typing import Callable, Union

from .. import client
from .._mitmproxy_wireguard import Configuration
from .._program import host_port
from ..client import Tunnel
from ..client_sockets import DatagramEndpoint, NoHandshake, TunnelClosed
from ..server import Address
from .upstream import Streams, Upstream, UpstreamError, UpstreamLost

SCHEME = "wireguard"
# How often a DNS query is sent again over UDP while no answer came, within its timeout.
DNS_RETRY = 3.0


class _Protocol(asyncio.StreamReaderProtocol):
    """A stream's protocol that tells the tunnel's failure from a destination's reset: the tunnel fails its
    connections with `NoHandshake` or `TunnelClosed`."""

    def __init__(self, upstream: WireGuardUpstream, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._upstream = upstream

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, (NoHandshake, TunnelClosed)):
            exc = UpstreamLost(f"upstream {self._upstream} failed: {exc}")
        super().connection_lost(exc)


class WireGuardUpstream:
    """The tunnel of the client configuration at `path` (read with `from_file`). `start` opens the tunnel
    (nothing is sent until the first flow), `close` closes it."""

    carries_udp = True

    def __init__(self, path: Path, cfg: Configuration) -> None:
        self.path = path
        self.cfg = cfg
        self.endpoint: str = cfg._endpoint or ""
        # The tunnel's DNS servers (DNS may hold search domains too).
        self.dns_servers: list[Address] = []
        for entry in cfg.dns:
            with contextlib.suppress(ValueError):
                self.dns_servers.append((str(ipaddress.ip_address(entry)), 53))
        # What the tunnel reaches (AllowedIPs): replies from elsewhere would be dropped.
        self.networks = [
            ipaddress.ip_network(n, strict=False) for peer in cfg.peers for n in peer["allowed_ips"]
        ]
        self._tunnel: Tunnel | None = None
        self._stack = contextlib.AsyncExitStack()
        self._failure_callbacks: list[Callable[[str], None]] = []

    @classmethod
    def from_text(cls, text: str) -> WireGuardUpstream:
        """`wireguard:PATH`: reads the client configuration at PATH (`~` expanded); raises ValueError naming the
        path (and the line of a bad field)."""
        name = text.partition(":")[2]
        if not name.strip():
            raise ValueError(f"{SCHEME}: needs the path of a WireGuard client configuration: {SCHEME}:PATH")
        return cls.from_file(Path(name).expanduser())

    @classmethod
    def from_file(cls, path: Path) -> WireGuardUpstream:
        """The upstream of the client configuration at `path`; raises ValueError naming the path (and the line
        of a bad field)."""
        try:
            cfg = client._configuration(os.fspath(path), {})
        except OSError as e:
            raise ValueError(f"{SCHEME}:{path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(str(e)) from None  # It names the file, and the line of a bad field.
        return cls(path, cfg)

    def __str__(self) -> str:
        return f"{SCHEME}:{self.path}"

    @property
    def addresses(self) -> list[str]:
        """The client's tunnel addresses, from which the destinations see the flows."""
        return [str(ipaddress.ip_interface(a).ip) for a in self.cfg.address]

    def describe(self) -> str:
        """For the announcement at start: where the tunnel goes and from which addresses."""
        return f"{self}, the WireGuard tunnel to {self.endpoint} (from {', '.join(self.addresses)})"

    # The tunnel.

    async def start(self) -> None:
        """Opens the tunnel (the endpoint's name is resolved now); raises UpstreamError."""
        try:
            self._tunnel = await self._stack.enter_async_context(client.connect(self.cfg))
        except (OSError, ValueError) as e:
            raise UpstreamError(f"upstream {self}: {e}") from e
        self._tunnel.add_failure_callback(self._failed)

    async def close(self) -> None:
        """Closes the tunnel: the connections still open through it are reset."""
        await self._stack.aclose()

    async def wait_closed(self) -> None:
        """Returns once the tunnel has stopped: closed, or on its own when its engine failed (the error is
        logged by `mitmproxy_wireguard.client`)."""
        await self._running().wait_closed()

    def add_failure_callback(self, callback: Callable[[str], None]) -> None:
        """Calls `callback(outcome)` when the tunnel fails its flows (no handshake within 90 s)."""
        self._failure_callbacks.append(callback)

    def _failed(self, reason: str) -> None:
        for callback in list(self._failure_callbacks):
            callback(f"upstream {self} failed: {reason}")

    def _running(self) -> Tunnel:
        if self._tunnel is None:
            raise UpstreamError(f"upstream {self} is not started")
        return self._tunnel

    def _check(self, dst: Address) -> None:
        """Refuses a destination outside the tunnel's AllowedIPs (UpstreamError), which it cannot reach."""
        ip = ipaddress.ip_address(dst[0].split("%")[0])
        if not any(ip in network for network in self.networks):
            raise UpstreamError(
                f"refused: {host_port(*dst)} is outside the AllowedIPs of upstream {self} "
                f"({', '.join(map(str, self.networks)) or 'none'})"
            )

    def _error(self, e: OSError, dst: Address) -> UpstreamError:
        return UpstreamError(f"upstream {self} failed for {host_port(*dst)}: {e.strerror or e}")

    # Flows.

    async def open_connection(self, host: str, port: int, timeout: float) -> Streams:
        """A connection to `host:port` (an IP address) through the tunnel. A destination that refuses raises
        `ConnectionRefusedError`, one that does not answer within `timeout` `TimeoutError`, as without an
        upstream; one outside the AllowedIPs, or the tunnel's failure, raises UpstreamError."""
        self._check((host, port))
        tunnel = self._running()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = _Protocol(self, reader)
        try:
            transport, _ = await asyncio.wait_for(
                tunnel.create_connection(lambda: protocol, host, port), timeout
            )
        except (ConnectionRefusedError, TimeoutError):
            raise  # The destination's answer (asyncio.TimeoutError is TimeoutError).
        except OSError as e:
            raise self._error(e, (host, port)) from e
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def open_datagram(self, dst: Address) -> DatagramEndpoint:
        """A datagram endpoint of the tunnel connected to `dst` (an IP address); raises UpstreamError (also for
        a destination outside the AllowedIPs)."""
        self._check(dst)
        try:
            return await self._running().open_datagram(dst[0], dst[1])
        except OSError as e:
            raise self._error(e, dst) from e

    async def dns_query(self, server: Address, wire: bytes, timeout: float) -> bytes:
        """The answer of the DNS server at `server` (through the tunnel) to the query `wire`, over UDP: sent
        again every DNS_RETRY seconds until an answer with the query's ID comes, within `timeout`."""
        endpoint = await self.open_datagram(server)
        try:
            return await asyncio.wait_for(self._ask(endpoint, wire), timeout)
        except asyncio.TimeoutError as e:
            raise UpstreamError(f"DNS server {host_port(*server)} via upstream {self}: timed out") from e
        except OSError as e:
            raise UpstreamError(f"DNS server {host_port(*server)} via upstream {self}: {e}") from e
        finally:
            endpoint.close()

    @staticmethod
    async def _ask(endpoint: DatagramEndpoint, wire: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            endpoint.send(wire)
            deadline = loop.time() + DNS_RETRY
            while (remaining := deadline - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(endpoint.recv(), remaining)
                except asyncio.TimeoutError:
                    break
                if data[:2] == wire[:2]:
                    return data


def is_wireguard(text: str) -> bool:
    """Whether an `--upstream` value names a WireGuard tunnel (`wireguard:PATH`) rather than a proxy's URL."""
    return text.strip().lower().startswith(f"{SCHEME}:")


AnyUpstream = Union[Upstream, WireGuardUpstream]


def parse_upstream(text: str) -> AnyUpstream:
    """An upstream from `--upstream`'s value: `wireguard:PATH`, or a proxy's URL; raises ValueError."""
    if is_wireguard(text):
        return WireGuardUpstream.from_text(text.strip())
    # A path given alone (never text with credentials in it, which the message would show).
    if (
        "://" not in text
        and "@" not in text
        and (text.strip().endswith(".conf") or os.path.isfile(text.strip()))
    ):
        raise ValueError(
            f"the upstream has no scheme: give wireguard:{text.strip()} for the WireGuard tunnel of a client "
            "configuration, or a proxy's URL (socks5://HOST:PORT, http://HOST:PORT)"
        )
    return Upstream.from_url(text)
