"""Strangers and peers that misbehave, through a real client: neither can take what belongs to a peer.

- Anyone who knows the server's public key (it is in every client configuration) can make handshake responses
  with a valid MAC1. Sent from another address, with guessed receiver indexes and past the server's handshake
  limit, they get cookie replies and nothing else: the peer's traffic keeps going to the peer.
- A peer's packets whose inner source address is not one of its AllowedIPs are dropped (cryptokey routing), so
  it cannot pose as another peer or as an address of nobody's, while its own traffic passes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import socket
import struct
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from helpers import close_writer, needs_client, open_connection, run

pytestmark = [needs_client, pytest.mark.timeout(60)]

HANDSHAKE_RESPONSE = 2
COOKIE_REPLY = 3
DATA = 4


def forged_response(server_public_key: str, receiver_index: int) -> bytes:
    """A handshake response (WireGuard message type 2) that no peer made: a fresh ephemeral key, nothing
    encrypted, and a valid MAC1, which needs only the server's public key: keyed BLAKE2s-128 over the message
    with the key BLAKE2s-256("mac1----" || server public key)."""
    ephemeral = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    message = (
        struct.pack("<III", HANDSHAKE_RESPONSE, int.from_bytes(os.urandom(4), "little"), receiver_index)
        + ephemeral
        + os.urandom(16)  # the empty payload's AEAD tag, which cannot be right
    )
    mac1_key = hashlib.blake2s(b"mac1----" + base64.b64decode(server_public_key)).digest()
    mac1 = hashlib.blake2s(message, key=mac1_key, digest_size=16).digest()
    return message + mac1 + bytes(16)


def forge(server_public_key: str, address: tuple[str, int], seconds: float) -> tuple[int, dict[int, int]]:
    """Sends forged handshake responses from another address (127.0.0.2) for `seconds`, with guessed receiver
    indexes (every low byte of the first peer's, and random ones), at about 1500 a second: far past the server's
    limit of 100 handshake messages a second. Returns how many were sent and what came back, by message type.
    """
    forgeries = [forged_response(server_public_key, index) for index in range(256)]
    forgeries += [
        forged_response(server_public_key, int.from_bytes(os.urandom(4), "little")) for _ in range(44)
    ]
    received: dict[int, int] = {}
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))
        stranger.settimeout(0.05)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for datagram in forgeries:
                stranger.sendto(datagram, address)
                sent += 1
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                try:
                    reply = stranger.recv(65536)
                except TimeoutError:
                    break
                received[reply[0]] = received.get(reply[0], 0) + 1
    return sent, received


async def test_forged_handshake_responses_do_not_take_a_peers_traffic(start):
    lines = 300

    async def stream_lines(stream) -> None:
        """Sends on its own, the client only listens: if the server's packets went elsewhere, nothing would
        bring them back."""
        await stream.readline()
        for i in range(lines):
            stream.write(b"line %d\n" % i)
            await stream.drain()
            await asyncio.sleep(0.01)
        stream.close()

    setup = await start(stream_lines)
    reader, writer = await open_connection("10.0.0.42", 80)
    writer.write(b"go\n")
    forging = asyncio.create_task(
        asyncio.to_thread(forge, setup.cfg.server_public_key, setup.server.getsockname(), 3)
    )
    got = 0
    try:
        while got < lines:
            assert await asyncio.wait_for(reader.readline(), 5) == b"line %d\n" % got
            got += 1
    except asyncio.TimeoutError:
        pass
    sent, received = await forging
    print(f"{sent} forged responses; the stranger got {received} (by message type)")
    assert received.get(DATA, 0) == 0, f"the peer's traffic went to the stranger: {received}"
    assert got == lines, f"the client got {got} of {lines} lines"
    assert set(received) == {COOKIE_REPLY}, "strangers get cookie replies, nothing else"
    assert received[COOKIE_REPLY] > sent / 2, "the forgeries went past the limit"
    await close_writer(writer)


def udp_from(source: str, destination: tuple[str, int], payload: bytes) -> None:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(payload, destination)


def raw_udp_v4(source: str, destination: tuple[str, int], payload: bytes) -> None:
    """A UDP datagram with any source address, written whole on a raw socket: no address of the client's own."""
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", 40000, destination[1], length, 0) + payload  # checksum 0: none, as IPv4 allows
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + length,
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,  # the kernel fills in the header checksum
        socket.inet_aton(source),
        socket.inet_aton(destination[0]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.sendto(header + udp, destination)


async def test_packets_from_addresses_not_the_peers_are_dropped_and_its_own_pass(start, caplog):
    setup = await start(peers=2)
    own_v4, own_v6 = (a.split("/")[0] for a in setup.cfg.peers[0]["allowed_ips"])
    other_v4, other_v6 = (a.split("/")[0] for a in setup.cfg.peers[1]["allowed_ips"])
    # The client claims the other peer's addresses, and addresses of nobody's, as its tunnel may.
    forged = [other_v4, other_v6, "10.0.0.77", "fd00::77"]
    for address in forged:
        prefix = 128 if ":" in address else 32
        run("ip", "address", "add", f"{address}/{prefix}", "dev", setup.client.interface, "nodad")

    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.INFO, logger="mitmproxy_wireguard"):
        for round in range(3):
            for source in forged:
                destination = ("fd00::42" if ":" in source else "10.0.0.42", 5353)
                udp_from(source, destination, b"forged %s %d" % (source.encode(), round))
            raw_udp_v4("10.0.0.99", ("10.0.0.42", 5353), b"raw %d" % round)
            # The peer's own traffic passes, and comes back.
            for source in (own_v4, own_v6):
                family = socket.AF_INET6 if ":" in source else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.bind((source, 0))
                    sock.setblocking(False)
                    sock.connect(("fd00::42" if ":" in source else "10.0.0.42", 5353))
                    await loop.sock_sendall(sock, b"own %d" % round)
                    assert await asyncio.wait_for(loop.sock_recv(sock, 2048), 5) == b"own %d" % round

        # TCP from a forged source gets nowhere; from the peer's own address it does.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("10.0.0.77", 0))
        sock.setblocking(False)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_connect(sock, ("10.0.0.42", 80)), 2)
        sock.close()
        reader, writer = await open_connection("10.0.0.42", 7)
        writer.write(b"still served\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"still served\n"
        await close_writer(writer)
        await asyncio.sleep(1.5)  # drops are reported once a second

    sources = {src[0] for _, src, _ in setup.datagrams}
    assert sources == {own_v4, own_v6}, f"datagrams reached the handler from {sources}"
    reports = [r.getMessage() for r in caplog.records if "not the sending peer's" in r.getMessage()]
    assert reports, "the drops were not reported"
    assert setup.client.public_key in reports[-1]
