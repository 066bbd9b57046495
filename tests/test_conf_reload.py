"""The `--conf` file on the command line: a warning when others may read it (it holds the private key), and a
SIGHUP that catches the file while an editor writes it applies nothing of it. No network: the reload is applied
to a stand-in for the server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard._runtime import Runtime
from mitmproxy_wireguard.cli import load_configuration


class RecordingServer:
    """What `Runtime.reload` calls on a server, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def remove_peer(self, key: str) -> None:
        self.calls.append(("remove", key))

    async def add_peer(self, key: str, allowed_ips: Any, preshared_key: Any, keepalive: Any) -> list[str]:
        self.calls.append(("add", key))
        return list(allowed_ips or [])


def two_peers(path: Path) -> wg.Configuration:
    cfg = wg.Configuration.generate(peers=2)
    cfg.to_file(path)
    return cfg


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644], ids=oct)
def test_a_conf_file_others_may_read_is_warned_about(tmp_path: Path, caplog, mode: int) -> None:
    path = tmp_path / "server.conf"
    two_peers(path)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="mitmproxy_wireguard.cli"):
        load_configuration(path, None, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and f"{mode:04o}" in warnings[0] and "chmod 600" in warnings[0], warnings


def test_a_private_conf_file_is_not_warned_about(tmp_path: Path, caplog) -> None:
    path = tmp_path / "server.conf"
    two_peers(path)
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="mitmproxy_wireguard.cli"):
        load_configuration(path, None, 1)
        # A new file is written 0600: nothing to warn about either.
        load_configuration(tmp_path / "new.conf", None, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def cut(text: str, marker: str) -> str:
    """`text` up to and including `marker`'s last occurrence: a file caught while it is written."""
    return text[: text.rindex(marker) + len(marker)]


@pytest.mark.parametrize(
    "make",
    [
        # Cut inside the last line: the last peer's AllowedIPs lose their IPv6 address, and it still parses.
        lambda text: cut(text, "/32"),
        # Cut after a key line's value, before its newline.
        lambda text: text.rstrip("\n"),
    ],
)
async def test_a_reload_of_a_file_cut_inside_a_line_applies_nothing(tmp_path: Path, caplog, make) -> None:
    path = tmp_path / "server.conf"
    cfg = two_peers(path)
    runtime = Runtime(cfg, path, port_given=False, interval=None, json_stats=False)
    text = path.read_text()
    half = make(text)
    assert half != text and not half.endswith("\n")
    wg.Configuration.from_file(path)  # what was there parses; what is written now parses too:
    path.write_text(half)
    wg.Configuration.from_file(path)
    server = RecordingServer()
    with caplog.at_level(logging.ERROR, logger="mitmproxy_wireguard.cli"):
        await runtime.reload(server)  # type: ignore[arg-type]
    assert server.calls == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "newline" in errors[0] and str(path) in errors[0], errors
    # Once whole, it is applied.
    path.write_text(text.replace("/32", "/32, 10.9.9.9/32", 1))
    await runtime.reload(server)  # type: ignore[arg-type]
    key = cfg.peers[0]["public_key"]
    assert server.calls == [("remove", key), ("add", key)]
