"""The churn benchmark (issue 10): no phantom events, and what confirming costs.

phantoms   3,000 TCP and 300 UDP listeners that never change (one helper),
           another process replacing listeners and UDP sockets and making
           connections as fast as it can (bench/churn_load.py), the real
           portwatchd at interval 0.2 on each backend for --churn-seconds:
           every event on a stable listener's key is a phantom. Target 0.
latency    what a real close costs: the daemon takes a second look (one
           more scan) before it believes a departure, so the added delay is
           one scan at 3,300 sockets: the median of the backend's scan()
           (target <= 5 ms). Beside it, the daemon-level close latency of a
           listener of ours (close() to the "closed" line, at a random phase
           of the interval), without and with the churn.
misses     the scanner-level cause, with the churn running and no daemon:
           per scan, how many stable sockets it missed or listed twice, and
           how many misses the very next scan repeated (what a confirmation
           would then believe).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import statistics
import threading
import time
from collections import Counter
from typing import Any, TextIO

from bench.churn_load import Churn, StableListeners
from bench.daemon_process import DaemonError, RunningDaemon
from bench.section import Check, SectionResult, format_ms, format_table
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.procnet import ProcScanner

STABLE_TCP = 3000
STABLE_UDP = 300
INTERVAL_S = 0.2
CONFIRM_TARGET_MS = 5.0
BACKENDS = ("netlink", "proc")
_EVENT = re.compile(rb'^\{"event":\{.*?"type":"(\w+)".*?"key":"([^"]+)"')


class EventReader:
    """Reads a daemon's stderr (JSON lines) in a thread; keeps what we ask about."""

    def __init__(self, fd: int, watched: set[str]) -> None:
        self.watched = watched
        self.phantoms: list[tuple[float, str, str]] = []
        self.events = 0
        self._seen: dict[tuple[str, str], float] = {}
        self._changed = threading.Condition()
        self._fd = fd
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        partial = b""
        while chunk := self._chunk():
            now = time.monotonic()
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            with self._changed:
                for line in lines:
                    match = _EVENT.match(line)
                    if not match:
                        continue
                    self.events += 1
                    kind, key = match.group(1).decode(), match.group(2).decode()
                    if key in self.watched:
                        self.phantoms.append((now, kind, key))
                    self._seen[(kind, key)] = now
                self._changed.notify_all()

    def _chunk(self) -> bytes:
        try:
            return os.read(self._fd, 1 << 20)
        except OSError:  # the pipe was closed under us: the daemon is gone
            return b""

    def wait(self, kind: str, key: str, timeout: float = 30.0) -> float:
        """When this event's line was read (consumed, so a key can be reused)."""
        with self._changed:
            if not self._changed.wait_for(lambda: (kind, key) in self._seen, timeout):
                raise DaemonError(f"no {kind} event for {key} within {timeout:g} s")
            return self._seen.pop((kind, key))


# Our closes use an address that neither the stable listeners nor the churn
# (127.0.0.1 and ::1) bind, so no event of theirs can be taken for ours.
PROBE_ADDRESS = "127.0.0.2"


def close_latencies(reader: EventReader, trials: int) -> list[float]:
    """close() of a listener of ours to its "closed" line, in ms, per trial."""
    latencies = []
    for _ in range(trials):
        sock = socket.socket()
        sock.bind((PROBE_ADDRESS, 0))
        sock.listen()
        key = f"tcp:{PROBE_ADDRESS}:{sock.getsockname()[1]}"
        reader.wait("opened", key)
        time.sleep(random.uniform(0, INTERVAL_S))  # a random phase of the interval
        closed_at = time.monotonic()
        sock.close()
        latencies.append((reader.wait("closed", key) - closed_at) * 1000)
    return latencies


def run_daemon(
    backend: str, stable: StableListeners, seconds: float, trials: int
) -> dict[str, Any]:
    """Phantoms on `stable` over `seconds` of churn, and close latencies."""
    # The probe reopens its own key again and again: new listeners, not
    # restarts. Polling only: this measures what the scans and their
    # confirmation report (the latency section measures the kernel's
    # notices); with them, every churned listener no scan saw would be a
    # true `transient`, thousands a second.
    config = (f'backend = "{backend}"', "restart_grace = 0", "realtime = false")
    daemon = RunningDaemon(INTERVAL_S, config_lines=config)
    try:
        reader = EventReader(daemon.stderr_fd(), set(stable.keys.values()))
        time.sleep(1.0)  # past start-up
        quiet = close_latencies(reader, trials)
        churn = Churn()
        cpu_before = daemon.cpu_seconds()
        try:
            started = time.monotonic()
            busy = close_latencies(reader, trials)
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        finally:
            rounds = churn.close()
        churned = time.monotonic() - started
        cpu_percent = 100 * (daemon.cpu_seconds() - cpu_before) / churned
        time.sleep(4 * INTERVAL_S)  # the last scans' events are out
        daemon.check_alive()
        return {
            "backend": backend,
            "seconds": churned,
            "churn_rounds": rounds,
            "daemon_cpu_percent": cpu_percent,
            "events": reader.events,
            "phantoms": list(reader.phantoms),
            "close_quiet_ms": quiet,
            "close_churn_ms": busy,
        }
    finally:
        daemon.close()


