"""A soak: connection churn, a slow endless stream, a handshake flood and junk datagrams, all at once
(tests/soak.py), against the server in a process of its own. After a warm-up, its memory and open files stay
flat, every churned connection echoes what it was sent, and the stream arrives intact.

SOAK_SECONDS sets the duration: 75 s by default (CI), an hour for the real soak (README, Hacking).
"""

from __future__ import annotations

import asyncio
import os

import pytest

import soak
from helpers import needs_client

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", 75))

pytestmark = [needs_client, pytest.mark.slow, pytest.mark.timeout(SOAK_SECONDS + 180)]

MB = soak.MB


def thirds(samples: list[soak.Sample], warm_up: float) -> tuple[list[soak.Sample], list[soak.Sample]]:
    """The first and the last third of the samples after the warm-up."""
    after = [s for s in samples if s.seconds >= warm_up]
    third = max(1, len(after) // 3)
    return after[:third], after[-third:]


def churn_rate(part: list[soak.Sample]) -> float:
    """Connections a second over the samples."""
    return (part[-1].churned - part[0].churned) / max(1e-9, part[-1].seconds - part[0].seconds)


async def test_memory_and_open_files_stay_flat_under_churn_a_stream_a_flood_and_junk(server_process):
    server = await server_process()
    await soak.echo_and_close("10.0.0.42", 7, b"warm-up")  # the handshake is done
    idle = await server.command("stats")
    fds_before = server.open_files()

    load = soak.Load(seconds=SOAK_SECONDS, interval=max(1.0, SOAK_SECONDS / 200))
    report = await soak.run(server, load)

    # Handlers end when their connections have closed: give the last ones a moment.
    for _ in range(50):
        stats = await server.command("stats")
        if stats["streams"] == 0 and stats["tasks"] == idle["tasks"]:
            break
        await asyncio.sleep(0.1)
    fds_after = server.open_files()
    log = await server.close()

    progress, samples = report.progress, report.samples
    warm_up = min(max(15.0, SOAK_SECONDS * 0.2), 300.0)
    first, last = thirds(samples, warm_up)
    first_rss, last_rss = max(s.rss for s in first), max(s.rss for s in last)
    first_rate, last_rate = churn_rate(first), churn_rate(last)
    print(
        f"\n{soak.summary(samples)}\n"
        f"churned {progress.churned} connections ({progress.churn_failures} failed), streamed "
        f"{progress.streamed} bytes, {progress.junk_sent} junk datagrams ({progress.junk_answers} answered), "
        f"flood {report.flood}\n"
        f"RSS max {first_rss / MB:.1f} MB in the first third after {warm_up:.0f} s, "
        f"{last_rss / MB:.1f} MB in the last; churn {first_rate:.0f}/s then {last_rate:.0f}/s; "
        f"fds {fds_before} before, {max(s.fds for s in samples)} at most, {fds_after} after"
    )

    assert progress.churn_failures == 0, progress.first_failures
    assert progress.churned > SOAK_SECONDS * load.churn_rate * 0.5, "churn fell far behind its rate"
    assert progress.stream_error is None, progress.stream_error
    assert progress.streamed > SOAK_SECONDS * 1000, "the stream carried next to nothing"
    assert progress.junk_answers == 0, "the server answered junk"
    assert report.flood["cookies"] > report.flood["sent"] / 2, report.flood
    assert stats["streams"] == 0 and stats["tasks"] == idle["tasks"], stats
    assert last_rss <= first_rss + max(4 * MB, first_rss // 20), "memory grows under a steady load"
    assert max(s.fds for s in samples) <= fds_before + 4, "open files grow under load"
    assert fds_after == fds_before
    assert last_rate >= first_rate * 0.8, "churn slowed down"
    assert "network task: shutting down with 0 connections" in log
    assert "panic" not in log.lower() and "Traceback" not in log
