"""WireGuard servers for the client's interop tests: a real WireGuard implementation (wireguard-go, or
boringtun-cli) in a network namespace of the tests' own, with the kernel's TCP/IP stack and test services
behind its tunnel.

The network: the upstream's namespace is linked to the test namespace by a veth pair (`helpers.Namespace`: an
IPv4 /30 of 198.18.0.0/15, plus an IPv6 ULA /64 added here). The WireGuard server listens on UDP port
LISTEN_PORT there; its tunnel device has TUNNEL_V4/24 and TUNNEL_V6/64, and its one peer, the client, is
CLIENT_V4/32 and CLIENT_V6/128. upstream_services.py runs in the namespace and listens on the tunnel
addresses: TCP echo (7), sink (9) and source (19), UDP echo (7), and DNS (53) that knows
upstream_services.NAMES.

`start_upstream(kind)` sets it all up and returns an `Upstream`, whose `client_config` is the wg-quick
configuration a client needs. Every wait is bounded; `Upstream.stop()` ends every process it started and
deletes the namespace (the `upstreams` fixture of conftest.py calls it at the end of each test).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

import mitmproxy_wireguard as wg
from helpers import CI, Namespace, WireGuardClient, run
from helpers_cli import config_fields
from mitmproxy_wireguard._program import host_port
from upstream_services import DNS_PORT, ECHO_PORT, NAMES, SINK_PORT, SOURCE_PORT, pattern

__all__ = [
    "BORINGTUN_VERSION",
    "CLIENT_V4",
    "CLIENT_V6",
    "DNS_PORT",
    "ECHO_PORT",
    "KINDS",
    "LISTEN_PORT",
    "MTU",
    "NAMES",
    "SINK_PORT",
    "SOURCE_PORT",
    "TUNNEL_V4",
    "TUNNEL_V6",
    "PeerStats",
    "Upstream",
    "missing",
    "pattern",
    "start_upstream",
]

KINDS = ("wireguard-go", "boringtun")
# The program each kind runs, and the boringtun-cli version that .ci/run installs (a test checks that they
# agree).
PROGRAMS = {"wireguard-go": "wireguard-go", "boringtun": "boringtun-cli"}
BORINGTUN_VERSION = "0.7.1"

LISTEN_PORT = 51820
TUNNEL_V4, TUNNEL_V6 = "10.77.0.1", "fd77::1"
CLIENT_V4, CLIENT_V6 = "10.77.0.2", "fd77::2"
MTU = 1420
SERVICES = Path(__file__).with_name("upstream_services.py")

_upstream_numbers = itertools.count()


def missing(kind: str) -> str | None:
    """Why upstreams of `kind` cannot run here, or None."""
    if kind not in PROGRAMS:
        raise ValueError(f"unknown upstream kind {kind!r}, not one of {KINDS}")
    program = PROGRAMS[kind]
    if shutil.which(program) is None:
        if kind == "boringtun":
            install = f"cargo install --locked boringtun-cli --version {BORINGTUN_VERSION}"
            return f"boringtun-cli is not installed ({install})"
        return f"{program} is not installed"
    return None


@dataclass
class PeerStats:
    """What the server knows of its peer, the client, read from its control socket."""

    endpoint: str | None
    # When the current session's handshake completed, as Unix time; 0.0 for no session. wireguard-go reports
    # this time to the nanosecond. boringtun-cli reports the session's age instead (converted here), taken
    # from its timer tick: up to a tick (250 ms) early, and moving by a few milliseconds from one reading to
    # the next. So: a new process reads 0.0 until its first handshake, and a comparison of readings needs a
    # margin.
    latest_handshake: float
    rx_bytes: int
    tx_bytes: int


class Upstream:
    """A WireGuard server of `kind` in a namespace of its own, with the test services behind its tunnel. Made
    by `start_upstream`."""

    tunnel_v4 = TUNNEL_V4
    tunnel_v6 = TUNNEL_V6

    def __init__(self, kind: str, keepalive: int | None, preshared_key: bool, services: bool) -> None:
        self.kind = kind
        self.keepalive = keepalive
        self.services = services
        number = next(_upstream_numbers)
        self.interface = f"wgu{os.getpid() % 10000}u{number}"
        self.private_key = wg.genkey()
        self.public_key = wg.pubkey(self.private_key)
        self.client_private_key = wg.genkey()
        self.client_public_key = wg.pubkey(self.client_private_key)
        self.preshared_key = base64.b64encode(os.urandom(32)).decode() if preshared_key else None
        self.namespace = Namespace()
        self.conf_dir = tempfile.mkdtemp(prefix="wgupstream-")
        # The server's and the services' output, for failure messages; appended to by every writer whatever
        # the shared offset, which `output` moves.
        self.log: IO[str] = tempfile.TemporaryFile(mode="a+")
        self.server: subprocess.Popen[bytes] | None = None
        self.service_process: subprocess.Popen[bytes] | None = None
        self.clients: list[WireGuardClient] = []
        self.stopped = False
        # In canonical form, as the servers print them.
        link_v6 = ipaddress.IPv6Network(f"fd31:{os.getpid() % 10000:x}:{number:x}::/64")
        self.here_v6, self.there_v6 = str(link_v6[1]), str(link_v6[2])

    def link_v6(self) -> None:
        """An IPv6 ULA pair on the veth link, without duplicate address detection: usable at once."""
        run("ip", "address", "add", f"{self.here_v6}/64", "dev", self.namespace.outside, "nodad")
        self.namespace.ip("address", "add", f"{self.there_v6}/64", "dev", self.namespace.inside, "nodad")

    @property
    def endpoint(self) -> tuple[str, int]:
        """Where the server listens, over IPv4."""
        return (self.namespace.there, LISTEN_PORT)

    @property
    def endpoint_v6(self) -> tuple[str, int]:
        """Where the server listens, over IPv6."""
        return (self.there_v6, LISTEN_PORT)

    def config(self, endpoint_v6: bool = False) -> str:
        """The client's wg-quick configuration, with the IPv4 endpoint or the IPv6 one."""
        host, port = self.endpoint_v6 if endpoint_v6 else self.endpoint
        lines = [
            "[Interface]",
            f"PrivateKey = {self.client_private_key}",
            f"Address = {CLIENT_V4}/32, {CLIENT_V6}/128",
            *([f"DNS = {TUNNEL_V4}"] if self.services else []),
            "",
            "[Peer]",
            f"PublicKey = {self.public_key}",
            *([f"PresharedKey = {self.preshared_key}"] if self.preshared_key else []),
            "AllowedIPs = 0.0.0.0/0, ::/0",
            f"Endpoint = {host_port(host, port)}",
            *([f"PersistentKeepalive = {self.keepalive}"] if self.keepalive else []),
        ]
        return "\n".join(lines) + "\n"

    @property
    def client_config(self) -> str:
        """The client's wg-quick configuration, with the IPv4 endpoint."""
        return self.config()

    @property
    def client_config_v6(self) -> str:
        """The client's wg-quick configuration, with the IPv6 endpoint."""
        return self.config(endpoint_v6=True)

    def _server_conf(self) -> str:
        path = os.path.join(self.conf_dir, "server.conf")
        with open(path, "w") as f:
            f.write(
                f"[Interface]\nPrivateKey = {self.private_key}\nListenPort = {LISTEN_PORT}\n\n"
                f"[Peer]\nPublicKey = {self.client_public_key}\n"
                f"AllowedIPs = {CLIENT_V4}/32, {CLIENT_V6}/128\n"
                + (f"PresharedKey = {self.preshared_key}\n" if self.preshared_key else "")
            )
        return path

    # The server process.

    async def start_server(self, timeout: float = 20) -> None:
        """Starts the WireGuard server (after `stop_server`): same keys, same port, a fresh process."""
        assert self.server is None or self.server.poll() is not None, "the server runs"
        if self.kind == "wireguard-go":
            command = ["wireguard-go", "-f", self.interface]
        else:
            command = ["boringtun-cli", "--foreground", "--disable-drop-privileges", "--threads", "2"]
            command.append(self.interface)
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        # A control socket left behind by a killed process would answer nothing.
        Path(uapi_socket(self.interface)).unlink(missing_ok=True)
        self.log.write(f"--- {' '.join(command)}\n")
        self.log.flush()
        self.server = subprocess.Popen(
            self.namespace.exec(*command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        try:
            await configure(self.interface, self._server_conf(), self.server, timeout, what=self.kind)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}\n{self.output()}") from e
        self.namespace.ip("address", "add", f"{TUNNEL_V4}/24", "dev", self.interface)
        self.namespace.ip("address", "add", f"{TUNNEL_V6}/64", "dev", self.interface, "nodad")
        self.namespace.ip("link", "set", self.interface, "mtu", str(MTU), "up")

    async def stop_server(self, timeout: float = 10) -> None:
        """Stops the WireGuard server; its device goes with it."""
        if self.server is not None:
            await asyncio.to_thread(end_process, self.server, timeout)
        deadline = time.monotonic() + timeout
        while interface_exists(self.namespace, self.interface):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.interface} still exists after its server ended")
            await asyncio.sleep(0.02)

    async def restart(self) -> None:
        """A server restart: the process ends, a new one starts with the same keys and port, knowing nothing
        of the old one's sessions."""
        await self.stop_server()
        await self.start_server()

    # The services.

    async def start_services(self, timeout: float = 20) -> None:
        self.service_process = subprocess.Popen(
            self.namespace.exec(sys.executable, str(SERVICES), TUNNEL_V4, TUNNEL_V6),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        line = await asyncio.to_thread(read_line, self.service_process, timeout)
        if line != b"ready\n":
            raise RuntimeError(f"the upstream's services did not start: {line!r}\n{self.output()}")

    # What the server knows.

    def peer_stats(self) -> PeerStats:
        """The server's view of the client peer."""
        peer = uapi_peers(self.interface).get(base64.b64decode(self.client_public_key).hex())
        if peer is None:
            raise AssertionError(f"the server has no peer {self.client_public_key}")
        endpoint = peer.get("endpoint")
        seconds = (
            int(peer.get("last_handshake_time_sec", "0"))
            + int(peer.get("last_handshake_time_nsec", "0")) / 1e9
        )
        if self.kind == "boringtun":
            # The age of the current session, if there is one.
            latest = time.time() - seconds if "last_handshake_time_sec" in peer else 0.0
        else:
            latest = seconds
        return PeerStats(endpoint, latest, int(peer.get("rx_bytes", "0")), int(peer.get("tx_bytes", "0")))

    def latest_handshake(self) -> float:
        """When the server last completed a handshake with the client (Unix time), 0.0 for never: see
        `PeerStats.latest_handshake`."""
        return self.peer_stats().latest_handshake

    def output(self) -> str:
        """What the server processes and the services printed so far."""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read()
        self.log.seek(0, os.SEEK_END)
        return text

    # A reference client.

    async def start_reference_client(
        self, namespace: Namespace | None = None, endpoint_v6: bool = False
    ) -> WireGuardClient:
        """wireguard-go as this upstream's client, set up from `client_config` (or `client_config_v6`), with
        the wg-quick fields (Address, DNS) applied by hand; it ends with the upstream.

        In `namespace` (one of helpers.Namespace, linked to the test namespace): it reaches the IPv4 endpoint
        through the test namespace, which forwards between the two links (those two only), and all its
        traffic goes into the tunnel (AllowedIPs). Without: in the test namespace, routing only the tunnel's
        subnets."""
        if namespace is not None and endpoint_v6:
            raise ValueError("a client namespace reaches the upstream over IPv4 only")
        text = self.config(endpoint_v6)
        fields = config_fields(text)
        host, port = self.endpoint_v6 if endpoint_v6 else self.endpoint
        assert fields["Peer.Endpoint"] == host_port(host, port)
        if namespace is None:
            ip = _ip_here
            routes = ["10.77.0.0/24", "fd77::/64"]
        else:
            for outside in (namespace.outside, self.namespace.outside):
                Path(f"/proc/sys/net/ipv4/conf/{outside}/forwarding").write_text("1")
            namespace.ip("route", "replace", f"{host}/32", "via", namespace.here)
            self.namespace.ip("route", "replace", f"{namespace.there}/32", "via", self.namespace.here)
            ip = namespace.ip
            routes = [r.strip() for r in fields["Peer.AllowedIPs"].split(",")]
        interface = f"wgu{os.getpid() % 10000}c{next(_upstream_numbers)}"
        conf_dir = tempfile.mkdtemp(prefix="wgupstream-client-")
        conf = os.path.join(conf_dir, "client.conf")
        with open(conf, "w") as f:
            # `wg setconf` takes the configuration without wg-quick's own fields.
            f.write(
                "\n".join(
                    line
                    for line in text.splitlines()
                    if not line.startswith(("Address = ", "DNS = ", "MTU = "))
                )
                + "\n"
            )
        command = ["wireguard-go", "-f", interface]
        if namespace is not None:
            command = namespace.exec(*command)
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        addresses = tuple(a.strip() for a in fields["Address"].split(","))
        client = WireGuardClient(
            interface, process, self.client_private_key, addresses, tuple(routes), conf_dir
        )
        self.clients.append(client)
        await configure(interface, conf, process, 20, what="the reference client")
        for address in addresses:
            ip("address", "add", address, "dev", interface, *(["nodad"] if ":" in address else []))
        ip("link", "set", interface, "mtu", str(MTU), "up")
        for route in routes:
            ip("route", "add", route, "dev", interface)
        out = subprocess.run(
            ["wg", "show", interface, "listen-port"], capture_output=True, text=True, timeout=10, check=True
        )
        client.listen_port = int(out.stdout.strip())
        return client

    def stop(self) -> None:
        """Ends the clients, the server and the services, and deletes the namespace. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        for client in self.clients:
            client.stop()
        for process in (self.server, self.service_process):
            if process is not None:
                end_process(process, 5)
        self.namespace.delete()
        shutil.rmtree(self.conf_dir, ignore_errors=True)
        self.log.close()


async def start_upstream(
    kind: str, keepalive: int | None = None, preshared_key: bool = False, services: bool = True
) -> Upstream:
    """A WireGuard server of `kind` ("wireguard-go" or "boringtun") in a namespace of its own, and, with
    `services`, the test services and the DNS server behind its tunnel. `keepalive` is the client
    configuration's PersistentKeepalive, `preshared_key` gives the peers one. Skips the test if `kind`'s
    program is missing (fails under CI=true). The caller stops it (the `upstreams` fixture does)."""
    problem = missing(kind)
    if problem is not None:
        if CI:
            raise RuntimeError(problem)
        pytest.skip(problem)
    upstream = Upstream(kind, keepalive, preshared_key, services)
    try:
        upstream.link_v6()
        if services:
            await upstream.start_services()
        await upstream.start_server()
    except BaseException:
        upstream.stop()
        raise
    return upstream


# Processes and devices.


def uapi_socket(interface: str) -> str:
    """The control socket of a userspace WireGuard device (one directory for every namespace)."""
    return f"/var/run/wireguard/{interface}.sock"


def uapi_peers(interface: str, timeout: float = 10) -> dict[str, dict[str, str]]:
    """The peers of a userspace WireGuard device, by public key in hex, as its control socket describes them
    (`get=1`: `wg show` prints the handshake time in whole seconds only, and boringtun-cli's age as if it were
    a time)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(uapi_socket(interface))
        sock.sendall(b"get=1\n\n")
        answer = b""
        # The answer ends with an empty line; it is a few hundred bytes for one peer.
        while not answer.endswith(b"\n\n") and len(answer) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    peers: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    fields = [line.partition("=") for line in answer.decode().splitlines() if line]
    if ("errno", "=", "0") not in fields:
        raise RuntimeError(f"{interface}'s control socket answered {answer!r}")
    for key, _, value in fields:
        if key == "public_key":
            current = peers.setdefault(value, {})
        elif current is not None:
            current[key] = value
    return peers


async def configure(
    interface: str, conf: str, process: subprocess.Popen[bytes], timeout: float, what: str
) -> None:
    """Waits for `process` to create `interface` and its control socket, then `wg setconf`s it."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} ended ({process.returncode}) before taking its configuration")
        if os.path.exists(uapi_socket(interface)):
            try:
                run("wg", "setconf", interface, conf)
                return
            except subprocess.CalledProcessError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not take its configuration in {timeout} s")
        await asyncio.sleep(0.02)


def end_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds; closes its pipes."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line `process` prints, or what it printed before ending or before `timeout` seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n") and len(line) < 1000:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return line
        byte = os.read(process.stdout.fileno(), 1)
        if not byte:
            return line
        line += byte
    return line


def interface_exists(namespace: Namespace, interface: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", namespace.name, "link", "show", interface], capture_output=True, timeout=10
    )
    return out.returncode == 0


def _ip_here(*args: str) -> None:
    run("ip", *args)
