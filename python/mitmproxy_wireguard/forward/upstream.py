"""An upstream proxy that every flow goes through: SOCKS5 (TCP with CONNECT, UDP with UDP ASSOCIATE) or an HTTP
proxy (CONNECT, TCP only), with an optional user name and password.

SOCKS5's CONNECT goes through `python-socks`. HTTP CONNECT is read with `h11` rather than that library, whose
client reads the proxy's reply with a single read and drops whatever the destination sent right behind it (a
server that speaks first, as SMTP and SSH do, would lose its greeting). UDP ASSOCIATE, which no asyncio SOCKS
client carries, is in `socks5`. Credentials never appear in messages: an upstream is shown as scheme, host and
port."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import struct
import urllib.parse
from dataclasses import dataclass, field
import h11
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio.v2 import Proxy

from .._program import host_port
from ..server import Address
from . import socks5
from .flows import reason as _reason

SCHEMES = ("socks5", "http")
# The size of an HTTP proxy's reply headers that is accepted.
MAX_HEADERS = 16384

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def reason(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "it closed the connection"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)  # asyncio's text for a failed connect names the address again
    return _reason(e)


class UpstreamError(Exception):
    """The upstream failed a flow; the message is the flow's outcome."""


class UpstreamLost(ConnectionResetError):
    """A connection through the upstream ended because the upstream failed (not the destination); the message
    is the flow's outcome."""


