"""The runner of run.py's cases: every case against every server, in interleaved rounds, with the CPU, RSS
and wall time around each case; restarts a crashed user-space server and notes every error. paths.py's
runner builds on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from children import stop_process
from common import ECHO_PORT, SERVER_KINDS, BenchError, log
from harness import Bench
from readings import alive, cpu_ns, cpu_seconds, machine_busy_seconds, rss_kib


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


CASES = ["idle_cpu", "pingpong", "bulk", "concurrent", "connrate", "udp", "idle_conns"]


def echo_command(case: str, s: Sizes) -> dict[str, Any]:
    """The load generator's parameters of a case that is one request to it (all but the idle cases)."""
    return {
        "pingpong": {"n": s.pingpong_n, "size": s.pingpong_size},
        "bulk": {"total": s.bulk_bytes, "chunk": s.bulk_chunk},
        "concurrent": {"conns": s.concurrent_conns, "rts": s.concurrent_rts, "size": s.concurrent_size},
        "connrate": {"total": s.connrate_total, "parallel": s.connrate_parallel, "size": s.connrate_size},
        "udp": {"n": s.udp_n, "size": s.udp_size},
    }[case]


@dataclass
class Before:
    """The readings taken just before a case, to account its CPU time to the server, to the client side and to
    the rest of the machine, and its wall time."""

    pids: list[int]
    client: list[int]  # wireguard-go client + load generator
    loadgen: list[int]
    server_s: float
    server_ns: int
    client_s: float
    loadgen_s: float
    wall: float
    busy: float

    @classmethod
    def take(cls, pids: list[int], client: list[int], loadgen: list[int]) -> Before:
        c0, k0, l0, p0 = cpu_seconds(pids), cpu_seconds(client), cpu_seconds(loadgen), cpu_ns(pids)
        w0, b0 = time.perf_counter(), machine_busy_seconds()
        return cls(pids, client, loadgen, c0, p0, k0, l0, w0, b0)

    def account(self, rec: dict[str, Any]) -> None:
        """Adds what was used since to the case's record."""
        if all(alive(pid) for pid in self.pids):
            rec["cpu_s"] = cpu_seconds(self.pids) - self.server_s
            rec["cpu_s_schedstat"] = (cpu_ns(self.pids) - self.server_ns) / 1e9
            rec["rss_kib"] = rss_kib(self.pids)
        rec["client_cpu_s"] = cpu_seconds(self.client) - self.client_s
        rec["loadgen_cpu_s"] = cpu_seconds(self.loadgen) - self.loadgen_s
        rec["wall_s"] = time.perf_counter() - self.wall
        # Everything else the machine did meanwhile: the kernel's share of our own traffic (softirq, not
        # attributed to any process) plus whatever other processes ran. Large values: a disturbed case.
        rec["other_cpu_s"] = machine_busy_seconds() - self.busy - rec.get("cpu_s", 0.0) - rec["client_cpu_s"]


