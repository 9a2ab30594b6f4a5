"""The real portwatchd over a 1,000,000-event history: the issue's daemon numbers.

Set-up: an events.db of --store-events events (bench/store.py's builder,
then marked journaled, as a long run leaves it) in one state directory, an
empty one beside it. Every daemon is `python -m portwatchd.daemon`
(bench/daemon_process.py) with history_size = --store-events, so the large
history is full, as a daemon's is after a long run, and
WATCHDOG_USEC=2000000 (a ping every 0.5 s).

- start: --daemon-store-starts starts of each, alternated; wall time from
  Popen to the arrival of READY=1. Target: large <= 1 s (median).
- then both daemons side by side at interval 0.2 s, 3 s after READY:
  RSS (VmRSS) of each. Target: large <= 25 MB;
- events: the raw `{"v":1,"req":"events","limit":50}` line on the large
  daemon's control socket, --daemon-store-events-reps times on one
  connection; round trip (wall) and the daemon's CPU per request. Target:
  <= 10 ms (median round trip, an upper bound of the server's time);
- latency: --daemon-store-rounds rounds; in each, a `rescan` to both
  daemons aligns their scan schedules (each next scan is due one interval
  after it), then, at a random 30-80% of the interval, a new process
  listens on a fresh port; the latency is from its listen() to its "opened"
  line on each daemon's stderr. Both daemons then wait the same time for
  their next periodic scan, so the round's ratio (large / empty) compares
  what each does once it scans; target: median of the per-round ratios
  <= 1.2x;
- burst: the large daemon alone at the shipped interval (1 s); --daemon-
  store-burst listeners opened at once (bench/burst.py); the longest gap
  between WATCHDOG=1 arrivals (kernel time stamps) from before the burst
  until every "opened" line is out (all must come), and how long that took.
  Target: gap <= 1 s.

Run: `python -m bench daemon-store` (as root; about 1.5-2 min, 20 s of it the build).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import TextIO

from bench.burst import Burst, EventLines
from bench.control import ControlClient
from bench.daemon_process import DaemonError, RunningDaemon
from bench.daemon_store_report import Measured, report
from bench.load import NEW_SERVER
from bench.section import SectionResult
from bench.store import build_history
from portwatchd.model import rfc3339
from portwatchd.store import DB_FILE

LATENCY_INTERVAL_S = 0.2
BURST_INTERVAL_S = 1.0  # the shipped default (Config.interval)
WATCHDOG_USEC = "2000000"
SETTLE_S = 3.0
LINE_TIMEOUT_S = 30.0
BURST_TIMEOUT_S = 120.0
# systemd raises net.unix.max_dgram_qlen to 512 (sysctl.d/50-default.conf);
# a netns starts at 10, and a daemon that finds the queue full drops the
# datagram, which would read as a missing watchdog ping.
NOTIFY_QUEUE = 512
EVENTS_REQUEST = b'{"v":1,"req":"events","limit":50}\n'

# NEW_SERVER once told to: it says "up", and listens after a line on stdin.
_WAITING_SERVER = (
    """
import sys
print("up", flush=True)
sys.stdin.readline()"""
    + NEW_SERVER
)


def prepare_history(directory: str, count: int) -> None:
    """build_history, then journaled up to its end and alive now: a daemon
    that finds it has nothing to re-send, as after a long run."""
    build_history(directory, count)
    path = os.path.join(directory, DB_FILE)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
            [("journaled_seq", count), ("last_alive", rfc3339_now())],
        )
    # The builder does not sync: write its ~800 MB out now rather than while
    # the daemon commits (a history that grew over months is on disk).
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rfc3339_now() -> str:
    return rfc3339(datetime.now(UTC))


def start_daemon(state_dir: str, interval: float, history: int) -> RunningDaemon:
    return RunningDaemon(
        interval,
        state_dir=state_dir,
        config_lines=(f"history_size = {history}",),
        env={"WATCHDOG_USEC": WATCHDOG_USEC},
    )


def measure_starts(dirs: dict[str, str], history: int, starts: int) -> dict[str, list[float]]:
    """Seconds from Popen to READY=1, the sides alternated (which goes first too)."""
    ready: dict[str, list[float]] = {name: [] for name in dirs}
    for index in range(starts):
        for name in list(dirs)[:: 1 if index % 2 == 0 else -1]:
            with start_daemon(dirs[name], LATENCY_INTERVAL_S, history) as daemon:
                ready[name].append(daemon.ready_s)
    return ready


def measure_events(daemon: RunningDaemon, reps: int) -> dict[str, float]:
    """`events --limit 50` round trips: median, p90 (ms), and the daemon's CPU per request."""
    client = ControlClient(daemon.socket_path)
    trips = []
    cpu = daemon.cpu_seconds()
    try:
        for _ in range(reps):
            began = time.perf_counter()
            answer = client.ask_raw(EVENTS_REQUEST)
            trips.append((time.perf_counter() - began) * 1000)
            if not answer.startswith(b'{"v":1,"ok":true') or answer.count(b'"seq":') != 50:
                raise DaemonError(f"events --limit 50 answered {answer[:200]!r}")
    finally:
        client.close()
    return {
        "median_ms": statistics.median(trips),
        "p90_ms": sorted(trips)[int(0.9 * len(trips))],
        "cpu_ms": (daemon.cpu_seconds() - cpu) * 1000 / reps,
        "reps": reps,
    }


