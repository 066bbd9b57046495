"""A transparent proxy: every TCP connection and UDP datagram of the peers goes on to the destination it was sent
to, from this host; DNS queries to the tunnel's DNS addresses are answered with this host's resolver.

Destinations on this host itself (loopback, link-local and its own addresses) and the metadata services of cloud
providers (which hand out the host's credentials to whoever asks from it) are refused unless `allow_local` says
otherwise, and so are addresses inside the tunnel (the server's and the peers'), which are not behind this host.
Everything else is reached, private networks around this host included.

A client's TCP connection is answered as its destination answers: the proxy holds the client's SYN, connects to
the destination (within `Limits.connect_timeout`), and only then completes the client's handshake. A destination
that refuses gets the client a RST ("connection refused"), one without a route an ICMP destination unreachable,
one that does not answer no answer at all (the client times out); a destination the proxy refuses gets an ICMP
destination unreachable, administratively prohibited. A refused datagram is dropped. Each finished flow is logged once, on the logger
`mitmproxy_wireguard.forward`, with its numbers in the log record's `flow` attribute (see `Flow.record`).

With an upstream proxy (`Upstream`: SOCKS5 or HTTP CONNECT), every TCP connection goes through it, and so does
UDP where a SOCKS5 upstream carries it (UDP ASSOCIATE); an upstream's failure refuses the client's connection,
with the reason in the flow's outcome. DNS queries go through it to a DNS server of the user's choice if asked.
With a WireGuard upstream (`WireGuardUpstream`: a client configuration), every TCP connection and UDP flow goes
out through its tunnel, and DNS queries to its DNS server there; when the tunnel fails, so do the flows it
carries, with the reason in their outcome. Which destinations are refused is decided on the address the client
asked for, as without an upstream.

Timeouts and each peer's share of what is limited (UDP flows, DNS lookups, the resolver's threads) are in
`Limits`: one peer flooding the proxy exhausts its own share, not the others'.

The parts, one module each: `policy` (which destinations), `tcp` and `udp` (the flows), `resolver` (the DNS
service) over `lookups` (the resolver's threads), `limits` (timeouts and shares), `flows` (addresses and the log
record of a flow), `upstream` (the upstream proxy) over `socks5` (SOCKS5's UDP ASSOCIATE), `wireguard` (the
WireGuard upstream) and `proxy` (the handlers and `serve`).
"""

from .flows import Flow, IPAddress, format_address, logger
from .limits import Limits, Shares
from .lookups import LookupPool
from .policy import CLOUD_METADATA, Policy, is_own_address
from .proxy import Forwarder, serve
from .resolver import DNS_PORT, DNS_TCP_IDLE_TIMEOUT, DNS_TIMEOUT, DNS_TTL, Resolver
from .tcp import CHUNK, KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, abort, keep_alive, relay
from .udp import MAX_PENDING_DATAGRAMS
from .upstream import Upstream, UpstreamError, UpstreamLost, parse_dns_server
from .wireguard import AnyUpstream, WireGuardUpstream, parse_upstream

__all__ = [
    "AnyUpstream",
    "CHUNK",
    "CLOUD_METADATA",
    "DNS_PORT",
    "DNS_TCP_IDLE_TIMEOUT",
    "DNS_TIMEOUT",
    "DNS_TTL",
    "Flow",
    "Forwarder",
    "IPAddress",
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE",
    "KEEPALIVE_INTERVAL",
    "Limits",
    "LookupPool",
    "MAX_PENDING_DATAGRAMS",
    "Policy",
    "Resolver",
    "Shares",
    "Upstream",
    "UpstreamError",
    "UpstreamLost",
    "WireGuardUpstream",
    "abort",
    "format_address",
    "is_own_address",
    "keep_alive",
    "logger",
    "parse_dns_server",
    "parse_upstream",
    "relay",
    "serve",
]
