"""TCP on emulated real paths: delay, jitter, loss, burst loss and a bottleneck between the WireGuard client
and each server.

    python3 benches/build.py                 # once, and after every change of the engine: the venvs
    python3 benches/paths.py                 # 3 interleaved rounds of every case -> results/paths.json
    python3 benches/paths.py --small         # 1 MiB transfers, 1 round: that it works, no figures to trust
    python3 benches/paths.py --cases rtt50,loss1 --servers new,kernel --rounds 1
    python3 benches/paths.py --cases jit10,burst --measures short    # the short transfers alone

The WireGuard datagrams pass through benches/path.py (a relay in user space: this machine's kernel has no
netem), which holds each one for the one-way delay (plus a random extra per datagram where there is jitter,
so that they overtake each other), drops a share at random or in bursts and optionally limits the rate with
a bounded queue, in each direction. Per case and server: one connection downloading (server to client), one
uploading, and 8 connections downloading at once, MB/s; with the bottleneck, also the round-trip time of a
second connection's small ping-pong while the single download runs. On the 50 ms paths (--short-cases),
short transfers as a browser makes them (benches/short.py): 16 KiB to 1 MiB, each on a fresh connection, one
after the other and 6 at once, both ways; the median, p95 and slowest completion time. "direct" (no relay)
and "relay0" (the relay, no delay) give the relay's own cost. Servers: this one and the kernel path; with
--servers, also 0.1.23 and mitmproxy_rs 0.11.5.

A benchmark, not a test: it exits non-zero when something breaks (a server crashes, a transfer fails or
stalls), never because of a figure; the targets against the kernel path are reported, not gated on.
"""

from __future__ import annotations

import argparse
import os
import statistics
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

import short  # noqa: E402

SERVER_ORDER = ["new", "kernel", "old", "rs", "base"]
OTHERS = ["old", "rs"]  # the earlier user-space servers: the target is the better of them
# The default servers: this one and the kernel path, which the targets compare. The earlier releases took
# nearly all of a run's time (a 64 KiB window on the slow paths) and are an option: --servers.
DEFAULT_SERVERS = ["new", "kernel"]

# Burst losses (path.py's Gilbert-Elliott model, per datagram and direction): the bad state begins on 0.3% of
# the datagrams and lasts 10 on average (1 / ge_r), losing half of them; the good state loses 0.1%. In the
# long run 2.9% of the datagrams meet the bad state, and 1.55% are lost: about 1.45% in bursts (on average 5
# of 10 datagrams in a row, so several holes in one window), 0.1% alone.
BURST = {"ge_p": 0.003, "ge_r": 0.1, "ge_loss_good": 0.001, "ge_loss_bad": 0.5}

