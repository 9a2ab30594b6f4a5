"""The daemon benchmark: what an idle portwatchd costs, and how fast it tells.

idle      portwatchd watching 100 listeners at interval 1 s: resident memory
          (VmRSS, and the peak VmHWM) and CPU time over --idle-seconds.
latency   portwatchd at interval 0.2 s; --latency-trials times a new process
          starts, listens and reports the CLOCK_MONOTONIC time right after
          listen(); the latency is from then to the moment the daemon's
          "opened" event line is read. A new process, as a server starting
          is: its owner is found without a /proc walk. Each trial then closes the listener and
          waits for "closed", so trials do not overlap.

The daemon runs as `python -m portwatchd.daemon` with the same interpreter,
in the benchmark's private network namespace, events on stderr as JSON.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import time
from typing import TextIO

from bench.daemon_process import RunningDaemon
from bench.load import NEW_SERVER
from bench.section import Check, SectionResult, format_ms, format_table, percentile

IDLE_LISTENERS = 100
IDLE_INTERVAL_S = 1.0
IDLE_RSS_TARGET_KB = 20 * 1024
IDLE_CPU_TARGET_PERCENT = 0.2
LATENCY_INTERVAL_S = 0.2
LATENCY_SLACK_MS = 50.0


def measure_idle(seconds: float) -> dict[str, float]:
    listeners = []
    for _ in range(IDLE_LISTENERS):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        listeners.append(sock)
    daemon = RunningDaemon(IDLE_INTERVAL_S)
    try:
        time.sleep(2 * IDLE_INTERVAL_S)  # past start-up
        cpu_before, wall_before = daemon.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu = daemon.cpu_seconds() - cpu_before
        wall = time.monotonic() - wall_before
        return {
            "rss_kb": daemon.status_kb("VmRSS"),
            "hwm_kb": daemon.status_kb("VmHWM"),
            "cpu_percent": 100 * cpu / wall,
            "seconds": wall,
        }
    finally:
        daemon.close()
        for sock in listeners:
            sock.close()


def measure_latency(trials: int) -> list[float]:
    daemon = RunningDaemon(LATENCY_INTERVAL_S)
    latencies = []
    try:
        for _ in range(trials):
            # Start at a random phase of the scan interval: otherwise each
            # trial, begun right after the last "closed" event (itself a
            # scan), would land at the same point of the cycle.
            time.sleep(random.uniform(0, LATENCY_INTERVAL_S))
            server = subprocess.Popen(
                [sys.executable, "-c", NEW_SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert server.stdout is not None and server.stdin is not None
            port_text, listened_at = server.stdout.readline().split()
            key = f"tcp:127.0.0.1:{port_text}"
            daemon.wait_event("opened", key)
            latencies.append((time.monotonic() - float(listened_at)) * 1000)
            server.stdin.close()
            server.wait(30)
            daemon.wait_event("closed", key)
    finally:
        daemon.close()
    return latencies


class DaemonSection:
    name = "daemon"
    help = "idle RSS and CPU of portwatchd, and its detection latency"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--idle-seconds",
            type=float,
            default=60.0,
            metavar="S",
            help="how long to measure the idle daemon's CPU (default 60)",
        )
        group.add_argument(
            "--latency-trials",
            type=int,
            default=100,
            metavar="N",
            help="listeners to open one by one for the latency (default 100)",
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        result = SectionResult()
        idle = measure_idle(args.idle_seconds)
        latencies = measure_latency(args.latency_trials)
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        rows = [
            ["idle RSS (VmRSS)", f"{idle['rss_kb'] / 1024:.1f} MB"],
            ["idle peak RSS (VmHWM)", f"{idle['hwm_kb'] / 1024:.1f} MB"],
            [f"idle CPU over {idle['seconds']:.0f} s", f"{idle['cpu_percent']:.3f} %"],
            ["detection latency p50", f"{format_ms(p50)} ms"],
            ["detection latency p99", f"{format_ms(p99)} ms"],
            ["detection latency max", f"{format_ms(max(latencies))} ms"],
        ]
        print(
            f"{IDLE_LISTENERS} listeners, interval {IDLE_INTERVAL_S:g} s; latency at interval "
            f"{LATENCY_INTERVAL_S:g} s over {len(latencies)} trials",
            file=out,
        )
        print(format_table(["measure", "value"], rows), file=out)
        result.records += [
            {"method": "daemon_idle", **idle},
            {
                "method": "daemon_latency",
                "interval_s": LATENCY_INTERVAL_S,
                "trials": len(latencies),
                "median_ms": p50,
                "p99_ms": p99,
            },
        ]
        limit_ms = LATENCY_INTERVAL_S * 1000 + LATENCY_SLACK_MS
        result.checks += [
            Check(
                "idle RSS <= 20 MB",
                idle["rss_kb"] <= IDLE_RSS_TARGET_KB,
                f"{idle['rss_kb'] / 1024:.1f} MB",
            ),
            Check(
                "idle CPU <= 0.2% of one core",
                idle["cpu_percent"] <= IDLE_CPU_TARGET_PERCENT,
                f"{idle['cpu_percent']:.3f} %",
            ),
            Check(
                f"detection latency p99 <= interval + 50 ms ({limit_ms:g} ms)",
                p99 <= limit_ms,
                f"{format_ms(p99)} ms",
            ),
        ]
        return result


SECTION = DaemonSection()
