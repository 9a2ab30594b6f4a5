"""The latency section: how soon a change reaches a client, real time against polling.

Three methods side by side, each on the same trials:
- portwatchd in its default configuration (real time: destroy messages,
  exec-triggered looks, the poll as a safety net);
- portwatchd polling only (`realtime = false`);
- the original method: `ss -lntu` every 5 s, diffed (bench/latency_ss.py).

For the daemons, latency is from the moment of the change to the arrival
of the event on a `follow` stream of the control socket (what
`portwatchctl events --follow` reads):
- close:       a listener of ours closes (close() -> "closed");
- new process: a new process listens (listen() -> "opened"; spawn -> "opened"
               is shown beside it);
- 100 ms:      a listener of ours lives 100 ms: reported as "transient",
               as "opened" + "closed", or missed;
- idle CPU:    the daemon with 100 listeners, nothing changing;
- under load:  its CPU during an exec storm (200 execs/s) and connection
               churn (5,000 connections/s), see bench/latency_load.py.

The section runs in the initial network namespace (the proc connector
works only there; the bench otherwise runs in a private one), on loopback
ports the kernel picks free, unless --latency-private-netns.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from bench.daemon_process import DaemonError, RunningDaemon
from bench.latency_follow import Follower
from bench.latency_load import (
    LOAD_HEADERS,
    LoadCost,
    connection_churn,
    exec_storm,
    load_check,
    load_row,
)
from bench.latency_ss import SS_INTERVAL_S, measure_ss
from bench.load import NEW_SERVER
from bench.netns import started_netns
from bench.section import Check, SectionResult, format_ms, format_table, percentile
from portwatchd.runner import SAFETY_NET_POLL_S

# The poll `interval = "auto"` comes to without the kernel's notices, and
# the pace of the trials' random phases; the daemons run with the default
# configuration (auto: 5 s with the notices, 1 s polling only).
DEFAULT_INTERVAL_S = 1.0
IDLE_LISTENERS = 100
SHORT_LIFETIME_S = 0.1
SHORT_REPORT_WAIT_S = 0.5
SHORT_REPORTS = frozenset({"transient", "opened"})
# No look can see it once closed: a report after this long would be a daemon
# stalled that long, not a slow look.
SHORT_LATE_WAIT_S = 2.0
LOOK_SLACK_S = 0.1  # a look's own time, and the follow stream's


@dataclass
class MethodResult:
    name: str
    close_ms: list[float] = field(default_factory=list)
    open_ms: list[float] = field(default_factory=list)
    spawn_ms: list[float] = field(default_factory=list)
    short: dict[str, int] = field(default_factory=dict)  # how reported -> trials
    short_trials: int = 0
    short_late_ms: list[float] = field(default_factory=list)  # close to a report past the wait
    old_open_ms: list[float] = field(default_factory=list)  # an old process's listen() to "opened"
    cpu_percent: float | None = None
    missed: int = 0  # close and new-process trials whose event never came
    storm: LoadCost | None = None
    churn: LoadCost | None = None


def _listener() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"tcp:127.0.0.1:{sock.getsockname()[1]}"


def random_phase() -> None:
    """Wait a random part of the interval: a trial begun right after an event (itself
    found by a scan) would otherwise land at the same point of every poll cycle."""
    time.sleep(random.uniform(0, DEFAULT_INTERVAL_S))


def close_trial(follow: Follower, result: MethodResult, timeout: float) -> None:
    listened_at = time.monotonic()
    sock, key = _listener()
    opened = follow.wait(key, {"opened"}, timeout)
    if opened is None:
        sock.close()
        result.missed += 1
        return
    result.old_open_ms.append((opened[0] - listened_at) * 1000)
    random_phase()
    closed_at = time.monotonic()
    sock.close()
    got = follow.wait(key, {"closed"}, timeout)
    if got is None:
        result.missed += 1
    else:
        result.close_ms.append((got[0] - closed_at) * 1000)


def new_process_trial(follow: Follower, result: MethodResult, timeout: float) -> None:
    random_phase()
    spawned_at = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-c", NEW_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    key = ""
    try:
        port, listened_at = server.stdout.readline().split()
        key = f"tcp:127.0.0.1:{port}"
        got = follow.wait(key, {"opened"}, timeout)
        if got is None:
            result.missed += 1
        else:
            result.open_ms.append((got[0] - float(listened_at)) * 1000)
            result.spawn_ms.append((got[0] - spawned_at) * 1000)
    finally:
        server.stdin.close()
        server.wait(30)
    if key:
        follow.wait(key, {"closed"}, timeout)


def short_listener_trial(follow: Follower, result: MethodResult, timeout: float) -> None:
    sock, key = _listener()
    time.sleep(SHORT_LIFETIME_S)
    closed_at = time.monotonic()
    sock.close()
    result.short_trials += 1
    # Either a look saw it during its life, and "opened" is on its way, or
    # its close was heard; nothing else can report it later. A report after
    # the wait is told apart as late, with the time it took.
    got = follow.wait(key, SHORT_REPORTS, SHORT_REPORT_WAIT_S)
    late = got is None
    if late:
        got = follow.wait(key, SHORT_REPORTS, SHORT_LATE_WAIT_S)
    if got is None:
        how = "missed"
    else:
        if got[1]["type"] == "transient":
            how = "transient"
        else:
            how = "opened+closed" if follow.wait(key, {"closed"}, timeout) else "opened only"
        if late:
            how += ", late"
            result.short_late_ms.append((got[0] - closed_at) * 1000)
    result.short[how] = result.short.get(how, 0) + 1


def start_daemon(realtime: bool) -> tuple[RunningDaemon, bool]:
    """The daemon with `realtime = ...`; (daemon, whether it took the key)."""
    line = f"realtime = {'true' if realtime else 'false'}"
    try:
        return RunningDaemon(None, stderr_pipe=False, config_lines=(line,)), True
    except DaemonError as exc:
        if "realtime" not in str(exc):
            raise
    return RunningDaemon(None, stderr_pipe=False), False


def measure_daemon(
    name: str, realtime: bool, trials: int, idle_seconds: float, load_seconds: float
) -> tuple[MethodResult, bool]:
    result = MethodResult(name)
    listeners = [_listener()[0] for _ in range(IDLE_LISTENERS)]
    daemon, took_key = start_daemon(realtime)
    # Our own listeners come from an old process: only the poll finds
    # them, at most SAFETY_NET_POLL_S after they listen.
    timeout = 2 * SAFETY_NET_POLL_S + 1.0
    try:
        with Follower(daemon.socket_path) as follow:
            time.sleep(2 * DEFAULT_INTERVAL_S)  # past start-up
            cpu_before, wall_before = daemon.cpu_seconds(), time.monotonic()
            time.sleep(idle_seconds)
            result.cpu_percent = (
                100 * (daemon.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
            )
            result.storm = exec_storm(daemon, load_seconds)
            result.churn = connection_churn(daemon, load_seconds)
            time.sleep(1.0)  # the storm's last follow-ups
            follow.forget()
            for _ in range(trials):
                for trial in (close_trial, new_process_trial, short_listener_trial):
                    trial(follow, result, timeout)
                    follow.forget()
                daemon.check_alive()
    finally:
        daemon.close()
        for sock in listeners:
            sock.close()
    return result, took_key


def _p(values: list[float], fraction: float) -> float | None:
    return percentile(values, fraction) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report_rows(results: list[MethodResult]) -> list[list[str]]:
    rows = []
    for r in results:
        short = ", ".join(f"{n} {how}" for how, n in sorted(r.short.items()))
        rows.append(
            [
                r.name,
                format_ms(_median(r.close_ms)),
                format_ms(_p(r.close_ms, 0.99)),
                format_ms(_median(r.open_ms)),
                format_ms(_p(r.open_ms, 0.99)),
                format_ms(_median(r.spawn_ms)),
                f"{short} (of {r.short_trials})",
                "-" if r.cpu_percent is None else f"{r.cpu_percent:.3f} %",
            ]
        )
    return rows


HEADERS = [
    "method",
    "close p50",
    "close p99",
    "new p50",
    "new p99",
    "spawn p50",
    "100 ms listener",
    "idle CPU",
]


def target_checks(r: MethodResult) -> list[Check]:
    """The issue's targets, for the real-time daemon."""
    close_p99, new_p50, new_p99 = _p(r.close_ms, 0.99), _median(r.open_ms), _p(r.open_ms, 0.99)
    reported = sum(
        n for how, n in r.short.items() if how.startswith(("transient", "opened+closed"))
    )
    return [
        Check("close p99 <= 2 ms", close_p99 is not None and close_p99 <= 2, format_ms(close_p99)),
        Check(
            "new process p50 <= 20 ms", new_p50 is not None and new_p50 <= 20, format_ms(new_p50)
        ),
        Check(
            "new process p99 <= 60 ms", new_p99 is not None and new_p99 <= 60, format_ms(new_p99)
        ),
        Check(
            "100 ms listener reported every time",
            reported == r.short_trials > 0,
            f"{reported} of {r.short_trials}",
        ),
        Check(
            "idle CPU <= 0.05% of a core",
            r.cpu_percent is not None and r.cpu_percent <= 0.05,
            f"{r.cpu_percent:.3f} %" if r.cpu_percent is not None else "-",
        ),
        Check("no close or new-process event missed", r.missed == 0, f"{r.missed} missed"),
        Check(
            f"old process's new listener <= the {SAFETY_NET_POLL_S:g} s poll"
            f" (+{LOOK_SLACK_S * 1000:g} ms for the look)",
            bool(r.old_open_ms) and max(r.old_open_ms) <= (SAFETY_NET_POLL_S + LOOK_SLACK_S) * 1000,
            f"max {format_ms(max(r.old_open_ms, default=None))}",
        ),
        load_check("exec storm: CPU <= 3% of a core", r.storm, 3.0),
        load_check("connection churn: CPU <= 0.5% of a core", r.churn, 0.5),
    ]


