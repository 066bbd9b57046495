"""A handshake flood, run as a process of its own so that its work does not share the tests' event loop.

    python flood.py HOST PORT SERVER_PUBLIC_KEY RATE SECONDS [--source ADDRESS] [--replay [--claim PEER_PUBLIC_KEY]]

Builds WireGuard handshake initiations (Noise_IKpsk2) from keys the server does not know, sends them at RATE a
second for SECONDS, and prints one JSON line: how many were sent and how many cookie replies came back.

With --replay, one initiation instead, with a valid MAC2: sent without one until the server is under load and
answers with a cookie reply, which anyone who knows the server's public key can decrypt; then that one datagram,
with the MAC2 the cookie gives, again and again. A cookie reply during the replay (the server's cookie secret
changes every two minutes) gives the next MAC2. With --claim, the initiation carries a peer's public key as its
static key: the server finds the peer, and the handshake fails only at the timestamp, since the sender does not
have the peer's private key.
"""

from __future__ import annotations

import argparse
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
LABEL_COOKIE = b"cookie--"
MESSAGE_COOKIE_REPLY = 3
MASK = 0xFFFFFFFF


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


def hchacha20(key: bytes, nonce: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha): the subkey of XChaCha20, which `cryptography` does not have."""

    def rotl(v: int, c: int) -> int:
        return ((v << c) & MASK) | (v >> (32 - c))

    def quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & MASK
        s[d] = rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & MASK
        s[b] = rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & MASK
        s[d] = rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & MASK
        s[b] = rotl(s[b] ^ s[c], 7)

    state = list(
        struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", nonce)
    )
    for _ in range(10):
        quarter(state, 0, 4, 8, 12)
        quarter(state, 1, 5, 9, 13)
        quarter(state, 2, 6, 10, 14)
        quarter(state, 3, 7, 11, 15)
        quarter(state, 0, 5, 10, 15)
        quarter(state, 1, 6, 11, 12)
        quarter(state, 2, 7, 8, 13)
        quarter(state, 3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """XChaCha20-Poly1305: ChaCha20-Poly1305 under the HChaCha20 subkey, with the nonce's last 8 bytes."""
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])).decrypt(
        b"\x00" * 4 + nonce[16:], ciphertext, associated
    )


def mac2_from_cookie_reply(server_public: bytes, message: bytes, reply: bytes) -> bytes:
    """The message with the MAC2 that the cookie in the server's reply to it gives (WireGuard's cookie reply:
    type, receiver index, 24-byte nonce, the 16-byte cookie encrypted with the message's MAC1 as additional
    data, under the key BLAKE2s("cookie--" || server public key))."""
    nonce, encrypted = reply[8:32], reply[32:64]
    mac1 = message[-32:-16]
    cookie = xchacha20poly1305_decrypt(blake2s(LABEL_COOKIE, server_public), nonce, encrypted, mac1)
    mac2 = hashlib.blake2s(message[:-16], digest_size=16, key=cookie).digest()
    return message[:-16] + mac2


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def initiation(server_public: bytes, sender_index: int, claim: bytes | None = None) -> bytes:
    """A handshake initiation with a valid mac1 and no mac2: from a fresh, unknown static key, or claiming to be
    from the peer with the public key `claim` (without its private key: the timestamp will not decrypt)."""
    static = X25519PrivateKey.generate()
    static_public = public_bytes(static) if claim is None else claim
    ephemeral = X25519PrivateKey.generate()
    responder = X25519PublicKey.from_public_bytes(server_public)

    chaining_key = blake2s(CONSTRUCTION)
    hash_ = blake2s(blake2s(chaining_key, IDENTIFIER), server_public)
    ephemeral_public = public_bytes(ephemeral)
    chaining_key = hmac_blake2s(hmac_blake2s(chaining_key, ephemeral_public), b"\x01")
    hash_ = blake2s(hash_, ephemeral_public)
    chaining_key, key = kdf2(chaining_key, ephemeral.exchange(responder))
    encrypted_static = aead(key, static_public, hash_)
    hash_ = blake2s(hash_, encrypted_static)
    chaining_key, key = kdf2(chaining_key, static.exchange(responder))
    now = time.time()
    tai64n = struct.pack(">QI", 0x400000000000000A + int(now), int((now % 1) * 1e9))
    encrypted_timestamp = aead(key, tai64n, hash_)

    body = struct.pack("<BxxxI", 1, sender_index) + ephemeral_public + encrypted_static + encrypted_timestamp
    mac1 = hashlib.blake2s(body, digest_size=16, key=blake2s(LABEL_MAC1, server_public)).digest()
    return body + mac1 + b"\x00" * 16


def first_cookie(sock: socket.socket, server_public: bytes, message: bytes, timeout: float) -> bytes | None:
    """Sends `message` until the server, under load, answers with a cookie reply; returns the message with the
    MAC2 it gives. At most 5000 copies, in bursts of 50."""
    deadline = time.monotonic() + timeout
    for _ in range(100):
        if time.monotonic() > deadline:
            break
        for _ in range(50):
            try:
                sock.send(message)
            except BlockingIOError:
                pass
        time.sleep(0.01)
        while True:
            try:
                reply = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            if len(reply) == 64 and reply[0] == MESSAGE_COOKIE_REPLY and reply[4:8] == message[4:8]:
                return mac2_from_cookie_reply(server_public, message, reply)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("server_key")
    parser.add_argument("rate", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument(
        "--replay", action="store_true", help="one initiation with a valid MAC2, again and again"
    )
    parser.add_argument("--claim", help="with --replay: the public key of a peer the initiation claims to be")
    parser.add_argument("--source", help="the address to send from (the peers' own is another)")
    args = parser.parse_args()
    server_public = base64.b64decode(args.server_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.source:
        sock.bind((args.source, 0))
    sock.connect((args.host, args.port))
    sock.setblocking(False)
    index = int.from_bytes(os.urandom(4), "little")
    claim = base64.b64decode(args.claim) if args.claim else None
    if args.replay:
        base = initiation(server_public, index, claim)
        with_mac2 = first_cookie(sock, server_public, base, 5)
        if with_mac2 is None:
            print(json.dumps({"error": "no cookie reply"}), flush=True)
            sys.exit(1)
        messages = [with_mac2]
    else:
        messages = [initiation(server_public, int.from_bytes(os.urandom(4), "little")) for _ in range(500)]
    rate, seconds = args.rate, args.seconds
    sent = cookies = 0
    burst = max(1, rate // 100)
    start = time.monotonic()
    deadline = start + seconds
    while (now := time.monotonic()) < deadline:
        # Keep to the rate: send what is due by now, in bursts every 10 ms.
        due = int((now - start) * rate)
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
            if (
                args.replay
                and len(reply) == 64
                and reply[0] == MESSAGE_COOKIE_REPLY
                and reply[4:8] == base[4:8]
            ):
                # The cookie secret changed: the next MAC2.
                messages = [mac2_from_cookie_reply(server_public, base, reply)]
        time.sleep(0.005)
    print(json.dumps({"sent": sent, "cookies": cookies, "seconds": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    main()