def scan_median_ms(backend: str, reps: int) -> float:
    scanner = NetlinkScanner() if backend == "netlink" else ProcScanner()
    try:
        scanner.scan()
        times = []
        for _ in range(reps):
            begun = time.perf_counter()
            scanner.scan()
            times.append((time.perf_counter() - begun) * 1000)
        return statistics.median(times)
    finally:
        scanner.close()


def scanner_misses(backend: str, stable: set[int], seconds: float) -> dict[str, Any]:
    """Back-to-back scans during the churn: misses and duplicates of stable sockets."""
    scanner = NetlinkScanner() if backend == "netlink" else ProcScanner()
    scans = missing_scans = duplicate_scans = repeated = 0
    worst = 0
    previous: set[int] = set()
    give_up = time.monotonic() + seconds
    try:
        while time.monotonic() < give_up:
            counts = Counter(e.inode for e in scanner.scan() if e.inode in stable)
            missed = stable - counts.keys()
            scans += 1
            missing_scans += bool(missed)
            duplicate_scans += any(n > 1 for n in counts.values())
            worst = max(worst, len(missed))
            repeated += len(missed & previous)
            previous = missed
    finally:
        scanner.close()
    return {
        "backend": backend,
        "scans": scans,
        "scans_missing": missing_scans,
        "most_missed": worst,
        "scans_duplicating": duplicate_scans,
        "missed_twice_running": repeated,
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _run_row(run: dict[str, Any], scan_ms: float) -> list[str]:
    return [
        run["backend"],
        f"{run['seconds']:.0f}",
        str(run["churn_rounds"]),
        str(run["events"]),
        str(len(run["phantoms"])),
        format_ms(scan_ms),
        format_ms(_median(run["close_quiet_ms"])),
        format_ms(_median(run["close_churn_ms"])),
        f"{run['daemon_cpu_percent']:.0f}",
    ]


def _checks(run: dict[str, Any], scan_ms: float) -> list[Check]:
    backend, phantoms = run["backend"], run["phantoms"]
    detail = f"{len(phantoms)} over {run['seconds']:.0f} s, {run['churn_rounds']} churn rounds"
    if phantoms:
        detail += " (first: " + ", ".join(f"{kind} {key}" for _, kind, key in phantoms[:4]) + ")"
    checks = [Check(f"churn: phantom events ({backend}) == 0", not phantoms, detail)]
    if backend == "netlink":  # the target is the default backend's; proc's figure is shown
        checks.append(
            Check(
                f"churn: confirmation, one netlink scan of {STABLE_TCP + STABLE_UDP} sockets"
                f" <= {CONFIRM_TARGET_MS:g} ms",
                scan_ms <= CONFIRM_TARGET_MS,
                f"median {format_ms(scan_ms)} ms",
            )
        )
    return checks


_RUN_HEADERS = ["backend", "churn s", "churn rounds", "events", "phantoms", "scan ms"]
_RUN_HEADERS += ["close quiet ms", "close churn ms", "daemon CPU %"]
_MISS_HEADERS = ["backend", "scans", "missing", "most missed", "duplicating"]
_MISS_HEADERS += ["missed twice running"]
_MISS_FIELDS = ["scans", "scans_missing", "most_missed", "scans_duplicating"]
_MISS_FIELDS += ["missed_twice_running"]


class ChurnSection:
    name = "churn"
    help = "phantom events on untouched listeners under churn, and the cost of confirming"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add = group.add_argument
        add("--churn-seconds", type=float, default=300.0, help="churn per backend (300)")
        add("--churn-backends", default=",".join(BACKENDS), help="netlink,proc (both)")
        add("--churn-trials", type=int, default=30, help="closes timed, each way (30)")
        add("--churn-miss-seconds", type=float, default=10.0, help="scanner-level look (10)")

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        result = SectionResult()
        backends = [b for b in args.churn_backends.split(",") if b]
        stable = StableListeners(STABLE_TCP, STABLE_UDP)
        try:
            scans = {b: scan_median_ms(b, 200) for b in backends}
            runs = [run_daemon(b, stable, args.churn_seconds, args.churn_trials) for b in backends]
            churn = Churn()
            try:
                look = args.churn_miss_seconds
                misses = [scanner_misses(b, stable.inodes, look) for b in backends]
            finally:
                churn.close()
        finally:
            stable.close()
        rows = [_run_row(run, scans[run["backend"]]) for run in runs]
        print(format_table(_RUN_HEADERS, rows), file=out)
        print(file=out)
        miss_rows = [[m["backend"], *(str(m[f]) for f in _MISS_FIELDS)] for m in misses]
        print(format_table(_MISS_HEADERS, miss_rows), file=out)
        for run in runs:
            scan_ms = scans[run["backend"]]
            result.checks.extend(_checks(run, scan_ms))
            record = {k: v for k, v in run.items() if k != "phantoms"}
            record.update(section="churn", phantoms=len(run["phantoms"]), scan_median_ms=scan_ms)
            result.records.append(record)
            for stamp, kind, key in run["phantoms"][:20]:
                print(f"phantom ({run['backend']}): {kind} {key} at {stamp:.3f}", file=out)
        result.records.extend({"section": "churn-misses", **m} for m in misses)
        return result


SECTION = ChurnSection()
