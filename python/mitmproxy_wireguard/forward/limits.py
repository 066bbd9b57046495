"""How long the proxy keeps a flow without traffic, and how much of it each peer may take.

Every peer gets a share of its own of what is limited (UDP flows, DNS lookups in progress, the resolver's
threads), so that one peer flooding the proxy exhausts its own share and not the others'; the global limits stay
as a backstop against many peers at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .flows import logger


@dataclass(frozen=True)
class Limits:
    """The proxy's timeouts (seconds) and limits. The defaults suit a proxy for a few dozen devices."""

    # An established TCP connection with no data either way for this long is reset on both sides. Far below the
    # kernel's two hours, which are meant for hosts rather than for a proxy holding a socket per connection.
    tcp_idle_timeout: float = 3600.0
    # A UDP flow ends when no datagram went either way for this long.
    udp_idle_timeout: float = 60.0
    # How long connecting to a TCP destination may take before the client's connection is reset.
    connect_timeout: float = 10.0
    udp_flows_per_peer: int = 256
    udp_flows: int = 4096
    # DNS lookups in progress (queued or running, over UDP and TCP), also those whose query already timed out.
    dns_lookups_per_peer: int = 16
    dns_lookups: int = 256
    # Threads resolving names (each blocks for as long as the system's resolver takes), and how many of them one
    # peer may keep busy at once.
    resolver_threads: int = 8
    resolver_threads_per_peer: int = 2

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"{f.name} must be positive, not {value!r}")


class Shares:
    """Counts what each peer holds of a limited thing: at most `per_peer` each, at most `total` together. The
    first refusal for a peer (or for all, when the total is reached) is a warning, the following ones until the
    peer's holdings are back to none (the total to half) are debug records."""

    def __init__(self, what: str, per_peer: int, total: int):
        self.what = what
        self.per_peer = per_peer
        self.total = total
        self.count = 0
        self._held: dict[str, int] = {}
        self._warned: set[str | None] = set()

    def held(self, peer: str) -> int:
        return self._held.get(peer, 0)

    def admits(self, peer: str) -> bool:
        """Whether `peer` may take one more; logs the refusal if not."""
        held = self.held(peer)
        if held >= self.per_peer:
            self._refused(peer, f"peer {peer} has its share of {self.per_peer} {self.what}")
            return False
        if self.count >= self.total:
            self._refused(None, f"all {self.total} {self.what} are taken (peer {peer} has {held})")
            return False
        return True

    def take(self, peer: str) -> bool:
        """Takes one for `peer` if its share and the total allow, else logs the refusal and returns False."""
        if not self.admits(peer):
            return False
        self._held[peer] = self.held(peer) + 1
        self.count += 1
        return True

    def give_back(self, peer: str) -> None:
        held = self._held.pop(peer) - 1
        if held:
            self._held[peer] = held
        else:
            self._warned.discard(peer)
        self.count -= 1
        if self.count <= self.total // 2:
            self._warned.discard(None)

    def _refused(self, who: str | None, message: str) -> None:
        if who in self._warned:
            logger.debug("%s: refused", message)
        else:
            self._warned.add(who)
            logger.warning("%s: new ones are refused", message)
