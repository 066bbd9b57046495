"""What run.py prints and writes of its rounds: the medians of each metric and of the CPU seconds per case,
the ratios of this server to the others, the targets, and the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import OLD_VERSION, SERVER_KINDS, median
from runner import Sizes


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


CASE_LABELS = {
    "idle_cpu": "idle (no connections)",
    "pingpong": "TCP ping-pong",
    "bulk": "bulk echo",
    "concurrent": "concurrent conns",
    "connrate": "new connections",
    "udp": "UDP ping-pong",
    "idle_conns": "idle conns open+hold+close",
}


def summarize(
    rounds: list[dict[str, Any]], servers: list[str], sizes: Sizes, cases: list[str]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "metrics": {m.key: metric_entry(m, rounds, servers) for m in metrics(sizes) if m.case in cases},
        "cpu_seconds": {case: cpu_entry(case, rounds, servers) for case in cases},
    }
    summary["targets"] = targets(summary, servers)
    return summary


def column(rounds: list[dict[str, Any]], servers: list[str], case: str, key: str) -> dict[str, list[Any]]:
    """Each server's values of `key` in `case`, a round each (None where it is missing)."""
    return {n: [r["cases"][case].get(n, {}).get(key) for r in rounds] for n in servers}


def ratios_to_others(med: dict[str, float | None], servers: list[str]) -> dict[str, float]:
    """This server's median over each other server's."""
    new = med.get("new")
    if new is None:
        return {}
    return {f"new/{o}": new / v for o, v in med.items() if o != "new" and v}


def metric_entry(m: Metric, rounds: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    values = column(rounds, servers, m.case, m.key)
    med = {n: median(v) for n, v in values.items()}
    ratios = ratios_to_others(med, servers)
    others = [v for o, v in med.items() if o != "new" and v is not None]
    new = med.get("new")
    if new is not None and others:
        best = max(others) if m.higher_is_better else min(others)
        if best:
            ratios["new/best_other"] = new / best
    return {"label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better, "median": med,
            "values": values, "ratios": ratios}  # fmt: skip


def cpu_entry(case: str, rounds: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    """The server's CPU seconds in a case, and what the client side and the rest of the machine used."""
    values = column(rounds, servers, case, "cpu_s")
    med = {n: median(v) for n, v in values.items()}

    def medians(key: str) -> dict[str, float | None]:
        return {n: median(v) for n, v in column(rounds, servers, case, key).items()}

    return {
        "label": CASE_LABELS[case],
        "median": med,
        "values": values,
        "client_cpu_s_median": medians("client_cpu_s"),
        "loadgen_cpu_s_median": medians("loadgen_cpu_s"),
        "other_cpu_s_median": medians("other_cpu_s"),
        "wall_s_median": medians("wall_s"),
        "ratios": ratios_to_others(med, servers),
    }


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


def table(summary: dict[str, Any], servers: list[str], sizes: Sizes, rounds: int, cases: list[str]) -> str:
    lines = [f"Medians of {rounds} round(s).", ""]
    lines += metric_rows(summary, servers, [m for m in metrics(sizes) if m.case in cases])
    lines += ["", "Server CPU seconds per case (kernel path: wireguard-go + asyncio echo; the kernel's own "
              "TCP/IP and softirq time is not in it)", ""]  # fmt: skip
    lines += cpu_rows(summary, servers, cases)
    lines += ["", "Client CPU seconds per case: wireguard-go client + load generator (load generator alone) "
              "/ other:", "the rest of the machine's busy time meanwhile (the kernel's softirq work for the "
              "traffic, other processes)", ""]  # fmt: skip
    lines += client_rows(summary, servers, cases)
    if "new" in servers:
        lines += ["", "Targets (this server):"]
        for t in summary["targets"]:
            state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            lines.append(f"  {state:<7} {t['target']}: {fmt(t['value'], '{:.3g}')} (target {t['limit']})")
    return "\n".join(lines)


def head(servers: list[str], unit: str, width: int = 12, ratios: bool = True) -> list[str]:
    """A table's heading and its rule: a column a server, then (with this server) a column a ratio."""
    labels = {n: SERVER_KINDS[n].label for n in servers}
    text = f"{'case':<40} {unit:<7}" + "".join(f" {labels[n]:>{width}}" for n in servers)
    if ratios and "new" in servers:
        text += "".join(f" {'x ' + labels[o]:>14}" for o in servers if o != "new")
    return [text, "-" * len(text)]


def row(label: str, unit: str, entry: dict[str, Any], servers: list[str], spec: str) -> str:
    text = f"{label:<40} {unit:<7}" + "".join(f" {fmt(entry['median'][n], spec):>12}" for n in servers)
    if "new" in servers:
        text += "".join(
            f" {fmt(entry['ratios'].get('new/' + o), '{:.2f}x'):>14}" for o in servers if o != "new"
        )
    return text


def metric_rows(summary: dict[str, Any], servers: list[str], shown: list[Metric]) -> list[str]:
    return head(servers, "unit") + [
        row(m.label, m.unit, summary["metrics"][m.key], servers, m.fmt) for m in shown
    ]


def cpu_rows(summary: dict[str, Any], servers: list[str], cases: list[str]) -> list[str]:
    return head(servers, "") + [
        row(summary["cpu_seconds"][c]["label"], "s", summary["cpu_seconds"][c], servers, "{:.2f}")
        for c in cases
    ]


def client_rows(summary: dict[str, Any], servers: list[str], cases: list[str]) -> list[str]:
    lines = head(servers, "", width=22, ratios=False)
    for case in cases:
        c = summary["cpu_seconds"][case]
        text = f"{c['label']:<40} {'s':<7}"
        for n in servers:
            client, loadgen, other = (
                fmt(c[f"{k}_cpu_s_median"][n], "{:.2f}") for k in ("client", "loadgen", "other")
            )
            cell = f"{client} ({loadgen}) / {other}"
            text += f" {cell:>22}"
        lines.append(text)
    return lines
