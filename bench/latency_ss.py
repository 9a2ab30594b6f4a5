"""The original method as a latency baseline: `ss -lntu` every 5 s, diffed.

A thread polls at a fixed phase, as the original monitor did; the trials
(listeners opened and closed at random moments, and listeners living
100 ms) overlap in one run, which is fair: the poll's phase does not
depend on them. A key's open is detected when the first poll that lists
it has been parsed; its close when the first poll that no longer lists it
has been parsed.
"""

from __future__ import annotations

import random
import resource
import socket
import threading
import time
from dataclasses import dataclass, field

from bench.ss import ss_scan

SS_INTERVAL_S = 5.0


@dataclass
class SsRun:
    """What the poller saw: when each key first appeared and first went missing."""

    first_seen: dict[str, float] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def _poll(stop: threading.Event, run: SsRun, interval: float) -> None:
    previous: set[str] = set()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    thread_before = time.thread_time()
    started = next_poll = time.monotonic()
    while not stop.is_set():
        keys = {endpoint.key for endpoint in ss_scan()}
        done = time.monotonic()
        for key in keys - previous:
            run.first_seen.setdefault(key, done)
        for key in previous - keys:
            run.gone.setdefault(key, done)
        previous = keys
        next_poll += interval
        stop.wait(max(0.0, next_poll - time.monotonic()))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_seconds = (
        children.ru_utime
        - children_before.ru_utime
        + children.ru_stime
        - children_before.ru_stime
        + time.thread_time()
        - thread_before
    )
    run.wall_seconds = time.monotonic() - started


def _listener() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"tcp:127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class SsResult:
    open_ms: list[float]
    close_ms: list[float]
    short_reported: int
    short_trials: int
    cpu_percent: float


def measure_ss(trials: int, spread_s: float, short_lifetime_s: float) -> SsResult:
    """`trials` listeners opened within `spread_s`, closed within the next `spread_s`, and
    `trials` listeners living `short_lifetime_s` in between, against one poller."""
    plan: list[tuple[float, str, int]] = []  # (when, action, trial)
    for trial in range(trials):
        opened = random.uniform(0, spread_s)
        plan.append((opened, "open", trial))
        plan.append(
            (random.uniform(spread_s + SS_INTERVAL_S, 2 * spread_s + SS_INTERVAL_S), "close", trial)
        )
        short = random.uniform(0, 2 * spread_s + SS_INTERVAL_S)
        plan.append((short, "short", trial))
    plan.sort()
    run = SsRun()
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(stop, run, SS_INTERVAL_S), daemon=True)
    sockets: dict[int, tuple[socket.socket, str]] = {}
    opened_at: dict[str, float] = {}
    closed_at: dict[str, float] = {}
    short_keys: list[str] = []
    start = time.monotonic()
    poller.start()
    try:
        for when, action, trial in plan:
            time.sleep(max(0.0, start + when - time.monotonic()))
            if action == "open":
                sockets[trial] = _listener()
                opened_at[sockets[trial][1]] = time.monotonic()
            elif action == "close":
                sock, key = sockets.pop(trial)
                closed_at[key] = time.monotonic()
                sock.close()
            else:
                sock, key = _listener()
                time.sleep(short_lifetime_s)
                sock.close()
                short_keys.append(key)
        time.sleep(SS_INTERVAL_S + 0.5)  # one more poll after the last close
    finally:
        stop.set()
        poller.join()
        for sock, _key in sockets.values():
            sock.close()
    return SsResult(
        open_ms=[
            (run.first_seen[k] - t) * 1000 for k, t in opened_at.items() if k in run.first_seen
        ],
        close_ms=[(run.gone[k] - t) * 1000 for k, t in closed_at.items() if k in run.gone],
        short_reported=sum(1 for k in short_keys if k in run.first_seen and k in run.gone),
        short_trials=len(short_keys),
        cpu_percent=100 * run.cpu_seconds / run.wall_seconds if run.wall_seconds else 0.0,
    )
