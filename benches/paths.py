"""TCP on emulated real paths: delay, loss and a bottleneck between the WireGuard client and each server.

    python3 benches/build.py                 # once, and after every change of the engine: the venvs
    python3 benches/paths.py                 # 3 interleaved rounds of every case -> results/paths.json
    python3 benches/paths.py --small         # 1 MiB transfers, 1 round: that it works, no figures to trust
    python3 benches/paths.py --cases rtt50,loss1 --servers new,kernel --rounds 1

The WireGuard datagrams pass through benches/path.py (a relay in user space: this machine's kernel has no
netem), which holds each one for the one-way delay, drops a share at random and optionally limits the rate
with a bounded queue, in each direction. Per case and server: one connection downloading (server to client),
one uploading, and 8 connections downloading at once; with the bottleneck, also the round-trip time of a
second connection's small ping-pong while the single download runs. "direct" (no relay) and "relay0" (the
relay, no delay) give the relay's own cost. Servers: those of run.py and mitmproxy_rs 0.11.5.

A benchmark, not a test: it exits non-zero when something breaks (a server crashes, a transfer fails or
stalls), never because of a figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_NEW_VENV,
    DEFAULT_OLD_VENV,
    DEFAULT_RS_VENV,
    RESULTS,
    SERVER_KINDS,
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
from readings import alive, cpu_seconds  # noqa: E402
from report import fmt  # noqa: E402
from runner import Runner  # noqa: E402

SERVER_ORDER = ["new", "kernel", "old", "rs"]
OTHERS = ["old", "rs"]  # the earlier user-space servers: the target is the better of them

# The path of each case, both directions alike (benches/path.py's fields); None: no relay at all.
PATHS: dict[str, dict[str, Any] | None] = {
    "direct": None,
    "relay0": {},
    "rtt50": {"delay_ms": 25},
    "rtt200": {"delay_ms": 100},
    "loss1": {"delay_ms": 25, "loss": 0.01},
    # 50 Mbit/s = 6.25 MB/s; a queue of 100 ms at that rate
    "bneck": {"delay_ms": 25, "rate_mbit": 50, "queue_bytes": 625_000},
}
PATH_LABELS = {
    "direct": "no relay",
    "relay0": "relay, no delay",
    "rtt50": "50 ms RTT",
    "rtt200": "200 ms RTT",
    "loss1": "50 ms RTT, 1% loss each way",
    "bneck": "50 Mbit/s, 100 ms queue, 50 ms RTT",
}
OVERHEAD_CASES = ("direct", "relay0")  # single transfers only: the relay's cost
MEASURES = {"down": "1 conn down", "up": "1 conn up", "par": "8 conns down"}


@dataclass
class Sizes:
    transfer_bytes: int = 16 << 20
    par_conns: int = 8
    par_bytes: int = 4 << 20  # each of the parallel downloads
    probe_interval_s: float = 0.02
    idle_probes: int = 25
    timeout_s: float = 300.0
    stall_s: float = 30.0


SMALL = Sizes(transfer_bytes=1 << 20, par_bytes=256 << 10, idle_probes=5, timeout_s=120.0, stall_s=20.0)


class PathRunner(Runner):
    """runner.py's Runner (rounds, server restarts, health checks, errors) with the path cases instead of its
    own."""

    def __init__(self, bench: Bench, sizes: Sizes, servers: list[str], pythons: dict[str, Path],
                 max_restarts: int, cases: list[str]):  # fmt: skip
        super().__init__(bench, sizes, servers, pythons, max_restarts, cases)  # type: ignore[arg-type]
        assert bench.relay is not None
        self.relay = bench.relay

    def set_path(self, case: str, seed: int) -> None:
        r = self.relay.request({"op": "set", **(PATHS[case] or {}), "seed": seed}, timeout=30)
        if not r["ok"]:
            raise BenchError(f"the relay: {r['error']}")

    def measure(self, round_: int, name: str, case: str, measure: str, seed: int) -> dict[str, Any]:
        """One transfer against one server, the relay reset (counters, random drops) just before."""
        s: Sizes = self.s  # type: ignore[assignment]
        host, port = self.target(name)
        command: dict[str, Any] = {"op": "upload" if measure == "up" else "download", "host": host,
                                   "port": port, "total": s.transfer_bytes}  # fmt: skip
        if measure == "par":
            command.update(total=s.par_bytes, conns=s.par_conns)
        if measure == "down" and case == "bneck":
            command.update(probe=True, probe_interval=s.probe_interval_s, idle_probes=s.idle_probes)
        self.set_path(case, seed)
        pids, relay_pids = self.pids(name), self.relay.proc.pids
        c0, r0, w0 = cpu_seconds(pids), cpu_seconds(relay_pids), time.perf_counter()
        r = self.request(command)
        rec: dict[str, Any] = {
            "wall_s": time.perf_counter() - w0,
            "relay_cpu_s": cpu_seconds(relay_pids) - r0,
        }
        if all(alive(pid) for pid in pids):
            rec["cpu_s"] = cpu_seconds(pids) - c0
        if PATHS[case] is not None:
            rec["relay"] = self.relay.request({"op": "stats"}, timeout=30)["links"]
        if not r.pop("ok"):
            rec["error"] = r["error"]
            self.note_error(round_, name, f"{case}/{measure}", r["error"])
            self.health_check(round_, name, f"{case}/{measure}")
            return rec
        rec[measure] = r.pop("value")
        rec["detail"] = r
        return rec

    def run_path_case(self, round_: int, name: str, case: str, seed: int) -> dict[str, Any]:
        if not self.ensure_server(round_, name, case):
            return {"error": "server not running"}
        self.bench.set_endpoint(name, relayed=PATHS[case] is not None)
        self.set_path(case, seed)
        try:
            self.warmup(name)  # the server learns the new endpoint; the tunnel is up
        except BenchError as e:
            self.note_error(round_, name, case, str(e))
            return {"error": str(e)}
        out: dict[str, Any] = {}
        for measure in ("down", "up") if case in OVERHEAD_CASES else MEASURES:
            rec = self.measure(round_, name, case, measure, seed)
            out[measure] = rec
            shown = f"{rec[measure]:.3g} MB/s" if measure in rec else "error"
            rtt = rec.get("detail", {}).get("rtt_loaded")
            if rtt:
                shown += (f", probe RTT idle {rec['detail']['rtt_idle']['median_ms']:.1f} ms, "
                          f"loaded {rtt['median_ms']:.1f} ms")  # fmt: skip
            late = max((lk["late_ms"]["p99"] or 0 for lk in rec.get("relay", {}).values()), default=0)
            log(f"  {case:<7} {measure:<5} {name:<7} {shown}  (server cpu {rec.get('cpu_s', float('nan')):.2f}"
                f" s, relay cpu {rec['relay_cpu_s']:.2f} s, relay p99 late {late:.2f} ms, "
                f"{rec['wall_s']:.1f} s)")  # fmt: skip
        return out

    def case_in_round(self, round_: int, i: int, case: str, order: list[str]) -> dict[str, Any]:
        seed = 1000 * round_ + i  # every server sees the same random drops in a round
        return {name: self.run_path_case(round_, name, case, seed) for name in order}


# ---------------------------------------------------------------------------------------------------------
# summary


def rows(cases: list[str]) -> list[tuple[str, str]]:
    return [(c, m) for c in cases for m in (("down", "up") if c in OVERHEAD_CASES else MEASURES)]


def summarize(rounds: list[dict[str, Any]], servers: list[str], cases: list[str]) -> dict[str, Any]:
    def values(case: str, name: str, key: str, get: Any = None) -> list[Any]:
        out = []
        for r in rounds:
            rec = r["cases"][case].get(name, {}).get(key, {})
            out.append(get(rec) if get else rec.get(key))
        return out

    summary: dict[str, Any] = {"rates": {}, "rtt": {}, "overhead": {}}
    for case, measure in rows(cases):
        vals = {n: values(case, n, measure) for n in servers}
        med = {n: median(v) for n, v in vals.items()}
        ratios = {}
        if med.get("new") is not None:
            if med.get("kernel"):
                ratios["new/kernel"] = med["new"] / med["kernel"]
            others = [med[o] for o in OTHERS if med.get(o)]
            if others:
                ratios["new/best_other"] = med["new"] / max(others)
        summary["rates"][f"{case}/{measure}"] = {"median": med, "values": vals, "ratios": ratios}
    if "bneck" in cases:
        for n in servers:

            def rtt(which: str) -> Any:
                return lambda rec: rec.get("detail", {}).get(which, {}).get("median_ms")

            idle, loaded = values("bneck", n, "down", rtt("rtt_idle")), values(
                "bneck", n, "down", rtt("rtt_loaded")
            )
            extra = [b - a for a, b in zip(idle, loaded) if a is not None and b is not None]
            summary["rtt"][n] = {"idle_ms": median(idle), "loaded_ms": median(loaded), "extra_ms": median(extra),
                                 "extra_values": extra}  # fmt: skip
    if "direct" in cases and "relay0" in cases:
        for measure in ("down", "up"):
            d, r = (
                summary["rates"][f"direct/{measure}"]["median"],
                summary["rates"][f"relay0/{measure}"]["median"],
            )
            summary["overhead"][measure] = {n: r[n] / d[n] for n in servers if d.get(n) and r.get(n)}
    return summary


def table(summary: dict[str, Any], servers: list[str], cases: list[str], sizes: Sizes, rounds: int) -> str:
    """Markdown, as benches/README.md shows it."""
    labels = [SERVER_KINDS[n].label for n in servers]
    lines = [f"MB/s, medians of {rounds} round(s); down/up {sizes.transfer_bytes / 2**20:g} MiB on one "
             f"connection, 8 conns x {sizes.par_bytes / 2**20:g} MiB down at once.", "",
             "| path | transfer | " + " | ".join(labels) + " | x kernel path | x best of 0.1.23, rs |",
             "|---|---|" + "---:|" * (len(servers) + 2)]  # fmt: skip
    for case, measure in rows(cases):
        e = summary["rates"][f"{case}/{measure}"]
        cells = [fmt(e["median"][n], "{:.2f}") for n in servers]
        cells += [fmt(e["ratios"].get(k), "{:.2f}") for k in ("new/kernel", "new/best_other")]
        lines.append(f"| {PATH_LABELS[case]} | {MEASURES[measure]} | " + " | ".join(cells) + " |")
    if summary["rtt"]:
        lines += ["", "Round trip of a second connection (64 B ping-pong) during the single download, bottleneck "
                  "case, ms (medians):", "", "| | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(servers)]  # fmt: skip
        for key, label in (("idle_ms", "idle"), ("loaded_ms", "while downloading"), ("extra_ms", "added")):
            lines.append(
                f"| {label} | " + " | ".join(fmt(summary["rtt"][n][key], "{:.1f}") for n in servers) + " |"
            )
    if summary["overhead"]:
        lines += ["", "The relay's cost: rate through the relay with no delay / rate without it:", ""]
        for measure, o in summary["overhead"].items():
            lines.append(
                f"- {MEASURES[measure]}: "
                + ", ".join(f"{SERVER_KINDS[n].label} {v:.2f}" for n, v in o.items())
            )
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
    parser.add_argument("--servers", default=",".join(SERVER_ORDER), help="subset of new,kernel,old,rs")
    parser.add_argument("--cases", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--new-venv", type=Path, default=DEFAULT_NEW_VENV)
    parser.add_argument("--old-venv", type=Path, default=DEFAULT_OLD_VENV)
    parser.add_argument("--rs-venv", type=Path, default=DEFAULT_RS_VENV)
    parser.add_argument(
        "--out", type=Path, help="JSON (default results/paths.json, results/paths_small.json)"
    )
    parser.add_argument("--max-restarts", type=int, default=2, help="restarts of a crashed server per run")
    return parser


def main() -> int:
    parser = arg_parser()
    args = parser.parse_args()
    servers = pick(parser, "servers", args.servers, SERVER_ORDER)
    cases = pick(parser, "cases", args.cases, list(PATHS))
    sizes = SMALL if args.small else Sizes()
    rounds = args.rounds or (1 if args.small else 3)
    out = args.out or RESULTS / ("paths_small.json" if args.small else "paths.json")
    venvs = {"new": args.new_venv, "old": args.old_venv, "rs": args.rs_venv}
    try:
        check_prerequisites()
        infos = {n: check_venv(venvs[n], n) for n in servers if n in venvs}
    except BenchError as e:
        log(f"error: {e}")
        return 2
    cleanup_stale()
    pythons = {n: venv_python(v) for n, v in venvs.items()}
    pythons["plain"] = pythons["new"] if pythons["new"].exists() else Path(sys.executable)
    workdir = Path(tempfile.mkdtemp(prefix="wgbench-paths-"))
    started, load_at_start = time.time(), os.getloadavg()
    try:
        with Bench(workdir) as bench:
            bench.start(servers, pythons, relay=True)
            runner = PathRunner(bench, sizes, servers, pythons, args.max_restarts, cases)
            results = runner.run(rounds)
            server_info = {n: {"label": SERVER_KINDS[n].label, **bench.server_info[n], **infos.get(n, {})}
                           for n in servers}  # fmt: skip
    except KeyboardInterrupt:
        log(f"interrupted; cleaned up (logs in {workdir})")
        return 130
    except BenchError as e:
        log(f"error: {e} (logs in {workdir})")
        return 1
    summary = summarize(results, servers, cases)
    meta = {"loadavg_at_start": load_at_start, "rounds": rounds, "small": args.small, "sizes": asdict(sizes),
            "servers": server_info, "restarts": runner.restarts}  # fmt: skip
    doc = document(started, meta, cases, summary, results, runner.errors)
    write_json(out, doc)
    print(table(summary, servers, cases, sizes, rounds))
    print_errors(runner.errors, started, out)
    finish_workdir(workdir, bool(runner.errors))
    return 1 if runner.errors else 0


if __name__ == "__main__":
    sys.exit(main())
