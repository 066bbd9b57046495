"""Which destinations the proxy connects to: everything but this host itself, cloud metadata services and the
tunnel's own addresses, unless `allow_local`."""

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
