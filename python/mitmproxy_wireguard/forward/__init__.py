"""A transparent proxy: every TCP connection and UDP datagram of the peers goes on to the destination it was sent
to, from this host; DNS queries to the tunnel's DNS addresses are answered with this host's resolver.

Destinations on this host itself (loopback, link-local and its own addresses) and the metadata services of cloud
providers (which hand out the host's credentials to whoever asks from it) are refused unless `allow_local` says
otherwise, and so are addresses inside the tunnel (the server's and the peers'), which are not behind this host.
Everything else is reached, private networks around this host included. A refused or unreachable TCP connection is reset; a refused datagram is dropped. Each finished flow is
logged once, on the logger `mitmproxy_wireguard.forward`, with its numbers in the log record's `flow` attribute
(see `Flow.record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from . import Configuration, Server, TcpStream, start_server
from ._program import host_port, serve_until_signal
from .server import Address

logger = logging.getLogger("mitmproxy_wireguard.forward")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CHUNK = 65536
CONNECT_TIMEOUT = 10.0
# A UDP flow ends when no datagram went either way for this long.
UDP_IDLE_TIMEOUT = 60.0
MAX_UDP_FLOWS = 4096
# Datagrams held for a flow whose socket is still being opened.
MAX_PENDING_DATAGRAMS = 64
DNS_PORT = 53
DNS_TIMEOUT = 10.0
DNS_TTL = 60
MAX_DNS_QUERIES = 64
# A DNS-over-TCP connection ends when no query came for this long.
DNS_TCP_IDLE_TIMEOUT = 30.0


def format_address(addr: Address) -> str:
    return host_port(addr[0], addr[1])


def _ip(host: str) -> IPAddress:
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


@dataclass
class Flow:
    """One TCP connection, one UDP flow (the datagrams between two addresses) or one DNS query."""

    protocol: str
    peer: str
    client: Address
    destination: Address
    started: float = field(default_factory=time.monotonic)
    bytes_up: int = 0
    bytes_down: int = 0
    outcome: str = "closed"

    def record(self) -> dict[str, Any]:
        """The flow as a JSON-able dict. `bytes_up` went from the client to the destination, `duration` is in
        seconds."""
        return {
            "event": "flow",
            "protocol": self.protocol,
            "peer": self.peer,
            "client": format_address(self.client),
            "destination": format_address(self.destination),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration": round(time.monotonic() - self.started, 3),
            "outcome": self.outcome,
        }

    def log(self) -> None:
        r = self.record()
        logger.info(
            "%s %s -> %s, peer %s: %d bytes up, %d bytes down, %.3f s, %s",
            self.protocol,
            r["client"],
            r["destination"],
            self.peer,
            self.bytes_up,
            self.bytes_down,
            r["duration"],
            self.outcome,
            extra={"flow": r},
        )


def is_own_address(ip: IPAddress) -> bool:
    """Whether `ip` is an address of this host. The system routes to its own addresses from the address itself,
    which a connected UDP socket shows without sending anything."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((str(ip), 9))
            return _ip(s.getsockname()[0]) == ip
    except OSError:
        return False  # No route: not this host's, and unreachable anyway.


# Cloud metadata services outside the link-local ranges (169.254.169.254 and 169.254.170.2 are link-local):
# AWS over IPv6, Alibaba Cloud, Azure's wire server, Oracle Cloud.
CLOUD_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16", "192.0.0.192")
)


class Policy:
    """Which destinations the proxy connects to."""

    def __init__(self, cfg: Configuration, allow_local: bool = False):
        self.allow_local = allow_local
        self.tunnel_addresses = {ipaddress.ip_interface(a).ip for a in cfg.address}
        for entry in cfg.dns:
            with contextlib.suppress(ValueError):
                self.tunnel_addresses.add(_ip(entry))
        self.tunnel_networks = [
            ipaddress.ip_network(n, strict=False) for peer in cfg.peers for n in peer["allowed_ips"]
        ]

    def refusal(self, host: str) -> str | None:
        """Why the destination is refused, or None if it is not."""
        try:
            ip = _ip(host)
        except ValueError:
            return "not an IP address"
        if ip in self.tunnel_addresses or any(ip in n for n in self.tunnel_networks):
            return "an address inside the tunnel"
        if self.allow_local:
            return None
        if ip.is_unspecified:
            return "the unspecified address"
        if ip.is_loopback:
            return "a loopback address"
        if ip.is_link_local:
            return "a link-local address"
        if ip in CLOUD_METADATA:
            return "a cloud metadata address"
        if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            return "a multicast or broadcast address"
        if is_own_address(ip):
            return "an address of this host"
        return None


