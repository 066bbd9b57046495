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
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_NEW_VENV,
    DEFAULT_OLD_VENV,
    RESULTS,
    SERVER_KINDS,
    BenchError,
    check_prerequisites,
    check_venv,
    cpu_model,
    finish_workdir,
    git_state,
    log,
    pick,
    print_errors,
    venv_python,
    write_json,
)
from harness import Bench, cleanup_stale  # noqa: E402
from readings import rss_kib  # noqa: E402
from report import summarize, table  # noqa: E402
from runner import CASES, SMALL, Runner, Sizes  # noqa: E402

SERVER_ORDER = ["new", "kernel", "old", "base"]
DEFAULT_SERVERS = ["new", "kernel", "old"]


@dataclass
class Plan:
    """What the command line asks for, and the interpreters of the servers."""

    servers: list[str]
    cases: list[str]
    sizes: Sizes
    rounds: int
    small: bool
    max_restarts: int
    out: Path
    pythons: dict[str, Path] = field(default_factory=dict)  # of each server kind, once the venvs are built
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each venv says of itself


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 1 with --small)")
    parser.add_argument("--small", action="store_true", help="tiny sizes and 1 round: a check that it works")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help="comma-separated subset of new,kernel,old,base (default: the first three); "
                             "base is this server from --base-venv, to measure a change")  # fmt: skip
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {','.join(CASES)} (default: all)")  # fmt: skip
    parser.add_argument("--build", action="store_true", help="run benches/build.py first (both venvs)")
    parser.add_argument("--new-venv", type=Path, default=DEFAULT_NEW_VENV)
    parser.add_argument("--old-venv", type=Path, default=DEFAULT_OLD_VENV)
    parser.add_argument(
        "--base-venv", type=Path, help="this project built from another commit (build.py --new)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON output (default results/latest.json, results/small.json with --small)"
    )
    parser.add_argument("--max-restarts", type=int, default=2, help="restarts of a crashed server per run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server and client logs")
    parser.add_argument("--cleanup", action="store_true", help="only remove namespaces left by killed runs")
    return parser


def main() -> int:
    parser = arg_parser()
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
    plan = make_plan(parser, args)
    if args.build:
        build_venvs(args.new_venv, args.old_venv)
    try:
        if "base" in plan.servers and args.base_venv is None:
            raise BenchError("the base server needs --base-venv")
        venvs = (("new", args.new_venv), ("old", args.old_venv), ("base", args.base_venv))
        plan.infos = {n: check_venv(v, n) for n, v in venvs if n in plan.servers}
    except BenchError as e:
        log(f"error: {e}")
        return 2
    new_python = venv_python(args.new_venv)
    # the kernel path's echo ("plain"): same interpreter, no package needed
    plan.pythons = {"new": new_python, "old": venv_python(args.old_venv),
                    **({"base": venv_python(args.base_venv)} if args.base_venv else {}),
                    "plain": new_python if new_python.exists() else Path(sys.executable)}  # fmt: skip
    return run(plan, args.keep_logs)


def make_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    return Plan(
        servers=pick(parser, "servers", args.servers, SERVER_ORDER),
        cases=pick(parser, "cases", args.cases, CASES),
        sizes=SMALL if args.small else Sizes(),
        rounds=args.rounds or (1 if args.small else 5),
        small=args.small,
        max_restarts=args.max_restarts,
        out=args.out or RESULTS / ("small.json" if args.small else "latest.json"),
    )


def build_venvs(new_venv: Path, old_venv: Path) -> None:
    build = Path(__file__).parent / "build.py"
    subprocess.run([sys.executable, str(build), "--new-venv", str(new_venv), "--old-venv", str(old_venv)],
                   check=True)  # fmt: skip


def run(plan: Plan, keep_logs: bool) -> int:
    """The run proper, its JSON and its tables; non-zero when anything failed, and then the logs are kept."""
    workdir = Path(tempfile.mkdtemp(prefix="wgbench-"))
    started = time.time()
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5:
        log(f"note: load average {load_at_start[0]:.2f} at start: other work on this machine disturbs the "
            "figures (see the 'other' column)")  # fmt: skip
    failed = True
    try:
        doc = measure(plan, workdir, started, load_at_start)
        write_json(plan.out, doc)
        print(table(doc["summary"], plan.servers, plan.sizes, plan.rounds, plan.cases))
        print_errors(doc["errors"], started, plan.out)
        failed = bool(doc["errors"])
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
        finish_workdir(workdir, failed or keep_logs)
    return 1 if failed else 0


def measure(plan: Plan, workdir: Path, started: float, load_at_start: tuple[float, ...]) -> dict[str, Any]:
    """Sets up, runs the rounds, tears down; returns the run's JSON."""
    with Bench(workdir) as bench:
        bench.start(plan.servers, plan.pythons)
        for name in plan.servers:
            log(f"{name:<7} pids {bench.servers[name].pids}: {bench.server_info[name].get('version')}")
        runner = Runner(bench, plan.sizes, plan.servers, plan.pythons, plan.max_restarts, plan.cases)
        results = runner.run(plan.rounds)
        rss_end = {
            n: (rss_kib(bench.servers[n].pids) if runner.server_alive(n) else None) for n in plan.servers
        }
        servers = {n: {"label": SERVER_KINDS[n].label, **bench.server_info[n], **plan.infos.get(n, {})}
                   for n in plan.servers}  # fmt: skip
    summary = summarize(results, plan.servers, plan.sizes, plan.cases)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "duration_s": time.time() - started,
        "loadavg_at_start": load_at_start,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "cpu_model": cpu_model()},  # fmt: skip
        "rounds": plan.rounds,
        "small": plan.small,
        "sizes": asdict(plan.sizes),
        "git": git_state(),
        "servers": servers,
        "server_rss_end_kib": rss_end,
        "restarts": runner.restarts,
    }
    return {"meta": meta, "summary": summary, "rounds": results, "errors": runner.errors}


if __name__ == "__main__":
    sys.exit(main())