# The path of each case, both directions alike (benches/path.py's fields); None: no relay at all.
PATHS: dict[str, dict[str, Any] | None] = {
    "direct": None,
    "relay0": {},
    "rtt50": {"delay_ms": 25},
    "rtt200": {"delay_ms": 100},
    "loss1": {"delay_ms": 25, "loss": 0.01},
    # 50 Mbit/s = 6.25 MB/s; a queue of 100 ms at that rate
    "bneck": {"delay_ms": 25, "rate_mbit": 50, "queue_bytes": 625_000},
    # a random extra delay per datagram, 0 to N ms each way: datagrams overtake each other
    "jit1": {"delay_ms": 25, "jitter_ms": 1},
    "jit2": {"delay_ms": 25, "jitter_ms": 2},
    "jit10": {"delay_ms": 25, "jitter_ms": 10},
    "jit2loss1": {"delay_ms": 25, "jitter_ms": 2, "loss": 0.01},
    "jit10loss2": {"delay_ms": 25, "jitter_ms": 10, "loss": 0.02},
    "burst": {"delay_ms": 25, **BURST},
}
PATH_LABELS = {
    "direct": "no relay",
    "relay0": "relay, no delay",
    "rtt50": "50 ms RTT",
    "rtt200": "200 ms RTT",
    "loss1": "50 ms RTT, 1% loss each way",
    "bneck": "50 Mbit/s, 100 ms queue, 50 ms RTT",
    "jit1": "50 ms RTT, jitter 0-1 ms each way",
    "jit2": "50 ms RTT, jitter 0-2 ms each way",
    "jit10": "50 ms RTT, jitter 0-10 ms each way",
    "jit2loss1": "50 ms RTT, jitter 0-2 ms, 1% loss each way",
    "jit10loss2": "50 ms RTT, jitter 0-10 ms, 2% loss each way",
    "burst": "50 ms RTT, burst loss 1.55% each way",
}
OVERHEAD_CASES = ("direct", "relay0")  # single transfers only: the relay's cost
# The cases whose rates have a target (at least the kernel path's): those there before the jitter and bursts.
RATE_TARGET_CASES = ("direct", "relay0", "rtt50", "rtt200", "loss1", "bneck")
MEASURES = {"down": "1 conn down", "up": "1 conn up", "par": "8 conns down"}
ALL_MEASURES = [*MEASURES, "short"]
# Where the short transfers run by default (--short-cases): the 50 ms path alone, with jitter, with jitter and
# loss, with burst loss. Each adds about 40 s a round for the two default servers; loss1 and jit1 are left
# out for the run time (jit2loss1 and jit2 are near them).
SHORT_CASES = ["rtt50", "jit2", "jit10", "jit2loss1", "jit10loss2", "burst"]


def case_measures(case: str, measures: list[str]) -> list[str]:
    """The rate measures of a case among those chosen (--measures)."""
    own = ("down", "up") if case in OVERHEAD_CASES else tuple(MEASURES)
    return [m for m in own if m in measures]


@dataclass
class Sizes:
    transfer_bytes: int = 16 << 20
    par_conns: int = 8
    par_bytes: int = 4 << 20  # each of the parallel downloads
    probe_interval_s: float = 0.02
    idle_probes: int = 25
    timeout_s: float = 300.0
    stall_s: float = 30.0
    # the short transfers: each size `short_repeats` times one after another, and `short_batches` times
    # `short_at_once` at once, per direction and round
    short_sizes: tuple[int, ...] = (16 << 10, 64 << 10, 256 << 10, 1 << 20)
    short_repeats: int = 6
    short_at_once: int = 6
    short_batches: int = 1


# The short transfers keep their sizes (they are small already), once through each.
SMALL = Sizes(transfer_bytes=1 << 20, par_bytes=256 << 10, idle_probes=5, timeout_s=120.0, stall_s=20.0,
              short_repeats=1)  # fmt: skip