class Resolver:
    """Answers DNS queries for A and AAAA records with the host's resolver (`getaddrinfo`); other types get an
    empty answer."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def _lookup(self, name: str, family: int) -> list[str]:
        infos = await asyncio.wait_for(
            self._loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM), DNS_TIMEOUT
        )
        # An IP family's address starts with the host as text (str() for the type checker: other families differ).
        return list(dict.fromkeys(str(_ip(str(info[4][0]))) for info in infos))

    async def _exists(self, name: str) -> bool:
        try:
            await self._lookup(name, socket.AF_UNSPEC)
            return True
        except (OSError, asyncio.TimeoutError):
            return False

    async def answer(self, wire: bytes, tcp: bool = False) -> tuple[bytes | None, str]:
        """The reply to a query in DNS wire format (None for no reply) and a summary for the log."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as e:
            return None, f"malformed query: {e}"
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire(), "not a query of one question"
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(question.rdtype)
        summary = f"{rdtype} {name}"
        if question.rdclass == dns.rdataclass.IN and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            family = socket.AF_INET if question.rdtype == dns.rdatatype.A else socket.AF_INET6
            try:
                addresses = await self._lookup(name, family)
            except asyncio.TimeoutError:
                response.set_rcode(dns.rcode.SERVFAIL)
                summary += ": timed out"
            except OSError:
                if await self._exists(name):
                    summary += ": no address"
                else:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    summary += ": no such name"
            else:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, DNS_TTL, "IN", question.rdtype, addresses)
                )
                summary += ": " + ", ".join(addresses)
        else:
            summary += ": not answered"
        if tcp:
            max_size = 65535
        elif query.edns >= 0:
            max_size = max(512, min(query.payload, 65535))
        else:
            max_size = 512
        try:
            return response.to_wire(max_size=max_size), summary
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(), summary + " (truncated)"


