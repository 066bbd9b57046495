"""An emulated network path for the WireGuard datagrams, in user space (the kernel here has no netem).

A relay between the WireGuard client and a server's UDP port: every datagram is held for a one-way delay
(optionally plus a random extra per datagram, the jitter, so that datagrams overtake each other), a given
share is dropped at random, or in bursts (a Gilbert-Elliott model), and optionally a bottleneck limits the
rate, with a bounded queue in front of it (tail drop). Every random draw is seeded. Each direction has a
link of its own. One thread does all the work with a single epoll: read every datagram that is there, give
it a due time, send every datagram that is due, sleep until the next one. Without jitter a link's due times
never decrease (constant delay, a FIFO bottleneck), so such a link is a deque; with jitter it is a heap.

    python3 benches/path.py CONFIG.json     # run by benches/paths.py, in the server's namespace

CONFIG: {"host": the address to listen on, "relays": [[listen_port, server_host, server_port], ...]}.
It prints one JSON line when it listens, then takes one JSON command per line on stdin and answers each
with one JSON line:

    {"op": "set", "delay_ms": 25, "loss": 0.01, "rate_mbit": 50, "queue_bytes": 625000, "seed": 1}
        the same path for both directions of every relay (values per direction: "up" / "down" keys with
        such dicts instead); counters are reset. More fields (PathSpec): "jitter_ms", and the burst losses
        "ge_p", "ge_r", "ge_loss_good", "ge_loss_bad"
    {"op": "stats"}   what each link did since the last "set": datagrams, drops, how late it sent them
"""

from __future__ import annotations

import collections
import errno
import heapq
import json
import os
import random
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

# A datagram due within this much is sent now: the epoll timeout has a resolution of 1 ms (rounded up), so
# sending up to half of it early keeps the error within about +-0.5 ms instead of 0 to +1 ms.
EARLY_S = 0.0005
SOCKET_BUFFER = 8 << 20  # absorbs a burst of a whole window while the relay thread waits for the CPU
IP_UDP_HEADERS = 28  # what a datagram occupies on the emulated link besides its payload
# Linux's SO_SNDBUFFORCE / SO_RCVBUFFORCE (as root: past net.core.*mem_max); not in Python's socket module
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
RT_PRIORITY = (
    10  # SCHED_FIFO priority of the relay thread, where allowed (root): less jitter on a busy machine
)
BATCH = 64  # datagrams read from one socket before the due ones are sent (epoll is level-triggered)