class PathRunner(Runner):
    """runner.py's Runner (rounds, server restarts, health checks, errors) with the path cases instead of its
    own."""

    def __init__(self, bench: Bench, sizes: Sizes, servers: list[str], pythons: dict[str, Path],
                 max_restarts: int, cases: list[str], measures: list[str], short_cases: list[str],
                 short_servers: list[str]):  # fmt: skip
        super().__init__(bench, sizes, servers, pythons, max_restarts, cases)  # type: ignore[arg-type]
        assert bench.relay is not None
        self.relay = bench.relay
        self.measures = measures
        self.short_cases = short_cases if "short" in measures else []
        self.short_servers = short_servers

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

    def measure_short(self, round_: int, name: str, case: str, seed: int) -> dict[str, Any]:
        """The short transfers against one server: both directions, one at a time and a few at once, the relay
        reset once before them all."""
        s: Sizes = self.s  # type: ignore[assignment]
        host, port = self.target(name)
        self.set_path(case, seed)
        pids, relay_pids = self.pids(name), self.relay.proc.pids
        c0, r0, w0 = cpu_seconds(pids), cpu_seconds(relay_pids), time.perf_counter()
        rec: dict[str, Any] = {"times_s": {}}
        for direction in short.DIRECTIONS:
            for mode, how in short.modes(s.short_at_once, s.short_repeats, s.short_batches).items():
                r = self.request({"op": "short", "host": host, "port": port, "direction": direction,
                                  "sizes": list(s.short_sizes), **how})  # fmt: skip
                if not r.pop("ok"):
                    rec["error"] = r["error"]
                    self.note_error(round_, name, f"{case}/short/{direction}/{mode}", r["error"])
                    self.health_check(round_, name, f"{case}/short")
                    break
                rec["times_s"][f"{direction}/{mode}"] = r["times_s"]
                log_short(case, direction, mode, name, r["times_s"])
            if "error" in rec:
                break
        rec.update(wall_s=time.perf_counter() - w0, relay_cpu_s=cpu_seconds(relay_pids) - r0,
                   relay=self.relay.request({"op": "stats"}, timeout=30)["links"])  # fmt: skip
        if all(alive(pid) for pid in pids):
            rec["cpu_s"] = cpu_seconds(pids) - c0
        return rec

    def run_path_case(self, round_: int, name: str, case: str, seed: int) -> dict[str, Any]:
        if not self.ensure_server(round_, name, case):
            return {"error": "server not running"}
        w0 = time.perf_counter()
        self.bench.set_endpoint(name, relayed=PATHS[case] is not None)
        self.set_path(case, seed)
        try:
            self.warmup(name)  # the server learns the new endpoint; the tunnel is up
        except BenchError as e:
            self.note_error(round_, name, case, str(e))
            return {"error": str(e)}
        out: dict[str, Any] = {}
        for measure in case_measures(case, self.measures):
            rec = self.measure(round_, name, case, measure, seed)
            out[measure] = rec
            log_rate(case, measure, name, rec)
        if case in self.short_cases and name in self.short_servers:
            out["short"] = self.measure_short(round_, name, case, seed)
        out["wall_s"] = time.perf_counter() - w0
        return out

    def case_in_round(self, round_: int, i: int, case: str, order: list[str]) -> dict[str, Any]:
        seed = 1000 * round_ + i  # every server sees the same random drops in a round
        return {name: self.run_path_case(round_, name, case, seed) for name in order}


def log_rate(case: str, measure: str, name: str, rec: dict[str, Any]) -> None:
    """A line per transfer as it ends: the rate, the CPU of the server and of the relay, how late the relay
    was."""
    shown = f"{rec[measure]:.3g} MB/s" if measure in rec else "error"
    rtt = rec.get("detail", {}).get("rtt_loaded")
    if rtt:
        shown += (f", probe RTT idle {rec['detail']['rtt_idle']['median_ms']:.1f} ms, "
                  f"loaded {rtt['median_ms']:.1f} ms")  # fmt: skip
    late = max((lk["late_ms"]["p99"] or 0 for lk in rec.get("relay", {}).values()), default=0)
    log(f"  {case:<10} {measure:<5} {name:<7} {shown}  (server cpu {rec.get('cpu_s', float('nan')):.2f}"
        f" s, relay cpu {rec['relay_cpu_s']:.2f} s, relay p99 late {late:.2f} ms, "
        f"{rec['wall_s']:.1f} s)")  # fmt: skip


def log_short(case: str, direction: str, mode: str, name: str, times: dict[str, list[float]]) -> None:
    """A line per direction and mode of the short transfers: median and slowest per size, ms."""
    cells = [
        f"{short.size_label(int(size))} {statistics.median(t) * 1000:.0f}/{max(t) * 1000:.0f}"
        for size, t in times.items()
    ]
    log(f"  {case:<10} short {direction:<4} {mode} {name:<7} ms median/slowest: {', '.join(cells)}")


# ---------------------------------------------------------------------------------------------------------
# summary


def rows(cases: list[str], measures: list[str]) -> list[tuple[str, str]]:
    return [(c, m) for c in cases for m in case_measures(c, measures)]


