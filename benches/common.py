"""Shared facts and small helpers of the benchmarks: paths, addresses and ports, the server kinds,
prerequisites and venvs, the state of the tree and the machine. The network itself is set up by harness.py
(its docstring draws the layout), child processes are run by children.py, readings from /proc are in
readings.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
SERVERS_DIR = BENCHES / "servers"
RESULTS = BENCHES / "results"

DEFAULT_NEW_VENV = Path("/tmp/bench-venv-new")
DEFAULT_OLD_VENV = Path("/tmp/bench-venv-old")
DEFAULT_RS_VENV = Path("/tmp/bench-venv-rs")
WG_RUN_DIR = Path("/var/run/wireguard")
NS_PREFIX = "wgbench-"

CLIENT_VETH_ADDR = "192.0.2.1"
SERVER_VETH_ADDR = "192.0.2.2"
CLIENT_TUNNEL_ADDR = "10.0.0.1"
ECHO_PORT = 7
OLD_VERSION = "0.1.23"
RS_VERSION = "0.11.5"  # mitmproxy_rs, whose WireGuard mode followed this project

INSTALL_HINT = "apt-get install wireguard-go wireguard-tools iproute2"


@dataclass(frozen=True)
class ServerKind:
    name: str
    label: str
    wg_port: int | None  # None: no tunnel (the plain echo of echo_pair.py)
    subnet: str | None  # what the client routes into the tunnel towards this server
    target: str  # the address the load generator connects to


SERVER_KINDS = {
    "new": ServerKind("new", "this server", 51821, "10.0.1.0/24", "10.0.1.42"),
    "kernel": ServerKind("kernel", "kernel path", 51822, "10.0.2.0/24", "10.0.2.1"),
    "old": ServerKind("old", f"{OLD_VERSION}", 51823, "10.0.3.0/24", "10.0.3.42"),
    "rs": ServerKind("rs", f"mitmproxy_rs {RS_VERSION}", 51824, "10.0.4.0/24", "10.0.4.42"),
    # this project again, from another build (--base-venv): a change measured against what it changed
    "base": ServerKind("base", "this server, base build", 51825, "10.0.5.0/24", "10.0.5.42"),
    "plain": ServerKind("plain", "plain asyncio (no tunnel)", None, None, SERVER_VETH_ADDR),
}
KERNEL_TUNNEL_ADDR = "10.0.2.1"
RELAY_PORT_OFFSET = 1000  # benches/path.py listens for each server on its WireGuard port + this


class BenchError(Exception):
    pass


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# prerequisites and venvs


def check_prerequisites() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (it creates network namespaces and WireGuard interfaces)")
    for tool in ("ip", "wg", "wireguard-go"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found")
    if problems:
        raise BenchError(
            "; ".join(problems)
            + f".\nInstall the tools with: {INSTALL_HINT}\n(and run as root, e.g. with sudo)"
        )


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def check_venv(venv: Path, kind: str) -> dict[str, Any]:
    """Checks that the venv exists and imports the package; returns what it reports about itself."""
    python = venv_python(venv)
    hint = f"build it with: python3 benches/build.py --{kind}"
    if not python.exists():
        raise BenchError(f"no venv at {venv} for the {kind!r} server; {hint}")
    package, wanted = {"new": ("mitmproxy_wireguard", None), "base": ("mitmproxy_wireguard", None),
                       "old": ("mitmproxy_wireguard", OLD_VERSION),
                       "rs": ("mitmproxy_rs", RS_VERSION)}[kind]  # fmt: skip
    code = (
        f"import json, {package} as m, importlib.metadata as md;"
        f"print(json.dumps({{'version': md.version('{package}'), 'file': m.__file__}}))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"{python} cannot import {package} ({proc.stderr.strip()[-300:]}); {hint}")
    info = json.loads(proc.stdout)
    if wanted is not None and info["version"] != wanted:
        raise BenchError(f"{venv} has {package} {info['version']}, not {wanted}; {hint}")
    build_info = venv / "BENCH_BUILD_INFO.json"
    if build_info.exists():
        info["build"] = json.loads(build_info.read_text())
    return info


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain").splitlines()}


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def pick(parser: argparse.ArgumentParser, what: str, given: str, known: list[str]) -> list[str]:
    """The names of the comma-separated `given`, in the order of `known`; an unknown one is a usage error."""
    names = given.split(",")
    unknown = sorted(set(names) - set(known))
    chosen = [k for k in known if k in names]
    if unknown or not chosen:
        parser.error(f"unknown {what}: {', '.join(unknown) or '(none given)'}")
    return chosen


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def print_errors(errors: list[dict[str, Any]], started: float, out: Path) -> None:
    """The end of a run's output: how many errors, how long it took, where the JSON is, the first line of
    each error."""
    print(f"\n{len(errors)} error(s); took {time.time() - started:.0f} s; JSON: {out}")
    for e in errors:
        print(f"  round {e['round'] + 1} {e['server']} {e['case']}: {e['error'].splitlines()[0]}")


def finish_workdir(workdir: Path, keep: bool) -> None:
    """Keeps the logs of a run where something failed (or when asked), removes them otherwise."""
    if keep:
        log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
