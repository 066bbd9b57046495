"""SOCKS5's UDP ASSOCIATE (RFC 1928) with user name and password (RFC 1929): the messages of the control
connection and the header of each relayed datagram. No I/O here.

Written here because the SOCKS client libraries for asyncio carry TCP only (CONNECT); the upstream's TCP
connections go through such a library (see `upstream`)."""

from __future__ import annotations

import ipaddress
import struct

VERSION = 5
NO_AUTH = 0x00
USER_PASSWORD = 0x02
NO_ACCEPTABLE = 0xFF
UDP_ASSOCIATE = 0x03
IPV4, DOMAIN, IPV6 = 0x01, 0x03, 0x04

REPLIES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class Socks5Error(Exception):
    """The SOCKS server refused, or sent what SOCKS5 does not allow."""


def greeting(with_password: bool) -> bytes:
    """The methods offered: none, and user name and password when there are credentials."""
    methods = bytes([NO_AUTH, USER_PASSWORD] if with_password else [NO_AUTH])
    return bytes([VERSION, len(methods)]) + methods


def chosen_method(reply: bytes, with_password: bool) -> int:
    """The method the server chose (a 2-byte reply)."""
    if len(reply) != 2 or reply[0] != VERSION:
        raise Socks5Error("not a SOCKS5 server")
    method = reply[1]
    if (
        method == NO_ACCEPTABLE
        or method not in (NO_AUTH, USER_PASSWORD)
        or (method == USER_PASSWORD and not with_password)
    ):
        raise Socks5Error("no acceptable authentication method (a user name and password needed?)")
    return method


def password_request(username: str, password: str) -> bytes:
    user, word = username.encode(), password.encode()
    if not 1 <= len(user) <= 255 or not 1 <= len(word) <= 255:
        raise ValueError("a SOCKS5 user name and password are 1 to 255 bytes each")
    return bytes([1, len(user)]) + user + bytes([len(word)]) + word


def check_password_reply(reply: bytes) -> None:
    if len(reply) != 2 or reply[0] != 1:
        raise Socks5Error("malformed reply to the user name and password")
    if reply[1] != 0:
        raise Socks5Error("user name or password refused")


def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port; `host` an IP address (names are not sent here)."""
    ip = ipaddress.ip_address(host)
    kind = IPV4 if ip.version == 4 else IPV6
    return bytes([kind]) + ip.packed + struct.pack("!H", port)


def associate_request(host: str = "0.0.0.0", port: int = 0) -> bytes:
    """UDP ASSOCIATE for datagrams from `host:port` (zeros: not known yet, as RFC 1928 allows)."""
    return bytes([VERSION, UDP_ASSOCIATE, 0]) + encode_address(host, port)


def address_size(atyp: int, first: int) -> int:
    """The size of an address field with its port, from its type and its first byte (a name's length)."""
    if atyp == IPV4:
        return 4 + 2
    if atyp == IPV6:
        return 16 + 2
    if atyp == DOMAIN:
        return 1 + first + 2
    raise Socks5Error(f"unknown address type {atyp}")


def check_reply_head(head: bytes) -> int:
    """Checks the first 4 bytes of a reply (VER REP RSV ATYP); returns the address type. A refusal is raised
    with its reason."""
    if len(head) != 4 or head[0] != VERSION:
        raise Socks5Error("malformed SOCKS5 reply")
    if head[1] != 0:
        raise Socks5Error(REPLIES.get(head[1], f"reply code {head[1]}"))
    return head[3]


def decode_address(atyp: int, data: bytes) -> tuple[str, int]:
    """An address field (as sized by `address_size`) as host and port."""
    if len(data) != address_size(atyp, data[0] if data else 0):
        raise Socks5Error("malformed SOCKS5 address")
    (port,) = struct.unpack("!H", data[-2:])
    if atyp == DOMAIN:
        return data[1:-2].decode("ascii", "replace"), port
    return str(ipaddress.ip_address(data[:-2])), port


def pack_datagram(host: str, port: int, payload: bytes) -> bytes:
    """A datagram for the relay: RSV, FRAG 0, the destination, the payload."""
    return b"\x00\x00\x00" + encode_address(host, port) + payload


def unpack_datagram(data: bytes) -> tuple[str, int, bytes]:
    """The source and payload of a datagram from the relay; fragments (which this client never asks for) and
    malformed headers are errors."""
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise Socks5Error("malformed SOCKS5 datagram")
    if data[2] != 0:
        raise Socks5Error("a fragment of a SOCKS5 datagram")
    atyp = data[3]
    size = address_size(atyp, data[4] if len(data) > 4 else 0)
    if len(data) < 4 + size:
        raise Socks5Error("malformed SOCKS5 datagram")
    host, port = decode_address(atyp, data[4 : 4 + size])
    return host, port, data[4 + size :]
