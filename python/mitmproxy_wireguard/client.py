"""The other end of the tunnel: a WireGuard client whose TCP connections and UDP datagrams go through a
WireGuard server, opened from asyncio code (`connect`)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import os
import random
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Union

import dns.exception
import dns.message
import dns.rdatatype

from . import _mitmproxy_wireguard as _native
from ._mitmproxy_wireguard import Configuration
from .client_sockets import Address, DatagramEndpoint, NoHandshake, TunnelClosed, _same_ip, _Transport
from .peers import PeerStats

if TYPE_CHECKING:
    from ._mitmproxy_wireguard import _Event

logger = logging.getLogger("mitmproxy_wireguard.client")

ConfigSource = Union[str, "os.PathLike[str]", Configuration]

# How long a query to the tunnel's DNS server waits for its answer, and how often it is sent.
DNS_TIMEOUT = 3.0
DNS_TRIES = 2
# The ephemeral ports (IANA's range) of datagram endpoints.
FIRST_PORT = 49152


class Tunnel:
    """A WireGuard client's tunnel to one server, from `connect`. TCP connections and UDP datagrams opened on it
    go through the server, from the client's tunnel addresses (the configuration's Address).

    WireGuard keeps the session as it does everywhere: the first packet starts a handshake, keys are renewed
    every two minutes while traffic flows, PersistentKeepalive is sent if the configuration asks for it, and a
    server that restarted gets a new handshake. If no handshake completes within 90 s, the connections that
    wait for one fail with `NoHandshake` (a `ConnectionError`) naming the endpoint, and open ones are reset
    with it.
    """

    def __init__(self, engine: _native.Engine, cfg: Configuration) -> None:
        self._engine = engine
        self._cfg = cfg
        self._loop = asyncio.get_running_loop()
        self.endpoint: str = cfg._endpoint or ""
        """The server's address, as the configuration gives it."""
        self._addresses = [ipaddress.ip_interface(a).ip for a in cfg.address]
        self._dns = [d for d in cfg.dns if _is_ip(d)]
        self._connections: dict[int, _Transport] = {}
        # Connections that wait for their handshake: the protocol, and the future that `_open` awaits.
        self._connecting: dict[int, tuple[asyncio.Future[_Transport], asyncio.Protocol, dict[str, Any]]] = {}
        self._datagrams: dict[int, DatagramEndpoint] = {}
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._request_numbers = itertools.count(1)
        self._failure_callbacks: list[Callable[[str], None]] = []
        self._closing = False
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._wakeup_fd = engine.wakeup_fd()
        self._loop.add_reader(self._wakeup_fd, self._process_events)

    @property
    def addresses(self) -> list[str]:
        """The client's tunnel addresses (the configuration's Address, without prefix lengths)."""
        return [str(a) for a in self._addresses]

    def getsockname(self) -> Address:
        """The outer UDP address the tunnel sends from."""
        return self._engine.getsockname()

    async def open_connection(
        self, host: str, port: int, *, limit: int = 2**16
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Opens a TCP connection to `host:port` through the tunnel, as `asyncio.open_connection` opens one:
        asyncio's own `StreamReader` and `StreamWriter`, with half-close (`write_eof`), backpressure (`drain`)
        and `get_extra_info` (`peername`, `sockname`). `host` is an IP address or a name, resolved through the
        tunnel's DNS server when the configuration names one, else with this host's resolver; its addresses of
        the families the tunnel has are tried in turn.

        Raises `ConnectionRefusedError` (a RST answered), `TimeoutError` (no answer within 127 s, as a kernel
        gives up), `OSError` with EHOSTUNREACH, ENETUNREACH or EACCES for an ICMP destination unreachable, `NoHandshake`, a `ConnectionError` (no WireGuard handshake within 90 s), `OSError` if the name does not
        resolve."""
        loop = self._loop
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = await self._open(host, port, protocol)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_connection(
        self, protocol_factory: Any, host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """As `loop.create_connection`: a transport through the tunnel and the protocol made for it."""
        protocol = protocol_factory()
        transport = await self._open(host, port, protocol)
        return transport, protocol

    async def open_datagram(
        self, host: str | None = None, port: int | None = None, *, family: int = socket.AF_UNSPEC
    ) -> DatagramEndpoint:
        """A UDP endpoint inside the tunnel, on a free port of the client's tunnel address. With `host` and
        `port` (a name is resolved as for `open_connection`), it is connected to them: `send` goes there and only
        their datagrams are received; without, `sendto` names each destination (of `family`'s addresses)."""
        remote: Address | None = None
        if host is not None:
            if port is None:
                raise ValueError("invalid port: a remote host needs a port")
            ip = (await self.resolve(host, family))[0]
            remote = (ip, port)
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        if family == socket.AF_UNSPEC:
            family = socket.AF_INET if self._source(socket.AF_INET) else socket.AF_INET6
        return self._bind(self._source_or_raise(family), remote)

    async def resolve(self, host: str, family: int = socket.AF_UNSPEC) -> list[str]:
        """The addresses of `host` that the tunnel can reach (of the families it has addresses of), IPv4 first:
        through the tunnel's DNS server if the configuration names one, else with this host's resolver. An IP
        address is returned as it is. `OSError` (`socket.gaierror`) if there are none."""
        if _is_ip(host):
            return [str(ipaddress.ip_address(host.strip("[]")))]
        families = [f for f in (socket.AF_INET, socket.AF_INET6) if family in (socket.AF_UNSPEC, f)]
        families = [f for f in families if self._source(f)]
        found: list[str] = []
        if self._dns:
            # A and AAAA at once, each on an endpoint of its own: one round trip, not two.
            for answers in await asyncio.gather(*(self._query(host, f) for f in families)):
                found += answers
        else:
            for f in families:
                try:
                    infos = await self._loop.getaddrinfo(host, None, family=f, type=socket.SOCK_STREAM)
                except socket.gaierror:
                    continue
                found += [str(info[4][0]) for info in infos]
        found = list(dict.fromkeys(found))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r} has no address the tunnel can reach")
        return found

    def add_failure_callback(self, callback: Callable[[str], None]) -> None:
        """Calls `callback(reason)` each time no handshake completed within 90 s, after the connections were failed
        and reset with `reason`: for what else depends on the tunnel, its datagram flows say. The tunnel goes on:
        the next packet starts a handshake again."""
        self._failure_callbacks.append(callback)

    async def stats(self) -> PeerStats:
        """The server's statistics as this client sees it: endpoint, last handshake, traffic, open connections
        (see `PeerStats`)."""
        request = next(self._request_numbers)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests[request] = future
        self._engine.request_stats(request)
        stats = await future
        return PeerStats(**stats[0])

    def close(self) -> None:
        """Closes the tunnel: every connection ends (reset) and every datagram endpoint closes."""
        if not self._closing:
            self._closing = True
            self._engine.close()

    async def wait_closed(self) -> None:
        """Waits until the tunnel's engine has stopped."""
        await asyncio.shield(self._closed)

    def __repr__(self) -> str:
        return f"Tunnel(endpoint={self.endpoint!r}, addresses={self.addresses}, connections={len(self._connections)})"

    # Opening.

    async def _open(self, host: str, port: int, protocol: asyncio.Protocol) -> _Transport:
        if self._closing:
            raise TunnelClosed("the tunnel is closed")
        ips = await self.resolve(host)
        error: Exception | None = None
        for ip in ips:
            try:
                return await self._open_ip(ip, port, protocol)
            except (NoHandshake, TunnelClosed):
                raise  # no other address gets further
            except OSError as e:
                error = e
        assert error is not None
        raise error

    async def _open_ip(self, ip: str, port: int, protocol: asyncio.Protocol) -> _Transport:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        src = self._source_or_raise(family)
        id = self._engine.connect((src, 0), (ip, port))
        future: asyncio.Future[_Transport] = self._loop.create_future()
        self._connecting[id] = (future, protocol, {"ip": ip})
        try:
            return await future
        except asyncio.CancelledError:
            # Given up on: the handshake, if it completes, is reset.
            if self._connecting.pop(id, None) is not None or id in self._connections:
                conn = self._connections.pop(id, None)
                try:
                    self._engine.abort_connection(id)
                except RuntimeError:
                    pass
                if conn is not None:
                    conn._lost = True
            raise

    def _source(self, family: int) -> str | None:
        version = 4 if family == socket.AF_INET else 6
        return next((str(a) for a in self._addresses if a.version == version), None)

    def _source_or_raise(self, family: int) -> str:
        src = self._source(family)
        if src is None:
            name = "IPv4" if family == socket.AF_INET else "IPv6"
            raise OSError(
                errno.EADDRNOTAVAIL, f"the tunnel has no {name} address (Address in its configuration)"
            )
        return src

    def _bind(self, src: str, remote: Address | None) -> DatagramEndpoint:
        if self._closing:
            raise TunnelClosed("the tunnel is closed")
        count = 65536 - FIRST_PORT
        start = random.randrange(count)
        for i in range(count):
            port = FIRST_PORT + (start + i) % count
            if port not in self._datagrams:
                endpoint = DatagramEndpoint(self, (src, port), remote)
                self._datagrams[port] = endpoint
                return endpoint
        raise OSError(errno.EADDRNOTAVAIL, "every port of the tunnel's datagram endpoints is taken")

    async def _query(self, host: str, family: int) -> list[str]:
        """The A (IPv4) or AAAA (IPv6) records of `host` from the tunnel's DNS servers, in turn."""
        rdtype = dns.rdatatype.A if family == socket.AF_INET else dns.rdatatype.AAAA
        for server in self._dns:
            query = dns.message.make_query(host, rdtype)
            server_family = socket.AF_INET6 if ":" in server else socket.AF_INET
            if not self._source(server_family):
                continue
            async with self._bind(self._source_or_raise(server_family), (server, 53)) as endpoint:
                for _ in range(DNS_TRIES):
                    endpoint.send(query.to_wire())
                    try:
                        reply = await asyncio.wait_for(self._answer(endpoint, query), DNS_TIMEOUT)
                    except asyncio.TimeoutError:
                        continue
                    return [str(item) for rrset in reply.answer if rrset.rdtype == rdtype for item in rrset]
            logger.debug("the tunnel's DNS server %s did not answer for %s", server, host)
        return []

    @staticmethod
    async def _answer(endpoint: DatagramEndpoint, query: dns.message.Message) -> dns.message.Message:
        while True:
            data = await endpoint.recv()
            try:
                reply = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            if query.is_response(reply):
                return reply

    # Events.

    def _process_events(self) -> None:
        for event in self._engine.take_events():
            try:
                self._dispatch(event)
            except Exception:
                logger.exception("error while handling event %r", event)

    def _dispatch(self, event: _Event) -> None:
        if isinstance(event, _native.ConnectionData):
            conn = self._connections.get(event.id)
            if conn is not None:
                conn._data(event.data)
        elif isinstance(event, _native.ConnectionDrained):
            conn = self._connections.get(event.id)
            if conn is not None:
                conn._drained(event.bytes)
        elif isinstance(event, _native.DatagramReceived):
            endpoint = self._datagrams.get(event.dst[1])
            if endpoint is not None and _same_ip(endpoint._local[0], event.dst[0]):
                endpoint._receive(event.data, event.src)
        elif isinstance(event, _native.ConnectionEstablished):
            self._established(event)
        elif isinstance(event, _native.ConnectionEof):
            conn = self._connections.get(event.id)
            if conn is not None:
                conn._eof()
        elif isinstance(event, _native.ConnectionClosed):
            conn = self._connections.get(event.id)
            if conn is not None:
                if not event.reset:
                    conn._connection_lost(None)
                elif self._closing:
                    # The engine resets every connection as it stops.
                    conn._connection_lost(TunnelClosed("the tunnel was closed"))
                else:
                    conn._connection_lost(ConnectionResetError("Connection reset by peer"))
        elif isinstance(event, _native.ConnectFailed):
            self._connect_failed(event.id, event.reason)
        elif isinstance(event, _native.HandshakeFailed):
            self._handshake_failed(event.endpoint)
        elif isinstance(event, _native.RequestDone):
            future = self._requests.pop(event.request, None)
            if future is not None and not future.done():
                if event.error is not None:
                    future.set_exception(ValueError(event.error))
                else:
                    future.set_result(event.stats)
        elif isinstance(event, _native.ServerClosed):
            self._engine_closed(event.error)

    def _established(self, event: _native.ConnectionEstablished) -> None:
        waiting = self._connecting.pop(event.id, None)
        if waiting is None:
            return  # Given up on: it was reset.
        future, protocol, _ = waiting
        extra = {"peername": event.src, "sockname": event.dst, "socket": None}
        transport = _Transport(self, event.id, protocol, extra)
        self._connections[event.id] = transport
        protocol.connection_made(transport)
        if not future.done():
            future.set_result(transport)

    def _connect_failed(self, id: int, reason: str) -> None:
        waiting = self._connecting.pop(id, None)
        if waiting is None or waiting[0].done():
            return
        v6 = ":" in waiting[2]["ip"]
        # As Linux reports them to `connect`.
        code, text = {
            "refused": (errno.ECONNREFUSED, "Connection refused"),
            "timed-out": (errno.ETIMEDOUT, "Connection timed out"),
            "host-unreachable": (errno.EHOSTUNREACH, "No route to host"),
            "network-unreachable": (errno.ENETUNREACH, "Network is unreachable"),
            "prohibited": (
                (errno.EACCES, "Permission denied") if v6 else (errno.EHOSTUNREACH, "No route to host")
            ),
        }.get(reason, (errno.EADDRNOTAVAIL, "no room for another connection in the tunnel"))
        # OSError makes the subclass of the code: ConnectionRefusedError, TimeoutError, PermissionError...
        waiting[0].set_exception(OSError(code, text))

    def _handshake_failed(self, endpoint: Address) -> None:
        reason = (
            f"no WireGuard handshake with {self.endpoint} ({endpoint[0]}:{endpoint[1]}) completed within 90 s"
        )
        logger.warning("%s", reason)
        for id, (future, _, _) in list(self._connecting.items()):
            if not future.done():
                future.set_exception(NoHandshake(reason))
            self._abort(id)
        self._connecting.clear()
        for id, conn in list(self._connections.items()):
            self._abort(id)
            conn._connection_lost(NoHandshake(reason))
        for callback in list(self._failure_callbacks):
            try:
                callback(reason)
            except Exception:
                logger.exception("error in a failure callback of the tunnel")

    def _abort(self, id: int) -> None:
        try:
            self._engine.abort_connection(id)
        except RuntimeError:
            pass

    def _engine_closed(self, error: str | None) -> None:
        if error is not None:
            logger.error("the tunnel stopped: %s", error)
        self._closing = True
        self._loop.remove_reader(self._wakeup_fd)
        self._engine.join()
        exc = TunnelClosed("the tunnel was closed" if error is None else f"the tunnel stopped: {error}")
        for future, _, _ in self._connecting.values():
            if not future.done():
                future.set_exception(exc)
        self._connecting.clear()
        for conn in list(self._connections.values()):
            conn._connection_lost(exc)
        for endpoint in list(self._datagrams.values()):
            endpoint.close()
        for future in self._requests.values():
            if not future.done():
                future.set_exception(RuntimeError("the tunnel is closed"))
        self._requests.clear()
        if not self._closed.done():
            self._closed.set_result(None)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def _configuration(config: ConfigSource | None, keys: dict[str, Any]) -> Configuration:
    given = {k: v for k, v in keys.items() if v is not None}
    if config is not None:
        if given:
            raise TypeError(f"connect() takes a configuration or keys, not both: {', '.join(given)}")
        if isinstance(config, Configuration):
            return config
        if isinstance(config, str) and ("\n" in config or config.lstrip().startswith("[")):
            return Configuration._client_from_text(config, "<text>")
        path = Path(config)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OSError(e.errno, f"cannot read the client configuration: {e.strerror}", str(path)) from None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ValueError(f"invalid configuration: {path} is not UTF-8 text") from None
        return Configuration._client_from_text(text, str(path))
    missing = [k for k in ("private_key", "public_key", "endpoint", "address") if k not in given]
    if missing:
        raise TypeError(f"connect() needs a configuration, or the keys: {', '.join(missing)} missing")
    for name in ("address", "dns", "allowed_ips"):
        if name in given and not isinstance(given[name], str):
            given[name] = ", ".join(given[name])
    return Configuration._client_from_keys(**given)


@asynccontextmanager
async def connect(
    config: ConfigSource | None = None,
    *,
    private_key: str | None = None,
    public_key: str | None = None,
    endpoint: str | None = None,
    address: str | list[str] | None = None,
    dns: str | list[str] | None = None,
    preshared_key: str | None = None,
    persistent_keepalive: int | None = None,
    allowed_ips: str | list[str] | None = None,
    mtu: int | None = None,
) -> AsyncIterator[Tunnel]:
    """A WireGuard client's tunnel to a server, for the block of an `async with`: TCP connections and UDP
    datagrams through it go out from the server (see `Tunnel`).

    `config` is a client's WireGuard configuration file (a path), its text, or a `Configuration` read from one:
    `[Interface]` PrivateKey, Address (the client's tunnel addresses), DNS; one `[Peer]`, the server: PublicKey,
    Endpoint, AllowedIPs, PresharedKey, PersistentKeepalive. Or, instead, the same by keyword: `private_key`,
    `public_key` (the server's), `endpoint` (`host:port`), `address`, and optionally `dns`, `preshared_key`,
    `persistent_keepalive`, `allowed_ips`, `mtu`. A bad value is a `ValueError` naming the field (and the file's
    line); an endpoint that does not resolve is a `ValueError` too.

    Nothing is sent until the first connection or datagram: the handshake happens then. When the block ends,
    every connection still open is reset.

    ```python
    async with mitmproxy_wireguard.connect("phone.conf") as tunnel:
        reader, writer = await tunnel.open_connection("example.com", 80)
        writer.write(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
        print(await reader.read())
        writer.close()
    ```
    """
    cfg = _configuration(
        config,
        {
            "private_key": private_key,
            "public_key": public_key,
            "endpoint": endpoint,
            "address": address,
            "dns": dns,
            "preshared_key": preshared_key,
            "persistent_keepalive": persistent_keepalive,
            "allowed_ips": allowed_ips,
            "mtu": mtu,
        },
    )
    loop = asyncio.get_running_loop()
    # The endpoint's name may take a lookup: not on the event loop's thread.
    engine = await loop.run_in_executor(None, _native.start_client_engine, cfg)
    tunnel = Tunnel(engine, cfg)
    try:
        yield tunnel
    finally:
        tunnel.close()
        await tunnel.wait_closed()
