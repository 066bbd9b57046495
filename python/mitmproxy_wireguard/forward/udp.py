"""UDP flows: the datagrams between a peer's address and a destination go through one socket of this host, and
replies go back into the tunnel; a flow ends after a time without datagrams. With a SOCKS5 upstream, each flow
has a UDP association of its own there, and its datagrams go to the upstream's relay; an HTTP upstream carries
no UDP, so its flows are refused. With a WireGuard upstream, each flow is a datagram endpoint of its tunnel, and
the flows end when the tunnel fails (no handshake within 90 s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, cast

from .._program import host_port
from ..server import Address, Server
from . import socks5
from .flows import Flow, format_address, ip_of, logger, reason, unreachable
from .limits import Limits, Shares
from .policy import Policy
from ..client_sockets import DatagramEndpoint
from .upstream import Association, UpstreamError
from .wireguard import AnyUpstream, WireGuardUpstream

# Datagrams held for a flow whose socket is still being opened.
MAX_PENDING_DATAGRAMS = 64

FlowKey = tuple[Any, ...]


class UdpFlows:
    """The open UDP flows, by the peer and both addresses; each peer has a share of `limits.udp_flows_per_peer`
    (a datagram that would open one more is dropped). Set `server` before traffic arrives."""

    def __init__(
        self,
        policy: Policy,
        limits: Limits,
        spawn: Callable[[Any], None],
        upstream: AnyUpstream | None = None,
    ):
        self.policy = policy
        self.upstream = upstream
        self.idle_timeout = limits.udp_idle_timeout
        self.connect_timeout = limits.connect_timeout
        self.shares = Shares("UDP flows", limits.udp_flows_per_peer, limits.udp_flows)
        self.server: Server | None = None
        self._spawn = spawn
        self._flows: dict[FlowKey, _UdpFlow] = {}
        if isinstance(upstream, WireGuardUpstream):
            upstream.add_failure_callback(self._upstream_failed)

    def receive(self, data: bytes, peer: str, src: Address, dst: Address) -> None:
        """Sends a peer's datagram on, in the flow it belongs to (opened if new)."""
        key = (getattr(src, "peer", None), src[0], src[1], dst[0], dst[1])
        udp = self._flows.get(key)
        if udp is None:
            if not self.shares.take(peer):
                logger.debug("dropped a datagram to %s: too many UDP flows", format_address(dst))
                return
            udp = _UdpFlow(self, key, Flow("udp", peer, src, dst))
            self._flows[key] = udp
            refusal = self.policy.refusal(dst[0])
            if refusal is not None:
                udp.refuse(f"refused: {refusal}")
            elif self.upstream is not None and not self.upstream.carries_udp:
                udp.refuse(f"refused: upstream {self.upstream} is an HTTP proxy, which carries no UDP")
            else:
                self._spawn(self._open(udp))
        udp.send(data)

    async def _open(self, udp: _UdpFlow) -> None:
        loop = asyncio.get_running_loop()
        dst = udp.flow.destination
        remote = (dst[0], dst[1])
        if isinstance(self.upstream, WireGuardUpstream):
            try:
                endpoint = await self.upstream.open_datagram(remote)
            except UpstreamError as e:
                udp.refuse(str(e))
                logger.debug("udp %s -> %s: %s", format_address(udp.flow.client), format_address(dst), e)
                return
            if udp.closed:
                endpoint.close()
                return
            udp.connection_made(_EndpointTransport(endpoint))
            self._spawn(udp.read_endpoint(endpoint))
            return
        if self.upstream is not None:
            try:
                udp.association = await self.upstream.associate(self.connect_timeout)
            except UpstreamError as e:
                udp.refuse(str(e))
                logger.debug("udp %s -> %s: %s", format_address(udp.flow.client), format_address(dst), e)
                return
            if udp.closed:  # Ended while the association was made.
                udp.association.writer.transport.abort()
                return
            remote = udp.association.relay
            self._spawn(udp.watch_association())
        try:
            await loop.create_datagram_endpoint(lambda: udp, remote_addr=remote)
        except OSError as e:
            udp.refuse(unreachable(e))

    def ended(self, udp: _UdpFlow) -> None:
        if self._flows.pop(udp.key, None) is not None:
            self.shares.give_back(udp.flow.peer)

    def _upstream_failed(self, outcome: str) -> None:
        """The upstream's tunnel failed: the flows through it end, with `outcome`."""
        for udp in list(self._flows.values()):
            if udp.pending is not None:  # Not refused.
                udp.flow.outcome = outcome
                udp.close()

    def close(self) -> None:
        """Ends every flow (and logs it)."""
        for udp in list(self._flows.values()):
            udp.close()


