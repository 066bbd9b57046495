"""Which destinations the proxy connects to: everything but this host itself, cloud metadata services and the
tunnel's own addresses, unless `allow_local`. An IPv6 address that carries an IPv4 address (NAT64, 6to4) is
judged by that IPv4 address too."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from .. import Configuration
from .flows import IPAddress, ip_of


def is_own_address(ip: IPAddress) -> bool:
    """Whether `ip` is an address of this host. The system routes to its own addresses from the address itself,
    which a connected UDP socket shows without sending anything."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((str(ip), 9))
            return ip_of(s.getsockname()[0]) == ip
    except OSError:
        return False  # No route: not this host's, and unreachable anyway.


# Cloud metadata services outside the link-local ranges (169.254.169.254 and 169.254.170.2 are link-local):
# AWS over IPv6, Alibaba Cloud, Azure's wire server, Oracle Cloud.
CLOUD_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16", "192.0.0.192")
)


# The well-known NAT64 prefix (RFC 6052): a translator on the way connects to the IPv4 address in the last 32 bits.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def carried_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address that an IPv6 address stands for, with the name of the scheme: NAT64 (64:ff9b::/96) or
    6to4 (2002::/16). None for any other address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


class Policy:
    """Which destinations the proxy connects to."""

    def __init__(self, cfg: Configuration, allow_local: bool = False):
        self.allow_local = allow_local
        self.update(cfg)

    def update(self, cfg: Configuration) -> None:
        """Takes the tunnel's addresses from `cfg` again: after a reload, the peers' addresses as they are now."""
        addresses = {ipaddress.ip_interface(a).ip for a in cfg.address}
        for entry in cfg.dns:
            with contextlib.suppress(ValueError):
                addresses.add(ip_of(entry))
        self.tunnel_addresses = addresses
        self.tunnel_networks = [
            ipaddress.ip_network(n, strict=False) for peer in cfg.peers for n in peer["allowed_ips"]
        ]

    def refusal(self, host: str) -> str | None:
        """Why the destination is refused, or None if it is not."""
        try:
            ip = ip_of(host)
        except ValueError:
            return "not an IP address"
        if ip in self.tunnel_addresses or any(ip in n for n in self.tunnel_networks):
            return "an address inside the tunnel"
        carried = carried_ipv4(ip)
        if carried is not None:
            # 64:ff9b::7f00:1 reaches 127.0.0.1 through a translator: it is refused as 127.0.0.1 would be.
            why = self.refusal(str(carried[0]))
            if why is not None:
                return f"{why} (in a {carried[1]} address)"
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
