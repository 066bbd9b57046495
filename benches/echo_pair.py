"""The seed's pair: the same asyncio echo without a tunnel and behind this server, TCP ping-pong of 1000-byte
messages for growing message counts; writes JSON for plot.py.

    python3 benches/echo_pair.py            # counts 100 .. 10,000, 3 interleaved rounds, medians
    python3 benches/echo_pair.py --small    # counts 10 and 50, 1 round

"plain": benches/servers/kernel_server.py in the server namespace, reached over the veth pair directly (the
kernel's TCP/IP, no WireGuard). "wireguard": benches/servers/new_server.py (this project, the release wheel in
/tmp/bench-venv-new) reached through the wireguard-go client. The load generator is the same for both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_NEW_VENV,
    ECHO_PORT,
    RESULTS,
    SERVER_KINDS,
    BenchError,
    check_prerequisites,
    check_venv,
    finish_workdir,
    git_state,
    log,
    median,
    venv_python,
    write_json,
)
from children import LoadGen  # noqa: E402
from harness import Bench, cleanup_stale  # noqa: E402

SERIES = {"plain": "plain", "wireguard": "new"}
LABELS = {"plain": "asyncio echo, no tunnel", "wireguard": "asyncio echo behind this server (WireGuard)"}


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--counts", help="comma-separated message counts")
    parser.add_argument("--size", type=int, default=1000, help="message size in bytes")
    parser.add_argument("--new-venv", type=Path, default=DEFAULT_NEW_VENV)
    parser.add_argument("--out", type=Path)
    return parser


def main() -> int:
    args = arg_parser().parse_args()
    counts = [int(c) for c in args.counts.split(",")] if args.counts else (
        [10, 50] if args.small else [100, 200, 500, 1000, 2000, 5000, 10000])  # fmt: skip
    rounds = args.rounds or (1 if args.small else 3)
    out = args.out or RESULTS / ("echo_pair_small.json" if args.small else "echo_pair.json")
    try:
        check_prerequisites()
        info = check_venv(args.new_venv, "new")
    except BenchError as e:
        log(f"error: {e}")
        return 2
    cleanup_stale()
    python = venv_python(args.new_venv)
    workdir = Path(tempfile.mkdtemp(prefix="wgbench-pair-"))
    started = time.time()
    try:
        with Bench(workdir) as bench:
            loadgen = bench.start(["new", "plain"], {"new": python, "plain": python})
            seconds = measure(loadgen, counts, rounds, args.size)
    except BenchError as e:
        log(f"error: {e} (logs in {workdir})")
        return 1
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)), "rounds": rounds,
            "message_size": args.size, "git": git_state(), "package": info}  # fmt: skip
    doc = report(meta, counts, seconds)
    write_json(out, doc)
    print(f"JSON: {out}")
    finish_workdir(workdir, keep=False)
    return 0


def measure(loadgen: LoadGen, counts: list[int], rounds: int, size: int) -> dict[str, list[list[float]]]:
    """Seconds of each series for each message count, a value per round; the series alternate in order."""
    for name in SERIES.values():
        host = SERVER_KINDS[name].target
        r = loadgen.request({"op": "ping", "host": host, "port": ECHO_PORT, "timeout": 30}, timeout=60)
        if not r["ok"]:
            raise BenchError(f"{name} does not answer: {r['error']}")
    seconds: dict[str, list[list[float]]] = {s: [[] for _ in counts] for s in SERIES}
    for round_ in range(rounds):
        order = list(SERIES) if round_ % 2 == 0 else list(SERIES)[::-1]
        for i, n in enumerate(counts):
            for series in order:
                host = SERVER_KINDS[SERIES[series]].target
                command = {"op": "pingpong", "host": host, "port": ECHO_PORT, "n": n, "size": size,
                           "timeout": 120, "stall": 15}  # fmt: skip
                r = loadgen.request(command, timeout=150)
                if not r["ok"]:
                    raise BenchError(f"{series}, {n} messages: {r['error']}")
                seconds[series][i].append(r["elapsed"])
                log(f"round {round_ + 1}/{rounds} {series:<9} {n:>6} messages: {r['elapsed']:.3f} s "
                    f"({r['value']:,.0f} rt/s)")  # fmt: skip
    return seconds


def report(meta: dict[str, Any], counts: list[int], seconds: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Prints the medians side by side and returns the JSON of the run."""
    doc: dict[str, Any] = {"meta": meta, "counts": counts, "series": {}}
    print(f"{'messages':>9} " + " ".join(f"{s + ' s':>14}" for s in SERIES) + f" {'ratio':>8}")
    for s in SERIES:
        med = [median(v) for v in seconds[s]]
        doc["series"][s] = {
            "label": LABELS[s],
            "seconds_median": med,
            "round_trips_per_s": [n / m for n, m in zip(counts, med)],
            "seconds": seconds[s],
        }
    for i, n in enumerate(counts):
        a, b = (doc["series"][s]["seconds_median"][i] for s in SERIES)
        print(f"{n:>9} {a:>14.3f} {b:>14.3f} {b / a:>7.2f}x")
    return doc


if __name__ == "__main__":
    sys.exit(main())
