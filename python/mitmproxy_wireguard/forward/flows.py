"""What the proxy's parts share: how addresses and failures are written, and the record of each flow, logged once
when the flow ends."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .._program import host_port
from ..server import Address

logger = logging.getLogger("mitmproxy_wireguard.forward")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def format_address(addr: Address) -> str:
    return host_port(addr[0], addr[1])


def ip_of(host: str) -> IPAddress:
    """The IP address `host` names, without a scope and with an IPv4-mapped IPv6 address as IPv4; raises
    ValueError for anything else."""
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# Why a destination could not be reached, by the errno of the failed connect.
_UNREACHABLE = {
    errno.ECONNREFUSED: "refused (nothing listens on that port)",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "no route to network",
    errno.EHOSTDOWN: "host is down",
    errno.ECONNRESET: "reset",
    errno.EACCES: "not permitted by this machine",
    errno.EPERM: "not permitted by this machine",
}


def unreachable(e: BaseException) -> str:
    """A flow's outcome when its destination could not be reached: timed out, refused, no route, ... (asyncio's
    own text, "Connect call failed (address)", says no more than that the call failed)."""
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)) and not getattr(e, "errno", None):
        return "unreachable: timed out"
    if isinstance(e, OSError) and e.errno:
        return f"unreachable: {_UNREACHABLE.get(e.errno) or os.strerror(e.errno)}"
    return f"unreachable: {reason(e)}"


def reason(e: BaseException) -> str:
    """Why an operation failed, briefly, for a flow's outcome."""
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