class _EndpointTransport(asyncio.DatagramTransport):
    """A datagram endpoint of a WireGuard upstream's tunnel, as a flow's transport: what it sends goes to the
    endpoint's remote address."""

    def __init__(self, endpoint: DatagramEndpoint) -> None:
        super().__init__()
        self._endpoint = endpoint

    def sendto(self, data: Any, addr: Any = None) -> None:
        try:
            self._endpoint.send(bytes(data))
        except (OSError, RuntimeError):
            pass  # The endpoint or the tunnel is closed: dropped, as a closed socket's would be.

    def close(self) -> None:
        self._endpoint.close()


class _UdpFlow(asyncio.DatagramProtocol):
    """The socket of one UDP flow; replies go back to the client through the server."""

    def __init__(self, flows: UdpFlows, key: FlowKey, flow: Flow):
        self.flows = flows
        self.key = key
        self.flow = flow
        self.transport: asyncio.DatagramTransport | None = None
        self.association: Association | None = None
        self.pending: list[bytes] | None = []  # None: datagrams are dropped
        self.last = time.monotonic()
        self.closed = False
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(flows.idle_timeout, self._check_idle)

    def refuse(self, outcome: str) -> None:
        self.flow.outcome = outcome
        self.pending = None

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.flow.bytes_up += len(data)
        if self.transport is not None:
            self.transport.sendto(self._wrap(data))
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
            transport.sendto(self._wrap(data))
        self.pending = []

    def datagram_received(self, data: bytes, addr: Address) -> None:
        server = self.flows.server
        if server is None:
            return
        if self.association is not None:
            data_or_none = self._unwrap(data)
            if data_or_none is None:
                return
            data = data_or_none
        self.last = time.monotonic()
        self.flow.bytes_down += len(data)
        server.send_datagram(data, self.flow.destination, self.flow.client)

    def _wrap(self, data: bytes) -> bytes:
        if self.association is None:
            return data
        dst = self.flow.destination
        return socks5.pack_datagram(str(ip_of(dst[0])), dst[1], data)

    def _unwrap(self, data: bytes) -> bytes | None:
        """The payload of a datagram from the relay, if it came from the flow's destination (as a connected
        socket's would); else None, and it is dropped."""
        dst = self.flow.destination
        try:
            host, port, payload = socks5.unpack_datagram(data)
            if port == dst[1] and ip_of(host) == ip_of(dst[0]):
                return payload
            problem = f"from {host_port(host, port)}"
        except (socks5.Socks5Error, ValueError) as e:
            problem = str(e)
        logger.debug("udp %s: dropped a datagram from the relay: %s", format_address(dst), problem)
        return None

    async def read_endpoint(self, endpoint: DatagramEndpoint) -> None:
        """Passes the datagrams of a tunnel's endpoint on to the client, until the endpoint is closed."""
        try:
            while True:
                data, src = await endpoint.recvfrom()
                self.datagram_received(data, src)
        except OSError:
            pass  # Closed: the flow ended, or the tunnel did.

    async def watch_association(self) -> None:
        """The association lasts as long as its control connection: when the upstream ends it, so does the
        flow."""
        assert self.association is not None
        reader = self.association.reader
        try:
            while await reader.read(1024):
                pass
        except OSError:
            pass
        if not self.closed:
            self.flow.outcome = "the upstream ended the UDP association"
            self.close()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for a datagram sent: the destination is unreachable, datagrams are dropped there.
        self.flow.outcome = f"unreachable: {reason(exc)}"
        logger.debug(
            "udp %s -> %s: %s", format_address(self.flow.client), format_address(self.flow.destination), exc
        )

    def _check_idle(self) -> None:
        timeout = self.flows.idle_timeout
        idle = time.monotonic() - self.last
        if idle < timeout:
            self.timer = asyncio.get_running_loop().call_later(timeout - idle, self._check_idle)
        else:
            if self.flow.outcome == "closed":
                self.flow.outcome = f"idle for {timeout:g} s"
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flows.ended(self)
        self.timer.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.association is not None:
            self.association.writer.transport.abort()
        self.pending = None
        self.flow.log()
