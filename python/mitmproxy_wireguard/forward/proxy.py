"""The proxy as a whole: the handlers `start_server` calls, which hand each flow to its part (TCP, UDP, DNS),
and `serve`, which runs them.

A client's TCP connection is answered as its destination answers the proxy: the proxy holds the client's SYN
(`accept_connection`), connects to the destination, and only then lets the handshake complete; a refused
connection is refused to the client, with a RST, an ICMP destination-unreachable or silence (see
`tcp.refusal`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable

from .. import Configuration, Refusal, Server, TcpStream, start_server
from .._program import serve_until_signal
from ..server import Address
from .flows import Flow, IPAddress, format_address, ip_of, logger
from .limits import Limits
from .policy import Policy
from .resolver import DNS_PORT, Resolver, dns_over_tcp, upstream_answer
from .tcp import Dialed, dial, failure, forward_connection, refusal
from .udp import UdpFlows
from .upstream import UpstreamError
from .wireguard import AnyUpstream, WireGuardUpstream

# How long a connection to a destination waits for the client's handshake to complete once the proxy accepted
# its SYN: a little longer than the server keeps a half-open connection.
UNCLAIMED_TIMEOUT = 70.0

FlowKey = tuple[str, Address, Address]


def flow_key(peer: str, client: Address, dst: Address) -> FlowKey:
    """A TCP connection of a peer's, as both `accept_connection` and `handle_connection` name it."""
    return (peer, (client[0], client[1]), (dst[0], dst[1]))


class Forwarder:
    """The handlers for `start_server`. Set `server` to the running server before traffic arrives, and call
    `close` when done."""

    def __init__(
        self,
        cfg: Configuration,
        allow_local: bool = False,
        limits: Limits | None = None,
        upstream: AnyUpstream | None = None,
        upstream_dns: Address | None = None,
        policy: Policy | None = None,
    ):
        """`upstream`: every flow goes through it (a `WireGuardUpstream` must be started). `upstream_dns`: DNS
        queries to the tunnel's DNS addresses go to this DNS server through `upstream` (which it needs), instead
        of this host's resolver: over TCP through a proxy, as they came (UDP or TCP) through a WireGuard tunnel.
        `policy`: one the caller keeps up to date as peers change (default: from `cfg` and `allow_local`)."""
        if upstream_dns is not None and upstream is None:
            raise ValueError("upstream_dns needs an upstream")
        self.limits = limits or Limits()
        self.upstream = upstream
        self.upstream_dns = upstream_dns
        self.policy = policy if policy is not None else Policy(cfg, allow_local)
        self.dns_addresses: set[IPAddress] = set()
        for entry in cfg.dns:
            with contextlib.suppress(ValueError):
                self.dns_addresses.add(ip_of(entry))
        self.resolver = Resolver(self.limits)
        self._server: Server | None = None
        self._loop = asyncio.get_running_loop()
        self._seen_peers: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp = UdpFlows(self.policy, self.limits, self._spawn, upstream)
        # Connections to destinations whose client's SYN was accepted, until `handle_connection` takes them.
        self._dialed: dict[FlowKey, tuple[Dialed, Flow, asyncio.TimerHandle]] = {}

    @property
    def server(self) -> Server | None:
        return self._server

    @server.setter
    def server(self, server: Server | None) -> None:
        self._server = server
        self._udp.server = server

    @staticmethod
    def _peer_of_datagram(src: Address) -> str:
        """The public key of the peer a datagram came from, which the server gives its source address: peers
        added while the server runs included."""
        key = getattr(src, "peer_public_key", None)
        return key if isinstance(key, str) else "?"

    def _seen(self, peer: str, client: Address, endpoint: Address | None = None) -> None:
        """Logs a peer's first flow."""
        if peer not in self._seen_peers:
            self._seen_peers.add(peer)
            outer = f" from {format_address(endpoint)}" if endpoint else ""
            logger.info("peer %s connected%s, tunnel address %s", peer, outer, client[0])

    def _is_dns(self, dst: Address) -> bool:
        try:
            return dst[1] == DNS_PORT and ip_of(dst[0]) in self.dns_addresses
        except ValueError:
            return False

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Ends the UDP flows and the tasks still running (and logs them), and the resolver's threads."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for key in list(self._dialed):
            self._unclaimed(key, "stopped")
        self._udp.close()
        self.resolver.pool.close()

    async def accept_connection(self, peer: str, client: Address, dst: Address) -> bool | Refusal:
        """A client's SYN: the policy, then the connection to the destination decide what the client gets. A
        connection made waits for `handle_connection`; a refused one is logged here."""
        if self._is_dns(dst):
            return True  # Answered here, or through the upstream: `handle_connection` decides.
        flow = Flow("tcp", peer, client, dst)
        why = self.policy.refusal(dst[0])
        if why is not None:
            flow.outcome = f"refused: {why}"
            self._seen(peer, client)
            flow.log()
            return Refusal.PROHIBITED
        try:
            dialed = await dial(dst, self.limits, self.upstream)
        except (UpstreamError, OSError, asyncio.TimeoutError) as e:
            flow.outcome = failure(e)
            # An accepted connection's peer is logged by `handle_connection`, with its endpoint.
            self._seen(peer, client)
            flow.log()
            return refusal(e)
        except asyncio.CancelledError:
            flow.outcome = "stopped"
            flow.log()
            raise
        key = flow_key(peer, client, dst)
        if key in self._dialed:
            self._unclaimed(key, "replaced by a new connection")
        timer = self._loop.call_later(
            UNCLAIMED_TIMEOUT, self._unclaimed, key, "the client did not complete its handshake"
        )
        self._dialed[key] = (dialed, flow, timer)
        return True

    def _unclaimed(self, key: FlowKey, outcome: str) -> None:
        """Ends a connection to a destination that no client connection took."""
        entry = self._dialed.pop(key, None)
        if entry is not None:
            (_, writer), flow, timer = entry
            timer.cancel()
            writer.close()
            flow.outcome = outcome
            flow.log()

    async def handle_connection(self, stream: TcpStream) -> None:
        client = stream.get_extra_info("peername")
        dst = stream.get_extra_info("original_dst")
        peer = stream.get_extra_info("peer_public_key", "?")
        self._seen(peer, client, stream.get_extra_info("original_src"))
        dialed: Dialed | None = None
        entry = self._dialed.pop(flow_key(peer, client, dst), None)
        if entry is not None:
            dialed, flow, timer = entry
            timer.cancel()
        else:
            flow = Flow("tcp", peer, client, dst)
        try:
            if self._is_dns(dst):
                flow.protocol = "dns-tcp"
                if self.upstream_dns is not None:
                    # The client's DNS-over-TCP connection goes whole to the DNS server, through the upstream.
                    await forward_connection(stream, flow, self.limits, self.upstream, self.upstream_dns)
                else:
                    await dns_over_tcp(self.resolver, stream, flow)
                return
            if dialed is None:
                why = self.policy.refusal(dst[0])
                if why is not None:
                    flow.outcome = f"refused: {why}"
                    stream.abort()
                    return
            await forward_connection(stream, flow, self.limits, self.upstream, dialed=dialed)
        except asyncio.CancelledError:
            flow.outcome = "stopped"
            stream.abort()
            if dialed is not None:
                dialed[1].close()
            raise
        finally:
            if not stream.is_closing():
                stream.close()
            flow.log()

    def receive_datagram(self, data: bytes, src: Address, dst: Address) -> None:
        peer = self._peer_of_datagram(src)
        self._seen(peer, src)
        if self._is_dns(dst):
            self._dns_over_udp(data, peer, src, dst)
        else:
            self._udp.receive(data, peer, src, dst)

    def _dns_over_udp(self, data: bytes, peer: str, src: Address, dst: Address) -> None:
        # Checked before a task is made for it: a flood of queries beyond the peer's share costs no more.
        if not self.resolver.pool.shares.admits(peer):
            logger.debug("dropped a DNS query from %s: too many lookups in progress", format_address(src))
            return
        self._spawn(self._answer_udp(data, Flow("dns", peer, src, dst, bytes_up=len(data)), src, dst))

    async def _answer_udp(self, data: bytes, flow: Flow, src: Address, dst: Address) -> None:
        try:
            if self.upstream is not None and self.upstream_dns is not None:
                reply, flow.outcome = await upstream_answer(
                    self.upstream, self.upstream_dns, self.resolver.pool.shares, data, flow.peer
                )
            else:
                reply, flow.outcome = await self.resolver.answer(data, flow.peer)
            if reply is not None and self.server is not None:
                self.server.send_datagram(reply, dst, src)
                flow.bytes_down = len(reply)
        finally:
            flow.log()


