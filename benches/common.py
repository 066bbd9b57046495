"""Shared plumbing of the benchmarks: prerequisites, the two network namespaces, wireguard-go, the server
processes, the load generator and readings from /proc.

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
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
SERVERS_DIR = BENCHES / "servers"
RESULTS = BENCHES / "results"

DEFAULT_NEW_VENV = Path("/tmp/bench-venv-new")
DEFAULT_OLD_VENV = Path("/tmp/bench-venv-old")
DEFAULT_RS_VENV = Path("/tmp/bench-venv-rs")
WG_RUN_DIR = Path("/var/run/wireguard")
NS_PREFIX = "wgbench-"

CLIENT_VETH_ADDR = "192.0.2.1"
SERVER_VETH_ADDR = "192.0.2.2"
CLIENT_TUNNEL_ADDR = "10.0.0.1"
ECHO_PORT = 7
OLD_VERSION = "0.1.23"
RS_VERSION = "0.11.5"  # mitmproxy_rs, whose WireGuard mode followed this project

INSTALL_HINT = "apt-get install wireguard-go wireguard-tools iproute2"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerKind:
    name: str
    label: str
    wg_port: int | None  # None: no tunnel (the plain echo of echo_pair.py)
    subnet: str | None  # what the client routes into the tunnel towards this server
    target: str  # the address the load generator connects to


SERVER_KINDS = {
    "new": ServerKind("new", "this server", 51821, "10.0.1.0/24", "10.0.1.42"),
    "kernel": ServerKind("kernel", "kernel path", 51822, "10.0.2.0/24", "10.0.2.1"),
    "old": ServerKind("old", f"{OLD_VERSION}", 51823, "10.0.3.0/24", "10.0.3.42"),
    "rs": ServerKind("rs", f"mitmproxy_rs {RS_VERSION}", 51824, "10.0.4.0/24", "10.0.4.42"),
    "plain": ServerKind("plain", "plain asyncio (no tunnel)", None, None, SERVER_VETH_ADDR),
}
KERNEL_TUNNEL_ADDR = "10.0.2.1"
RELAY_PORT_OFFSET = 1000  # benches/path.py listens for each server on its WireGuard port + this


class BenchError(Exception):
    pass


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# prerequisites and venvs


def check_prerequisites() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (it creates network namespaces and WireGuard interfaces)")
    for tool in ("ip", "wg", "wireguard-go"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found")
    if problems:
        raise BenchError(
            "; ".join(problems)
            + f".\nInstall the tools with: {INSTALL_HINT}\n(and run as root, e.g. with sudo)"
        )


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def check_venv(venv: Path, kind: str) -> dict[str, Any]:
    """Checks that the venv exists and imports the package; returns what it reports about itself."""
    python = venv_python(venv)
    hint = f"build it with: python3 benches/build.py --{kind}"
    if not python.exists():
        raise BenchError(f"no venv at {venv} for the {kind!r} server; {hint}")
    package, wanted = {"new": ("mitmproxy_wireguard", None), "old": ("mitmproxy_wireguard", OLD_VERSION),
                       "rs": ("mitmproxy_rs", RS_VERSION)}[kind]  # fmt: skip
    code = (
        f"import json, {package} as m, importlib.metadata as md;"
        f"print(json.dumps({{'version': md.version('{package}'), 'file': m.__file__}}))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"{python} cannot import {package} ({proc.stderr.strip()[-300:]}); {hint}")
    info = json.loads(proc.stdout)
    if wanted is not None and info["version"] != wanted:
        raise BenchError(f"{venv} has {package} {info['version']}, not {wanted}; {hint}")
    build_info = venv / "BENCH_BUILD_INFO.json"
    if build_info.exists():
        info["build"] = json.loads(build_info.read_text())
    return info


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain").splitlines()}


# ---------------------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all threads, exited ones included), in seconds; 10 ms resolution."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def cpu_ns(pids: list[int]) -> int:
    """Time on CPU of the processes' live threads in nanoseconds (/proc/PID/task/*/schedstat): precise enough
    to measure idle CPU in a few seconds."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat): the busy time of the whole machine,
    to tell how much of it went to processes that are not part of the benchmark."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------------------
# processes


def sh(*cmd: str, timeout: float = 30, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    pids: list[int] = field(default_factory=list)  # what to account CPU and RSS to

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.popen.poll() is None


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
        if name == "new":
            python, script = pythons["new"], "new_server.py"
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
        proc.pids = [json.loads(line)["pid"]]
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


def stop_process(popen: subprocess.Popen[bytes], grace: float = 5) -> None:
    if popen.poll() is not None:
        return
    try:
        popen.send_signal(signal.SIGTERM)
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
    except ProcessLookupError:
        pass
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


_line_buffers: dict[int, bytes] = {}


def read_line(popen: subprocess.Popen[bytes], timeout: float) -> str | None:
    """One line of the process's stdout, or None at EOF or when `timeout` passes first."""
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    buf = _line_buffers.get(fd, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            _line_buffers[fd] = buf
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            _line_buffers[fd] = buf
            return None
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    _line_buffers[fd] = rest
    return line.decode()


class LoadGen:
    """A child that takes one JSON command per line and answers each with one JSON line: the load generator
    in the client namespace, or the relay (benches/path.py). One command at a time."""

    def __init__(self, proc: Proc, what: str = "the load generator"):
        self.proc = proc
        self.what = what

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        popen = self.proc.popen
        if popen.poll() is not None:
            raise BenchError(f"{self.what} exited ({popen.returncode}):\n{self.proc.log_tail()}")
        assert popen.stdin is not None
        popen.stdin.write((json.dumps(command) + "\n").encode())
        popen.stdin.flush()
        line = read_line(popen, timeout)
        if line is None:
            raise BenchError(
                f"no answer from {self.what} within {timeout:.0f} s for {command['op']}:\n"
                f"{self.proc.log_tail()}"
            )
        return json.loads(line)

    def close(self) -> None:
        stop_process(self.proc.popen)


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
