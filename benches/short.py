"""The short transfers of benches/paths.py, as a browser makes them: what the runner asks the load generator
for, and what it reports of the completion times.

Each transfer runs on a fresh connection and is timed from the start of its connect to its last byte (a
download, server to client) or to the server's answer that every byte arrived intact (an upload): what a
user waits for. Sizes 16 KiB to 1 MiB, one transfer after the other ("seq") and a few at once ("par", as a
browser's connections to one host). The times of all rounds are pooled per case, server, direction, mode
and size: the median, the 95th percentile and the slowest of them, and each over the kernel path's.
"""

from __future__ import annotations

import math
from typing import Any

from common import SERVER_KINDS, median
from report import fmt

DIRECTIONS = ("down", "up")  # server to client, client to server
SIZE_LABELS = {16 << 10: "16 KiB", 64 << 10: "64 KiB", 256 << 10: "256 KiB", 1 << 20: "1 MiB"}
# Targets against the kernel path, reported, never gated on: the median and the p95 at most the kernel path's,
# the slowest at most 1.5 times its slowest.
LIMITS = {"median": 1.0, "p95": 1.0, "max": 1.5}


def modes(at_once: int, repeats: int, batches: int) -> dict[str, dict[str, int]]:
    """The two ways of running them: the load generator's `at_once` and `repeats` of each."""
    return {"seq": {"at_once": 1, "repeats": repeats}, "par": {"at_once": at_once, "repeats": batches}}


def mode_label(mode: str, at_once: int) -> str:
    return "one at a time" if mode == "seq" else f"{at_once} at once"


def size_label(size: int) -> str:
    return SIZE_LABELS.get(size, f"{size / 1024:g} KiB")


def percentile(values: list[float], p: float) -> float | None:
    """The p-th quantile (0..1), linear between the two nearest ranks (numpy's default): with 18 values the
    95th percentile lies between the slowest and the next, not on the slowest."""
    xs = sorted(values)
    if not xs:
        return None
    k = p * (len(xs) - 1)
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats(times: list[float]) -> dict[str, Any]:
    """Median, p95 and slowest of completion times, ms."""
    ms = [t * 1000 for t in times]
    return {"n": len(ms), "median": median(ms), "p95": percentile(ms, 0.95), "max": max(ms, default=None)}


def pooled(rounds: list[dict[str, Any]], case: str, name: str, key: str, size: int) -> list[float]:
    """A server's completion times of one case, direction/mode and size, all rounds together (s)."""
    out: list[float] = []
    for r in rounds:
        rec = r["cases"].get(case, {}).get(name, {}).get("short", {})
        out += rec.get("times_s", {}).get(key, {}).get(str(size), [])
    return out


def summarize(rounds: list[dict[str, Any]], servers: list[str], cases: list[str], sizes: list[int],
              at_once: int) -> dict[str, Any]:  # fmt: skip
    """Per case, direction, mode and size: each server's median, p95 and slowest, this server's ratios to the
    kernel path's, and whether each ratio is within its target."""
    out: dict[str, Any] = {}
    for case in cases:
        for direction in DIRECTIONS:
            for mode in ("seq", "par"):
                for size in sizes:
                    key = f"{direction}/{mode}"
                    per = {n: stats(pooled(rounds, case, n, key, size)) for n in servers}
                    if not any(v["n"] for v in per.values()):
                        continue
                    entry: dict[str, Any] = {"servers": per, "ratios": {}, "met": {}, "at_once": at_once}
                    new, kernel = per.get("new"), per.get("kernel")
                    for stat, limit in LIMITS.items():
                        if new and kernel and new[stat] is not None and kernel[stat]:
                            entry["ratios"][stat] = ratio = new[stat] / kernel[stat]
                            entry["met"][stat] = ratio <= limit
                    out[f"{case}/{key}/{size}"] = entry
    return out


def table(short: dict[str, Any], servers: list[str], labels: dict[str, str], rounds: int) -> str:
    """Markdown: a row per case, direction, mode and size; each server's median / p95 / slowest in ms."""
    names = [SERVER_KINDS[n].label for n in servers]
    lines = [f"Short transfers, each on a fresh connection, completion time in ms from the connect (pooled over "
             f"{rounds} round(s)): median / p95 / slowest; then this server over the kernel path (targets: "
             f"median and p95 <= {LIMITS['median']:g}, slowest <= {LIMITS['max']:g}; * = missed).", "",
             "| path | dir | how | size | n | " + " | ".join(names) + " | x kernel median | p95 | slowest |",
             "|---|---|---|---|---:|" + "---:|" * (len(servers) + 3)]  # fmt: skip
    for key, e in short.items():
        case, direction, mode, size = key.split("/")
        n = max(v["n"] for v in e["servers"].values())
        cells = ["{} / {} / {}".format(*(fmt(e["servers"][s][k], "{:.0f}") for k in ("median", "p95", "max")))
                 for s in servers]  # fmt: skip
        for stat in LIMITS:
            r = e["ratios"].get(stat)
            cells.append(fmt(r, "{:.2f}") + ("*" if e["met"].get(stat) is False else ""))
        lines.append(f"| {labels[case]} | {direction} | {mode_label(mode, e['at_once'])} | "
                     f"{size_label(int(size))} | {n} | " + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def misses(short: dict[str, Any]) -> tuple[int, list[str]]:
    """How many target checks there were, and a line for each row with a missed one."""
    checks, missed = 0, []
    for key, e in short.items():
        checks += len(e["met"])
        bad = [f"{stat} {e['ratios'][stat]:.2f}x" for stat, ok in e["met"].items() if not ok]
        if bad:
            case, direction, mode, size = key.split("/")
            missed.append(f"short {case} {direction} {mode_label(mode, e['at_once'])} {size_label(int(size))}: "
                          + ", ".join(bad))  # fmt: skip
    return checks, missed