async def serve(
    host: str,
    cfg: Configuration,
    *,
    allow_local: bool = False,
    limits: Limits | None = None,
    announce: Callable[[Server], None] | None = None,
    upstream: AnyUpstream | None = None,
    upstream_dns: Address | None = None,
    policy: Policy | None = None,
) -> None:
    """Runs the proxy on `host` and the configuration's listen port until SIGINT or SIGTERM; raises `ServerError`
    if the server fails. `limits` sets timeouts and each peer's share (see `Limits`); `announce(server)` tells
    users how to connect once the server runs; `upstream`, `upstream_dns` and `policy` as for `Forwarder`. A
    `WireGuardUpstream` is started first (`UpstreamError` if it cannot be) and closed at the end; if its tunnel
    stops on its own, so does the proxy, with `UpstreamError`."""
    async with contextlib.AsyncExitStack() as stack:
        tunnel: WireGuardUpstream | None = None
        if isinstance(upstream, WireGuardUpstream):
            await upstream.start()
            stack.push_async_callback(upstream.close)
            tunnel = upstream
        forwarder = Forwarder(cfg, allow_local, limits, upstream, upstream_dns, policy)
        server = await start_server(
            host,
            cfg,
            forwarder.handle_connection,
            forwarder.receive_datagram,
            accept_connection=forwarder.accept_connection,
        )
        forwarder.server = server
        # A tunnel that stops on its own (its engine failed) stops the proxy: every flow would fail.
        stopped: asyncio.Future[None] | None = None
        if tunnel is not None:
            stopped = asyncio.ensure_future(tunnel.wait_closed())
            stopped.add_done_callback(lambda f: None if f.cancelled() else server.close())
        tunnel_stopped = False
        try:
            await serve_until_signal(server, lambda: announce(server) if announce is not None else None)
        finally:
            if stopped is not None:
                tunnel_stopped = stopped.done() and not stopped.cancelled()
                stopped.cancel()
            await forwarder.close()
        if tunnel_stopped:
            raise UpstreamError(f"upstream {upstream}: its tunnel stopped (the error is logged above)")
    logger.info("server closed")
