"""Helpers of the end-to-end tests: the network namespaces they run in, real WireGuard clients, TCP connections
through the tunnel, an echo handler, and checks of QR code images.

Importing this module (conftest.py does, before any test) moves the test process into a network namespace of its
own, with only `lo` and the WireGuard clients' tunnels: the server listens on loopback there, real WireGuard
clients (wireguard-go) connect to it, and test code reaches tunnel destinations directly. This happens before
any thread exists, as `unshare` requires.

Traffic never leaves that namespace. Under CI=true, everything these tests need must be there: a missing piece
fails the run instead of skipping tests.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import itertools
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard._program import host_port

CI = os.environ.get("CI") == "true"
CLONE_NEWNET = 0x40000000


def _enter_private_namespace() -> str | None:
    """Moves this process into a new network namespace; returns why it could not, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tun devices)"
    for tool in ("wireguard-go", "wg", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install wireguard-go wireguard-tools iproute2)"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return None


NAMESPACE_PROBLEM = _enter_private_namespace()
if NAMESPACE_PROBLEM and CI:
    raise RuntimeError(f"end-to-end tests cannot run in CI: {NAMESPACE_PROBLEM}")

needs_client = pytest.mark.skipif(NAMESPACE_PROBLEM is not None, reason=str(NAMESPACE_PROBLEM))

_interface_numbers = itertools.count()


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


_namespace_numbers = itertools.count()


class Namespace:
    """A network namespace of the tests' own, linked to the test namespace by a veth pair on a /30 of
    198.18.0.0/15 (the range set aside for benchmarks, room for 32,768 namespaces in one session): `here` is this
    side's address, `there` the namespace's."""

    def __init__(self) -> None:
        i = next(_namespace_numbers)
        self.name = f"wgt{os.getpid() % 10000}n{i}"
        link = ipaddress.IPv4Address("198.18.0.0") + 4 * i
        self.here = str(link + 1)
        self.there = str(link + 2)
        run("ip", "netns", "add", self.name)
        # The veth pair's ends: `outside` in the test namespace, `inside` in this one.
        self.outside, self.inside = f"vt{os.getpid() % 10000}n{i}", f"vc{os.getpid() % 10000}n{i}"
        outside, inside = self.outside, self.inside
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", self.name)
        run("ip", "address", "add", f"{self.here}/30", "dev", outside)
        run("ip", "link", "set", outside, "up")
        self.ip("address", "add", f"{self.there}/30", "dev", inside)
        self.ip("link", "set", inside, "up")
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.name, *args)

    def exec(self, *cmd: str) -> list[str]:
        """The command line that runs `cmd` inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in this namespace; it can be used from any thread afterwards."""
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            # setns changes only the calling thread: this short-lived one.
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.name}") as ns:
                    if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                result.append(socket.socket(family, type))
            except BaseException as e:
                result.append(e)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=10)


@dataclass
class WireGuardClient:
    """A wireguard-go client in this namespace, with its tunnel addresses and routes."""

    interface: str
    process: subprocess.Popen[bytes]
    private_key: str
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    conf_dir: str
    listen_port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> str:
        return wg.pubkey(self.private_key)

    def set(self, *args: str) -> None:
        """`wg set` on this client, e.g. `set("listen-port", "4000")`."""
        run("wg", "set", self.interface, *args)

    def latest_handshake(self) -> int:
        """When the client's last handshake completed (Unix time), 0 for never."""
        out = subprocess.run(
            ["wg", "show", self.interface, "latest-handshakes"], capture_output=True, text=True, timeout=10
        )
        return max((int(line.split()[1]) for line in out.stdout.splitlines() if line.strip()), default=0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.conf_dir, ignore_errors=True)


