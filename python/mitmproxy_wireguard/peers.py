"""What a running server tells of its peers: `PeerStats`, from `Server.peers()`, and a text table of them in
the manner of `wg show`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

Address = tuple[str, int]


@dataclass(frozen=True)
class PeerStats:
    """One peer of a running server, as `Server.peers()` reports it. Counts start with the server (or when the
    peer was added) and only grow."""

    public_key: str
    """The peer's public key (base64)."""
    allowed_ips: list[str]
    """Its tunnel addresses (AllowedIPs); empty if it may use any."""
    endpoint: Address | None
    """Where its last authenticated datagram came from, `(host, port)`; None before its first handshake."""
    last_handshake: float | None
    """When its last handshake completed, in seconds since the epoch (as `time.time()`); None for never."""
    rx_bytes: int
    """Bytes of WireGuard datagrams received from it (UDP payload, handshakes and keepalives included), as
    `wg show` counts them."""
    rx_packets: int
    """WireGuard datagrams received from it."""
    tx_bytes: int
    """Bytes of WireGuard datagrams sent to it."""
    tx_packets: int
    """WireGuard datagrams sent to it."""
    tcp_connections: int
    """Its TCP connections open now (handshake done, not yet closed both ways)."""
    udp_flows: int
    """The UDP source addresses (address and port) it sent datagrams from lately: those that replies can reach
    by address alone."""
    drops: dict[str, int]
    """Datagrams and packets of or for the peer that were dropped, by reason:

    - `allowed_ips`: its packets whose source address is not in its AllowedIPs (cryptokey routing);
    - `local_source`: the same from link-local or unspecified source addresses, which its system sends on its
      own (router solicitations, multicast reports): no sign of a forgery or a misconfiguration;
    - `invalid`: datagrams for its session that did not authenticate;
    - `replayed`: data messages it sent before (replays, or duplicates of the network);
    - `no_session`: packets for it before it ever completed a handshake;
    - `too_large`: packets for it too large to encrypt;
    - `malformed`: its packets that are no valid IP packet;
    - `python_queue`: its datagrams dropped because Python did not keep up (the peer was over its share of the
      queue of datagrams waiting for Python, or the queue was full);
    - `tunnel_queue`: datagrams for it dropped because the tunnel did not keep up with Python (the peer was over
      its share of the queue of packets waiting to be encrypted).
    """

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict of JSON types (the endpoint as `host:port`)."""
        data = asdict(self)
        if self.endpoint is not None:
            data["endpoint"] = _host_port(self.endpoint)
        return data


def _host_port(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.2f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or (unit == "second" and not parts):
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts) + " ago"


def show(stats: list[PeerStats], public_key: str, listen_port: int, now: float | None = None) -> str:
    """The server and its peers as text, in the manner of `wg show`: the peers with the latest handshake
    first."""
    now = time.time() if now is None else now
    lines = [
        "interface: mitmproxy-wireguard",
        f"  public key: {public_key}",
        f"  listening port: {listen_port}",
    ]
    ordered = sorted(stats, key=lambda p: -(p.last_handshake or 0))
    for peer in ordered:
        lines += ["", f"peer: {peer.public_key}"]
        if peer.endpoint is not None:
            lines.append(f"  endpoint: {_host_port(peer.endpoint)}")
        lines.append(f"  allowed ips: {', '.join(peer.allowed_ips) or '(any)'}")
        if peer.last_handshake is not None:
            lines.append(f"  latest handshake: {_ago(now - peer.last_handshake)}")
        lines.append(
            f"  transfer: {_bytes(peer.rx_bytes)} received ({peer.rx_packets} packets), "
            f"{_bytes(peer.tx_bytes)} sent ({peer.tx_packets} packets)"
        )
        lines.append(f"  connections: {peer.tcp_connections} TCP open, {peer.udp_flows} UDP flows")
        dropped = [f"{n} {reason}" for reason, n in peer.drops.items() if n]
        if dropped:
            lines.append(f"  dropped: {', '.join(dropped)}")
    return "\n".join(lines)