class WaitingServer:
    """A new process, interpreter up, that listens on a fresh port when told."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WAITING_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        if self._stdout.readline().strip() != "up":
            raise DaemonError("the new server process did not start")

    def listen(self) -> tuple[str, float]:
        """Its key and the CLOCK_MONOTONIC moment right after listen()."""
        self._stdin.write("go\n")
        self._stdin.flush()
        port, listened = self._stdout.readline().split()
        return f"tcp:127.0.0.1:{port}", float(listened)

    def close(self) -> None:
        self._stdin.close()
        self.proc.wait(30)
        self._stdout.close()


def measure_latency(
    daemons: dict[str, RunningDaemon], lines: EventLines, rounds: int
) -> dict[str, list[float]]:
    """Per round and daemon, ms from listen() to the "opened" line (see the module doc)."""
    clients = {name: ControlClient(daemon.socket_path) for name, daemon in daemons.items()}
    latencies: dict[str, list[float]] = {name: [] for name in daemons}
    try:
        for index in range(rounds):
            order = list(clients.items())[:: 1 if index % 2 == 0 else -1]
            found = _latency_round(dict(order), lines)
            for name, latency in (found or {}).items():
                latencies[name].append(latency)
    finally:
        for client in clients.values():
            client.close()
    return latencies


def _latency_round(clients: dict[str, ControlClient], lines: EventLines) -> dict[str, float] | None:
    """One round; None when we were held off a core past the shared scan."""
    names = list(clients)
    server = WaitingServer()
    try:
        for client in clients.values():
            client.ask("rescan")
        aligned = time.monotonic()
        time.sleep(random.uniform(0.3, 0.8) * LATENCY_INTERVAL_S)
        if time.monotonic() - aligned > 0.9 * LATENCY_INTERVAL_S:
            return None  # the scans may have run: no phase shared for certain
        key, listened = server.listen()
        seen = _wait_lines(lines, names, "opened", key)
    finally:
        server.close()
    _wait_lines(lines, names, "closed", key)
    return {name: (seen[(name, "opened", key)] - listened) * 1000 for name in names}


def _wait_lines(
    lines: EventLines, names: list[str], type_: str, key: str
) -> dict[tuple[str, str, str], float]:
    wanted = {(name, type_, key) for name in names}
    seen = lines.wait(wanted, LINE_TIMEOUT_S)
    if len(seen) < len(wanted):
        late = sorted(name for name, _, _ in wanted - seen.keys())
        raise DaemonError(f"no {type_} line for {key} within {LINE_TIMEOUT_S:g} s from {late}")
    return seen


def measure_side_by_side(
    dirs: dict[str, str], history: int, args: argparse.Namespace, into: Measured
) -> None:
    with contextlib.ExitStack() as stack:
        daemons = {
            name: stack.enter_context(start_daemon(path, LATENCY_INTERVAL_S, history))
            for name, path in dirs.items()
        }
        lines = EventLines({name: d.stderr_fd() for name, d in daemons.items()})
        stack.callback(lines.close)
        time.sleep(SETTLE_S)
        lines.drain()
        into.rss_kb = {name: daemon.status_kb("VmRSS") for name, daemon in daemons.items()}
        into.events = measure_events(daemons["large"], args.daemon_store_events_reps)
        lines.drain()
        cpu = {name: (daemon.cpu_seconds(), time.monotonic()) for name, daemon in daemons.items()}
        into.latency = measure_latency(daemons, lines, args.daemon_store_rounds)
        into.cpu_percent = {
            name: 100 * (daemon.cpu_seconds() - cpu[name][0]) / (time.monotonic() - cpu[name][1])
            for name, daemon in daemons.items()
        }
        into.hwm_kb = {name: daemon.status_kb("VmHWM") for name, daemon in daemons.items()}


def measure_burst(state_dir: str, history: int, total: int, into: Measured) -> None:
    """The large daemon at the shipped interval; `total` listeners at once (module doc)."""
    with Burst(total) as burst, start_daemon(state_dir, BURST_INTERVAL_S, history) as daemon:
        lines = EventLines({"large": daemon.stderr_fd()})
        try:
            time.sleep(SETTLE_S)  # pings before the burst
            lines.drain()
            offset = time.time() - time.monotonic()
            burst.go()
            wanted = {("large", "opened", f"tcp:127.0.0.1:{port}") for port in burst.ports}
            seen = lines.wait(wanted, BURST_TIMEOUT_S)
            done = max(seen.values(), default=time.monotonic())
            # The ping after the last line closes the last gap.
            time.sleep(2 * float(WATCHDOG_USEC) / 4e6)
            daemon.check_alive()
            into.burst = {
                "listeners": len(wanted),
                "out": len(seen),
                "listen_s": burst.last_listen - burst.first_listen,
                "all_out_s": done - burst.first_listen,
                "gap_s": longest_gap(
                    daemon.watchdog_pings, burst.first_listen + offset, done + offset
                ),
                "pings": len(daemon.watchdog_pings),
            }
        finally:
            lines.close()


def longest_gap(pings: list[float], begin: float, end: float) -> float:
    """The longest time without a ping over [begin, end]: between the last
    ping before `begin` and the first after `end`, or up to now if none came.

    >>> longest_gap([0.0, 0.5, 1.0, 2.5, 3.0], 0.7, 2.6)
    1.5
    """
    before = [t for t in pings if t <= begin]
    inside = [t for t in pings if begin < t <= end]
    after = [t for t in pings if t > end]
    span = before[-1:] + inside + (after[:1] or [time.time()])
    if len(span) < 2:
        return float("inf")  # no ping at all
    return max(later - earlier for earlier, later in itertools.pairwise(span))


def raise_notify_queue() -> None:
    """As systemd does for its notify socket (see NOTIFY_QUEUE); in our netns only."""
    with contextlib.suppress(OSError), open("/proc/sys/net/unix/max_dgram_qlen", "w") as f:
        f.write(str(NOTIFY_QUEUE))


def measure(args: argparse.Namespace, out: TextIO) -> SectionResult:
    count = args.store_events
    raise_notify_queue()
    scratch = tempfile.mkdtemp(prefix="portwatchd-bench-dstore-", dir=args.store_dir)
    try:
        dirs = {"large": os.path.join(scratch, "large"), "empty": os.path.join(scratch, "empty")}
        began = time.monotonic()
        prepare_history(dirs["large"], count)
        os.makedirs(dirs["empty"])
        history = args.daemon_store_history_size or count
        print(
            f"built {count:,} events in {time.monotonic() - began:.1f} s; daemons keep {history:,}",
            file=out,
            flush=True,
        )
        measured = Measured(events_held=count)
        measured.ready_s = measure_starts(dirs, history, args.daemon_store_starts)
        measure_side_by_side(dirs, history, args, measured)
        measure_burst(dirs["large"], history, args.daemon_store_burst, measured)
        return report(measured, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """Its own options; --store-events and --store-dir are the store section's."""
    group.add_argument(
        "--daemon-store-history-size",
        type=int,
        default=None,
        metavar="N",
        help="the daemons' history_size (default: --store-events, a full history that "
        "prunes as it grows; larger: one that does not)",
    )
    group.add_argument(
        "--daemon-store-starts",
        type=int,
        default=5,
        metavar="N",
        help="starts to READY of each daemon, large and empty (default: %(default)s)",
    )
    group.add_argument(
        "--daemon-store-events-reps",
        type=int,
        default=200,
        metavar="N",
        help="events --limit 50 requests to each daemon (default: %(default)s)",
    )
    group.add_argument(
        "--daemon-store-rounds",
        type=int,
        default=40,
        metavar="N",
        help="detection latency rounds, both daemons each (default: %(default)s)",
    )
    group.add_argument(
        "--daemon-store-burst",
        type=int,
        default=50_000,
        metavar="N",
        help="listeners opened at once in the burst (default: %(default)s)",
    )


class DaemonStoreSection:
    name = "daemon-store"
    help = "portwatchd with 1,000,000 events: latency vs empty, events, RSS, READY, burst"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add_arguments(group)

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        return measure(args, out)


SECTION = DaemonStoreSection()