async def start_client(
    server: wg.Server,
    server_public_key: str,
    private_key: str,
    addresses: tuple[str, ...] = ("10.0.0.2/32", "fd00::2/128"),
    routes: tuple[str, ...] = ("10.0.0.0/24", "fd00::/64"),
    mtu: int | None = None,
    keepalive: int | None = None,
    namespace: Namespace | None = None,
    preshared_key: str | None = None,
) -> WireGuardClient:
    """Starts wireguard-go, points it at `server` and routes `routes` into its tunnel; in `namespace` if given
    (the server must then listen on the namespace's `here` address or on all addresses). `addresses` must be
    the peer's AllowedIPs (the default: those of the first peer of a generated configuration), or the server
    drops its packets."""
    host, port = server.getsockname()
    if namespace is not None:
        host = namespace.here
    ip = namespace.ip if namespace is not None else (lambda *args: run("ip", *args))
    interface = f"wgt{os.getpid() % 10000}x{next(_interface_numbers)}"
    conf_dir = tempfile.mkdtemp(prefix="wgtest-")
    conf = os.path.join(conf_dir, "wg.conf")
    with open(conf, "w") as f:
        f.write(
            f"[Interface]\nPrivateKey = {private_key}\n\n[Peer]\nPublicKey = {server_public_key}\n"
            f"Endpoint = {host_port(host, port)}\nAllowedIPs = 0.0.0.0/0, ::/0\n"
            + (f"PersistentKeepalive = {keepalive}\n" if keepalive else "")
            + (f"PresharedKey = {preshared_key}\n" if preshared_key else "")
        )
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    command = ["wireguard-go", "-f", interface]
    if namespace is not None:
        command = namespace.exec(*command)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = WireGuardClient(interface, process, private_key, addresses, routes, conf_dir)
    try:
        deadline = time.monotonic() + 10
        # wireguard-go creates the device, then its control socket.
        while not os.path.exists(f"/var/run/wireguard/{interface}.sock"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go did not create {interface}")
            await asyncio.sleep(0.02)
        while True:
            try:
                run("wg", "setconf", interface, conf)
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        for address in addresses:
            ip("address", "add", address, "dev", interface)
        if mtu:
            ip("link", "set", interface, "mtu", str(mtu))
        ip("link", "set", interface, "up")
        for route in routes:
            ip("route", "add", route, "dev", interface)
        out = subprocess.run(
            ["wg", "show", interface, "listen-port"], capture_output=True, text=True, timeout=10
        )
        client.listen_port = int(out.stdout.strip())
    except BaseException:
        client.stop()
        raise
    return client


async def echo(stream: wg.TcpStream) -> None:
    """Echoes until EOF, then closes."""
    while data := await stream.read(65536):
        stream.write(data)
        await stream.drain()
    stream.close()


async def open_connection(
    host: str, port: int, timeout: float = 10
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection through the tunnel; the first one also waits out the WireGuard handshake."""
    return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Closes the connection; one that does not close in time is aborted, so that no socket is left behind."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, asyncio.TimeoutError):
        writer.transport.abort()


async def round_trip_rate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    seconds: float = 1.0,
    windows: int = 3,
    size: int = 1000,
) -> float:
    """Round trips per second of `size`-byte messages on an open echo connection: the best of `windows` windows of
    `seconds` each, so that a moment of noise on a shared machine does not decide (one window: the mean)."""
    message = os.urandom(size)
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            writer.write(message)
            await asyncio.wait_for(reader.readexactly(size), 10)
            count += 1
        best = max(best, count / elapsed)
    return best


# QR codes.


def png_size(data: bytes) -> tuple[int, int]:
    """Checks a PNG's signature and chunk CRCs; returns its width and height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, kinds = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        kinds.append(kind)
        offset += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    return struct.unpack(">II", data[16:24])


def decode_png_qr(path: Path) -> str:
    png = pytest.importorskip("png")
    zxingcpp = pytest.importorskip("zxingcpp")
    width, height, rows, info = png.Reader(bytes=path.read_bytes()).asDirect()
    assert info["greyscale"] and not info["alpha"]
    top = (1 << info["bitdepth"]) - 1
    pixels = bytes(255 * v // top for row in rows for v in row)
    # The decoder may find the same code more than once (it tries rotations and inversions): one text is expected.
    codes = zxingcpp.read_barcodes(
        memoryview(pixels).cast("B", (height, width)), formats=zxingcpp.BarcodeFormat.QRCode
    )
    texts = {code.text for code in codes}
    assert len(texts) == 1, f"{len(codes)} QR codes found, with {len(texts)} different texts"
    return texts.pop()


# Packet captures.

needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")


def tcpdump(path: Path, *options: str) -> list[str]:
    """The lines `tcpdump -r` prints for a capture file: numeric addresses, Unix times."""
    out = subprocess.run(
        ["tcpdump", "-r", str(path), "-n", "-tt", *options], capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


class ServerProcess:
    """server_process.py, run with a fresh configuration; `stderr` collects its log."""

    def __init__(self, peers: int = 1) -> None:
        self.cfg = wg.Configuration.generate(listen_port=0, peers=peers)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("server_process.py")), self.cfg.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.closing_log = ""
        self.port = self._answer(timeout=20)["port"]

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _answer(self, timeout: float = 20) -> dict[str, Any]:
        assert self.process.stdout is not None
        # The process answers each command with one line; a stuck server fails the test through the deadline.
        deadline = time.monotonic() + timeout
        ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("the server process did not answer")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process ended:\n{self.stderr()[-3000:]}")
        return json.loads(line)

    async def command(self, line: str, timeout: float = 20) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return await asyncio.to_thread(self._answer, timeout)

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return self._status("VmRSS")

    def open_files(self) -> int:
        """How many file descriptors the process holds now."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def peak_rss(self) -> int:
        return self._status("VmHWM")

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        """Starts VmHWM anew from the current RSS."""
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    async def close(self) -> str:
        """Closes the server; returns its log."""
        if self.log.closed:
            return self.closing_log
        if self.process.poll() is None:
            try:
                await self.command("close")
                await asyncio.to_thread(self.process.wait, 10)
            except (OSError, TimeoutError, RuntimeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(5)
        log = self.closing_log = self.stderr()
        self.log.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        return log


# Sockets through the tunnel, from this namespace or a namespace of the tests' own.


def wait_for_tcp(address: tuple[str, int], process: Any = None, timeout: float = 10) -> None:
    """Waits until something listens at `address`; fails if `process` (a Popen, if given) ends first."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args[-1]} ended ({process.returncode})")
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def connect(ns: Namespace, address: tuple[str, int]) -> socket.socket:
    """A non-blocking TCP socket in `ns`, connected to `address`."""
    sock = ns.socket()
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), 10)
    return sock


async def assert_refused(ns: Namespace, address: tuple[str, int], error: int = errno.ECONNREFUSED) -> None:
    """A TCP connection from `ns` to `address` is refused before its handshake completes: the connect call fails
    with `error` (ECONNREFUSED for a RST, EHOSTUNREACH for an ICMP host unreachable or prohibited)."""
    loop = asyncio.get_running_loop()
    with ns.socket() as sock:
        sock.setblocking(False)
        with pytest.raises(OSError) as failed:
            await asyncio.wait_for(loop.sock_connect(sock, address), 10)
        assert failed.value.errno == error, failed.value


async def connect_from(
    ns: Namespace, source: tuple[str, int], destination: tuple[str, int]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from `ns`, bound to `source` (which other sockets may share), to `destination`."""
    sock = ns.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, destination), 10)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def assert_udp_echo(sock: socket.socket, messages: Any, timeout: float = 10) -> None:
    """Sends each of `messages` on a connected non-blocking UDP socket; the same must come back for each."""
    loop = asyncio.get_running_loop()
    for message in messages:
        await loop.sock_sendall(sock, message)
        assert await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout) == message