class LatencySection:
    name = "latency"
    help = "real time against polling: close, new process, 100 ms listener, idle CPU"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--latency-full",
            action="store_true",
            help="100 trials per method and 120 s of idle CPU (default: a short run)",
        )
        group.add_argument(
            "--latency-rt-trials",
            type=int,
            metavar="N",
            help="trials per daemon (default 5; 100 with --latency-full)",
        )
        group.add_argument(
            "--latency-idle-seconds",
            type=float,
            metavar="S",
            help="idle CPU window per daemon (default 10; 120 with --latency-full)",
        )
        group.add_argument(
            "--latency-load-seconds",
            type=float,
            metavar="S",
            help="exec storm and churn window per daemon (default 5; 30 with --latency-full)",
        )
        group.add_argument(
            "--latency-private-netns",
            action="store_true",
            help="stay in the bench's private namespace (no exec events there)",
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        trials = args.latency_rt_trials or (100 if args.latency_full else 5)
        idle = args.latency_idle_seconds or (120.0 if args.latency_full else 10.0)
        load = args.latency_load_seconds or (30.0 if args.latency_full else 5.0)
        if args.latency_private_netns:
            return self._measure(trials, idle, load, out)
        print(
            "in the namespace the bench started in (the proc connector works only in the "
            "initial one)",
            file=out,
        )
        with started_netns():
            return self._measure(trials, idle, load, out)

    def _measure(self, trials: int, idle: float, load: float, out: TextIO) -> SectionResult:
        realtime, took_key = measure_daemon("portwatchd (default)", True, trials, idle, load)
        polling, _ = measure_daemon("portwatchd polling only", False, trials, idle, load)
        spread = max(5.0, trials * 0.1)
        ss = measure_ss(trials, spread, SHORT_LIFETIME_S)
        original = MethodResult(
            f"ss -lntu every {SS_INTERVAL_S:g} s",
            close_ms=ss.close_ms,
            open_ms=ss.open_ms,
            short={
                "opened+closed": ss.short_reported,
                "missed": ss.short_trials - ss.short_reported,
            },
            short_trials=ss.short_trials,
            cpu_percent=ss.cpu_percent,
        )
        results = [realtime, polling, original]
        print(
            f"{trials} trials per method, the default interval (auto: 5 s with the"
            f" kernel's notices, 1 s polling only), idle {idle:g} s"
            f" with {IDLE_LISTENERS} listeners; times in ms",
            file=out,
        )
        print(format_table(HEADERS, report_rows(results)), file=out)
        print(
            "(ss: new = from listen() in an old process; idle CPU = ss and its parsing)", file=out
        )
        print(f"the daemons' CPU under load, {load:g} s each (rates reached):", file=out)
        loaded = [load_row(r.name, r.storm, r.churn) for r in results if r.storm or r.churn]
        print(format_table(LOAD_HEADERS, loaded), file=out)
        section = SectionResult(records=[_record(r) for r in results])
        if took_key:
            section.checks += target_checks(realtime)
        else:
            print(
                "note: this portwatchd has no `realtime` key yet: both daemon runs are its "
                "default; no target checked",
                file=out,
            )
        return section


def _record(r: MethodResult) -> dict[str, Any]:
    return {
        "method": f"latency {r.name}",
        "close_ms": r.close_ms,
        "open_ms": r.open_ms,
        "spawn_ms": r.spawn_ms,
        "short": r.short,
        "short_trials": r.short_trials,
        "short_late_ms": r.short_late_ms,
        "old_open_ms": r.old_open_ms,
        "idle_cpu_percent": r.cpu_percent,
        "missed": r.missed,
        "exec_storm": None if r.storm is None else vars(r.storm),
        "churn": None if r.churn is None else vars(r.churn),
    }


SECTION = LatencySection()
