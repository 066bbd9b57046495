"""A SYN flood, run as a process of its own so that its work does not share the test's event loop.

    python syn_flood.py SRC COUNT SECONDS FIRST_PORT LAST_PORT

Sends COUNT TCP SYNs from SRC (a raw socket) to random destinations in 10.0.0.0/16, spread over about SECONDS,
from source ports FIRST_PORT..LAST_PORT, and prints how many were sent.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A TCP header with SYN set, checksummed for `src` and `dst` (the kernel adds the IP header)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    return header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]


def flood(src: str, count: int, seconds: float, low: int, high: int) -> int:
    rng = random.Random(14)
    sent = 0
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as sock:
        sock.bind((src, 0))
        while sent < count and time.monotonic() - start < seconds * 3:
            dst = f"10.0.{rng.randrange(1, 256)}.{rng.randrange(1, 255)}"
            sport = low + sent % (high - low + 1)
            try:
                sock.sendto(tcp_syn(src, dst, sport, rng.randrange(1, 65536), rng.getrandbits(32)), (dst, 0))
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            if sent % 500 == 0:
                time.sleep(max(0.0, start + seconds * sent / count - time.monotonic()))
    return sent


if __name__ == "__main__":
    src, count, seconds, low, high = sys.argv[1:6]
    print(flood(src, int(count), float(seconds), int(low), int(high)), flush=True)
