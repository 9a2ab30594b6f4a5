"""The scan benchmark's targets, and the statistic each one is judged on.

Every ratio compares two methods timed in the same interleaved rounds
(bench/timing.py) of the same run, and is judged round by round
(`paired_ratio`: the median over the rounds of the ratio within each
round). The state of a shared machine (other work on the cores, cache
pressure, a move to another core) changes from second to second but hits
both methods of one round alike, so it cancels out of each round's ratio;
a burst that hit only one side of a round is outvoted by the other rounds.
The scan section times CPU (`--clock cpu`, its default), which leaves out
the time a call spends waiting for a core.

The owner target is an absolute time, judged on the median CPU time of its
repetitions: one slow repetition (another process started on the host, read
by the resolver too) does not decide it.

A target applies only to the grid points that were run; one with no point
to apply to is not reported at all.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.section import Check
from bench.timing import Timing, paired_ratio

# (method, N, M) -> that method's timing at that point
Timings = Mapping[tuple[str, int, int], Timing]

# netlink with the same listeners but no connections, timed side by side (bench.scan)
IDLE_METHOD = "netlink_m0"
FEW_LISTENERS = 10
HEAVY_CONNECTIONS = 50_000
SS_SPEEDUP_IDLE = 30.0  # netlink vs ss at N=10, M=0
SS_SPEEDUP_HEAVY = 200.0  # netlink vs ss at N=10, M=50,000
CONNECTION_SLOWDOWN_MAX = 1.3  # netlink at M=50,000 vs M=0, same N
FLOOR_RATIO_MAX = 2.0  # netlink vs the undecoded dumps
FLOOR_RATIO_MAX_N = 1000  # ... for N up to this
OWNER_MAX_MS = 5.0  # owner of a new listener, at M=50,000


def _rounds(top: Timing, bottom: Timing) -> int:
    """How many rounds the two timings share: the ratios a paired ratio is the median of."""
    return len(set(top.rounds) & set(bottom.rounds))


def _medians(top: Timing, bottom: Timing) -> str:
    return (
        f"median of {_rounds(top, bottom)} rounds; {top.median_ms:.3f} vs {bottom.median_ms:.3f} ms"
    )


def _ss_speedup(timings: Timings, m: int, minimum: float) -> list[Check]:
    netlink = timings.get(("netlink", FEW_LISTENERS, m))
    ss = timings.get(("ss", FEW_LISTENERS, m))
    if netlink is None or ss is None:
        return []
    speedup = paired_ratio(ss, netlink)
    return [
        Check(
            f"netlink >= {minimum:g}x cheaper than ss at N={FEW_LISTENERS}, M={m}",
            speedup >= minimum,
            f"{speedup:.1f}x (ss vs netlink, {_medians(ss, netlink)})",
        )
    ]


def _flat_in_connections(timings: Timings) -> list[Check]:
    """netlink with M connections against netlink with none, measured side by side.

    The M=0 reference is `netlink_m0`: the same N listeners in a sibling
    namespace without connections, timed interleaved with the M point. The
    M=0 grid point, run minutes earlier, is shown alongside when it exists.
    """
    checks = []
    for method, n, m in sorted(timings):
        if method != "netlink" or m != HEAVY_CONNECTIONS:
            continue
        idle = timings.get((IDLE_METHOD, n, m))
        if idle is None:
            continue
        heavy = timings[(method, n, m)]
        slowdown = paired_ratio(heavy, idle)
        detail = f"{slowdown:.2f}x (side by side, {_medians(heavy, idle)}"
        earlier = timings.get(("netlink", n, 0))
        if earlier is not None:
            detail += f"; {heavy.median_ms / earlier.median_ms:.2f}x against the M=0 point"
        checks.append(
            Check(
                f"netlink at M={m} within {CONNECTION_SLOWDOWN_MAX:g}x of M=0, N={n}",
                slowdown <= CONNECTION_SLOWDOWN_MAX,
                detail + ")",
            )
        )
    return checks


def _near_floor(timings: Timings) -> list[Check]:
    checks = []
    for method, n, m in sorted(timings):
        if method != "netlink" or n > FLOOR_RATIO_MAX_N:
            continue
        floor = timings.get(("floor", n, m))
        if floor is None:
            continue
        netlink = timings[(method, n, m)]
        ratio = paired_ratio(netlink, floor)
        checks.append(
            Check(
                f"netlink within {FLOOR_RATIO_MAX:g}x of the floor, N={n}, M={m}",
                ratio <= FLOOR_RATIO_MAX,
                f"{ratio:.2f}x (netlink vs floor, {_medians(netlink, floor)})",
            )
        )
    return checks


def _owner_fast(timings: Timings) -> list[Check]:
    checks = []
    for method, n, m in sorted(timings):
        if method != "owner" or m != HEAVY_CONNECTIONS:
            continue
        owner = timings[(method, n, m)]
        checks.append(
            Check(
                f"owner of a new listener found in <= {OWNER_MAX_MS:g} ms, N={n}, M={m}",
                owner.median_ms <= OWNER_MAX_MS,
                f"median {owner.median_ms:.3f} ms of {owner.reps}",
            )
        )
    return checks


def check_scan_targets(timings: Timings) -> list[Check]:
    """PASS/FAIL for every target that applies to the measured points."""
    return [
        *_ss_speedup(timings, 0, SS_SPEEDUP_IDLE),
        *_ss_speedup(timings, HEAVY_CONNECTIONS, SS_SPEEDUP_HEAVY),
        *_flat_in_connections(timings),
        *_near_floor(timings),
        *_owner_fast(timings),
    ]
