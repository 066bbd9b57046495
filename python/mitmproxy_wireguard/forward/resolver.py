"""The DNS service of the tunnel: queries to its DNS addresses, over UDP or TCP, are answered with this host's
resolver."""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..server import Address
from ..stream import TcpStream
from .flows import Flow, format_address, ip_of, logger, reason
from .limits import Limits, Shares
from .lookups import Busy, LookupPool
from .upstream import UpstreamError
from .wireguard import AnyUpstream

DNS_PORT = 53
DNS_TIMEOUT = 10.0
DNS_TTL = 60
# A DNS-over-TCP connection ends when no query came for this long.
DNS_TCP_IDLE_TIMEOUT = 30.0


class Resolver:
    """Answers DNS queries for A and AAAA records with the host's resolver (`getaddrinfo`); other types get an
    empty answer. Lookups run in a `LookupPool`: a query beyond its peer's share is dropped (and logged)."""

    def __init__(self, limits: Limits) -> None:
        self.pool = LookupPool(limits)

    async def _lookup(self, peer: str, name: str, family: int) -> list[str]:
        # Cancelled by the timeout, the lookup leaves the pool's queue (or its thread returns in its own time).
        infos = await asyncio.wait_for(self.pool.lookup(peer, name, family), DNS_TIMEOUT)
        # An IP family's address starts with the host as text (str() for the type checker: other families differ).
        return list(dict.fromkeys(str(ip_of(str(info[4][0]))) for info in infos))

    async def _exists(self, peer: str, name: str) -> bool:
        try:
            await self._lookup(peer, name, socket.AF_UNSPEC)
            return True
        except (OSError, asyncio.TimeoutError):
            return False

    async def answer(self, wire: bytes, peer: str, tcp: bool = False) -> tuple[bytes | None, str]:
        """The reply to `peer`'s query in DNS wire format (None for no reply) and a summary for the log."""
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
        summary = f"{dns.rdatatype.to_text(question.rdtype)} {name}"
        if question.rdclass == dns.rdataclass.IN and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                summary += await self._resolve(response, question, peer, name)
            except Busy:
                return None, summary + ": dropped, too many lookups in progress"
        else:
            summary += ": not answered"
        return _to_wire(query, response, tcp, summary)

    async def _resolve(
        self, response: dns.message.Message, question: dns.rrset.RRset, peer: str, name: str
    ) -> str:
        """Puts the addresses of `name` into `response`; returns what happened, for the log."""
        family = socket.AF_INET if question.rdtype == dns.rdatatype.A else socket.AF_INET6
        try:
            addresses = await self._lookup(peer, name, family)
        except asyncio.TimeoutError:
            response.set_rcode(dns.rcode.SERVFAIL)
            return ": timed out"
        except OSError:
            if await self._exists(peer, name):
                return ": no address"
            response.set_rcode(dns.rcode.NXDOMAIN)
            return ": no such name"
        response.answer.append(
            dns.rrset.from_text_list(question.name, DNS_TTL, "IN", question.rdtype, addresses)
        )
        return ": " + ", ".join(addresses)


def _max_size(query: dns.message.Message, tcp: bool) -> int:
    """The largest response the query's transport takes."""
    if tcp:
        return 65535
    if query.edns >= 0:
        return max(512, min(query.payload, 65535))
    return 512


def _to_wire(
    query: dns.message.Message, response: dns.message.Message, tcp: bool, summary: str
) -> tuple[bytes, str]:
    """The response as large as the query's transport allows, else truncated (TC) to tell the client to retry
    over TCP."""
    max_size = _max_size(query, tcp)
    try:
        return response.to_wire(max_size=max_size), summary
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(), summary + " (truncated)"


async def dns_over_tcp(resolver: Resolver, stream: TcpStream, flow: Flow) -> None:
    """Answers the queries of one DNS-over-TCP connection, one after the other, until the client ends it or
    is idle for DNS_TCP_IDLE_TIMEOUT."""
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
            reply, summary = await resolver.answer(query, flow.peer, tcp=True)
            logger.debug("dns-tcp %s: %s", format_address(flow.client), summary)
            if reply is None:
                flow.outcome = f"{queries} queries, then one unanswered: {summary}"
                return
            queries += 1
            stream.write(struct.pack("!H", len(reply)) + reply)
            flow.bytes_down += 2 + len(reply)
            await stream.drain()
    except (OSError, asyncio.TimeoutError) as e:
        flow.outcome = f"{queries} queries, then {reason(e)}"
        return
    flow.outcome = f"{queries} queries"


async def upstream_answer(
    upstream: AnyUpstream, server: Address, shares: Shares, wire: bytes, peer: str
) -> tuple[bytes | None, str]:
    """The reply to a query over UDP, asked of the DNS server `server` through the upstream (over TCP through a
    proxy, over UDP through a WireGuard tunnel), within the peer's share of lookups in progress, and a summary for
    the log. A reply too large for the client's
    UDP is sent truncated (TC), so that it asks again over TCP; an upstream that fails gets SERVFAIL."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException as e:
        return None, f"malformed query: {e}"
    summary = " ".join(
        f"{dns.rdatatype.to_text(q.rdtype)} {q.name.to_text(omit_final_dot=True)}" for q in query.question
    )
    summary += f" via {format_address(server)}"
    if not shares.take(peer):
        return None, summary + ": dropped, too many lookups in progress"
    try:
        reply = await asyncio.wait_for(upstream.dns_query(server, wire, DNS_TIMEOUT), DNS_TIMEOUT)
        response = dns.message.from_wire(reply)
    except (UpstreamError, asyncio.TimeoutError, dns.exception.DNSException) as e:
        failed = dns.message.make_response(query)
        failed.set_rcode(dns.rcode.SERVFAIL)
        return failed.to_wire(), f"{summary}: {reason(e)}"
    finally:
        shares.give_back(peer)
    summary += f": {dns.rcode.to_text(response.rcode())}, {sum(len(r) for r in response.answer)} answers"
    if len(reply) <= _max_size(query, tcp=False):
        return reply, summary
    response.answer.clear()
    response.authority.clear()
    response.additional.clear()
    response.flags |= dns.flags.TC
    return response.to_wire(), summary + " (truncated)"
