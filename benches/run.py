"""The benchmark runner: every case through the same real WireGuard client against three servers, in one run,
in interleaved rounds; prints medians, the ratios of this server to the other two, and writes JSON.

    python3 benches/build.py               # once, and after every change of the engine: the venvs
    python3 benches/run.py                 # full run: 5 rounds, a few minutes on 2 cores
    python3 benches/run.py --small         # tiny sizes, 1 round: that it works (CI), no figures to trust
    python3 benches/run.py --build         # build.py first, then the run

Servers: `new` (this project, release wheel in /tmp/bench-venv-new), `kernel` (wireguard-go as the server with
the kernel's TCP/IP stack and the same asyncio echo behind it) and `old` (mitmproxy_wireguard 0.1.23 from PyPI
in /tmp/bench-venv-old). See benches/README.md for what each case measures.

This is a benchmark, not a test: it exits non-zero when something breaks (a server crashes, a case fails or
stalls), never because of a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_NEW_VENV,
    DEFAULT_OLD_VENV,
    ECHO_PORT,
    OLD_VERSION,
    RESULTS,
    SERVER_KINDS,
    BenchError,
    check_prerequisites,
    check_venv,
    cpu_model,
    git_state,
    log,
    median,
    venv_python,
)
from harness import Bench, cleanup_stale  # noqa: E402
from readings import alive, cpu_ns, cpu_seconds, machine_busy_seconds, rss_kib  # noqa: E402

SERVER_ORDER = ["new", "kernel", "old"]


@dataclass
class Sizes:
    pingpong_n: int = 5000
    pingpong_size: int = 1000
    bulk_bytes: int = 48 << 20
    bulk_chunk: int = 64 << 10
    concurrent_conns: int = 200
    concurrent_rts: int = 20
    concurrent_size: int = 1000
    connrate_total: int = 1000
    connrate_parallel: int = 50
    connrate_size: int = 1000
    udp_n: int = 5000
    udp_size: int = 500
    idle_conns: int = 2000
    idle_parallel: int = 50
    idle_size: int = 1000
    idle_settle_s: float = 2.0
    idle_held_window_s: float = 3.0
    idle_cpu_window_s: float = 5.0
    idle_cpu_settle_s: float = 2.0
    timeout_s: float = 120.0
    stall_s: float = 15.0


SMALL = Sizes(
    pingpong_n=200,
    bulk_bytes=1 << 20,
    concurrent_conns=20,
    concurrent_rts=5,
    connrate_total=50,
    connrate_parallel=10,
    udp_n=200,
    idle_conns=50,
    idle_parallel=10,
    idle_settle_s=0.5,
    idle_held_window_s=0.5,
    idle_cpu_window_s=1.0,
    idle_cpu_settle_s=0.5,
    timeout_s=60.0,
    stall_s=10.0,
)


@dataclass(frozen=True)
class Metric:
    key: str
    case: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"


def metrics(s: Sizes) -> list[Metric]:
    return [
        Metric("pingpong", "pingpong", f"TCP ping-pong, {s.pingpong_size} B", "rt/s", True),
        Metric("bulk", "bulk", f"bulk echo, {s.bulk_bytes / 2**20:g} MiB each way", "MB/s", True, "{:,.1f}"),
        Metric(
            "concurrent",
            "concurrent",
            f"{s.concurrent_conns} conns x {s.concurrent_rts} round trips",
            "rt/s",
            True,
        ),
        Metric(
            "connrate",
            "connrate",
            f"new conns ({s.connrate_total}, {s.connrate_parallel} at a time)",
            "conn/s",
            True,
        ),
        Metric("udp", "udp", f"UDP ping-pong, {s.udp_size} B", "rt/s", True),
        Metric("idle_rss", "idle_conns", f"RSS per idle conn ({s.idle_conns} open)", "KiB", False, "{:,.1f}"),
        Metric(
            "idle_cpu_conns", "idle_conns", f"idle CPU, {s.idle_conns} conns open", "% core", False, "{:,.3f}"
        ),
        Metric("idle_cpu", "idle_cpu", "idle CPU, no connections", "% core", False, "{:,.3f}"),
    ]


CASES = ["idle_cpu", "pingpong", "bulk", "concurrent", "connrate", "udp", "idle_conns"]
CASE_LABELS = {
    "idle_cpu": "idle (no connections)",
    "pingpong": "TCP ping-pong",
    "bulk": "bulk echo",
    "concurrent": "concurrent conns",
    "connrate": "new connections",
    "udp": "UDP ping-pong",
    "idle_conns": "idle conns open+hold+close",
}


class Runner:
    def __init__(
        self, bench: Bench, sizes: Sizes, servers: list[str], pythons: dict[str, Path], max_restarts: int
    ):
        self.bench = bench
        self.s = sizes
        self.servers = servers
        self.pythons = pythons
        self.restarts = {name: 0 for name in servers}
        self.max_restarts = max_restarts
        self.dead: set[str] = set()
        self.errors: list[dict[str, Any]] = []

    def target(self, name: str) -> tuple[str, int]:
        return SERVER_KINDS[name].target, ECHO_PORT

    def pids(self, name: str) -> list[int]:
        return self.bench.servers[name].pids

    def request(self, command: dict[str, Any]) -> dict[str, Any]:
        command.setdefault("timeout", self.s.timeout_s)
        command.setdefault("stall", self.s.stall_s)
        assert self.bench.loadgen is not None
        return self.bench.loadgen.request(command, timeout=command["timeout"] + 30)

    def server_alive(self, name: str) -> bool:
        return all(alive(pid) for pid in self.pids(name))

    def note_error(self, round_: int, name: str, case: str, error: str) -> None:
        log(f"  !! {name} {case}: {error}")
        self.errors.append({"round": round_, "server": name, "case": case, "error": error})

    def ensure_server(self, round_: int, name: str, case: str) -> bool:
        """True if the server is running; restarts a crashed user-space server (a few times per run)."""
        if name in self.dead:
            return False
        if self.server_alive(name):
            return True
        proc = self.bench.servers[name]
        code = proc.popen.poll()
        self.note_error(
            round_,
            name,
            case,
            f"server process is gone (exit code {code}); its log ends with:\n" f"{proc.log_tail()}",
        )
        return self.restart(round_, name, case)

    def restart(self, round_: int, name: str, case: str) -> bool:
        if name == "kernel" or self.restarts[name] >= self.max_restarts:
            self.dead.add(name)
            log(f"  !! {name}: not restarted, its remaining cases are skipped")
            return False
        self.restarts[name] += 1
        log(f"  .. restarting the {name} server ({self.restarts[name]}/{self.max_restarts})")
        from children import stop_process

        stop_process(self.bench.servers[name].popen)
        try:
            self.bench.start_server(name, self.pythons)
            self.warmup(name)
            return True
        except Exception as e:
            self.note_error(round_, name, case, f"restart failed: {e}")
            self.dead.add(name)
            return False

    def warmup(self, name: str) -> None:
        host, port = self.target(name)
        r = self.request({"op": "ping", "host": host, "port": port, "timeout": 30, "stall": 20})
        if not r["ok"]:
            raise BenchError(f"the {name} server does not answer through the tunnel: {r['error']}")

    def health_check(self, round_: int, name: str, case: str) -> None:
        """After a failed case: does the server still answer? If not, restart it."""
        if not self.server_alive(name):
            self.ensure_server(round_, name, case)
            return
        host, port = self.target(name)
        r = self.request({"op": "ping", "host": host, "port": port, "timeout": 20, "stall": 10})
        if not r["ok"]:
            self.note_error(
                round_, name, case, f"after the failure the server no longer answers: {r['error']}"
            )
            self.restart(round_, name, case)

    # -- one case against one server

    def run_case(self, round_: int, name: str, case: str) -> dict[str, Any]:
        if not self.ensure_server(round_, name, case):
            return {"error": "server not running"}
        pids = self.pids(name)
        client = self.bench.client_pids()
        loadgen = self.bench.loadgen.proc.pids if self.bench.loadgen else []
        host, port = self.target(name)
        s = self.s
        rec: dict[str, Any] = {}
        c0, k0, l0, p0 = cpu_seconds(pids), cpu_seconds(client), cpu_seconds(loadgen), cpu_ns(pids)
        w0, b0 = time.perf_counter(), machine_busy_seconds()
        try:
            if case == "idle_cpu":
                time.sleep(s.idle_cpu_settle_s)
                n0 = cpu_ns(pids)
                time.sleep(s.idle_cpu_window_s)
                n1 = cpu_ns(pids)
                rec["idle_cpu"] = (n1 - n0) / 1e9 / s.idle_cpu_window_s * 100
            elif case == "idle_conns":
                rss0 = rss_kib(pids)
                r = self.request(
                    {
                        "op": "open_idle",
                        "host": host,
                        "port": port,
                        "n": s.idle_conns,
                        "parallel": s.idle_parallel,
                        "size": s.idle_size,
                    }
                )
                if not r["ok"]:
                    self.request({"op": "close_idle"})
                    raise BenchError(r["error"])
                time.sleep(s.idle_settle_s)
                rss1 = rss_kib(pids)
                n0, t0 = cpu_ns(pids), time.perf_counter()
                time.sleep(s.idle_held_window_s)
                n1, t1 = cpu_ns(pids), time.perf_counter()
                rss2 = rss_kib(pids)
                closed = self.request({"op": "close_idle", "check": 20})
                rec.update(
                    idle_rss=(rss1 - rss0) / r["open"],
                    idle_cpu_conns=(n1 - n0) / 1e9 / (t1 - t0) * 100,
                    rss_before_kib=rss0,
                    rss_held_kib=rss1,
                    rss_held_later_kib=rss2,
                    open_s=r["elapsed"],
                    closed_by_server=closed.get("closed_by_server"),
                    not_closed_by_server_in_10s=closed.get("not_closed_by_server_in_10s"),
                    check_failed=closed.get("check_failed"),
                )
                if closed.get("not_closed_by_server_in_10s"):
                    self.note_error(
                        round_,
                        name,
                        case,
                        f"{closed['not_closed_by_server_in_10s']} of "
                        f"{closed['value']} connections not closed by the server within 10 s of the "
                        "client's FIN",
                    )
                if closed.get("closed_by_server") or closed.get("check_failed"):
                    self.note_error(
                        round_,
                        name,
                        case,
                        f"{closed['closed_by_server']} idle connections closed by "
                        f"the server; {closed['check_failed']} of {closed['checked']} checked no longer "
                        "echo",
                    )
            else:
                command: dict[str, Any] = {"op": case, "host": host, "port": port}
                if case == "pingpong":
                    command.update(n=s.pingpong_n, size=s.pingpong_size)
                elif case == "bulk":
                    command.update(total=s.bulk_bytes, chunk=s.bulk_chunk)
                elif case == "concurrent":
                    command.update(conns=s.concurrent_conns, rts=s.concurrent_rts, size=s.concurrent_size)
                elif case == "connrate":
                    command.update(total=s.connrate_total, parallel=s.connrate_parallel, size=s.connrate_size)
                elif case == "udp":
                    command.update(n=s.udp_n, size=s.udp_size)
                r = self.request(command)
                if not r["ok"]:
                    raise BenchError(r["error"])
                rec[case] = r.pop("value")
                r.pop("ok")
                rec["detail"] = r
        except BenchError as e:
            rec = {"error": str(e)}
        if all(alive(pid) for pid in pids):
            rec["cpu_s"] = cpu_seconds(pids) - c0
            rec["cpu_s_schedstat"] = (cpu_ns(pids) - p0) / 1e9
            rec["rss_kib"] = rss_kib(pids)
        rec["client_cpu_s"] = cpu_seconds(client) - k0  # wireguard-go client + load generator
        rec["loadgen_cpu_s"] = cpu_seconds(loadgen) - l0
        rec["wall_s"] = time.perf_counter() - w0
        # Everything else the machine did meanwhile: the kernel's share of our own traffic (softirq, not
        # attributed to any process) plus whatever other processes ran. Large values: a disturbed case.
        rec["other_cpu_s"] = machine_busy_seconds() - b0 - rec.get("cpu_s", 0.0) - rec["client_cpu_s"]
        if "error" in rec:
            self.note_error(round_, name, case, rec["error"])
            self.health_check(round_, name, case)
        return rec

    def run(self, rounds: int) -> list[dict[str, Any]]:
        for name in self.servers:
            self.warmup(name)
        results = []
        for round_ in range(rounds):
            k = round_ % len(self.servers)
            order = self.servers[k:] + self.servers[:k]
            log(f"round {round_ + 1}/{rounds}, server order {' '.join(order)}")
            cases: dict[str, dict[str, Any]] = {}
            for case in CASES:
                cases[case] = {}
                for name in order:
                    rec = self.run_case(round_, name, case)
                    cases[case][name] = rec
                    shown = [
                        f"{key}={rec[key]:,.4g}"
                        for key in (case, "idle_cpu", "idle_rss", "idle_cpu_conns")
                        if key in rec and isinstance(rec[key], float)
                    ]
                    if "error" not in rec:
                        log(
                            f"  {case:<11} {name:<7} {' '.join(dict.fromkeys(shown))}  server cpu "
                            f"{rec.get('cpu_s', float('nan')):.2f} s, client cpu {rec['client_cpu_s']:.2f} s "
                            f"(loadgen {rec['loadgen_cpu_s']:.2f}), other {rec['other_cpu_s']:.2f} s, "
                            f"wall {rec['wall_s']:.2f} s"
                        )
            results.append({"round": round_ + 1, "order": order, "cases": cases})
        return results


# ---------------------------------------------------------------------------------------------------------
# summary


def summarize(rounds: list[dict[str, Any]], servers: list[str], sizes: Sizes) -> dict[str, Any]:
    summary: dict[str, Any] = {"metrics": {}, "cpu_seconds": {}}
    for m in metrics(sizes):
        if m.case not in CASES:
            continue
        values = {n: [r["cases"][m.case].get(n, {}).get(m.key) for r in rounds] for n in servers}
        med = {n: median(v) for n, v in values.items()}
        entry: dict[str, Any] = {
            "label": m.label,
            "unit": m.unit,
            "higher_is_better": m.higher_is_better,
            "median": med,
            "values": values,
            "ratios": {},
        }
        if "new" in servers and med.get("new") is not None:
            for other in servers:
                if other != "new" and med.get(other):
                    entry["ratios"][f"new/{other}"] = med["new"] / med[other]
            others = [med[o] for o in servers if o != "new" and med.get(o) is not None]
            if others:
                best = max(others) if m.higher_is_better else min(others)
                if best:
                    entry["ratios"]["new/best_other"] = med["new"] / best
        summary["metrics"][m.key] = entry
    for case in CASES:
        values = {n: [r["cases"][case].get(n, {}).get("cpu_s") for r in rounds] for n in servers}
        client = {n: [r["cases"][case].get(n, {}).get("client_cpu_s") for r in rounds] for n in servers}
        wall = {n: [r["cases"][case].get(n, {}).get("wall_s") for r in rounds] for n in servers}
        lg = {n: [r["cases"][case].get(n, {}).get("loadgen_cpu_s") for r in rounds] for n in servers}
        oth = {n: [r["cases"][case].get(n, {}).get("other_cpu_s") for r in rounds] for n in servers}
        med = {n: median(v) for n, v in values.items()}
        entry = {
            "label": CASE_LABELS[case],
            "median": med,
            "values": values,
            "client_cpu_s_median": {n: median(v) for n, v in client.items()},
            "loadgen_cpu_s_median": {n: median(v) for n, v in lg.items()},
            "other_cpu_s_median": {n: median(v) for n, v in oth.items()},
            "wall_s_median": {n: median(v) for n, v in wall.items()},
            "ratios": {},
        }
        if "new" in servers and med.get("new") is not None:
            for other in servers:
                if other != "new" and med.get(other):
                    entry["ratios"][f"new/{other}"] = med["new"] / med[other]
        summary["cpu_seconds"][case] = entry
    summary["targets"] = targets(summary, servers)
    return summary


def targets(summary: dict[str, Any], servers: list[str]) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: float | None, limit: str, met: bool | None) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    for key, m in summary["metrics"].items():
        if m["higher_is_better"]:
            r = m["ratios"].get("new/best_other")
            add(f"{m['label']}: this server / best other", r, ">= 1.0", None if r is None else r >= 1.0)
    if "old" in servers:
        for case, c in summary["cpu_seconds"].items():
            r = c["ratios"].get("new/old")
            add(
                f"server CPU s, {c['label']}: this server / {OLD_VERSION}",
                r,
                "<= 0.5",
                None if r is None else r <= 0.5,
            )
    if "idle_rss" in summary["metrics"]:
        rss = summary["metrics"]["idle_rss"]["median"].get("new")
        add("RSS per idle open connection (KiB)", rss, "<= 12", None if rss is None else rss <= 12)
    if "idle_cpu" in summary["metrics"]:
        idle = summary["metrics"]["idle_cpu"]["median"].get("new")
        add("idle CPU (% of a core)", idle, "<= 0.2", None if idle is None else idle <= 0.2)
    return out


def fmt(value: float | None, spec: str = "{:,.0f}") -> str:
    return "-" if value is None else spec.format(value)


def table(summary: dict[str, Any], servers: list[str], sizes: Sizes, rounds: int) -> str:
    labels = {n: SERVER_KINDS[n].label for n in servers}
    others = [n for n in servers if n != "new"]
    lines = [f"Medians of {rounds} round(s).", ""]
    head = f"{'case':<40} {'unit':<7}" + "".join(f" {labels[n]:>12}" for n in servers)
    if "new" in servers:
        head += "".join(f" {'x ' + labels[o]:>14}" for o in others)
    lines += [head, "-" * len(head)]
    for m in metrics(sizes):
        if m.case not in CASES:
            continue
        e = summary["metrics"][m.key]
        row = f"{m.label:<40} {m.unit:<7}" + "".join(f" {fmt(e['median'][n], m.fmt):>12}" for n in servers)
        if "new" in servers:
            row += "".join(f" {fmt(e['ratios'].get('new/' + o), '{:.2f}x'):>14}" for o in others)
        lines.append(row)
    lines += [
        "",
        "Server CPU seconds per case (kernel path: wireguard-go + asyncio echo; the kernel's own TCP/IP and "
        "softirq time is not in it)",
        "",
    ]
    head = f"{'case':<40} {'':<7}" + "".join(f" {labels[n]:>12}" for n in servers)
    if "new" in servers:
        head += "".join(f" {'x ' + labels[o]:>14}" for o in others)
    lines += [head, "-" * len(head)]
    for case in CASES:
        c = summary["cpu_seconds"][case]
        row = f"{c['label']:<40} {'s':<7}" + "".join(f" {fmt(c['median'][n], '{:.2f}'):>12}" for n in servers)
        if "new" in servers:
            row += "".join(f" {fmt(c['ratios'].get('new/' + o), '{:.2f}x'):>14}" for o in others)
        lines.append(row)
    lines += [
        "",
        "Client CPU seconds per case: wireguard-go client + load generator (load generator alone) / other:",
        "the rest of the machine's busy time meanwhile (the kernel's softirq work for the traffic, other "
        "processes)",
        "",
    ]
    head = f"{'case':<40} {'':<7}" + "".join(f" {labels[n]:>22}" for n in servers)
    lines += [head, "-" * len(head)]
    for case in CASES:
        c = summary["cpu_seconds"][case]
        row = f"{c['label']:<40} {'s':<7}"
        for n in servers:
            cell = (
                f"{fmt(c['client_cpu_s_median'][n], '{:.2f}')} ({fmt(c['loadgen_cpu_s_median'][n], '{:.2f}')})"
                f" / {fmt(c['other_cpu_s_median'][n], '{:.2f}')}"
            )
            row += f" {cell:>22}"
        lines.append(row)
    if "new" in servers:
        lines += ["", "Targets (this server):"]
        for t in summary["targets"]:
            state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            lines.append(f"  {state:<7} {t['target']}: {fmt(t['value'], '{:.3g}')} (target {t['limit']})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 1 with --small)")
    parser.add_argument("--small", action="store_true", help="tiny sizes and 1 round: a check that it works")
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_ORDER),
        help="comma-separated subset of new,kernel,old (default: all three)",
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument("--build", action="store_true", help="run benches/build.py first (both venvs)")
    parser.add_argument("--new-venv", type=Path, default=DEFAULT_NEW_VENV)
    parser.add_argument("--old-venv", type=Path, default=DEFAULT_OLD_VENV)
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON output (default results/latest.json, results/small.json " "with --small)",
    )
    parser.add_argument("--max-restarts", type=int, default=2, help="restarts of a crashed server per run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server and client logs")
    parser.add_argument("--cleanup", action="store_true", help="only remove namespaces left by killed runs")
    args = parser.parse_args()

    try:
        check_prerequisites()
    except BenchError as e:
        log(f"error: {e}")
        return 2
    removed = cleanup_stale()
    if removed:
        log(f"removed namespaces of earlier runs: {' '.join(removed)}")
    if args.cleanup:
        return 0
    servers = [s for s in SERVER_ORDER if s in args.servers.split(",")]
    unknown = set(args.servers.split(",")) - set(SERVER_ORDER)
    if unknown or not servers:
        parser.error(f"unknown servers: {', '.join(sorted(unknown)) or '(none given)'}")
    chosen = args.cases.split(",")
    if set(chosen) - set(CASES) or not chosen:
        parser.error(f"unknown cases: {', '.join(sorted(set(chosen) - set(CASES)))}")
    # Keep the table's order; the module-level list is what every loop reads.
    CASES[:] = [c for c in CASES if c in chosen]
    sizes = SMALL if args.small else Sizes()
    rounds = args.rounds or (1 if args.small else 5)
    out = args.out or RESULTS / ("small.json" if args.small else "latest.json")

    if args.build:
        import subprocess

        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent / "build.py"),
                "--new-venv",
                str(args.new_venv),
                "--old-venv",
                str(args.old_venv),
            ],
            check=True,
        )
    try:
        infos = {}
        if "new" in servers:
            infos["new"] = check_venv(args.new_venv, "new")
        if "old" in servers:
            infos["old"] = check_venv(args.old_venv, "old")
    except BenchError as e:
        log(f"error: {e}")
        return 2
    pythons = {
        "new": venv_python(args.new_venv),
        "old": venv_python(args.old_venv),
        # the kernel path's echo: same interpreter, no package needed
        "plain": venv_python(args.new_venv) if venv_python(args.new_venv).exists() else Path(sys.executable),
    }

    workdir = Path(tempfile.mkdtemp(prefix="wgbench-"))
    started = time.time()
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5:
        log(
            f"note: load average {load_at_start[0]:.2f} at start: other work on this machine disturbs the figures "
            "(see the 'other' column)"
        )
    failed = True
    runner = None
    try:
        with Bench(workdir) as bench:
            bench.setup_network()
            bench.start_servers(servers, pythons)
            bench.start_client(servers)
            bench.start_loadgen()
            for name in servers:
                log(f"{name:<7} pids {bench.servers[name].pids}: {bench.server_info[name].get('version')}")
            runner = Runner(bench, sizes, servers, pythons, args.max_restarts)
            results = runner.run(rounds)
            rss_end = {
                n: (rss_kib(bench.servers[n].pids) if runner.server_alive(n) else None) for n in servers
            }
        summary = summarize(results, servers, sizes)
        doc = {
            "meta": {
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
                "duration_s": time.time() - started,
                "loadavg_at_start": load_at_start,
                "machine": {
                    "cpus": os.cpu_count(),
                    "kernel": platform.release(),
                    "python": platform.python_version(),
                    "cpu_model": cpu_model(),
                },
                "rounds": rounds,
                "small": args.small,
                "sizes": asdict(sizes),
                "git": git_state(),
                "servers": {
                    n: {"label": SERVER_KINDS[n].label, **bench.server_info[n], **infos.get(n, {})}
                    for n in servers
                },
                "server_rss_end_kib": rss_end,
                "restarts": runner.restarts,
            },
            "summary": summary,
            "rounds": results,
            "errors": runner.errors,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(table(summary, servers, sizes, rounds))
        print(f"\n{len(runner.errors)} error(s); took {time.time() - started:.0f} s; JSON: {out}")
        for e in runner.errors:
            print(f"  round {e['round'] + 1} {e['server']} {e['case']}: {e['error'].splitlines()[0]}")
        failed = bool(runner.errors)
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if failed or args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
