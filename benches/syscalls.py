"""The cost of every datagram to this server: run.py's cases (bulk and UDP ping-pong by default) against one or
more builds of it, with the server's system calls, context switches and CPU counted per thread and divided by
the datagrams its UDP socket moved; with --profile, where that CPU goes instead (perf record, cpu-clock).

    python3 benches/syscalls.py --venv /tmp/bench-venv-new                    # counts, 3 rounds
    python3 benches/syscalls.py --venv /tmp/venv-a --venv /tmp/venv-b         # two builds, alternately
    python3 benches/syscalls.py --venv /tmp/bench-venv-new --profile          # the CPU profile instead

Counts come from `perf stat` (software events and the syscall tracepoints, which need no hardware counters),
attached to the server's process for the case alone; datagrams from the server namespace's /proc/net/snmp
(only this server runs there). The profile is `perf record -e cpu-clock -g`: the kernel's call chains are
whole, so the system call each kernel sample belongs to is known; user-space samples are sorted by their own
symbol. Each venv is a build of this project (`build.py --new --new-venv PATH`); the builds take turns as
the "new" server, each round starting with the next one.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from children import stop_process  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_NEW_VENV,
    SERVER_KINDS,
    BenchError,
    check_prerequisites,
    check_venv,
    log,
    median,
    venv_python,
    write_json,
)
from harness import Bench, cleanup_stale  # noqa: E402
from runner import Runner, Sizes  # noqa: E402

SYSCALLS = ["recvfrom", "recvmmsg", "recvmsg", "sendto", "sendmmsg", "sendmsg", "epoll_wait", "epoll_pwait",
            "futex", "read", "write", "sched_yield"]  # fmt: skip
# The same calls on the WireGuard socket alone (the others: the wakeup socket between the engine and Python).
SOCKET_CALLS = ["recvfrom", "recvmmsg", "recvmsg", "sendto", "sendmmsg", "sendmsg"]


def events(fd: int) -> list[tuple[str, list[str]]]:
    """(label, perf arguments) of every event counted."""
    out = [("syscalls", ["-e", "raw_syscalls:sys_enter"])]
    out += [(s, ["-e", f"syscalls:sys_enter_{s}"]) for s in SYSCALLS]
    out += [
        (f"{s} (udp)", ["-e", f"syscalls:sys_enter_{s}", "--filter", f"fd == {fd}"]) for s in SOCKET_CALLS
    ]
    out += [("task-clock", ["-e", "task-clock"]), ("context-switches", ["-e", "context-switches"])]
    return out


def udp_socket_fd(pid: int, port: int) -> int:
    """The process's descriptor of the UDP socket bound to `port` (its inode from the namespace's table)."""
    inodes = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = fd.readlink().name
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return int(fd.name)
    raise BenchError(f"no UDP socket on port {port} in process {pid}")


# User-space symbols by what they do; the first pattern that matches a symbol (or its library) wins.
USER_KINDS = [
    ("crypto", re.compile(r"chacha|poly1305|aead|blake2|x25519|curve25519|ring_core|aes_|gcm", re.I)),
    ("WireGuard protocol (boringtun)", re.compile(r"boringtun")),
    ("TCP/IP stack (smoltcp, network task)", re.compile(r"smoltcp|mitmproxy_wireguard::network")),
    ("WireGuard task", re.compile(r"mitmproxy_wireguard::wireguard")),
    (
        "Python bindings (pyo3, events)",
        re.compile(r"pyo3|mitmproxy_wireguard::python|mitmproxy_wireguard::events"),
    ),
    ("tokio", re.compile(r"tokio")),
    ("copies (memcpy/memmove)", re.compile(r"memcpy|memmove|memset")),
    ("allocator", re.compile(r"malloc|free|realloc|_int_|alloc::")),
    ("Python interpreter", re.compile(r"libpython|python3|_Py|Py[A-Z]")),
]


def snmp_udp(ns: str) -> dict[str, int]:
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0], rows[1])}


def parse_stat(path: Path, labels: list[str], names: list[str]) -> dict[str, dict[str, float]]:
    """perf stat --per-thread -x';' output -> {thread name: {label: count}} (task-clock in ms). The same event
    with other filters comes again under the same name, in the order given: its k-th block is its k-th label.
    """
    threads: dict[str, dict[str, float]] = collections.defaultdict(dict)
    seen: dict[tuple[str, str], int] = collections.defaultdict(int)
    for line in path.read_text().splitlines():
        f = line.split(";")
        if len(f) < 4 or line.startswith("#"):
            continue
        comm, tid = f[0].rsplit("-", 1)
        k = seen[(tid, f[3])]
        seen[(tid, f[3])] += 1
        label = [lab for lab, name in zip(labels, names) if name == f[3]][k]
        try:
            value = float(f[1])
        except ValueError:
            value = 0.0
        threads[comm][label] = threads[comm].get(label, 0.0) + value
    return dict(threads)


def kind_of(dso: str, sym: str, chain: list[tuple[str, str]]) -> str:
    if dso == "[kernel.kallsyms]":
        for s, _ in reversed(chain):  # the outermost system call entry of the chain
            m = re.match(r"(?:__x64_sys|__se_sys|__do_sys|__sys)_(\w+)", s)
            if m:
                return f"kernel: {m.group(1).replace('epoll_pwait', 'epoll_wait')}"
        outer = [sym for sym, d in chain if d == "[kernel.kallsyms]"][-1]
        if outer.startswith(
            "entry_SYSCALL"
        ):  # the way in and out of the kernel, which call's is in user space
            user = next((sym for sym, d in chain if d != "[kernel.kallsyms]"), "?")
            return f"kernel: entry/exit of {re.sub(r'^_*(libc_)?', '', user)}"
        return f"kernel: other ({outer})"
    for kind, pattern in USER_KINDS:
        if pattern.search(sym) or pattern.search(dso):
            return kind
    return f"other ({Path(dso).name})"


# With --profile: the samples of the kernel by kind and leaf symbol (printed with --kernel-symbols).
KERNEL_LEAVES: collections.Counter[tuple[str, str]] = collections.Counter()


def parse_script(text: str) -> dict[str, dict[str, int]]:
    """`perf script -F comm,ip,sym,dso` with call chains -> {thread: {kind: samples}}."""
    out: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        comm = lines[0].strip().split()[0]
        chain = []
        for line in lines[1:]:
            m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if m:
                chain.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)), m.group(2)))
        if not chain:
            continue
        sym, dso = chain[0]
        kind = kind_of(dso, sym, chain)
        out[comm][kind] += 1
        if kind.startswith("kernel"):
            KERNEL_LEAVES[(kind, sym)] += 1
    return {k: dict(v) for k, v in out.items()}


class Perf:
    """perf attached to the server's process for one case."""

    def __init__(self, pid: int, fd: int, workdir: Path, profile: bool):
        self.out = workdir / ("perf.data" if profile else "stat.txt")
        self.profile = profile
        self.events = events(fd)
        if profile:
            cmd = [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "-g",
                "-p",
                str(pid),
                "-o",
                str(self.out),
            ]
        else:
            cmd = ["perf", "stat", "--per-thread", "-x", ";", *(a for _, args in self.events for a in args), "-p",
                   str(pid), "-o", str(self.out)]  # fmt: skip
        self.popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # perf attaches

    def stop(self) -> dict[str, Any]:
        self.popen.send_signal(signal.SIGINT)
        _, err = self.popen.communicate(timeout=120)
        if self.popen.returncode not in (0, -signal.SIGINT, 130):
            raise BenchError(f"perf failed: {err.decode()[-500:]}")
        if not self.profile:
            labels = [label for label, _ in self.events]
            names = [args[1] for _, args in self.events]
            return {"threads": parse_stat(self.out, labels, names)}
        text = subprocess.run(["perf", "script", "-i", str(self.out), "-F", "comm,ip,sym,dso"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        return {"samples": parse_script(text)}


def per_datagram(rec: dict[str, Any]) -> dict[str, Any]:
    """The counts of a case divided by the datagrams the server's socket received and sent."""
    n = rec["datagrams_in"] + rec["datagrams_out"]
    out: dict[str, Any] = {"datagrams": n}
    for thread, counts in rec.get("threads", {}).items():
        out[thread] = {k: v / n for k, v in counts.items() if v}
        out[thread]["task-clock"] = counts.get("task-clock", 0.0) * 1000 / n  # us per datagram
        # The WireGuard socket's calls per datagram of their own direction.
        recv = sum(counts.get(f"{s} (udp)", 0.0) for s in ("recvfrom", "recvmmsg", "recvmsg"))
        send = sum(counts.get(f"{s} (udp)", 0.0) for s in ("sendto", "sendmmsg", "sendmsg"))
        if recv and rec["datagrams_in"]:
            out[thread]["receive calls per datagram in"] = recv / rec["datagrams_in"]
        if send and rec["datagrams_out"]:
            out[thread]["send calls per datagram out"] = send / rec["datagrams_out"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, action="append", help="a build of this project (repeatable)")
    parser.add_argument("--cases", default="bulk,udp", help="comma-separated run.py cases (default bulk,udp)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="perf record instead of perf stat")
    parser.add_argument("--kernel-symbols", type=int, default=0, metavar="N",
                        help="with --profile: print the N kernel leaf symbols with the most samples")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "syscalls.json")
    args = parser.parse_args()
    venvs = args.venv or [DEFAULT_NEW_VENV]
    check_prerequisites()
    cleanup_stale()
    infos = {str(v): check_venv(v, "new") for v in venvs}
    cases = args.cases.split(",")
    sizes = Sizes()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wgsyscalls-") as tmp, Bench(Path(tmp)) as bench:
        pythons = {"new": venv_python(venvs[0])}
        bench.start(["new"], pythons)
        runner = Runner(bench, sizes, ["new"], pythons, 0, cases)
        current = venvs[0]
        for round_ in range(args.rounds):
            order = venvs[round_ % len(venvs) :] + venvs[: round_ % len(venvs)]
            for venv in order:
                if venv != current or round_ > 0:  # a fresh server for every build and round
                    stop_process(bench.servers["new"].popen)
                    runner.pythons = {"new": venv_python(venv)}
                    bench.start_server("new", runner.pythons)
                    current = venv
                runner.warmup("new")
                for case in cases:
                    pid = bench.servers["new"].pids[0]
                    s0 = snmp_udp(bench.ns_server)
                    fd = udp_socket_fd(pid, SERVER_KINDS["new"].wg_port)
                    perf = Perf(pid, fd, Path(tmp), args.profile)
                    rec = runner.run_case(round_, "new", case)
                    rec.update(perf.stop())
                    s1 = snmp_udp(bench.ns_server)
                    rec["datagrams_in"] = s1["InDatagrams"] - s0["InDatagrams"]
                    rec["datagrams_out"] = s1["OutDatagrams"] - s0["OutDatagrams"]
                    rec["udp_errors"] = {
                        k: s1[k] - s0[k] for k in ("RcvbufErrors", "SndbufErrors", "InErrors")
                    }
                    if not args.profile:
                        rec["per_datagram"] = per_datagram(rec)
                    rec.update(round=round_ + 1, venv=str(venv), case=case)
                    records.append(rec)
                    log(f"round {round_ + 1} {venv} {case}: {rec.get(case)} cpu_s {rec.get('cpu_s')} "
                        f"datagrams in {rec['datagrams_in']} out {rec['datagrams_out']}")  # fmt: skip
    summary = summarize(records, venvs, cases, args.profile)
    write_json(args.out, {"venvs": infos, "profile": args.profile, "records": records, "summary": summary})
    print(report(summary))
    if args.kernel_symbols:
        print(f"the kernel's leaf symbols, samples of all builds and cases ({args.kernel_symbols} most):")
        for (kind, sym), n in KERNEL_LEAVES.most_common(args.kernel_symbols):
            print(f"  {n:6d}  {kind}: {sym}")
    return 1 if runner.errors else 0


def summarize(
    records: list[dict[str, Any]], venvs: list[Path], cases: list[str], profile: bool
) -> dict[str, Any]:
    """Per build and case: the medians and ranges over the rounds of the rate, the CPU and each count per
    datagram; with --profile, each kind's share of the samples of each thread, all rounds together."""
    out: dict[str, Any] = {}
    for venv in venvs:
        for case in cases:
            recs = [r for r in records if r["venv"] == str(venv) and r["case"] == case and case in r]
            if not recs:
                continue
            s: dict[str, Any] = {}
            for key in (case, "cpu_s", "datagrams_in", "datagrams_out"):
                vals = [r[key] for r in recs if r.get(key) is not None]
                s[key] = {"median": median(vals), "min": min(vals), "max": max(vals)} if vals else None
            if profile:
                merged: dict[str, dict[str, int]] = collections.defaultdict(
                    lambda: collections.defaultdict(int)
                )
                for r in recs:
                    for thread, kinds in r["samples"].items():
                        for kind, n in kinds.items():
                            merged[thread][kind] += n
                total = sum(sum(k.values()) for k in merged.values())
                s["share_of_samples"] = {
                    thread: {k: round(n / total, 4) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])}
                    for thread, kinds in merged.items()
                }
                s["samples"] = total
            else:
                per: dict[str, dict[str, Any]] = {}
                for r in recs:
                    for thread, counts in r["per_datagram"].items():
                        if thread == "datagrams":
                            continue
                        for k, v in counts.items():
                            per.setdefault(thread, {}).setdefault(k, []).append(v)
                s["per_datagram"] = {
                    thread: {
                        k: [round(median(v), 3), round(min(v), 3), round(max(v), 3)] for k, v in ks.items()
                    }
                    for thread, ks in per.items()
                }
            out[f"{venv} {case}"] = s
    return out