@dataclass(frozen=True)
class PathSpec:
    """One direction of a path. Every field's default leaves the datagrams alone, so a path names only what
    it adds."""

    delay_ms: float = 0.0
    loss: float = 0.0  # share of datagrams dropped at random, 0..1
    rate_mbit: float | None = None  # bottleneck rate in Mbit/s (10^6); None: no bottleneck
    queue_bytes: int | None = None  # bytes that may wait in front of the bottleneck; more are dropped
    seed: int = 0
    # Each datagram's one-way delay is delay_ms plus a random extra, uniform in [0, jitter_ms], drawn per
    # datagram: a later datagram may be due before an earlier one and overtakes it (netem's jitter without a
    # rate does that too). After the bottleneck, where there is one.
    jitter_ms: float = 0.0
    # Burst losses, a Gilbert-Elliott model: a two-state chain (good, bad) stepped once per datagram, as
    # netem's "loss gemodel". A datagram is lost with the loss of the state it meets (ge_loss_good,
    # ge_loss_bad), then the state changes: good -> bad with ge_p, bad -> good with ge_r. The chain spends
    # ge_p / (ge_p + ge_r) of the datagrams in the bad state, 1 / ge_r datagrams at a time on average. Off
    # while ge_p is 0; independent of `loss` (a datagram either drops is lost).
    ge_p: float = 0.0
    ge_r: float = 0.0
    ge_loss_good: float = 0.0
    ge_loss_bad: float = 1.0

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PathSpec:
        known = {f.name for f in fields(PathSpec)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown path fields: {', '.join(sorted(unknown))}")
        spec = PathSpec(**d)
        if spec.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if not 0 <= spec.loss < 1:
            raise ValueError("loss must be in [0, 1)")
        if spec.rate_mbit is not None and spec.rate_mbit <= 0:
            raise ValueError("rate_mbit must be > 0")
        if spec.queue_bytes is not None and spec.rate_mbit is None:
            raise ValueError("queue_bytes needs rate_mbit")
        if spec.jitter_ms < 0:
            raise ValueError("jitter_ms must be >= 0")
        for name in ("ge_p", "ge_r", "ge_loss_good", "ge_loss_bad"):
            if not 0 <= getattr(spec, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if spec.ge_p and not spec.ge_r:
            raise ValueError("ge_p needs ge_r > 0 (else the first bad state never ends)")
        return spec

    def mean_ge_loss(self) -> float:
        """The long-run share of datagrams the Gilbert-Elliott chain drops (0 while it is off)."""
        if not self.ge_p:
            return 0.0
        bad = self.ge_p / (self.ge_p + self.ge_r)
        return bad * self.ge_loss_bad + (1 - bad) * self.ge_loss_good


class Link:
    """One direction of a path: admits datagrams (or drops them) and tells when each is due."""

    def __init__(self, spec: PathSpec, name: str):
        self.spec = spec
        self.delay = spec.delay_ms / 1000
        self.jitter = spec.jitter_ms / 1000
        # One generator per kind of draw: adding jitter or bursts to a path leaves its random drops as they
        # were for the same seed, and every server sees the same draws, datagram by datagram.
        self.rng = random.Random(f"{spec.seed}/{name}")
        self.jitter_rng = random.Random(f"{spec.seed}/{name}/jitter")
        self.ge_rng = random.Random(f"{spec.seed}/{name}/ge")
        self.bad = False  # the Gilbert-Elliott state
        self.bytes_per_s = spec.rate_mbit * 1e6 / 8 if spec.rate_mbit else None
        self.busy_until = 0.0  # when the bottleneck has sent everything admitted so far
        # Due times in order without jitter: a deque, (due, data). With jitter: a heap, (due, n, data); n, the
        # count of datagrams admitted, keeps equal due times in arrival order.
        self.queue: Any = [] if self.jitter else collections.deque()
        self.latest_due = 0.0
        self.stats = {"in": 0, "lost": 0, "queue_full": 0, "sent": 0, "send_failed": 0, "bytes_sent": 0,
                      "max_queue_bytes": 0, "lost_ge": 0, "bad_periods": 0, "reordered": 0}  # fmt: skip
        self.lateness: list[float] = []  # s, send time minus due time, per datagram sent

    def lost(self) -> bool:
        """Whether the loss models drop the next datagram: the random loss, then the burst loss."""
        dropped = bool(self.spec.loss) and self.rng.random() < self.spec.loss
        if self.spec.ge_p:
            s = self.spec
            p = s.ge_loss_bad if self.bad else s.ge_loss_good
            if p and self.ge_rng.random() < p and not dropped:
                dropped = True
                self.stats["lost_ge"] += 1
            if self.ge_rng.random() < (s.ge_r if self.bad else s.ge_p):
                self.bad = not self.bad
                self.stats["bad_periods"] += self.bad
        return dropped

    def admit(self, data: bytes, now: float) -> None:
        self.stats["in"] += 1
        if self.lost():
            self.stats["lost"] += 1
            return
        due = now
        if self.bytes_per_s is not None:
            size = len(data) + IP_UDP_HEADERS
            start = max(now, self.busy_until)
            backlog = (start - now) * self.bytes_per_s
            if self.spec.queue_bytes is not None and backlog + size > self.spec.queue_bytes:
                self.stats["queue_full"] += 1
                return
            self.stats["max_queue_bytes"] = max(self.stats["max_queue_bytes"], int(backlog + size))
            self.busy_until = due = start + size / self.bytes_per_s
        if not self.jitter:
            self.queue.append((due + self.delay, data))
            return
        due += self.delay + self.jitter_rng.random() * self.jitter
        if due < self.latest_due:
            self.stats["reordered"] += 1  # it will overtake a datagram that arrived before it
        self.latest_due = max(self.latest_due, due)
        heapq.heappush(self.queue, (due, self.stats["in"], data))

    def pop(self) -> tuple[float, bytes]:
        """The datagram due first, and its due time."""
        if not self.jitter:
            return self.queue.popleft()  # type: ignore[no-any-return]
        due, _, data = heapq.heappop(self.queue)
        return due, data

    def summary(self) -> dict[str, Any]:
        late = sorted(self.lateness)

        def pct(p: float) -> float | None:
            return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 3) if late else None

        return {**self.stats, "late_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0),
                                          "min": round(late[0] * 1000, 3) if late else None}}  # fmt: skip


