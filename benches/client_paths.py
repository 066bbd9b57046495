"""The package's WireGuard client against the reference client, on emulated paths (issue 29).

    python3 benches/build.py --new            # once, and after every change of the engine: the venv
    python3 benches/client_paths.py           # 3 interleaved rounds -> results/client_paths.json
    python3 benches/client_paths.py --small   # 1 MiB transfers, 1 round: that it works, no figures to trust
    python3 benches/client_paths.py --cases relay0,loss1 --rounds 5

Both clients talk to the same WireGuard server, wireguard-go in a namespace of its own with the kernel's TCP
services behind its tunnel (tests/upstream_services.py: a sink that reads to EOF and answers a digest, a
source that sends N bytes, an echo), and their WireGuard datagrams pass through the same relay
(benches/path.py: this machine's kernel has no netem), which adds the case's delay and loss:

- **package**: `mitmproxy_wireguard.connect`, a Tunnel in a child process (client_driver.py with a
  configuration) in the client namespace;
- **reference**: wireguard-go with the kernel's TCP/IP stack, in the client namespace, driven by the same
  client_driver.py on kernel sockets.

Per case and client: one connection downloading (server to client) and one uploading, MB/s; with the relay
and no delay also a TCP ping-pong of 1000-byte messages (round trips/s) and an echo of bulk data both ways at
once. The two clients alternate measure by measure, in rounds that start with either in turn. Per measure, the
CPU seconds of the client's processes: the package's Tunnel process (its asyncio side and the engine's
thread), wireguard-go, and the reference's driver process apart.

A benchmark, not a test: it exits non-zero when something breaks (a process dies, a transfer fails or
stalls), never because of a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from children import LoadGen, read_line, sh, stop_process  # noqa: E402
from common import (  # noqa: E402
    BENCHES,
    CLIENT_VETH_ADDR,
    DEFAULT_NEW_VENV,
    REPO,
    RESULTS,
    SERVER_VETH_ADDR,
    BenchError,
    check_prerequisites,
    check_venv,
    cpu_model,
    finish_workdir,
    git_state,
    log,
    median,
    pick,
    print_errors,
    venv_python,
    write_json,
)
from harness import Bench, cleanup_stale  # noqa: E402
from paths import PATH_LABELS, PATHS  # noqa: E402
from readings import CLK_TCK, alive, cpu_seconds, machine_busy_seconds  # noqa: E402
from report import fmt  # noqa: E402

CLIENTS = ["package", "reference"]
CLIENT_LABELS = {"package": "mitmproxy_wireguard client", "reference": "wireguard-go + kernel TCP"}
CASES = ["relay0", "rtt50", "loss1", "rtt200"]
MEASURES = {"down": "1 conn down", "up": "1 conn up", "echo": "echo, both ways at once",
            "pingpong": "TCP ping-pong, 1000 B"}  # fmt: skip
UNITS = {"down": "MB/s", "up": "MB/s", "echo": "MB/s", "pingpong": "rt/s"}
LAN_MEASURES = ("pingpong", "echo")  # on the path without delay only
LAN_CASE = "relay0"

SERVER_WG_PORT = 51830
RELAY_PORTS = {"reference": 52830, "package": 52831}  # one relay pair per client: each knows its own client
SERVER_TUNNEL = "10.0.2.1"  # the services listen here, behind the server's wireguard-go
CLIENT_TUNNEL = {"reference": "10.0.0.1", "package": "10.0.0.2"}
MTU = 1420  # wireguard-go's default, set for every device and the package's client alike
MIN_P95_SAMPLES = 20  # fewer rounds than this: median, min and max only


@dataclass
class Sizes:
    transfer_bytes: int = 32 << 20
    echo_bytes: int = 32 << 20
    pingpong_n: int = 5000
    pingpong_size: int = 1000
    timeout_s: float = 240.0
    stall_s: float = 30.0


SMALL = Sizes(transfer_bytes=1 << 20, echo_bytes=1 << 20, pingpong_n=200, timeout_s=60.0, stall_s=20.0)


# ---------------------------------------------------------------------------------------------------------
# the network and the processes


class ClientBench(Bench):
    """harness.Bench's namespaces, process handling and clean-up, with this benchmark's set-up: one server
    (wireguard-go and the kernel's services) in the server namespace, the relay in front of it, and the two
    clients in the client namespace. Bench's client interface (wgbc<pid>) is the reference client's, its
    server interface (wgbs<pid>) the server's."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.drivers: dict[str, LoadGen] = {}
        self.client_procs: dict[str, list[int]] = {}  # per client: the pids whose CPU is the client's
        self.server_pids: list[int] = []
        self.services_pids: list[int] = []
        self.relay_realtime: bool | None = None

    def start_all(self, clients: list[str], python: Path) -> None:
        self.setup_network()
        self.keys = {"server": self.genkeys(), "reference": (self.client_key, self.client_pub),
                     "package": self.genkeys()}  # fmt: skip
        self.start_wg_server()
        self.start_services(python)
        self.start_path_relay()
        if "reference" in clients:
            self.start_reference()
        for name in clients:
            self.start_driver(name, python)

    def start_wg_server(self) -> None:
        """wireguard-go in the server namespace with both clients as peers, the kernel's TCP/IP behind it."""
        wg = self.start_wireguard_go("server-wireguard-go", self.ns_server, self.if_server)
        conf = f"[Interface]\nPrivateKey = {self.keys['server'][0]}\nListenPort = {SERVER_WG_PORT}\n"
        for name in CLIENTS:
            conf += f"\n[Peer]\nPublicKey = {self.keys[name][1]}\nAllowedIPs = {CLIENT_TUNNEL[name]}/32\n"
        self.wg_setconf(self.ns_server, self.if_server, conf)
        self.bring_up(
            self.ns_server, self.if_server, SERVER_TUNNEL, [f"{c}/32" for c in CLIENT_TUNNEL.values()]
        )
        self.server_pids = wg.pids

    def bring_up(self, ns: str, ifname: str, address: str, routes: list[str]) -> None:
        sh("ip", "-n", ns, "addr", "add", f"{address}/32", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "mtu", str(MTU), "up")
        for route in routes:
            sh("ip", "-n", ns, "route", "add", route, "dev", ifname)

    def start_services(self, python: Path) -> None:
        """tests/upstream_services.py on the server's tunnel address: echo 7, sink 9, source 19 (threads on
        kernel sockets). It runs until its stdin closes, which the clean-up does."""
        proc = self.spawn(
            "services",
            ["ip", "netns", "exec", self.ns_server, str(python), str(REPO / "tests" / "upstream_services.py"),
             SERVER_TUNNEL],  # fmt: skip
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        if read_line(proc.popen, timeout=30) != "ready":
            raise BenchError(f"the services did not start:\n{proc.log_tail()}")
        self.services_pids = proc.pids

    def start_path_relay(self) -> None:
        """benches/path.py in the server namespace: a port for each client in front of the server's port."""
        self.start_relay_ports([[RELAY_PORTS[name], SERVER_VETH_ADDR, SERVER_WG_PORT] for name in CLIENTS])
        self.relay_realtime = self.relay_info.get("realtime")

    def start_reference(self) -> None:
        """wireguard-go in the client namespace, the kernel's TCP/IP stack above it."""
        self.client_wg = self.start_wireguard_go("reference-wireguard-go", self.ns_client, self.if_client)
        self.wg_setconf(
            self.ns_client,
            self.if_client,
            f"[Interface]\nPrivateKey = {self.client_key}\n\n[Peer]\nPublicKey = {self.keys['server'][1]}\n"
            f"Endpoint = {SERVER_VETH_ADDR}:{RELAY_PORTS['reference']}\nAllowedIPs = {SERVER_TUNNEL}/32\n",
        )
        self.bring_up(self.ns_client, self.if_client, CLIENT_TUNNEL["reference"], [f"{SERVER_TUNNEL}/32"])

    def package_config(self) -> Path:
        """The package's client configuration (wg-quick format), endpoint: its relay port."""
        path = self.workdir / "package-client.conf"
        path.write_text(
            f"[Interface]\nPrivateKey = {self.keys['package'][0]}\nAddress = {CLIENT_TUNNEL['package']}/32\n"
            f"MTU = {MTU}\n\n[Peer]\nPublicKey = {self.keys['server'][1]}\nAllowedIPs = {SERVER_TUNNEL}/32\n"
            f"Endpoint = {SERVER_VETH_ADDR}:{RELAY_PORTS['package']}\n"
        )
        path.chmod(0o600)
        return path

    def start_driver(self, name: str, python: Path) -> None:
        """client_driver.py in the client namespace: with the package's configuration it is the package's
        client; without, it uses the kernel's sockets (and so the reference's wireguard-go)."""
        cmd = ["ip", "netns", "exec", self.ns_client, str(python), str(BENCHES / "client_driver.py")]
        if name == "package":
            cmd.append(str(self.package_config()))
        proc = self.spawn(f"{name}-driver", cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        driver = LoadGen(proc, f"the {name} driver")
        hello = driver.request({"op": "hello"}, timeout=60)
        if not hello.get("ok") or hello.get("tunnel") != (name == "package"):
            raise BenchError(f"the {name} driver answered {hello}:\n{proc.log_tail()}")
        proc.pids = [hello["pid"]]
        self.drivers[name] = driver
        # The client's CPU: the package's is its driver process; the reference's is wireguard-go's (the
        # driver's own is read apart).
        if name == "package":
            self.client_procs[name] = proc.pids
        else:
            assert self.client_wg is not None
            self.client_procs[name] = self.client_wg.pids

    def congestion_control(self) -> dict[str, str]:
        """The TCP congestion control of each namespace: the reference's TCP and the services' use it."""
        out = {}
        for ns in (self.ns_client, self.ns_server):
            r = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.tcp_congestion_control"],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
            out["client" if ns == self.ns_client else "server"] = r.stdout.strip()
        return out


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread and of its other live threads together: for the package's
    client, its asyncio side and its engine (plus an idle executor thread)."""
    main = others = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks = int(fields[11]) + int(fields[12])
        if int(task) == pid:
            main += ticks
        else:
            others += ticks
    return {"main_thread": main / CLK_TCK, "other_threads": others / CLK_TCK}


# ---------------------------------------------------------------------------------------------------------
# the rounds


class ClientRunner:
    """Every measure of every case, the clients alternating, in rounds; the CPU readings around each measure;
    every error noted (a client whose process died is skipped from then on)."""

    def __init__(self, bench: ClientBench, sizes: Sizes, clients: list[str], cases: list[str]):
        self.bench = bench
        self.s = sizes
        self.clients = clients
        self.cases = cases
        self.errors: list[dict[str, Any]] = []
        self.dead: set[str] = set()
        assert bench.relay is not None
        self.relay = bench.relay

    def note_error(self, round_: int, client: str, case: str, error: str) -> None:
        log(f"  !! {client} {case}: {error}")
        self.errors.append({"round": round_, "server": client, "case": case, "error": error})

    def set_path(self, case: str, seed: int) -> None:
        r = self.relay.request({"op": "set", **(PATHS[case] or {}), "seed": seed}, timeout=30)
        if not r["ok"]:
            raise BenchError(f"the relay: {r['error']}")

    def command(self, measure: str) -> dict[str, Any]:
        s = self.s
        base = {"host": SERVER_TUNNEL, "timeout": s.timeout_s, "stall": s.stall_s}
        if measure == "pingpong":
            return {"op": "pingpong", "n": s.pingpong_n, "size": s.pingpong_size, **base}
        total = s.echo_bytes if measure == "echo" else s.transfer_bytes
        return {"op": {"down": "download", "up": "upload", "echo": "echo"}[measure], "total": total, **base}

    def request(self, client: str, command: dict[str, Any]) -> dict[str, Any]:
        return self.bench.drivers[client].request(command, timeout=command.get("timeout", 60) + 30)

    def warmup(self) -> None:
        """Each client's handshake, through the relay without delay, and its expected bytes made, before
        anything is measured."""
        self.set_path(LAN_CASE, 0)
        sizes = sorted({self.s.transfer_bytes, self.s.echo_bytes})
        for client in self.clients:
            self.request(client, {"op": "prepare", "sizes": sizes, "timeout": 60})
            r = self.request(client, {"op": "ping", "host": SERVER_TUNNEL, "timeout": 60, "stall": 30})
            if not r["ok"]:
                raise BenchError(f"the {client} client does not reach the server: {r['error']}")

    def check_shared(self) -> None:
        """The server, its services and the relay serve both clients: without one of them the run is over."""
        b = self.bench
        for what, pids in (("the server's wireguard-go", b.server_pids), ("the services", b.services_pids),
                           ("the relay", self.relay.proc.pids)):  # fmt: skip
            if not all(alive(pid) for pid in pids):
                raise BenchError(f"{what} exited")

    def alive(self, client: str) -> bool:
        pids = self.bench.drivers[client].proc.pids + self.bench.client_procs[client]
        return all(alive(pid) for pid in pids)

    def readings(self, client: str) -> dict[str, Any]:
        b = self.bench
        driver = b.drivers[client].proc.pids
        out: dict[str, Any] = {
            "cpu_s": cpu_seconds(b.client_procs[client]),
            "driver_cpu_s": cpu_seconds(driver),
            "server_cpu_s": cpu_seconds(b.server_pids),
            "services_cpu_s": cpu_seconds(b.services_pids),
            "relay_cpu_s": cpu_seconds(self.relay.proc.pids),
            "busy_s": machine_busy_seconds(),
            "wall_s": time.perf_counter(),
        }
        if client == "package":
            out["threads_cpu_s"] = thread_cpu_seconds(driver[0])
        return out

    def measure(self, round_: int, client: str, case: str, measure: str, seed: int) -> dict[str, Any]:
        """One measure of one client, the relay reset (counters, random drops) just before."""
        if client in self.dead:
            return {"error": "client not running"}
        self.check_shared()
        self.set_path(case, seed)
        before = self.readings(client)
        try:
            r = self.request(client, self.command(measure))
        except BenchError as e:  # no answer in time: the driver is stuck, or gone
            r = {"ok": False, "error": str(e)}
            stop_process(self.bench.drivers[client].proc.popen)
        if not self.alive(client):
            self.dead.add(client)
            proc = self.bench.drivers[client].proc
            error = (f"the client's processes are gone (driver exit code {proc.popen.poll()}); its remaining "
                     f"measures are skipped. The driver's log ends with:\n{proc.log_tail()}")  # fmt: skip
            self.note_error(round_, client, f"{case}/{measure}", error)
            return {"error": error}
        rec = deltas(before, self.readings(client))
        if client == "package":
            rec.pop("driver_cpu_s")  # the same process as cpu_s
        links = self.relay.request({"op": "stats"}, timeout=30)["links"]
        rec["relay"] = {k: v for k, v in links.items() if k.startswith(f"{RELAY_PORTS[client]}/")}
        if not r.pop("ok"):
            rec["error"] = r["error"]
            self.note_error(round_, client, f"{case}/{measure}", r["error"])
            return rec
        rec[measure] = r.pop("value")
        rec["detail"] = r
        log_measure(case, measure, client, rec)
        return rec

    def run(self, rounds: int) -> list[dict[str, Any]]:
        self.warmup()
        results = []
        for round_ in range(rounds):
            k = round_ % len(self.clients)
            order = self.clients[k:] + self.clients[:k]
            log(f"round {round_ + 1}/{rounds}, client order {' '.join(order)}")
            cases: dict[str, Any] = {}
            for i, case in enumerate(self.cases):
                seed = 1000 * round_ + i
                cases[case] = {client: {} for client in order}
                for measure in measures_of(case):
                    for client in order:
                        cases[case][client][measure] = self.measure(round_, client, case, measure, seed)
            results.append({"round": round_ + 1, "order": order, "cases": cases})
        return results


def deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What each reading moved by during a measure; `other_cpu_s` is the rest of the machine's busy time (the
    kernel's softirq work on our packets, and any process not ours: large values mark a disturbed measure)."""
    rec: dict[str, Any] = {k: after[k] - before[k] for k in before if k != "threads_cpu_s"}
    if "threads_cpu_s" in before:
        rec["threads_cpu_s"] = {k: after["threads_cpu_s"][k] - v for k, v in before["threads_cpu_s"].items()}
    ours = sum(rec[k] for k in ("cpu_s", "driver_cpu_s", "server_cpu_s", "services_cpu_s", "relay_cpu_s"))
    if "threads_cpu_s" in rec:  # the package's driver is its client: counted once
        ours -= rec["driver_cpu_s"]
    rec["other_cpu_s"] = rec.pop("busy_s") - ours
    return rec


def measures_of(case: str) -> list[str]:
    return ["down", "up", *(LAN_MEASURES if case == LAN_CASE else ())]


def log_measure(case: str, measure: str, client: str, rec: dict[str, Any]) -> None:
    shown = f"{rec[measure]:,.3g} {UNITS[measure]}"
    late = max((lk["late_ms"]["p99"] or 0 for lk in rec.get("relay", {}).values()), default=0)
    driver = f", driver {rec['driver_cpu_s']:.2f} s" if "driver_cpu_s" in rec else ""
    log(
        f"  {case:<7} {measure:<8} {client:<9} {shown}  (client cpu {rec['cpu_s']:.2f} s{driver}, server "
        f"{rec['server_cpu_s']:.2f} s, relay {rec['relay_cpu_s']:.2f} s, other {rec['other_cpu_s']:.2f} s, "
        f"relay p99 late {late:.2f} ms, {rec['wall_s']:.1f} s)"
    )


# ---------------------------------------------------------------------------------------------------------
# summary


def spread(values: list[Any]) -> dict[str, Any]:
    """Median, min and max of the rounds' values (errors left out), and the p95 once there are enough."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"n": 0, "median": None, "min": None, "max": None}
    out = {"n": len(v), "median": median(v), "min": v[0], "max": v[-1]}
    if len(v) >= MIN_P95_SAMPLES:
        out["p95"] = v[min(len(v) - 1, int(0.95 * len(v)))]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(rounds: list[dict[str, Any]], clients: list[str], cases: list[str]) -> dict[str, Any]:
    """Per case and measure: the spread of each client's values, the ratio package/reference of the medians
    and per round, and the CPU seconds; the ping-pong's round-trip percentiles."""
    rates: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    rtt: dict[str, Any] = {}
    for case, measure in rows(cases):
        row = f"{case}/{measure}"

        def values(client: str, key: str) -> list[Any]:
            return [r["cases"][case][client][measure].get(key) for r in rounds]

        rates[row] = {c: spread(values(c, measure)) for c in clients}
        if len(clients) == 2:
            rates[row]["package/reference"] = ratio(*(rates[row][c]["median"] for c in CLIENTS))
            pairs = zip(values("package", measure), values("reference", measure))
            rates[row]["package/reference_by_round"] = [ratio(p, q) for p, q in pairs]
        cpu[row] = cpu_summary(clients, values)
        if measure == "pingpong":
            rtt[row] = {c: rtt_medians([d or {} for d in values(c, "detail")]) for c in clients}
    return {"rates": rates, "cpu": cpu, "pingpong_rtt": rtt}


def cpu_summary(clients: list[str], values: Any) -> dict[str, Any]:
    """The clients' CPU seconds of one measure: each client's, the reference's driver apart, the package's by
    thread, and the ratios of the medians."""
    e: dict[str, Any] = {c: spread(values(c, "cpu_s")) for c in clients}
    if "reference" in clients:
        e["reference_driver"] = spread(values("reference", "driver_cpu_s"))
    if "package" in clients:
        threads = [t or {} for t in values("package", "threads_cpu_s")]
        e["package_threads"] = {
            k: spread([t.get(k) for t in threads]) for k in ("main_thread", "other_threads")
        }
    if len(clients) == 2:
        pkg, ref, drv = (e[k]["median"] for k in ("package", "reference", "reference_driver"))
        e["package/wireguard-go"] = ratio(pkg, ref)
        e["package/(wireguard-go+driver)"] = ratio(pkg, None if ref is None or drv is None else ref + drv)
    return e


RTT_KEYS = ("min_us", "p50_us", "p95_us", "p99_us")


def rtt_medians(details: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over the rounds of each percentile of a ping-pong's round trips."""
    return {k: median([d.get("rtt", {}).get(k) for d in details]) for k in RTT_KEYS}


def range_cell(e: dict[str, Any], form: str) -> str:
    if e.get("median") is None:
        return "error"
    cell = fmt(e["median"], form)
    if e["n"] > 1:
        cell += f" ({fmt(e['min'], form)}-{fmt(e['max'], form)})"
    if "p95" in e:
        cell += f" p95 {fmt(e['p95'], form)}"
    return cell


def rows(cases: list[str]) -> list[tuple[str, str]]:
    return [(case, measure) for case in cases for measure in measures_of(case)]


def table(summary: dict[str, Any], clients: list[str], cases: list[str], sizes: Sizes, rounds: int) -> str:
    """Markdown, as benches/README.md shows it: rates, CPU seconds, the ping-pong's round trips."""
    return "\n\n".join(
        [rate_table(summary, clients, cases, sizes, rounds), cpu_table(summary, clients, cases)]
        + [rtt_table(row, e, clients, sizes) for row, e in summary["pingpong_rtt"].items()]
    )


def rate_table(
    summary: dict[str, Any], clients: list[str], cases: list[str], sizes: Sizes, rounds: int
) -> str:
    form = {"MB/s": "{:.2f}", "rt/s": "{:,.0f}"}
    lines = [
        f"Medians of {rounds} round(s), (min-max) over the rounds; down/up "
        f"{sizes.transfer_bytes / 2**20:g} MiB on one connection, echo {sizes.echo_bytes / 2**20:g} MiB each "
        f"way, ping-pong {sizes.pingpong_n} round trips of {sizes.pingpong_size} B. x reference: package / "
        "reference of the medians (above 1: the package's client is faster).",
        "",
        "| path | measure | unit | " + " | ".join(CLIENT_LABELS[c] for c in clients) + " | x reference |",
        "|---|---|---|" + "---:|" * (len(clients) + 1),
    ]
    for case, measure in rows(cases):
        e = summary["rates"][f"{case}/{measure}"]
        cells = [range_cell(e[c], form[UNITS[measure]]) for c in clients]
        cells.append(fmt(e.get("package/reference"), "{:.2f}"))
        lines.append(
            f"| {PATH_LABELS[case]} | {MEASURES[measure]} | {UNITS[measure]} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def cpu_table(summary: dict[str, Any], clients: list[str], cases: list[str]) -> str:
    lines = [
        "Client CPU seconds per measure, medians: the package's Tunnel process (its asyncio side included; "
        "in brackets: its main thread / the engine's and other threads) against wireguard-go alone, and "
        "against wireguard-go plus the reference's driver process (the same asyncio code on kernel sockets, "
        "whose system calls carry part of the kernel's TCP work).",
        "",
        "| path | measure | package | wireguard-go | reference driver | x wireguard-go "
        "| x wireguard-go + driver |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, measure in rows(cases):
        e = summary["cpu"][f"{case}/{measure}"]

        def cell(key: str) -> str:
            return fmt(e.get(key, {}).get("median"), "{:.2f}")

        package = cell("package")
        if "package_threads" in e:
            t = {k: fmt(v["median"], "{:.2f}") for k, v in e["package_threads"].items()}
            package += f" ({t['main_thread']} / {t['other_threads']})"
        cells = [package, cell("reference"), cell("reference_driver")]
        cells += [fmt(e.get(k), "{:.2f}") for k in ("package/wireguard-go", "package/(wireguard-go+driver)")]
        lines.append(f"| {PATH_LABELS[case]} | {MEASURES[measure]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rtt_table(row: str, e: dict[str, Any], clients: list[str], sizes: Sizes) -> str:
    lines = [
        f"Ping-pong round trips, {PATH_LABELS[row.split('/')[0]]}, us (percentiles of each round's "
        f"{sizes.pingpong_n} round trips, medians over the rounds):",
        "",
        "| | " + " | ".join(CLIENT_LABELS[c] for c in clients) + " |",
        "|---|" + "---:|" * len(clients),
    ]
    for k in RTT_KEYS:
        lines.append(f"| {k[:-3]} | " + " | ".join(fmt(e[c][k], "{:,.0f}") for c in clients) + " |")
    return "\n".join(lines)


def document(started: float, meta: dict[str, Any], cases: list[str], summary: dict[str, Any],
             results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The JSON of a run: what ran where, the summary, every round's records."""
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "duration_s": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model()},
        "paths": {c: PATHS[c] for c in cases},
        "labels": {c: PATH_LABELS[c] for c in cases},
        "clients": CLIENT_LABELS,
        "git": git_state(),
        **meta,
    }
    return {"meta": meta, "summary": summary, "rounds": results, "errors": errors}


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --small)")
    parser.add_argument("--small", action="store_true", help="small transfers and 1 round: that it works")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="subset of package,reference")
    parser.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    parser.add_argument("--venv", type=Path, default=DEFAULT_NEW_VENV,
                        help="the venv with this tree's release wheel (benches/build.py --new)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="JSON (default results/client_paths.json, results/client_paths_small.json)"
    )
    return parser


def main() -> int:
    parser = arg_parser()
    args = parser.parse_args()
    clients = pick(parser, "clients", args.clients, CLIENTS)
    cases = pick(parser, "cases", args.cases, CASES)
    sizes = SMALL if args.small else Sizes()
    rounds = args.rounds or (1 if args.small else 3)
    out = args.out or RESULTS / ("client_paths_small.json" if args.small else "client_paths.json")
    try:
        check_prerequisites()
        venv_info = check_venv(args.venv, "new")
    except BenchError as e:
        log(f"error: {e}")
        return 2
    cleanup_stale()
    python = venv_python(args.venv)
    workdir = Path(tempfile.mkdtemp(prefix="wgbench-client-"))
    started, load_at_start = time.time(), os.getloadavg()
    try:
        bench = ClientBench(workdir)
        with bench:
            bench.start_all(clients, python)
            runner = ClientRunner(bench, sizes, clients, cases)
            results = runner.run(rounds)
            setup = {
                "congestion_control": bench.congestion_control(),
                "relay_realtime": bench.relay_realtime,
                "mtu": MTU,
                "veth": [CLIENT_VETH_ADDR, SERVER_VETH_ADDR],
            }
    except KeyboardInterrupt:
        log(f"interrupted; cleaned up (logs in {workdir})")
        return 130
    except BenchError as e:
        log(f"error: {e} (logs in {workdir})")
        return 1
    summary = summarize(results, clients, cases)
    meta = {"loadavg_at_start": load_at_start, "rounds": rounds, "small": args.small, "sizes": asdict(sizes),
            "venv": {"path": str(args.venv), **venv_info}, "setup": setup}  # fmt: skip
    write_json(out, document(started, meta, cases, summary, results, runner.errors))
    print(table(summary, clients, cases, sizes, rounds))
    print_errors(runner.errors, started, out)
    finish_workdir(workdir, bool(runner.errors))
    return 1 if runner.errors else 0


if __name__ == "__main__":
    sys.exit(main())