def report(summary: dict[str, Any]) -> str:
    """The summary as text: per build and case, medians [min-max] over the rounds."""
    lines = []
    for key, s in summary.items():
        case = key.rsplit(" ", 1)[1]
        rate, cpu = s[case], s["cpu_s"]
        lines.append(f"{key}: {rate['median']:.1f} [{rate['min']:.1f}-{rate['max']:.1f}], server CPU "
                     f"{cpu['median']:.2f} s [{cpu['min']:.2f}-{cpu['max']:.2f}], datagrams in "
                     f"{s['datagrams_in']['median']:.0f} out {s['datagrams_out']['median']:.0f}")  # fmt: skip
        if "share_of_samples" in s:
            lines.append(f"  {s['samples']} samples; share of all, by thread and kind:")
            for thread, kinds in s["share_of_samples"].items():
                lines.append(f"  {thread}: {sum(kinds.values()):.1%}")
                lines += [f"    {share:6.1%}  {kind}" for kind, share in kinds.items() if share >= 0.005]
            continue
        lines.append("  per datagram (in + out), median [min-max]; task-clock in us:")
        for thread, counts in s["per_datagram"].items():
            cells = [f"{k} {m:.3g} [{lo:.3g}-{hi:.3g}]" for k, (m, lo, hi) in counts.items() if hi >= 0.0005]
            lines.append(f"  {thread}: " + ", ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
