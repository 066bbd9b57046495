"""Draws the benchmark results as PNG for benches/README.md (matplotlib: it is in the bench venv).

/tmp/bench-venv-new/bin/python benches/plot.py
    reads  benches/results/echo_pair.json  -> benches/results/echo_pair.png
           benches/results/latest.json     -> benches/results/latest.png
           benches/results/paths.json      -> benches/results/paths.png
/tmp/bench-venv-new/bin/python benches/plot.py --echo-pair X.json --run Y.json --paths Z.json --out-dir DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"new": "#1f77b4", "kernel": "#7f7f7f", "old": "#ff7f0e", "rs": "#2ca02c", "plain": "#7f7f7f",
          "wireguard": "#1f77b4"}  # fmt: skip


def plot_echo_pair(doc: dict[str, Any], out: Path) -> None:
    counts = doc["counts"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, series in doc["series"].items():
        color = COLORS.get(name)
        ax1.plot(counts, series["seconds_median"], "o-", color=color, label=series["label"])
        ax2.plot(counts, series["round_trips_per_s"], "o-", color=color, label=series["label"])
        for i, n in enumerate(counts):
            ax1.plot([n] * len(series["seconds"][i]), series["seconds"][i], ".", color=color, alpha=0.35)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("messages (ping-pong, %d B each)" % doc["meta"]["message_size"])
    ax1.set_ylabel("seconds")
    ax1.set_title("time for N round trips")
    ax2.set_xscale("log")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("messages")
    ax2.set_ylabel("round trips / s")
    ax2.set_title("round trips per second")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"echo pair, medians of {doc['meta']['rounds']} rounds ({doc['meta']['date'][:10]})", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def finish(fig: Any, unused: list[Any], meta: dict[str, Any], prefix: str, out: Path) -> None:
    """Hides the unused panels, titles the figure with the run's facts, writes it."""
    for ax in unused:
        ax.axis("off")
    fig.suptitle(f"{prefix}medians of {meta['rounds']} interleaved rounds, {meta['machine']['cpus']} cores, "
                 f"{meta['date'][:10]} (dots: single rounds)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_run(doc: dict[str, Any], out: Path) -> None:
    summary = doc["summary"]
    servers = list(doc["meta"]["servers"])
    labels = {n: doc["meta"]["servers"][n]["label"] for n in servers}
    metric_items = list(summary["metrics"].items())
    panels = len(metric_items) + 1
    cols = 3
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.1 * cols, 3.1 * rows))
    flat = list(axes.flat)
    for ax, (key, m) in zip(flat, metric_items):
        xs = range(len(servers))
        meds = [m["median"].get(n) or 0 for n in servers]
        ax.bar(xs, meds, color=[COLORS[n] for n in servers])
        for x, n in zip(xs, servers):
            vals = [v for v in m["values"][n] if v is not None]
            ax.plot([x] * len(vals), vals, "k.", alpha=0.5, markersize=4)
        ax.set_xticks(list(xs), [labels[n] for n in servers], fontsize=8)
        better = "higher" if m["higher_is_better"] else "lower"
        ax.set_title(f"{m['label']}\n{m['unit']}, {better} is better", fontsize=8.5)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    ax = flat[len(metric_items)]
    cases = list(summary["cpu_seconds"])
    width = 0.8 / len(servers)
    for i, n in enumerate(servers):
        vals = [summary["cpu_seconds"][c]["median"].get(n) or 0 for c in cases]
        ax.bar([j + i * width for j in range(len(cases))], vals, width, color=COLORS[n], label=labels[n])
    ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(cases))],
                  [summary["cpu_seconds"][c]["label"].split(" (")[0] for c in cases], rotation=35, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set_title("server CPU seconds per case, lower is better", fontsize=8.5)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    finish(fig, flat[panels:], doc["meta"], "", out)


def plot_paths(doc: dict[str, Any], out: Path) -> None:
    """One panel per path: MB/s of each transfer per server (log scale: the paths differ 100-fold), and the
    round trips of the bottleneck case."""
    rates, servers = doc["summary"]["rates"], list(doc["meta"]["servers"])
    labels = {n: doc["meta"]["servers"][n]["label"] for n in servers}
    cases = list(dict.fromkeys(key.split("/")[0] for key in rates))
    rtt = doc["summary"].get("rtt") or {}
    panels = len(cases) + bool(rtt)
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    width = 0.8 / len(servers)
    for ax, case in zip(flat, cases):
        measures = [key.split("/")[1] for key in rates if key.split("/")[0] == case]
        for i, n in enumerate(servers):
            xs = [j + i * width for j in range(len(measures))]
            ax.bar(xs, [rates[f"{case}/{m}"]["median"].get(n) or 0 for m in measures], width, color=COLORS[n],
                   label=labels[n])  # fmt: skip
            for x, m in zip(xs, measures):
                vals = [v for v in rates[f"{case}/{m}"]["values"][n] if v is not None]
                ax.plot([x] * len(vals), vals, "k.", alpha=0.5, markersize=3)
        ax.set_xticks(
            [j + width * (len(servers) - 1) / 2 for j in range(len(measures))], measures, fontsize=8
        )
        ax.set_yscale("log")
        ax.set_title(f"{doc['meta'].get('labels', {}).get(case, case)}: MB/s", fontsize=8.5)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    flat[0].legend(fontsize=7)
    if rtt:
        ax = flat[len(cases)]
        xs = range(len(servers))
        ax.bar(xs, [rtt[n]["idle_ms"] or 0 for n in servers], color="#cccccc", label="idle")
        ax.bar(xs, [max(0, rtt[n]["extra_ms"] or 0) for n in servers], bottom=[rtt[n]["idle_ms"] or 0 for n in servers],
               color=[COLORS[n] for n in servers], label="added by the download")  # fmt: skip
        ax.set_xticks(list(xs), [labels[n] for n in servers], fontsize=7)
        ax.set_title("bottleneck: a second connection's round trip, ms", fontsize=8.5)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    finish(fig, flat[panels:], doc["meta"], "paths: ", out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--echo-pair", type=Path, default=RESULTS / "echo_pair.json")
    parser.add_argument("--run", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--paths", type=Path, default=RESULTS / "paths.json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    done = False
    if args.echo_pair.exists():
        out = args.out_dir / (args.echo_pair.stem + ".png")
        plot_echo_pair(json.loads(args.echo_pair.read_text()), out)
        print(f"wrote {out}")
        done = True
    if args.run.exists():
        out = args.out_dir / (args.run.stem + ".png")
        plot_run(json.loads(args.run.read_text()), out)
        print(f"wrote {out}")
        done = True
    if args.paths.exists():
        out = args.out_dir / (args.paths.stem + ".png")
        plot_paths(json.loads(args.paths.read_text()), out)
        print(f"wrote {out}")
        done = True
    if not done:
        raise SystemExit(f"nothing to plot: none of {args.echo_pair}, {args.run}, {args.paths} exists")


if __name__ == "__main__":
    main()
