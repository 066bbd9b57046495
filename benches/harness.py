"""The harness of one run: the two network namespaces, wireguard-go, the server processes, the load
generator and the relay.

Network layout (everything is created by the harness and removed on exit, Ctrl-C included):

    namespace wgbench-<pid>-c (client)              namespace wgbench-<pid>-s (server)
      lo                                              lo
      veth 192.0.2.1/24  <------- veth pair ------->  veth 192.0.2.2/24
      wireguard-go "wgbc<pid>", 10.0.0.1/32             servers, each its own process, on 192.0.2.2:
        peer "new"    -> 192.0.2.2:51821, 10.0.1.0/24     51821/udp  this project (benches/servers/new_server.py)
        peer "kernel" -> 192.0.2.2:51822, 10.0.2.0/24     51822/udp  wireguard-go "wgbs<pid>" 10.0.2.1/32 with
        peer "old"    -> 192.0.2.2:51823, 10.0.3.0/24                the kernel's TCP/IP stack and
        peer "rs"     -> 192.0.2.2:51824, 10.0.4.0/24                benches/servers/kernel_server.py on :7, :9
      load generator (benches/loadgen.py)               51823/udp  mitmproxy_wireguard 0.1.23 (old_server.py)
                                                         51824/udp  mitmproxy_rs 0.11.5 (rs_server.py)
                                                         52821..52824/udp  paths.py only: the emulated path
                                                           (path.py) in front of each server; the client's
                                                           peers point there for the cases through it

Neither namespace has a default route: the tunnel destinations (10.0.x.y) exist only inside the tunnel, and
every packet stays inside the two namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from children import LoadGen, Proc, read_line, sh, stop_process
from common import (
    BENCHES,
    CLIENT_TUNNEL_ADDR,
    CLIENT_VETH_ADDR,
    ECHO_PORT,
    KERNEL_TUNNEL_ADDR,
    NS_PREFIX,
    RELAY_PORT_OFFSET,
    SERVER_KINDS,
    SERVER_VETH_ADDR,
    SERVERS_DIR,
    WG_RUN_DIR,
    BenchError,
    log,
)
from readings import alive


class Bench:
    """The namespaces, the WireGuard client, the servers and the load generator of one benchmark run.

    Use as a context manager: everything it started or created is stopped and removed on exit, whatever the
    exit. SIGTERM and SIGHUP are turned into SystemExit so that this also happens when the runner is killed
    politely; Ctrl-C raises KeyboardInterrupt in the runner only (the children have sessions of their own).
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        pid = os.getpid()
        self.ns_client = f"{NS_PREFIX}{pid}-c"
        self.ns_server = f"{NS_PREFIX}{pid}-s"
        self.if_client = f"wgbc{pid}"[:15]
        self.if_server = f"wgbs{pid}"[:15]
        self.veth_client = f"vbc{pid}"[:15]
        self.veth_server = f"vbs{pid}"[:15]
        self.procs: list[Proc] = []
        self.namespaces: list[str] = []
        self.client_key = ""
        self.client_pub = ""
        self.keys: dict[str, tuple[str, str]] = {}
        self.client_wg: Proc | None = None
        self.servers: dict[str, Proc] = {}
        self.server_info: dict[str, dict[str, Any]] = {}
        self.loadgen: LoadGen | None = None
        self.relay: LoadGen | None = None
        # What the relay said when it started (its pid, whether it runs in real time).
        self.relay_info: dict[str, Any] = {}

    # -- lifecycle

    def __enter__(self) -> Bench:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        # Even when started in the background, where the shell makes it ignore SIGINT.
        self._old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: Any) -> None:
        # A second Ctrl-C or SIGTERM during cleanup must not leave namespaces behind.
        for sig in self._old_handlers:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.cleanup()
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)

    def cleanup(self) -> None:
        if self.loadgen is not None:
            self.loadgen.close()
        for proc in reversed(self.procs):
            stop_process(proc.popen)
        for ifname in (self.if_client, self.if_server):
            sock = WG_RUN_DIR / f"{ifname}.sock"
            if sock.exists():
                sock.unlink(missing_ok=True)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces.clear()

    def start(self, kinds: list[str], pythons: dict[str, Path], relay: bool = False) -> LoadGen:
        """The whole set-up of a run: the network, the servers, the client, the relay if asked, and the load
        generator."""
        self.setup_network()
        self.start_servers(kinds, pythons)
        self.start_client(kinds)
        if relay:
            self.start_relay(kinds)
        return self.start_loadgen()

    # -- network

    def setup_network(self) -> None:
        for ns in (self.ns_client, self.ns_server):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", self.veth_client, "netns", self.ns_client,
            "type", "veth", "peer", "name", self.veth_server, "netns", self.ns_server,
        )  # fmt: skip
        sh("ip", "-n", self.ns_client, "addr", "add", f"{CLIENT_VETH_ADDR}/24", "dev", self.veth_client)
        sh("ip", "-n", self.ns_server, "addr", "add", f"{SERVER_VETH_ADDR}/24", "dev", self.veth_server)
        sh("ip", "-n", self.ns_client, "link", "set", self.veth_client, "up")
        sh("ip", "-n", self.ns_server, "link", "set", self.veth_server, "up")
        # Thousands of short connections per run: a wide ephemeral port range in the client namespace.
        sh(
            "ip",
            "netns",
            "exec",
            self.ns_client,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=10000 65000",
        )
        sh("ip", "netns", "exec", self.ns_client, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
        self.client_key, self.client_pub = self.genkeys()

    def genkeys(self) -> tuple[str, str]:
        private = sh("wg", "genkey").strip()
        return private, sh("wg", "pubkey", input=private + "\n").strip()

    def start_wireguard_go(self, name: str, ns: str, ifname: str) -> Proc:
        if (WG_RUN_DIR / f"{ifname}.sock").exists():
            raise BenchError(f"{WG_RUN_DIR}/{ifname}.sock exists: is another run using {ifname}?")
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="error")
        proc = self.spawn(name, ["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname], env=env)
        deadline = time.monotonic() + 15
        while not (WG_RUN_DIR / f"{ifname}.sock").exists():
            if not proc.running() or time.monotonic() > deadline:
                raise BenchError(f"wireguard-go {ifname} did not start:\n{proc.log_tail()}")
            time.sleep(0.05)
        proc.pids = [proc.popen.pid]  # `ip netns exec` execs the command: same pid
        return proc

    def wg_setconf(self, ns: str, ifname: str, text: str) -> None:
        path = self.workdir / f"{ifname}.conf"
        path.write_text(text)
        path.chmod(0o600)
        sh("ip", "netns", "exec", ns, "wg", "setconf", ifname, str(path))

    def start_client(self, kinds: list[str]) -> None:
        """The WireGuard client (wireguard-go in the client namespace) with one peer per tunnelled server."""
        self.client_wg = self.start_wireguard_go("client-wireguard-go", self.ns_client, self.if_client)
        conf = f"[Interface]\nPrivateKey = {self.client_key}\n"
        for name in kinds:
            kind = SERVER_KINDS[name]
            if kind.wg_port is None:
                continue
            conf += (
                f"\n[Peer]\nPublicKey = {self.keys[name][1]}\n"
                f"Endpoint = {SERVER_VETH_ADDR}:{kind.wg_port}\nAllowedIPs = {kind.subnet}\n"
            )
        self.wg_setconf(self.ns_client, self.if_client, conf)
        sh("ip", "-n", self.ns_client, "addr", "add", f"{CLIENT_TUNNEL_ADDR}/32", "dev", self.if_client)
        sh("ip", "-n", self.ns_client, "link", "set", self.if_client, "up")
        for name in kinds:
            kind = SERVER_KINDS[name]
            if kind.subnet is not None:
                sh("ip", "-n", self.ns_client, "route", "add", kind.subnet, "dev", self.if_client)

    # -- servers

    def start_servers(self, kinds: list[str], pythons: dict[str, Path]) -> None:
        """`pythons`: the interpreter of each server kind ("plain" for the kernel path's echo)."""
        for name in kinds:
            if SERVER_KINDS[name].wg_port is not None:
                self.keys[name] = self.genkeys()
        for name in kinds:
            self.start_server(name, pythons)

    def start_server(self, name: str, pythons: dict[str, Path]) -> Proc:
        kind = SERVER_KINDS[name]
        cfg: dict[str, Any] = {"port": ECHO_PORT}
        if name in ("new", "base"):
            python, script = pythons[name], "new_server.py"
            cfg.update(host=SERVER_VETH_ADDR, wg_port=kind.wg_port, server_key=self.keys[name][0],
                       client_key=self.client_key, client_address=f"{CLIENT_TUNNEL_ADDR}/32")  # fmt: skip
        elif name in ("old", "rs"):
            python, script = pythons[name], f"{name}_server.py"
            cfg.update(host=SERVER_VETH_ADDR, wg_port=kind.wg_port, server_key=self.keys[name][0],
                       client_pub=self.client_pub)  # fmt: skip
        elif name in ("kernel", "plain"):
            python, script = pythons["plain"], "kernel_server.py"
            cfg.update(host="0.0.0.0")
        else:
            raise BenchError(f"unknown server {name!r}")
        extra_pids: list[int] = []
        if name == "kernel":
            wg = self.start_wireguard_go("kernel-wireguard-go", self.ns_server, self.if_server)
            self.wg_setconf(
                self.ns_server,
                self.if_server,
                f"[Interface]\nPrivateKey = {self.keys[name][0]}\nListenPort = {kind.wg_port}\n\n"
                f"[Peer]\nPublicKey = {self.client_pub}\nAllowedIPs = {CLIENT_TUNNEL_ADDR}/32\n",
            )
            sh("ip", "-n", self.ns_server, "addr", "add", f"{KERNEL_TUNNEL_ADDR}/32", "dev", self.if_server)
            sh("ip", "-n", self.ns_server, "link", "set", self.if_server, "up")
            sh("ip", "-n", self.ns_server, "route", "add", f"{CLIENT_TUNNEL_ADDR}/32", "dev", self.if_server)
            extra_pids = wg.pids
        cfg_path = self.workdir / f"{name}-server.json"
        cfg_path.write_text(json.dumps(cfg))
        cfg_path.chmod(0o600)
        proc = self.spawn(
            f"{name}-server",
            ["ip", "netns", "exec", self.ns_server, str(python), str(SERVERS_DIR / script), str(cfg_path)],
            stdout=subprocess.PIPE,
        )
        line = read_line(proc.popen, timeout=30)
        if not line:
            raise BenchError(f"the {name!r} server did not start:\n{proc.log_tail()}")
        info = json.loads(line)
        proc.pids = [info["pid"], *extra_pids]
        self.servers[name] = proc
        self.server_info[name] = info
        return proc

    def spawn(self, name: str, cmd: list[str], stdout: int | None = None, env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL) -> Proc:  # fmt: skip
        log_path = self.workdir / f"{name}.log"
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the runner only; it stops the children in order
        )
        log_file.close()
        proc = Proc(name, popen, log_path, [popen.pid])
        self.procs.append(proc)
        return proc

    def start_loadgen(self) -> LoadGen:
        proc = self.spawn(
            "loadgen",
            ["ip", "netns", "exec", self.ns_client, sys.executable, str(BENCHES / "loadgen.py")],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        self.loadgen = LoadGen(proc)
        hello = self.loadgen.request({"op": "hello"}, timeout=30)
        proc.pids = [hello["pid"]]
        return self.loadgen

    def start_relay(self, kinds: list[str]) -> LoadGen:
        """The emulated path (benches/path.py) in the server namespace, in front of each server's WireGuard
        port; the client uses it once `set_endpoint(name, relayed=True)`."""
        relays = [[SERVER_KINDS[n].wg_port + RELAY_PORT_OFFSET, SERVER_VETH_ADDR, SERVER_KINDS[n].wg_port]
                  for n in kinds if SERVER_KINDS[n].wg_port is not None]  # fmt: skip
        return self.start_relay_ports(relays)

    def start_relay_ports(self, relays: list[list[Any]]) -> LoadGen:
        """benches/path.py in the server namespace with these relays, `[port, to_host, to_port]` each."""
        cfg_path = self.workdir / "relay.json"
        cfg_path.write_text(json.dumps({"host": SERVER_VETH_ADDR, "relays": relays}))
        proc = self.spawn(
            "relay",
            ["ip", "netns", "exec", self.ns_server, sys.executable, str(BENCHES / "path.py"), str(cfg_path)],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        line = read_line(proc.popen, timeout=30)
        if not line:
            raise BenchError(f"the relay did not start:\n{proc.log_tail()}")
        info = json.loads(line)
        proc.pids = [info["pid"]]
        self.relay_info = info
        self.relay = LoadGen(proc, "the relay")
        return self.relay

    def set_endpoint(self, name: str, relayed: bool) -> None:
        """Where the client sends the WireGuard datagrams for server `name`: through the relay or directly.
        The server learns the new address from the next datagram (every server here follows its peer)."""
        port = SERVER_KINDS[name].wg_port
        assert port is not None
        port += RELAY_PORT_OFFSET if relayed else 0
        sh("ip", "netns", "exec", self.ns_client, "wg", "set", self.if_client,
           "peer", self.keys[name][1], "endpoint", f"{SERVER_VETH_ADDR}:{port}")  # fmt: skip

    def client_pids(self) -> list[int]:
        pids = []
        if self.client_wg is not None:
            pids += self.client_wg.pids
        if self.loadgen is not None:
            pids += self.loadgen.proc.pids
        return pids


def cleanup_stale() -> list[str]:
    """Removes namespaces and control sockets left by runs that are no longer alive (after a SIGKILL)."""
    removed = []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        try:
            pid = int(name[len(NS_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if alive(pid):
            continue
        # wireguard-go processes of that run still running in it: stop them by their pids
        for p in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30
        ).stdout.split():
            try:
                os.kill(int(p), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.5)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        removed.append(name)
        for prefix in ("wgbc", "wgbs"):
            sock = WG_RUN_DIR / f"{prefix}{pid}.sock"
            if sock.exists():
                sock.unlink(missing_ok=True)
    return removed
