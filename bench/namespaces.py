"""The namespaces benchmark: watching many network namespaces at once.

Forked children of the benchmark each unshare a network namespace of their
own and bind listeners there (100 namespaces with 10 TCP listeners each,
by default); more children, which only sleep, bring the processes in
/proc to 1,000. Then, with one kept source per namespace
(sources/nsscan.NamespaceScanners):

    look       one scan of every namespace, in turn   target <= 15 ms
    discover   sources/netns.discover() over /proc    target <= 5 ms
    rss        VmRSS added by the kept sources        target <= 2 MB
    look_busy  the same look while a sibling namespace holds
               `--ns-neighbours` TCP listeners (and a tenth as many UDP
               sockets): no target, the cost on a busy host

A dump walks the kernel's socket hash tables, which every namespace
shares, skipping the sockets of other namespaces: one namespace's scan
costs in proportion to the sockets of the whole host. So `look` depends
on what else runs on the machine, and `look_busy` shows by how much.

It checks that every namespace's scan saw exactly its own listeners,
stamped with its inode. Times are CPU time of the benchmark thread
(a dump runs inside the calling thread's system call), as in `scan`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from bench.load import ListenerLoad
from bench.netns import CLONE_NEWNET, sibling_netns
from bench.section import Check, SectionResult, format_ms, format_table
from bench.timing import CLOCKS, Timing, time_methods
from portwatchd.sources.netns import discover, host_netns
from portwatchd.sources.nsscan import NamespaceScanners

DEFAULTS = {
    "ns_count": 100,
    "ns_listeners": 10,
    "ns_processes": 1000,
    "ns_budget": 3.0,
    "ns_neighbours": 10_000,
}
TARGET_LOOK_MS = 15.0
TARGET_DISCOVER_MS = 5.0
TARGET_RSS_BYTES = 2 * 1024 * 1024
FIRST_PORT = 20000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Children:
    pids: list[int]
    release: int  # closing this pipe end lets every child exit


def _child(listeners: int, ready: int, release: int) -> None:
    """In a forked child: maybe a namespace with listeners; then wait for EOF."""
    held = []
    if listeners:
        if _libc.unshare(CLONE_NEWNET) != 0:
            os._exit(1)
        for offset in range(listeners):
            sock = socket.socket()
            sock.bind(("0.0.0.0", FIRST_PORT + offset))
            sock.listen()
            held.append(sock)
    os.write(ready, b".")
    os.read(release, 1)  # returns at EOF: the benchmark closed its end


@contextmanager
def children(with_namespaces: int, sleepers: int, listeners: int) -> Iterator[Children]:
    ready_read, ready_write = os.pipe()
    release_read, release_write = os.pipe()
    pids: list[int] = []
    try:
        for number in range(with_namespaces + sleepers):
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                try:
                    os.close(release_write)
                    _child(listeners if number < with_namespaces else 0, ready_write, release_read)
                finally:
                    os._exit(0)
            pids.append(pid)
        waiting = len(pids)
        while waiting:
            got = os.read(ready_read, waiting)
            if not got:
                raise RuntimeError("a benchmark child died before it was ready")
            waiting -= len(got)
        yield Children(pids, release_write)
    finally:
        os.close(release_write)
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in (ready_read, ready_write, release_read):
            os.close(fd)


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


class NamespacesSection:
    name = "namespaces"
    help = "one look over 100 namespaces, discovery over 1,000 processes, RSS per namespace"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--ns-count", type=int, default=DEFAULTS["ns_count"])
        group.add_argument("--ns-listeners", type=int, default=DEFAULTS["ns_listeners"])
        group.add_argument(
            "--ns-processes",
            type=int,
            default=DEFAULTS["ns_processes"],
            help="processes in /proc during discovery (sleeping children make up the rest)",
        )
        group.add_argument("--ns-budget", type=float, default=DEFAULTS["ns_budget"])
        group.add_argument(
            "--ns-neighbours",
            type=int,
            default=DEFAULTS["ns_neighbours"],
            help="TCP listeners in a sibling namespace for look_busy (0: not measured)",
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        count, listeners = args.ns_count, args.ns_listeners
        # A few more than needed: other processes on the machine come and go.
        sleepers = max(0, args.ns_processes - _process_count() - count + 10)
        print(
            f"  forking {count} namespaces x {listeners} listeners, {sleepers} sleepers", file=out
        )
        with children(count, sleepers, listeners) as spawned:
            processes = _process_count()
            ours = set(spawned.pids)
            found = discover()
            host = host_netns()
            # The sleepers share the benchmark's own namespace: not one of the count.
            mine = {i: ns for i, ns in found.items() if i != host and ours.intersection(ns.pids)}
            gc.collect()
            before = _rss_bytes()
            scanners = NamespaceScanners(host)
            try:
                scanners.sync(mine)
                looked, failed = scanners.scan()
                gc.collect()
                added = _rss_bytes() - before
                agree = (
                    not failed
                    and all(
                        sorted(e.port for e in looked[i])
                        == list(range(FIRST_PORT, FIRST_PORT + listeners))
                        and all(e.netns == i for e in looked[i])
                        for i in mine
                    )
                    and len(looked) == count
                )
                timings, wall = _time_looks(scanners, args)
            finally:
                scanners.close()
        return _report(
            out,
            count=count,
            listeners=listeners,
            processes=processes,
            added=added,
            agree=agree,
            cpu=timings,
            wall=wall,
        )


def _time_looks(
    scanners: NamespaceScanners, args: argparse.Namespace
) -> tuple[dict[str, Timing], dict[str, Timing]]:
    """CPU and wall timings of the look and of discovery; look_busy by CPU too."""
    methods: dict[str, Callable[[], object]] = {"look": scanners.scan, "discover": discover}
    cpu = time_methods(methods, budget_s=args.ns_budget, clock=CLOCKS["cpu"])
    wall = time_methods(methods, budget_s=args.ns_budget / 3)
    if args.ns_neighbours:
        with sibling_netns():
            neighbours = ListenerLoad(args.ns_neighbours, args.ns_neighbours // 10)
        with neighbours:
            busy = time_methods(
                {"look": scanners.scan},
                budget_s=args.ns_budget / 3,
                min_reps=3,
                clock=CLOCKS["cpu"],
            )
        cpu["look_busy"] = busy["look"]
    return cpu, wall


def _report(
    out: TextIO,
    *,
    count: int,
    listeners: int,
    processes: int,
    added: int,
    agree: bool,
    cpu: dict[str, Timing],
    wall: dict[str, Timing],
) -> SectionResult:
    rows = [
        [name, format_ms(cpu[name].median_ms), format_ms(cpu[name].p90_ms),
         format_ms(wall[name].median_ms if name in wall else None), str(cpu[name].reps)]
        for name in cpu
    ]  # fmt: skip
    print(format_table(["what", "cpu ms", "cpu p90", "wall ms", "reps"], rows), file=out)
    print(f"  {processes} processes in /proc; RSS added by {count} namespace sources: "
          f"{added / 1024:.0f} KiB", file=out)  # fmt: skip
    records: list[dict[str, Any]] = [
        {"section": "namespaces", "what": name, "namespaces": count, "listeners": listeners,
         "processes": processes, "cpu_median_ms": cpu[name].median_ms,
         "wall_median_ms": wall[name].median_ms if name in wall else None}
        for name in cpu
    ]  # fmt: skip
    records.append({"section": "namespaces", "what": "rss", "bytes": added, "namespaces": count})
    look, found = cpu["look"].median_ms, cpu["discover"].median_ms
    checks = [
        Check(f"each of {count} namespace scans saw exactly its own {listeners} listeners",
              agree, "agree" if agree else "MISMATCH"),
        Check(f"one look over {count} namespaces <= {TARGET_LOOK_MS:g} ms", look <= TARGET_LOOK_MS,
              f"{format_ms(look)} ms CPU (median)"),
        Check(f"discovery over {processes} processes <= {TARGET_DISCOVER_MS:g} ms",
              found <= TARGET_DISCOVER_MS, f"{format_ms(found)} ms CPU (median)"),
        Check(f"RSS added by {count} namespaces <= 2 MB", added <= TARGET_RSS_BYTES,
              f"{added / 1024:.0f} KiB"),
    ]  # fmt: skip
    return SectionResult(records, checks)


SECTION = NamespacesSection()