class Runner:
    def __init__(self, bench: Bench, sizes: Sizes, servers: list[str], pythons: dict[str, Path],
                 max_restarts: int, cases: list[str]):  # fmt: skip
        self.bench = bench
        self.s = sizes
        self.servers = servers
        self.cases = cases
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
        loadgen = self.bench.loadgen.proc.pids if self.bench.loadgen else []
        before = Before.take(self.pids(name), self.bench.client_pids(), loadgen)
        try:
            rec = self.measure_case(round_, name, case)
        except BenchError as e:
            rec = {"error": str(e)}
        before.account(rec)
        if "error" in rec:
            self.note_error(round_, name, case, rec["error"])
            self.health_check(round_, name, case)
        return rec

    def measure_case(self, round_: int, name: str, case: str) -> dict[str, Any]:
        if case == "idle_cpu":
            return self.idle_cpu(name)
        if case == "idle_conns":
            return self.idle_conns(round_, name)
        host, port = self.target(name)
        r = self.request({"op": case, "host": host, "port": port, **echo_command(case, self.s)})
        if not r["ok"]:
            raise BenchError(r["error"])
        value = r.pop("value")
        r.pop("ok")
        return {case: value, "detail": r}

    def idle_cpu(self, name: str) -> dict[str, Any]:
        """The server's CPU with no connection open, over a window after a settling time."""
        s, pids = self.s, self.pids(name)
        time.sleep(s.idle_cpu_settle_s)
        n0 = cpu_ns(pids)
        time.sleep(s.idle_cpu_window_s)
        n1 = cpu_ns(pids)
        return {"idle_cpu": (n1 - n0) / 1e9 / s.idle_cpu_window_s * 100}

    def idle_conns(self, round_: int, name: str) -> dict[str, Any]:
        """Opens many connections, holds them (RSS per connection, CPU while idle), closes them and checks
        that the server closed them too."""
        s, pids = self.s, self.pids(name)
        host, port = self.target(name)
        rss0 = rss_kib(pids)
        r = self.request({"op": "open_idle", "host": host, "port": port, "n": s.idle_conns,
                          "parallel": s.idle_parallel, "size": s.idle_size})  # fmt: skip
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
        self.check_closed(round_, name, closed)
        return {
            "idle_rss": (rss1 - rss0) / r["open"],
            "idle_cpu_conns": (n1 - n0) / 1e9 / (t1 - t0) * 100,
            "rss_before_kib": rss0,
            "rss_held_kib": rss1,
            "rss_held_later_kib": rss2,
            "open_s": r["elapsed"],
            "closed_by_server": closed.get("closed_by_server"),
            "not_closed_by_server_in_10s": closed.get("not_closed_by_server_in_10s"),
            "check_failed": closed.get("check_failed"),
        }

    def check_closed(self, round_: int, name: str, closed: dict[str, Any]) -> None:
        """Notes idle connections the server did not close after the client's FIN, or closed too early."""
        if closed.get("not_closed_by_server_in_10s"):
            self.note_error(round_, name, "idle_conns", f"{closed['not_closed_by_server_in_10s']} of "
                            f"{closed['value']} connections not closed by the server within 10 s of the "
                            "client's FIN")  # fmt: skip
        if closed.get("closed_by_server") or closed.get("check_failed"):
            self.note_error(round_, name, "idle_conns", f"{closed['closed_by_server']} idle connections "
                            f"closed by the server; {closed['check_failed']} of {closed['checked']} checked "
                            "no longer echo")  # fmt: skip

    # -- the rounds

    def round_order(self, round_: int, rounds: int) -> list[str]:
        """The servers in this round's order: each round starts one server further on."""
        k = round_ % len(self.servers)
        order = self.servers[k:] + self.servers[:k]
        log(f"round {round_ + 1}/{rounds}, server order {' '.join(order)}")
        return order

    def run(self, rounds: int) -> list[dict[str, Any]]:
        for name in self.servers:
            self.warmup(name)
        results = []
        for round_ in range(rounds):
            order = self.round_order(round_, rounds)
            cases = {case: self.case_in_round(round_, i, case, order) for i, case in enumerate(self.cases)}
            results.append({"round": round_ + 1, "order": order, "cases": cases})
        return results

    def case_in_round(self, round_: int, i: int, case: str, order: list[str]) -> dict[str, Any]:
        """One case (the i-th) against every server, in this round's order."""
        recs = {}
        for name in order:
            recs[name] = self.run_case(round_, name, case)
            log_record(case, name, recs[name])
        return recs


def log_record(case: str, name: str, rec: dict[str, Any]) -> None:
    if "error" in rec:
        return
    shown = [f"{key}={rec[key]:,.4g}" for key in (case, "idle_cpu", "idle_rss", "idle_cpu_conns")
             if key in rec and isinstance(rec[key], float)]  # fmt: skip
    log(
        f"  {case:<11} {name:<7} {' '.join(dict.fromkeys(shown))}  server cpu "
        f"{rec.get('cpu_s', float('nan')):.2f} s, client cpu {rec['client_cpu_s']:.2f} s "
        f"(loadgen {rec['loadgen_cpu_s']:.2f}), other {rec['other_cpu_s']:.2f} s, "
        f"wall {rec['wall_s']:.2f} s"
    )
