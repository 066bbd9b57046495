"""Runs the command line as a subprocess and reads what it prints, with every wait bounded."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable


class Cli:
    """`python -m mitmproxy_wireguard ARGS` (or another `program`), its output lines collected as they come."""

    def __init__(
        self,
        *args: str,
        prefix: tuple[str, ...] = (),
        program: tuple[str, ...] = (sys.executable, "-m", "mitmproxy_wireguard"),
    ):
        """`prefix` is a command that runs the command line, e.g. in a mount namespace of its own."""
        self.process = subprocess.Popen(
            [*prefix, *program, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, found: Callable[[], Any], timeout: float = 20) -> Any:
        """Waits until `found()` returns something true, and returns it; fails after `timeout` seconds or when
        the process ended without it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = found()
                if result:
                    return result
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(f"the command ended ({self.process.returncode}) {self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting {self.output()}")
                self._changed.wait(min(remaining, 0.5))

    def wait_for_stdout(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        regex = re.compile(pattern)
        return self.wait_for(lambda: next(filter(None, map(regex.search, list(self.stdout))), None), timeout)

    def wait_for_log(self, check: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        """The first JSON log record (`--json-log`) for which `check` is true."""
        return self.wait_for(lambda: next((r for r in self.json_records() if check(r)), None), timeout)

    def json_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stderr) if line.startswith("{")]

    def stop(self, timeout: float = 10) -> int:
        """SIGINT, then the exit code; a process that does not end in time is killed and fails the test."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"the command did not stop on SIGINT {self.output()}")
        self._close_pipes()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def output(self) -> str:
        return "\n--- stdout:\n" + "\n".join(self.stdout) + "\n--- stderr:\n" + "\n".join(self.stderr)


def client_configs(stdout: list[str]) -> list[str]:
    """The client configurations printed by the command, in order."""
    configs, current = [], None
    for line in stdout:
        if line.startswith("------ client "):
            current = []
            configs.append(current)
        elif current is not None:
            if (
                line.startswith("[")
                or re.match(r"^#? ?\w+ = ", line)
                or (line == "" and current[-1:] != [""])
            ):
                current.append(line)
            else:
                current = None
    return ["\n".join(lines).strip() + "\n" for lines in configs]


def config_fields(text: str) -> dict[str, str]:
    """`Key = value` lines of a client configuration; keys of [Peer] are prefixed with `Peer.`."""
    fields, section = {}, ""
    for line in text.splitlines():
        if line.startswith("["):
            section = "" if line == "[Interface]" else "Peer."
        elif " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            fields[section + key] = value
    return fields


class Listening:
    """What `helpers.start_client` needs of a server: where it listens. A client in a namespace of its own
    reaches it at the namespace's `here` address instead of this one."""

    def __init__(self, port: int):
        self.port = port

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def client_settings(text: str) -> dict[str, Any]:
    """`helpers.start_client`'s arguments (all but the server) for a printed client configuration."""
    fields = config_fields(text)
    return {
        "server_public_key": fields["Peer.PublicKey"],
        "private_key": fields["PrivateKey"],
        "addresses": tuple(a.strip() for a in fields["Address"].split(",")),
        "routes": tuple(r.strip() for r in fields["Peer.AllowedIPs"].split(",")),
    }


# `forward --json-log`.

LISTENING = r"listening on [^ ]+:(\d+)\."


def flow_records(process: Cli, protocol: str, destination: str) -> list[dict[str, Any]]:
    """The log records of the finished flows of `protocol` to `destination` ("host:port")."""
    return [
        r
        for r in process.json_records()
        if r.get("event") == "flow" and r["protocol"] == protocol and r["destination"] == destination
    ]