class _UdpFlow(asyncio.DatagramProtocol):
    """The socket of one UDP flow; replies go back to the client through the server."""

    def __init__(self, forwarder: Forwarder, key: tuple[Any, ...], flow: Flow, client: Address, dst: Address):
        self.forwarder = forwarder
        self.key = key
        self.flow = flow
        self.client = client
        self.dst = dst
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] | None = []  # None: datagrams are dropped
        self.last = time.monotonic()
        self.closed = False
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(UDP_IDLE_TIMEOUT, self._check_idle)

    def refuse(self, outcome: str) -> None:
        self.flow.outcome = outcome
        self.pending = None

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.flow.bytes_up += len(data)
        if self.transport is not None:
            self.transport.sendto(data)
        elif self.pending is not None and len(self.pending) < MAX_PENDING_DATAGRAMS:
            self.pending.append(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram transport, though not every Python version's class derives from DatagramTransport.
        transport = cast(asyncio.DatagramTransport, transport)
        if self.closed:
            transport.close()
            return
        self.transport = transport
        for data in self.pending or ():
            transport.sendto(data)
        self.pending = []

    def datagram_received(self, data: bytes, addr: Address) -> None:
        server = self.forwarder.server
        if server is None:
            return
        self.last = time.monotonic()
        self.flow.bytes_down += len(data)
        server.send_datagram(data, self.dst, self.client)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for a datagram sent: the destination is unreachable, datagrams are dropped there.
        self.flow.outcome = f"unreachable: {_reason(exc)}"
        logger.debug("udp %s -> %s: %s", format_address(self.client), format_address(self.dst), exc)

    def _check_idle(self) -> None:
        idle = time.monotonic() - self.last
        if idle < UDP_IDLE_TIMEOUT:
            self.timer = asyncio.get_running_loop().call_later(UDP_IDLE_TIMEOUT - idle, self._check_idle)
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.forwarder._udp.pop(self.key, None)
        self.timer.cancel()
        if self.transport is not None:
            self.transport.close()
        self.pending = None
        self.flow.log()


class Forwarder:
    """The handlers for `start_server`. Set `server` to the running server before traffic arrives, and call
    `close` when done."""

    def __init__(self, cfg: Configuration, allow_local: bool = False):
        self.policy = Policy(cfg, allow_local)
        self.dns_addresses: set[IPAddress] = set()
        for entry in cfg.dns:
            with contextlib.suppress(ValueError):
                self.dns_addresses.add(_ip(entry))
        self.resolver = Resolver()
        self.server: Server | None = None
        self._loop = asyncio.get_running_loop()
        self._peer_keys = cfg.client_public_keys
        self._seen_peers: set[str] = set()
        self._udp: dict[tuple[Any, ...], _UdpFlow] = {}
        self._dns_queries = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _peer_of_datagram(self, src: Address) -> str:
        index = getattr(src, "peer", None)
        if isinstance(index, int) and 0 <= index < len(self._peer_keys):
            return self._peer_keys[index]
        return "?"

    def _seen(self, peer: str, client: Address, endpoint: Address | None = None) -> None:
        """Logs a peer's first flow."""
        if peer not in self._seen_peers:
            self._seen_peers.add(peer)
            outer = f" from {format_address(endpoint)}" if endpoint else ""
            logger.info("peer %s connected%s, tunnel address %s", peer, outer, client[0])

    def _is_dns(self, dst: Address) -> bool:
        try:
            return dst[1] == DNS_PORT and _ip(dst[0]) in self.dns_addresses
        except ValueError:
            return False

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Ends the UDP flows and the tasks still running (and logs them)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for udp in list(self._udp.values()):
            udp.close()

    # TCP.

    async def handle_connection(self, stream: TcpStream) -> None:
        client = stream.get_extra_info("peername")
        dst = stream.get_extra_info("original_dst")
        peer = stream.get_extra_info("peer_public_key", "?")
        self._seen(peer, client, stream.get_extra_info("original_src"))
        flow = Flow("tcp", peer, client, dst)
        try:
            if self._is_dns(dst):
                flow.protocol = "dns-tcp"
                await self._dns_over_tcp(stream, flow)
                return
            refusal = self.policy.refusal(dst[0])
            if refusal is not None:
                flow.outcome = f"refused: {refusal}"
                stream.abort()
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(dst[0], dst[1]), timeout=CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError) as e:
                flow.outcome = f"unreachable: {_reason(e)}"
                stream.abort()
                return
            try:
                flow.outcome = await relay(stream, reader, writer, flow)
            finally:
                writer.close()
        except asyncio.CancelledError:
            flow.outcome = "stopped"
            stream.abort()
            raise
        finally:
            if not stream.is_closing():
                stream.close()
            flow.log()

    async def _dns_over_tcp(self, stream: TcpStream, flow: Flow) -> None:
        queries = 0
        try:
            while True:
                try:
                    size = struct.unpack(
                        "!H", await asyncio.wait_for(stream.readexactly(2), DNS_TCP_IDLE_TIMEOUT)
                    )[0]
                    query = await asyncio.wait_for(stream.readexactly(size), DNS_TCP_IDLE_TIMEOUT)
                except asyncio.IncompleteReadError:
                    break
                flow.bytes_up += 2 + size
                reply, summary = await self.resolver.answer(query, tcp=True)
                queries += 1
                logger.debug("dns-tcp %s: %s", format_address(flow.client), summary)
                if reply is None:
                    break
                stream.write(struct.pack("!H", len(reply)) + reply)
                flow.bytes_down += 2 + len(reply)
                await stream.drain()
        except (OSError, asyncio.TimeoutError) as e:
            flow.outcome = f"{queries} queries, then {_reason(e)}"
            return
        flow.outcome = f"{queries} queries"

    # UDP.

    def receive_datagram(self, data: bytes, src: Address, dst: Address) -> None:
        peer = self._peer_of_datagram(src)
        self._seen(peer, src)
        if self._is_dns(dst):
            self._dns_over_udp(data, peer, src, dst)
            return
        key = (getattr(src, "peer", None), src[0], src[1], dst[0], dst[1])
        udp = self._udp.get(key)
        if udp is None:
            if len(self._udp) >= MAX_UDP_FLOWS:
                logger.debug("dropped a datagram to %s: too many UDP flows", format_address(dst))
                return
            udp = _UdpFlow(self, key, Flow("udp", peer, src, dst), src, dst)
            self._udp[key] = udp
            refusal = self.policy.refusal(dst[0])
            if refusal is not None:
                udp.refuse(f"refused: {refusal}")
            else:
                self._spawn(self._open_udp(udp))
        udp.send(data)

    async def _open_udp(self, udp: _UdpFlow) -> None:
        try:
            await self._loop.create_datagram_endpoint(lambda: udp, remote_addr=(udp.dst[0], udp.dst[1]))
        except OSError as e:
            udp.refuse(f"unreachable: {_reason(e)}")

    def _dns_over_udp(self, data: bytes, peer: str, src: Address, dst: Address) -> None:
        if self._dns_queries >= MAX_DNS_QUERIES:
            logger.debug("dropped a DNS query from %s: too many queries at once", format_address(src))
            return
        self._dns_queries += 1
        self._spawn(self._answer_udp(data, Flow("dns", peer, src, dst, bytes_up=len(data)), src, dst))

    async def _answer_udp(self, data: bytes, flow: Flow, src: Address, dst: Address) -> None:
        try:
            reply, flow.outcome = await self.resolver.answer(data)
            if reply is not None and self.server is not None:
                self.server.send_datagram(reply, dst, src)
                flow.bytes_down = len(reply)
        finally:
            self._dns_queries -= 1
            flow.log()


