"""python -m bench.kernel_events: what the kernel's notifications cost and how soon they come.

Measures the adapters alone, without the daemon:
- destroy latency: a listener's close() to DestroyWatch.read() returning it
  (in a private network namespace);
- the destroy subscription's CPU under connection churn (a helper process
  makes --churn-rate connections per second to a loopback listener), with
  the BPF filter (DestroyWatch) and without (a plain subscription decoding
  every message), as the reader's CPU time over the window;
- exec latency: Popen(["/bin/true"]) to ExecWatch.read() returning its PID
  (in the initial namespace: fork and exec included);
- a new process's listener found by the follow-up scans FollowUps asks
  for after its exec (NetlinkScanner; no poll): listen() to the scan.
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.load import CONNECTION_CHURN, NEW_SERVER
from bench.netns import enter_private_netns, started_netns
from bench.section import percentile
from portwatchd.followups import FollowUps
from portwatchd.sources.destroy import DestroyWatch
from portwatchd.sources.destroy_parse import parse_destroyed
from portwatchd.sources.execwatch import ExecWatch, TriggerUnavailable
from portwatchd.sources.netlink import NetlinkScanner


def summary(values: list[float]) -> str:
    return (
        f"p50 {statistics.median(values):.1f} us, p99 {percentile(values, 0.99):.1f} us, "
        f"max {max(values):.1f} us over {len(values)}"
    )


def destroy_latency(trials: int) -> list[float]:
    latencies = []
    with DestroyWatch() as watch:
        for _ in range(trials):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            closed_at = time.perf_counter_ns()
            sock.close()
            while select.select([watch], [], [], 1.0)[0]:
                if watch.read().sockets:
                    latencies.append((time.perf_counter_ns() - closed_at) / 1000)
                    break
    return latencies


def _unfiltered() -> tuple[socket.socket, Callable[[], int]]:
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    raw.bind((0, 0))
    for group in (1, 2, 3, 4):
        raw.setsockopt(270, 1, group)
    raw.setblocking(False)

    def drain() -> int:
        found = 0
        while True:
            try:
                found += len(parse_destroyed(raw.recv(65536)))
            except BlockingIOError:
                return found
            except OSError:
                continue  # ENOBUFS: go on

    return raw, drain


def churn_cost(rate: float, seconds: float, filtered: bool) -> tuple[float, int, int]:
    """(reader's CPU % of a core, connections made, wake-ups) during `seconds` of churn."""
    if filtered:
        watch = DestroyWatch()
        fd: socket.socket | DestroyWatch = watch
        drain: Callable[[], int] = lambda: len(watch.read().sockets)  # noqa: E731
        closer: Callable[[], None] = watch.close
    else:
        fd, drain = _unfiltered()
        closer = fd.close
    churn = subprocess.Popen(
        [sys.executable, "-c", CONNECTION_CHURN, str(rate), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert churn.stdout is not None
    churn.stdout.readline()
    wakeups = 0
    cpu_before, wall_before = time.process_time(), time.monotonic()
    try:
        while churn.poll() is None:
            if select.select([fd], [], [], 0.2)[0]:
                wakeups += 1
                drain()
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        made = int(churn.stdout.readline() or 0)
    finally:
        closer()
    return 100 * cpu / wall, made, wakeups


def exec_latency(trials: int) -> list[float]:
    latencies = []
    with ExecWatch() as watch:
        for _ in range(trials):
            started = time.perf_counter_ns()
            child = subprocess.Popen(["/bin/true"])
            seen = False
            while not seen and select.select([watch], [], [], 1.0)[0]:
                if child.pid in watch.read().pids:
                    latencies.append((time.perf_counter_ns() - started) / 1000)
                    seen = True
            child.wait()
            time.sleep(0.01)
    return latencies


def _exec_triggered_trial(watch: ExecWatch, scanner: NetlinkScanner, follow: FollowUps) -> float:
    """listen() in a new process to the first follow-up scan that lists it, in ms."""
    known = {e.key for e in scanner.scan()}
    first_seen: dict[str, float] = {}
    server = subprocess.Popen(
        [sys.executable, "-c", NEW_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdin is not None
    key, listened_at = "", 0.0
    try:
        while key not in first_seen:
            due = follow.next_look_at()
            wait = 1.0 if due is None else max(0.0, due - time.monotonic())
            readers: list[Any] = [watch] if key else [watch, server.stdout]
            ready = select.select(readers, [], [], wait)[0]
            if watch in ready:
                follow.exec_seen(time.monotonic(), watch.read().execs)
            if server.stdout in ready:
                port, listened = server.stdout.readline().split()
                key, listened_at = f"tcp:127.0.0.1:{port}", float(listened)
            due = follow.next_look_at()
            if due is not None and due <= time.monotonic():
                follow.looked(time.monotonic())
                for endpoint in scanner.scan():
                    if endpoint.key not in known:
                        first_seen.setdefault(endpoint.key, time.monotonic())
    finally:
        server.stdin.close()
        server.wait(30)
    return (first_seen[key] - listened_at) * 1000


def exec_triggered_open(trials: int) -> list[float]:
    """A new process's listener found by scans that exec events trigger (no poll at all)."""
    latencies = []
    follow = FollowUps()
    with ExecWatch() as watch, NetlinkScanner() as scanner:
        for _ in range(trials):
            latencies.append(_exec_triggered_trial(watch, scanner, follow))
            time.sleep(0.6)  # let the follow-ups of this trial run out
            while follow.next_look_at() is not None:
                follow.looked(time.monotonic())
    return latencies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_events", description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--churn-rate", type=float, default=5000.0, metavar="PER_S")
    parser.add_argument("--churn-seconds", type=float, default=10.0, metavar="S")
    args = parser.parse_args(argv)
    enter_private_netns()
    print(f"destroy latency, close() -> read(): {summary(destroy_latency(args.trials))}")
    for filtered in (True, False):
        cpu, made, wakeups = churn_cost(args.churn_rate, args.churn_seconds, filtered)
        print(
            f"reader CPU under churn ({'BPF filter' if filtered else 'no filter'}): "
            f"{cpu:.2f} % of a core, {made / args.churn_seconds:.0f} conn/s, {wakeups} wake-ups"
        )
    with started_netns():
        try:
            latencies = exec_latency(args.trials)
        except TriggerUnavailable as exc:
            print(f"exec latency: not measured: {exc.reason}")
        else:
            print(f"exec latency, Popen -> read() (fork+exec included): {summary(latencies)}")
            opens = [ms * 1000 for ms in exec_triggered_open(min(args.trials, 100))]
            print(f"new process's listener, listen() -> follow-up scan: {summary(opens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
