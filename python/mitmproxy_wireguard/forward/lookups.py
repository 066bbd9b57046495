"""Name lookups with the system's resolver (`getaddrinfo`, which blocks) on a fixed set of threads, shared fairly
between peers.

Each peer's lookups wait in a queue of their own and the queues take turns; a peer keeps at most
`resolver_threads_per_peer` threads busy and has at most `dns_lookups_per_peer` lookups waiting or running. A
lookup whose query timed out leaves the queue at once, or, when already running, keeps its place until its
thread returns: no timeout leaves a thread behind, and slow names of one peer keep no other peer waiting."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .limits import Limits, Shares

AddrInfo = list[tuple[Any, ...]]


class Busy(Exception):
    """The peer (or all peers together) has as many lookups in progress as allowed: the lookup was dropped."""


@dataclass(eq=False)
class _Lookup:
    peer: str
    host: str
    family: int
    future: asyncio.Future[AddrInfo]
    started: bool = field(default=False)


class LookupPool:
    """`getaddrinfo` on `limits.resolver_threads` threads (daemon threads: a lookup still running does not hold
    up the process's exit)."""

    def __init__(self, limits: Limits):
        self._loop = asyncio.get_running_loop()
        self._threads = limits.resolver_threads
        self._per_peer_threads = limits.resolver_threads_per_peer
        self.shares = Shares("DNS lookups in progress", limits.dns_lookups_per_peer, limits.dns_lookups)
        self._waiting: dict[str, deque[_Lookup]] = {}
        # Peers whose turn may come: lookups waiting and a thread to spare. `_in_turn` mirrors it.
        self._turns: deque[str] = deque()
        self._in_turn: set[str] = set()
        self._running: dict[str, int] = {}
        self._busy = 0
        self._jobs: queue.SimpleQueue[_Lookup | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._closed = False

    def lookup(self, peer: str, host: str, family: int) -> asyncio.Future[AddrInfo]:
        """The addresses of `host`, as `getaddrinfo` returns them, once a thread has looked them up; raises `Busy`
        at once if the peer's share (or the total) is taken. Cancel the future to give the lookup up."""
        if not self.shares.take(peer):
            raise Busy()
        job = _Lookup(peer, host, family, self._loop.create_future())
        job.future.add_done_callback(lambda _: self._given_up(job) if job.future.cancelled() else None)
        self._waiting.setdefault(peer, deque()).append(job)
        self._schedule(peer)
        self._start()
        return job.future

    def _schedule(self, peer: str) -> None:
        if (
            peer not in self._in_turn
            and self._waiting.get(peer)
            and self._running.get(peer, 0) < self._per_peer_threads
        ):
            self._turns.append(peer)
            self._in_turn.add(peer)

    def _start(self) -> None:
        while not self._closed and self._busy < self._threads and self._turns:
            peer = self._turns.popleft()
            self._in_turn.discard(peer)
            waiting = self._waiting.get(peer)
            if not waiting:
                continue
            job = waiting.popleft()
            if not waiting:
                del self._waiting[peer]
            job.started = True
            self._running[peer] = self._running.get(peer, 0) + 1
            self._busy += 1
            if len(self._workers) < self._busy:
                worker = threading.Thread(target=self._work, name="forward-resolver", daemon=True)
                self._workers.append(worker)
                worker.start()
            self._jobs.put(job)
            self._schedule(peer)

    def close(self) -> None:
        """Ends the threads once their lookups have returned; lookups waiting are given up."""
        self._closed = True
        for waiting in list(self._waiting.values()):
            for job in list(waiting):
                job.future.cancel()
        for _ in self._workers:
            self._jobs.put(None)
        self._workers.clear()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            result: AddrInfo | None = None
            error: OSError | None = None
            try:
                result = socket.getaddrinfo(job.host, None, job.family, socket.SOCK_STREAM)
            except OSError as e:
                error = e
            except Exception as e:  # Not expected of getaddrinfo; the lookup must end all the same.
                error = OSError(str(e))
            try:
                self._loop.call_soon_threadsafe(self._finished, job, result, error)
            except RuntimeError:
                return  # The loop is closed: the proxy has ended.

    def _finished(self, job: _Lookup, result: AddrInfo | None, error: OSError | None) -> None:
        self._busy -= 1
        running = self._running.pop(job.peer) - 1
        if running:
            self._running[job.peer] = running
        self.shares.give_back(job.peer)
        if not job.future.done():
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result or [])
        self._schedule(job.peer)
        self._start()

    def _given_up(self, job: _Lookup) -> None:
        """A waiting lookup leaves its queue; a running one keeps its thread and share until it returns."""
        if job.started:
            return
        waiting = self._waiting.get(job.peer)
        if waiting is not None:
            waiting.remove(job)
            if not waiting:
                del self._waiting[job.peer]
        self.shares.give_back(job.peer)