def summarize(rounds: list[dict[str, Any]], servers: list[str], cases: list[str], measures: list[str],
              sizes: Sizes, short_cases: list[str]) -> dict[str, Any]:  # fmt: skip

    def values(case: str, name: str, key: str, get: Any = None) -> list[Any]:
        out = []
        for r in rounds:
            rec = r["cases"][case].get(name, {}).get(key, {})
            out.append(get(rec) if get else rec.get(key))
        return out

    summary: dict[str, Any] = {"rates": {}, "rtt": {}, "overhead": {}}
    for case, measure in rows(cases, measures):
        vals = {n: values(case, n, measure) for n in servers}
        med = {n: median(v) for n, v in vals.items()}
        ratios = {}
        if med.get("new") is not None:
            if med.get("kernel"):
                ratios["new/kernel"] = med["new"] / med["kernel"]
            others = [med[o] for o in OTHERS if med.get(o)]
            if others:
                ratios["new/best_other"] = med["new"] / max(others)
            if med.get("base"):
                ratios["new/base"] = med["new"] / med["base"]
        summary["rates"][f"{case}/{measure}"] = {"median": med, "values": vals, "ratios": ratios}
    if "bneck" in cases and "down" in measures:
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
        for measure in case_measures("direct", measures):
            d, r = (
                summary["rates"][f"direct/{measure}"]["median"],
                summary["rates"][f"relay0/{measure}"]["median"],
            )
            summary["overhead"][measure] = {n: r[n] / d[n] for n in servers if d.get(n) and r.get(n)}
    summary["short"] = short.summarize(
        rounds, servers, short_cases, list(sizes.short_sizes), sizes.short_at_once
    )
    summary["case_wall_s"] = {c: {n: median([r["cases"][c].get(n, {}).get("wall_s") for r in rounds])
                                  for n in servers} for c in cases}  # fmt: skip
    summary["targets"] = targets(summary)
    return summary


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against the kernel path, reported, never gated on: the rates of the paths that
    were there before jitter and bursts at least 1.0x, the short transfers within short.LIMITS."""
    checks, missed = short.misses(summary["short"])
    missed_checks = sum(not ok for e in summary["short"].values() for ok in e["met"].values())
    for key, e in summary["rates"].items():
        r = e["ratios"].get("new/kernel")
        if key.split("/")[0] in RATE_TARGET_CASES and r is not None:
            checks += 1
            if r < 1.0:
                missed.append(f"rate {key}: {r:.2f}x")
                missed_checks += 1
    return {"checks": checks, "missed_checks": missed_checks, "missed": missed}


def table(summary: dict[str, Any], servers: list[str], cases: list[str], measures: list[str], sizes: Sizes,
          rounds: int) -> str:  # fmt: skip
    """Markdown, as benches/README.md shows it."""
    labels = [SERVER_KINDS[n].label for n in servers]
    lines = []
    if summary["rates"]:
        lines += [f"MB/s, medians of {rounds} round(s); down/up {sizes.transfer_bytes / 2**20:g} MiB on one "
                  f"connection, 8 conns x {sizes.par_bytes / 2**20:g} MiB down at once.", "",
                  "| path | transfer | " + " | ".join(labels) + " | x kernel path | x best of 0.1.23, rs |"
                  + (" x base build |" if "base" in servers else ""),
                  "|---|---|" + "---:|" * (len(servers) + 2 + ("base" in servers))]  # fmt: skip
    for case, measure in rows(cases, measures):
        e = summary["rates"][f"{case}/{measure}"]
        cells = [fmt(e["median"][n], "{:.2f}") for n in servers]
        ratios = ("new/kernel", "new/best_other") + (("new/base",) if "base" in servers else ())
        cells += [fmt(e["ratios"].get(k), "{:.2f}") for k in ratios]
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
    if summary["short"]:
        short_servers = [n for n in servers if any(e["servers"][n]["n"] for e in summary["short"].values())]
        lines += ["", short.table(summary["short"], short_servers, PATH_LABELS, rounds)]
    lines += ["", "Time per case, all servers, s (median of the rounds): "
              + ", ".join(f"{c} {sum(v for v in w.values() if v is not None):.1f}"
                          for c, w in summary["case_wall_s"].items())]  # fmt: skip
    t = summary["targets"]
    lines += ["", f"Targets against the kernel path (reported, not gated on; rates >= 1.0x, short transfers: "
              f"median and p95 <= 1.0x, slowest <= 1.5x): {t['checks'] - t['missed_checks']} of {t['checks']} met"
              + (", missed:" if t["missed"] else "")]  # fmt: skip
    lines += [f"- {m}" for m in t["missed"]]
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
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help="subset of new,kernel,old,rs,base (default new,kernel); base is this server "
                             "from --base-venv, to measure a change")  # fmt: skip
    parser.add_argument("--cases", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--measures", default=",".join(ALL_MEASURES),
                        help="subset of down,up,par (the transfers' rates) and short (the short transfers)")  # fmt: skip
    parser.add_argument("--short-cases", default=",".join(SHORT_CASES),
                        help="the cases with short transfers, among --cases (default: %(default)s)")  # fmt: skip
    parser.add_argument("--short-servers", default=",".join(DEFAULT_SERVERS),
                        help="the servers that do the short transfers, among --servers (default new,kernel)")  # fmt: skip
    parser.add_argument("--new-venv", type=Path, default=DEFAULT_NEW_VENV)
    parser.add_argument("--old-venv", type=Path, default=DEFAULT_OLD_VENV)
    parser.add_argument("--rs-venv", type=Path, default=DEFAULT_RS_VENV)
    parser.add_argument(
        "--base-venv", type=Path, help="this project built from another commit (build.py --new)"
    )
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
    measures = pick(parser, "measures", args.measures, ALL_MEASURES)
    # the short transfers run where both lists meet: --cases jit2 alone runs them there, not everywhere else
    short_cases = [c for c in pick(parser, "short cases", args.short_cases, list(PATHS)) if c in cases]
    short_servers = [
        n for n in pick(parser, "short servers", args.short_servers, SERVER_ORDER) if n in servers
    ]
    if "short" not in measures:
        short_cases = []
    sizes = SMALL if args.small else Sizes()
    rounds = args.rounds or (1 if args.small else 3)
    out = args.out or RESULTS / ("paths_small.json" if args.small else "paths.json")
    venvs = {"new": args.new_venv, "old": args.old_venv, "rs": args.rs_venv}
    if "base" in servers:
        if args.base_venv is None:
            parser.error("the base server needs --base-venv")
        venvs["base"] = args.base_venv
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
            runner = PathRunner(bench, sizes, servers, pythons, args.max_restarts, cases, measures, short_cases,
                                short_servers)  # fmt: skip
            results = runner.run(rounds)
            server_info = {n: {"label": SERVER_KINDS[n].label, **bench.server_info[n], **infos.get(n, {})}
                           for n in servers}  # fmt: skip
    except KeyboardInterrupt:
        log(f"interrupted; cleaned up (logs in {workdir})")
        return 130
    except BenchError as e:
        log(f"error: {e} (logs in {workdir})")
        return 1
    summary = summarize(results, servers, cases, measures, sizes, short_cases)
    meta = {"loadavg_at_start": load_at_start, "rounds": rounds, "small": args.small, "sizes": asdict(sizes),
            "servers": server_info, "restarts": runner.restarts, "measures": measures,
            "short_cases": short_cases, "short_servers": short_servers}  # fmt: skip
    doc = document(started, meta, cases, summary, results, runner.errors)
    write_json(out, doc)
    print(table(summary, servers, cases, measures, sizes, rounds))
    print_errors(runner.errors, started, out)
    finish_workdir(workdir, bool(runner.errors))
    return 1 if runner.errors else 0


if __name__ == "__main__":
    sys.exit(main())
