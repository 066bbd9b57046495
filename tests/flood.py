"""A handshake flood, run as a process of its own so that its work does not share the tests' event loop.

    python flood.py HOST PORT SERVER_PUBLIC_KEY RATE SECONDS

Builds WireGuard handshake initiations (Noise_IKpsk2) from keys the server does not know, sends them at RATE a
second for SECONDS, and prints one JSON line: how many were sent and how many cookie replies came back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
MESSAGE_COOKIE_REPLY = 3


def blake2s(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf2(chaining_key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = hmac_blake2s(chaining_key, data)
    first = hmac_blake2s(prk, b"\x01")
    return first, hmac_blake2s(prk, first + b"\x02")


def aead(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\x00" * 12, plaintext, associated)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def initiation(server_public: bytes, sender_index: int) -> bytes:
    """A handshake initiation from a fresh, unknown static key, with a valid mac1 and no mac2."""
    static = X25519PrivateKey.generate()
    ephemeral = X25519PrivateKey.generate()
    responder = X25519PublicKey.from_public_bytes(server_public)

    chaining_key = blake2s(CONSTRUCTION)
    hash_ = blake2s(blake2s(chaining_key, IDENTIFIER), server_public)
    ephemeral_public = public_bytes(ephemeral)
    chaining_key = hmac_blake2s(hmac_blake2s(chaining_key, ephemeral_public), b"\x01")
    hash_ = blake2s(hash_, ephemeral_public)
    chaining_key, key = kdf2(chaining_key, ephemeral.exchange(responder))
    encrypted_static = aead(key, public_bytes(static), hash_)
    hash_ = blake2s(hash_, encrypted_static)
    chaining_key, key = kdf2(chaining_key, static.exchange(responder))
    now = time.time()
    tai64n = struct.pack(">QI", 0x400000000000000A + int(now), int((now % 1) * 1e9))
    encrypted_timestamp = aead(key, tai64n, hash_)

    body = struct.pack("<BxxxI", 1, sender_index) + ephemeral_public + encrypted_static + encrypted_timestamp
    mac1 = hashlib.blake2s(body, digest_size=16, key=blake2s(LABEL_MAC1, server_public)).digest()
    return body + mac1 + b"\x00" * 16


def main() -> None:
    host, port, server_key, rate, seconds = sys.argv[1:6]
    server_public = base64.b64decode(server_key)
    messages = [initiation(server_public, int.from_bytes(os.urandom(4), "little")) for _ in range(500)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    sent = cookies = 0
    burst = max(1, int(rate) // 100)
    start = time.monotonic()
    deadline = start + float(seconds)
    while (now := time.monotonic()) < deadline:
        # Keep to the rate: send what is due by now, in bursts every 10 ms.
        due = int((now - start) * int(rate))
        while sent < due:
            for _ in range(min(burst, due - sent)):
                try:
                    sock.send(messages[sent % len(messages)])
                except BlockingIOError:
                    pass
                sent += 1
        while True:
            try:
                reply = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            cookies += reply[0] == MESSAGE_COOKIE_REPLY
        time.sleep(0.005)
    print(json.dumps({"sent": sent, "cookies": cookies, "seconds": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    main()
