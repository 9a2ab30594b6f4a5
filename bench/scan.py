"""The scan benchmark: what one scan costs, by method, as listeners and connections grow.

For each grid point (N listening TCP sockets plus N/10 bound UDP sockets,
M established loopback connections) it times one scan by each method:

    netlink  portwatchd's NetlinkScanner.scan()
    floor    NetlinkScanner.receive_raw(): the same four dumps, received, not decoded
    proc     portwatchd's ProcScanner.scan() (/proc/net/{tcp,tcp6,udp,udp6})
    ss       the original method: `ss -lntu` in a subprocess, output parsed
    netlink_cold  a new NetlinkScanner per scan: the first scan of a daemon, with
             nothing carried over from earlier scans (no target; for reading
             `netlink`, which measures the steady state of repeated scans)
    netlink_m0  (points with M > 0) netlink in a sibling namespace with the
             same N listeners and no connections, timed side by side

and how long OwnerResolver.resolve_new() takes to find the owner of a
listener opened by a brand-new process while the load's processes (holding
some 2M descriptors) are alive ("owner"). It also checks that every method
saw exactly the listeners the load opened, so the timings compare equal work.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, TextIO

from bench.load import ConnectionLoad, ListenerLoad, NewListener
from bench.netns import sibling_netns
from bench.scan_targets import IDLE_METHOD, check_scan_targets
from bench.section import Check, SectionResult, format_ms, format_ratio, format_table
from bench.ss import ss_scan
from bench.timing import CLOCKS, Timing, cpu_clock_ns, paired_ratio, time_call_ms, time_methods
from portwatchd.model import Endpoint
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.sources.procnet import ProcScanner

DEFAULT_LISTENERS = (10, 1000, 10_000)
DEFAULT_CONNECTIONS = (0, 10_000, 50_000)
SCAN_METHODS = ("netlink", "floor", "proc", "ss", "netlink_cold")
# netlink in a sibling namespace holding the same N listeners but no
# connections, timed interleaved with the methods above at points with M > 0.
NETLINK_IDLE = IDLE_METHOD
OWNER_METHOD = "owner"
# Rounds at least, whatever the budget: a slow method (proc at M=50,000 takes
# half a second) makes one call a round, and the paired ratios the targets
# judge are medians over the rounds.
MIN_ROUNDS = 9
CLOCK_DESCRIPTIONS = {
    "wall": "wall clock",
    "cpu": "CPU time of the benchmark thread and its children",
}


@dataclass(frozen=True)
class Point:
    n: int  # listening TCP sockets; N // 10 bound UDP sockets come with them
    m: int  # established loopback connections

    @property
    def udp(self) -> int:
        return self.n // 10


def parse_points(text: str) -> list[Point]:
    """Grid points from "N:M,N:M".

    >>> parse_points("10:0, 10:50000")
    [Point(n=10, m=0), Point(n=10, m=50000)]
    """
    points = []
    for item in text.split(","):
        n_text, sep, m_text = item.strip().partition(":")
        whole = sep and all(t.isascii() and t.isdigit() for t in (n_text, m_text))
        if not whole:
            raise argparse.ArgumentTypeError(
                f"bad point {item.strip()!r}: expected N:M with whole numbers, e.g. 10:50000"
            )
        points.append(Point(int(n_text), int(m_text)))
    return points


def default_points() -> list[Point]:
    return [Point(n, m) for n in DEFAULT_LISTENERS for m in DEFAULT_CONNECTIONS]


@dataclass
class PointResult:
    point: Point
    timings: dict[str, Timing]
    seen: dict[str, Counter[str]]  # method -> multiset of endpoint keys it returned
    owner_misses: list[str] = field(default_factory=list)


def _keys(endpoints: list[Endpoint]) -> Counter[str]:
    return Counter(endpoint.key for endpoint in endpoints)


def _scan_with_a_new_scanner() -> list[Endpoint]:
    with NetlinkScanner() as scanner:
        return scanner.scan()


def _time_owner(reps: int, clock: Callable[[], int]) -> tuple[Timing, list[str]]:
    """resolve_new() for the listener of a process started after the resolver's last look.

    The resolver is created and primed (one resolve_new call) while the load
    is up, so the load's processes are old to it, as they are to a daemon
    that has been running for a while; each repetition then starts a new
    process that listens, and times the call that must find it.
    """
    resolver = OwnerResolver(proc_root="/proc")
    with NetlinkScanner() as scanner:
        resolver.resolve_new({endpoint.inode for endpoint in scanner.scan()})
    samples: list[float] = []
    misses: list[str] = []
    for _ in range(reps):
        with NewListener() as newcomer:
            owners, elapsed_ms = time_call_ms(lambda: resolver.resolve_new({newcomer.inode}), clock)
            samples.append(elapsed_ms)
        found = owners.get(newcomer.inode)
        if found is None or found.pid != newcomer.pid:
            got = "nothing" if found is None else found.describe()
            misses.append(f"socket {newcomer.inode} of pid {newcomer.pid}: got {got}")
    return Timing(tuple(samples)), misses


def measure_point(
    point: Point, budget_s: float, owner_reps: int, clock: Callable[[], int]
) -> PointResult:
    """Time every method at one point; the connection load must already be up."""
    with ExitStack() as stack:
        stack.enter_context(ListenerLoad(tcp=point.n, udp=point.udp))
        netlink = stack.enter_context(NetlinkScanner())
        procfs = ProcScanner(root="/proc")
        seen = {
            "netlink": _keys(netlink.scan()),
            "proc": _keys(procfs.scan()),
            "ss": _keys(ss_scan()),
        }
        # The order of a round: each method that a target compares with
        # netlink runs right before or after it, so a round's ratio compares
        # calls made within a few tens of milliseconds of each other.
        methods: dict[str, Callable[[], object]] = {
            "floor": netlink.receive_raw,
            "netlink": netlink.scan,
        }
        if point.m:
            # The same N listeners without the connections, next door: the
            # effect of M on netlink is then measured within the same minute,
            # not against an M=0 point run minutes earlier on a machine whose
            # other load has changed since.
            with sibling_netns():
                stack.enter_context(ListenerLoad(tcp=point.n, udp=point.udp))
                idle_netlink = stack.enter_context(NetlinkScanner())
            seen[NETLINK_IDLE] = _keys(idle_netlink.scan())
            methods[NETLINK_IDLE] = idle_netlink.scan
        methods |= {
            "ss": ss_scan,
            "proc": procfs.scan,
            "netlink_cold": _scan_with_a_new_scanner,
        }
        gc.collect()
        timings = time_methods(methods, budget_s=budget_s, min_reps=MIN_ROUNDS, clock=clock)
        owner, misses = _time_owner(owner_reps, clock)
    timings[OWNER_METHOD] = owner
    return PointResult(point, timings, seen, misses)


def run_grid(
    points: list[Point],
    budget_s: float,
    owner_reps: int,
    progress: TextIO,
    clock: Callable[[], int] = cpu_clock_ns,
) -> list[PointResult]:
    """Measure the points, building each connection load once for all N that share it."""
    results = []
    ordered = sorted(set(points), key=lambda p: (p.m, p.n))
    for m, group in groupby(ordered, key=lambda p: p.m):
        print(f"  opening {m} loopback connections ...", file=progress, flush=True)
        with ConnectionLoad(m):
            for point in group:
                print(
                    f"  N={point.n} (+{point.udp} UDP), M={m}: timing ...",
                    file=progress,
                    flush=True,
                )
                results.append(measure_point(point, budget_s, owner_reps, clock))
        print(f"  closing {m} connections ...", file=progress, flush=True)
    return results


def _agreement_check(results: list[PointResult]) -> Check:
    problems = []
    for result in results:
        expected = result.point.n + result.point.udp
        reference = result.seen["netlink"]
        for method, keys in result.seen.items():
            total = sum(keys.values())
            if total != expected:
                problems.append(f"{method} saw {total} at N={result.point.n}, M={result.point.m}")
            # The idle namespace's listeners have other port numbers.
            elif method != NETLINK_IDLE and keys != reference:
                problems.append(
                    f"{method} and netlink differ at N={result.point.n}, M={result.point.m}"
                )
    return Check(
        "every method saw exactly the load's listeners (N TCP + N/10 UDP)",
        not problems,
        "; ".join(problems) or f"{len(results)} point(s) agree",
    )


def _owner_check(results: list[PointResult]) -> Check:
    misses = [miss for result in results for miss in result.owner_misses]
    reps = sum(result.timings[OWNER_METHOD].reps for result in results)
    return Check(
        "resolve_new found the new process as the owner of its listener",
        not misses,
        "; ".join(misses) or f"{reps} of {reps} new listeners",
    )


def records_of(results: list[PointResult], clock_name: str) -> list[dict[str, Any]]:
    """One JSON object per (method, N, M)."""
    return [
        {
            "section": "scan",
            "clock": clock_name,
            "method": method,
            "n": result.point.n,
            "m": result.point.m,
            "median_ms": round(timing.median_ms, 4),
            "p90_ms": round(timing.p90_ms, 4),
            "reps": timing.reps,
        }
        for result in results
        for method, timing in result.timings.items()
    ]


def _ratio(timings: dict[str, Timing], top: str, bottom: str) -> float | None:
    """The ratio as the targets judge it: round by round (bench.timing.paired_ratio)."""
    if top not in timings or bottom not in timings:
        return None
    return paired_ratio(timings[top], timings[bottom])


def report(results: list[PointResult], clock_name: str) -> str:
    """The medians (p90 below), and the ratios the targets speak of."""
    methods = [*SCAN_METHODS, NETLINK_IDLE, OWNER_METHOD]
    ratios = [
        ("ss", "netlink"),
        ("proc", "netlink"),
        ("netlink", "floor"),
        ("netlink", NETLINK_IDLE),
    ]
    median_rows, p90_rows = [], []
    for result in results:
        t = result.timings
        point = [str(result.point.n), str(result.point.m)]
        median_rows.append(
            [
                *point,
                *(format_ms(t[m].median_ms if m in t else None) for m in methods),
                *(format_ratio(_ratio(t, top, bottom)) for top, bottom in ratios),
            ]
        )
        p90_rows.append(
            [
                *point,
                *(format_ms(t[m].p90_ms if m in t else None) for m in methods),
                *(str(t[m].reps if m in t else "-") for m in methods),
            ]
        )
    medians = format_table(
        [
            *("N", "M"),
            *(f"{m} ms" for m in methods),
            *(f"{top}/{bottom}" for top, bottom in ratios),
        ],
        median_rows,
    )
    p90s = format_table(
        ["N", "M", *(f"{m} p90" for m in methods), *(f"{m} reps" for m in methods)],
        p90_rows,
    )
    return (
        f"Median milliseconds per call ({CLOCK_DESCRIPTIONS[clock_name]}); the ratios\n"
        f"are medians of the ratios within each round, as the targets judge them:\n{medians}\n"
        f"({NETLINK_IDLE}: netlink with the same N listeners and no connections, in a\n"
        " sibling namespace, timed interleaved with the others at points with M > 0)\n\n"
        f"p90 and repetitions:\n{p90s}\n"
    )


class ScanSection:
    name = "scan"
    help = "cost of one scan (netlink, floor, proc, ss) and of finding a new owner"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--points",
            type=parse_points,
            default=None,
            metavar="N:M,...",
            help="grid points to run (default: N in 10,1000,10000 x M in 0,10000,50000)",
        )
        group.add_argument(
            "--budget",
            type=float,
            default=2.0,
            metavar="SECONDS",
            help="time spent timing the scan methods at each point (default: %(default)s)",
        )
        group.add_argument(
            "--clock",
            choices=sorted(CLOCKS),
            default="cpu",
            help="cpu: CPU time of the benchmark thread plus its children (ss): what a "
            "call costs, whoever else runs; wall: elapsed time, which also counts the "
            "waits for a core of a shared machine (default: %(default)s)",
        )
        group.add_argument(
            "--owner-reps",
            type=int,
            default=7,
            metavar="COUNT",
            help="new listening processes per point for the owner timing (default: %(default)s)",
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        points = args.points or default_points()
        clock = CLOCKS[args.clock]
        results = run_grid(points, args.budget, args.owner_reps, sys.stderr, clock)
        out.write(report(results, args.clock))
        timings = {
            (method, r.point.n, r.point.m): timing
            for r in results
            for method, timing in r.timings.items()
        }
        checks = [
            _agreement_check(results),
            _owner_check(results),
            *check_scan_targets(timings),
        ]
        return SectionResult(records_of(results, args.clock), checks)


SECTION = ScanSection()