async def relay(
    stream: TcpStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flow: Flow
) -> str:
    """Copies both ways until both ways have ended and returns the outcome. The end of one way's data is passed
    on as such (half-close); a reset on one side resets the other."""

    def up(n: int) -> None:
        flow.bytes_up += n

    def down(n: int) -> None:
        flow.bytes_down += n

    upstream = asyncio.ensure_future(_copy(stream, writer, up, "client", "destination"))
    downstream = asyncio.ensure_future(_copy(reader, stream, down, "destination", "client"))
    try:
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        failed = [t for t in (upstream, downstream) if t.done() and t.exception() is not None]
        if failed or not (upstream.done() and downstream.done()):
            upstream.cancel()
            downstream.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            abort(writer)
            stream.abort()
    if failed:
        return str(failed[0].exception())
    return "closed"


class _Broken(Exception):
    """One side of a relayed connection failed."""


async def _copy(src: Any, dst: Any, count: Callable[[int], None], src_name: str, dst_name: str) -> None:
    while True:
        try:
            data = await src.read(CHUNK)
        except OSError as e:
            raise _Broken(f"reset by {src_name}: {_reason(e)}") from e
        if not data:
            break
        try:
            dst.write(data)
            count(len(data))
            await dst.drain()
        except OSError as e:
            raise _Broken(f"reset by {dst_name}: {_reason(e)}") from e
    if dst.can_write_eof() and not dst.is_closing():
        with contextlib.suppress(OSError):
            dst.write_eof()


def abort(writer: asyncio.StreamWriter) -> None:
    """Ends a connection to a destination with a reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def serve(
    host: str,
    cfg: Configuration,
    *,
    allow_local: bool = False,
    announce: Callable[[Server], None] | None = None,
) -> None:
    """Runs the proxy on `host` and the configuration's listen port until SIGINT or SIGTERM; raises `ServerError`
    if the server fails. `announce(server)`
    tells users how to connect once the server runs."""
    forwarder = Forwarder(cfg, allow_local)
    server = await start_server(host, cfg, forwarder.handle_connection, forwarder.receive_datagram)
    forwarder.server = server
    try:
        await serve_until_signal(server, lambda: announce(server) if announce is not None else None)
    finally:
        await forwarder.close()
    logger.info("server closed")
