"""The child processes of a run: shell commands, spawned processes with a log each, stopping them, and the
line protocol of the load generator and the relay (one JSON command per line, one JSON answer per line)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BenchError


def sh(*cmd: str, timeout: float = 30, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    pids: list[int] = field(default_factory=list)  # what to account CPU and RSS to

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.popen.poll() is None


def stop_process(popen: subprocess.Popen[bytes], grace: float = 5) -> None:
    if popen.poll() is not None:
        return
    try:
        popen.send_signal(signal.SIGTERM)
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
    except ProcessLookupError:
        pass
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


_line_buffers: dict[int, bytes] = {}


def read_line(popen: subprocess.Popen[bytes], timeout: float) -> str | None:
    """One line of the process's stdout, or None at EOF or when `timeout` passes first."""
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    buf = _line_buffers.get(fd, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            _line_buffers[fd] = buf
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            _line_buffers[fd] = buf
            return None
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    _line_buffers[fd] = rest
    return line.decode()


class LoadGen:
    """A child that takes one JSON command per line and answers each with one JSON line: the load generator
    in the client namespace, or the relay (benches/path.py). One command at a time."""

    def __init__(self, proc: Proc, what: str = "the load generator"):
        self.proc = proc
        self.what = what

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        popen = self.proc.popen
        if popen.poll() is not None:
            raise BenchError(f"{self.what} exited ({popen.returncode}):\n{self.proc.log_tail()}")
        assert popen.stdin is not None
        popen.stdin.write((json.dumps(command) + "\n").encode())
        popen.stdin.flush()
        line = read_line(popen, timeout)
        if line is None:
            raise BenchError(
                f"no answer from {self.what} within {timeout:.0f} s for {command['op']}:\n"
                f"{self.proc.log_tail()}"
            )
        return json.loads(line)

    def close(self) -> None:
        stop_process(self.proc.popen)