class Relay:
    """For each server: a socket the client sends to, and a socket connected to the server."""

    def __init__(self, host: str, relays: list[tuple[int, str, int]]):
        self.epoll = select.epoll()
        self.lock = threading.Lock()  # between the relay thread and set/stats
        self.stop = False
        self.started = threading.Event()
        self.realtime = False
        # fd -> (socket, peer address or None, link name, socket to send to, whom to send to)
        self.routes: dict[int, list[Any]] = {}
        self.links: dict[str, Link] = {}
        self.pairs = []
        for listen_port, server_host, server_port in relays:
            outer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            outer.bind((host, listen_port))
            inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            inner.connect((server_host, server_port))
            for s in (outer, inner):
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
                self.epoll.register(s.fileno(), select.EPOLLIN)
            pair = {"outer": outer, "inner": inner, "client": None, "up": f"{listen_port}/up",
                    "down": f"{listen_port}/down"}  # fmt: skip
            self.pairs.append(pair)
            self.routes[outer.fileno()] = [outer, pair, "up"]
            self.routes[inner.fileno()] = [inner, pair, "down"]
        self.set({})

    def set(self, command: dict[str, Any]) -> None:
        specs = {}
        for direction in ("up", "down"):
            fields = command.get(direction, {k: v for k, v in command.items() if k not in ("up", "down")})
            specs[direction] = PathSpec.from_dict(fields)
        with self.lock:
            for pair in self.pairs:
                for direction in ("up", "down"):
                    self.links[pair[direction]] = Link(specs[direction], pair[direction])

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {name: link.summary() for name, link in self.links.items()}

    def run(self) -> None:
        try:
            # Like netem, whose work runs before any process's: a real-time thread that mostly sleeps. The
            # kernel keeps real-time threads to 95% of a core (sched_rt_runtime_us).
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
            self.realtime = True
        except OSError:
            self.realtime = False
        self.started.set()
        recvfrom, monotonic = socket.socket.recvfrom, time.monotonic
        while not self.stop:
            with self.lock:
                due = [link.queue[0][0] for link in self.links.values() if link.queue]
            timeout = max(0.0, min(due) - monotonic() - EARLY_S) if due else 0.2
            events = self.epoll.poll(timeout)
            with self.lock:
                for fd, _ in events:
                    sock, pair, direction = self.routes[fd]
                    link = self.links[pair[direction]]
                    for _ in range(BATCH):  # then send what is due: a long burst must not delay it
                        try:
                            data, addr = recvfrom(sock, 65536)
                        except BlockingIOError:
                            break
                        if direction == "up":
                            pair["client"] = addr
                        link.admit(data, monotonic())
                self.send_due(monotonic())

    def send_due(self, now: float) -> None:
        for pair in self.pairs:
            for direction in ("up", "down"):
                link = self.links[pair[direction]]
                queue = link.queue
                while queue and queue[0][0] <= now + EARLY_S:
                    due, data = link.pop()
                    try:
                        if direction == "up":
                            pair["inner"].send(data)
                        elif pair["client"] is not None:
                            pair["outer"].sendto(data, pair["client"])
                        else:
                            raise OSError(errno.ENOTCONN, "no datagram from the client yet")
                        link.stats["sent"] += 1
                        link.stats["bytes_sent"] += len(data)
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.ENOTCONN):
                            raise
                        link.stats["send_failed"] += 1
                    link.lateness.append(time.monotonic() - due)
                    now = time.monotonic()


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    relay = Relay(cfg["host"], [tuple(r) for r in cfg["relays"]])
    thread = threading.Thread(target=relay.run, name="relay", daemon=True)
    thread.start()
    relay.started.wait(10)
    print(json.dumps({"pid": os.getpid(), "ports": [r[0] for r in cfg["relays"]], "realtime": relay.realtime}),
          flush=True)  # fmt: skip
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "set":
                relay.set(command)
                answer: dict[str, Any] = {"ok": True}
            elif op == "stats":
                answer = {"ok": True, "links": relay.stats()}
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
        except (ValueError, TypeError) as e:
            answer = {"ok": False, "error": str(e)}
        if not thread.is_alive():
            answer = {"ok": False, "error": "the relay thread died"}
        print(json.dumps(answer), flush=True)
    relay.stop = True


if __name__ == "__main__":
    main()