@dataclass
class Association:
    """A SOCKS5 UDP association: the control connection (the association lasts as long as it does) and the
    relay's address, where datagrams go."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    relay: Address


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """`socks5://[user:password@]host:port` or `http://[user:password@]host:port` (user and password
        percent-encoded); raises ValueError naming the part that is wrong, never showing the credentials."""
        parts = urllib.parse.urlsplit(url.strip())
        if "://" not in url:
            # `host:port` parses as a scheme `host` and a path `port`: the scheme is missing.
            where = url.strip().rpartition("@")[2]  # never the credentials
            raise ValueError(
                f"the upstream URL has no scheme: give socks5://{where} (a SOCKS5 proxy) or http://{where} "
                "(an HTTP proxy)"
            )
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"the upstream's scheme must be socks5:// or http:// (or wireguard:PATH for a WireGuard "
                f"tunnel), not {parts.scheme or 'none'}"
            )
        if not parts.hostname:
            raise ValueError("the upstream URL has no host")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not port:
            raise ValueError("the upstream URL needs a port from 1 to 65535 (host:port)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("the upstream URL has nothing after host:port")
        username = urllib.parse.unquote(parts.username) if parts.username is not None else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        if (username is None) != (password is None) or username == "":
            raise ValueError("the upstream URL's credentials are user:password@, both of them")
        if parts.scheme == "socks5" and username is not None and password is not None:
            socks5.password_request(username, password)  # their lengths
        if parts.scheme == "http" and username is not None and ":" in username:
            raise ValueError("an HTTP proxy's user name has no ':'")
        return cls(parts.scheme, parts.hostname, port, username, password)

    def __str__(self) -> str:
        return f"{self.scheme}://{host_port(self.host, self.port)}"

    @property
    def carries_udp(self) -> bool:
        return self.scheme == "socks5"

    async def open_connection(self, host: str, port: int, timeout: float) -> Streams:
        """A connection to `host:port` (an IP address) through the upstream; raises UpstreamError."""
        if self.scheme == "socks5":
            return await self._socks5_connect(host, port, timeout)
        reader, writer = await self._connect(timeout)
        try:
            await asyncio.wait_for(self._http_connect(reader, writer, host, port), timeout)
        except BaseException as e:
            writer.transport.abort()
            if isinstance(e, (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError)):
                raise UpstreamError(f"upstream {self} failed: {reason(e)}") from e
            raise
        return reader, writer

    async def _connect(self, timeout: float) -> Streams:
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise UpstreamError(f"upstream {self} unreachable: {reason(e)}") from e

    async def _socks5_connect(self, host: str, port: int, timeout: float) -> Streams:
        proxy = Proxy(ProxyType.SOCKS5, self.host, self.port, self.username, self.password, rdns=False)
        try:
            stream = await proxy.connect(host, port, timeout=timeout)
        except ProxyConnectionError as e:
            cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
            raise UpstreamError(f"upstream {self} unreachable: {reason(cause)}") from e
        except ProxyTimeoutError as e:
            raise UpstreamError(f"upstream {self} timed out") from e
        except ProxyError as e:
            raise UpstreamError(f"upstream {self} refused: {e}") from e
        except OSError as e:
            raise UpstreamError(f"upstream {self} failed: {reason(e)}") from e
        return stream.reader, stream.writer

    async def _http_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        """Asks the HTTP proxy to connect; its reply's headers are read to their end and no further, so what the
        destination sends next stays in `reader`."""
        target = host_port(host, port)
        headers = [("Host", target)]
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers.append(("Proxy-Authorization", f"Basic {token}"))
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        writer.write(conn.send(h11.Request(method="CONNECT", target=target, headers=headers)))
        await writer.drain()
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError as e:
                raise UpstreamError(f"upstream {self} failed: its reply's headers are too long") from e
            conn.receive_data(head)
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise UpstreamError(f"upstream {self} failed: not an HTTP reply ({e})") from e
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response) and 200 <= event.status_code < 300:
                return
            if isinstance(event, h11.Response):
                status = f"{event.status_code} {event.reason.decode('latin-1')}".strip()
                raise UpstreamError(f"upstream {self} refused: {status}")
            raise UpstreamError(f"upstream {self} failed: not an HTTP reply")

    async def associate(self, timeout: float) -> Association:
        """A SOCKS5 UDP association; raises UpstreamError (also for an HTTP upstream, which has none)."""
        if not self.carries_udp:
            raise UpstreamError(f"refused: upstream {self} is an HTTP proxy, which carries no UDP")
        reader, writer = await self._connect(timeout)
        try:
            relay = await asyncio.wait_for(self._associate(reader, writer), timeout)
        except BaseException as e:
            writer.transport.abort()
            if isinstance(e, socks5.Socks5Error):
                raise UpstreamError(f"upstream {self} refused UDP: {e}") from e
            if isinstance(e, (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError)):
                raise UpstreamError(f"upstream {self} failed UDP: {reason(e)}") from e
            raise
        return Association(reader, writer, relay)

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Address:
        with_password = self.username is not None and self.password is not None
        writer.write(socks5.greeting(with_password))
        method = socks5.chosen_method(await reader.readexactly(2), with_password)
        if method == socks5.USER_PASSWORD:
            assert self.username is not None and self.password is not None
            writer.write(socks5.password_request(self.username, self.password))
            socks5.check_password_reply(await reader.readexactly(2))
        writer.write(socks5.associate_request())
        atyp = socks5.check_reply_head(await reader.readexactly(4))
        first = await reader.readexactly(1)
        rest = await reader.readexactly(socks5.address_size(atyp, first[0]) - 1)
        host, port = socks5.decode_address(atyp, first + rest)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise socks5.Socks5Error("the relay was named, not given by its address") from None
        if ip.is_unspecified:
            # "Send to where you reached me", as servers behind one address reply.
            host = writer.get_extra_info("peername")[0]
        return (host, port)

    async def dns_query(self, server: Address, wire: bytes, timeout: float) -> bytes:
        """The answer of the DNS server at `server`, asked over TCP through the upstream."""
        reader, writer = await self.open_connection(server[0], server[1], timeout)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))
            return await asyncio.wait_for(reader.readexactly(size), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            raise UpstreamError(f"DNS server {host_port(*server)} via upstream {self}: {reason(e)}") from e
        finally:
            writer.transport.abort()


def parse_dns_server(text: str) -> Address:
    """`IP` or `IP:PORT` (`[IPv6]:PORT`), port 53 by default; raises ValueError."""
    parts = urllib.parse.urlsplit("//" + text.strip())
    try:
        port = parts.port or 53
        host = str(ipaddress.ip_address(parts.hostname or ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a DNS server's IP[:PORT]") from None
    return (host, port)
