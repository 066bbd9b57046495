"""UDP flows: the datagrams between a peer's address and a destination go through one socket of this host, and
replies go back into the tunnel; a flow ends after a time without datagrams."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, cast

from ..server import Address, Server
from .flows import Flow, format_address, logger, reason
from .limits import Limits, Shares
from .policy import Policy

# Datagrams held for a flow whose socket is still being opened.
MAX_PENDING_DATAGRAMS = 64

FlowKey = tuple[Any, ...]


class UdpFlows:
    """The open UDP flows, by the peer and both addresses; each peer has a share of `limits.udp_flows_per_peer`
    (a datagram that would open one more is dropped). Set `server` before traffic arrives."""

    def __init__(self, policy: Policy, limits: Limits, spawn: Callable[[Any], None]):
        self.policy = policy
        self.idle_timeout = limits.udp_idle_timeout
        self.shares = Shares("UDP flows", limits.udp_flows_per_peer, limits.udp_flows)
        self.server: Server | None = None
        self._spawn = spawn
        self._flows: dict[FlowKey, _UdpFlow] = {}

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
            else:
                self._spawn(self._open(udp))
        udp.send(data)

    async def _open(self, udp: _UdpFlow) -> None:
        loop = asyncio.get_running_loop()
        dst = udp.flow.destination
        try:
            await loop.create_datagram_endpoint(lambda: udp, remote_addr=(dst[0], dst[1]))
        except OSError as e:
            udp.refuse(f"unreachable: {reason(e)}")

    def ended(self, udp: _UdpFlow) -> None:
        if self._flows.pop(udp.key, None) is not None:
            self.shares.give_back(udp.flow.peer)

    def close(self) -> None:
        """Ends every flow (and logs it)."""
        for udp in list(self._flows.values()):
            udp.close()


class _UdpFlow(asyncio.DatagramProtocol):
    """The socket of one UDP flow; replies go back to the client through the server."""

    def __init__(self, flows: UdpFlows, key: FlowKey, flow: Flow):
        self.flows = flows
        self.key = key
        self.flow = flow
        self.transport: asyncio.DatagramTransport | None = None
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
        server = self.flows.server
        if server is None:
            return
        self.last = time.monotonic()
        self.flow.bytes_down += len(data)
        server.send_datagram(data, self.flow.destination, self.flow.client)

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
        self.pending = None
        self.flow.log()
