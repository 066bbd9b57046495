"""When the engine fails on its own (a task panicked or its socket broke), Python hears of it: `wait_closed`
raises `ServerError`, the failure is logged, and the command line exits with an error instead of running on
without a server.

A real engine no longer has a known way to fail, so a stand-in reports the failure exactly as the engine does:
a `ServerClosed` event that carries the reason. (That the engine sends it when a task panics is tested
in the Rust supervisor's unit tests.)"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard import _mitmproxy_wireguard as native
from mitmproxy_wireguard import cli, server

REASON = "the wireguard task panicked: The destination buffer is too small"


class FailingEngine:
    """The native engine's interface, with an engine whose task failed right after the start."""

    def __init__(self, host: str = "", cfg: Any = None, ask_first: bool = False) -> None:
        self._wakeup, self._wake = socket.socketpair()
        self._wake.send(b"\0")
        self._events: list[Any] = [native.ServerClosed(REASON)]
        self.joined = False

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 51820)

    def wakeup_fd(self) -> int:
        return self._wakeup.fileno()

    def take_events(self) -> list[Any]:
        self._wakeup.recv(16)
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        pass

    def join(self) -> None:
        self.joined = True
        self._wakeup.close()
        self._wake.close()


async def no_connection(stream: wg.TcpStream) -> None:
    raise AssertionError("no connection expected")


def no_datagram(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
    raise AssertionError("no datagram expected")


async def test_wait_closed_raises_the_failure_and_it_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    engine = FailingEngine()
    srv = server.Server(engine, no_connection, no_datagram)  # type: ignore[arg-type]
    with pytest.raises(wg.ServerError, match="destination buffer is too small"):
        await asyncio.wait_for(srv.wait_closed(), 5)
    assert srv.is_closing()
    assert engine.joined
    assert any(r.levelno == logging.ERROR and REASON in r.getMessage() for r in caplog.records)
    # Every later wait says the same.
    with pytest.raises(wg.ServerError):
        await srv.wait_closed()


@pytest.mark.parametrize("command", ["echo", "forward"])
def test_the_command_line_exits_with_an_error(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(native, "start_engine", FailingEngine)
    # The command line's logging set-up would take the root logger from pytest's log capture.
    monkeypatch.setattr(cli, "setup_logging", lambda verbose, json_log: None)
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--port", "0", "--no-qr"])
    assert exit.value.code == 1
    assert REASON in capsys.readouterr().err
