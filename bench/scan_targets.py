"""The scan benchmark's targets, checked against the medians of one run.

Every ratio compares numbers measured in the same run on the same machine.
A target applies only to the grid points that were run; one with no point
to apply to is not reported at all.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.section import Check

# (method, N, M) -> median milliseconds
Medians = Mapping[tuple[str, int, int], float]

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


def _ss_speedup(medians: Medians, m: int, minimum: float) -> list[Check]:
    netlink = medians.get(("netlink", FEW_LISTENERS, m))
    ss = medians.get(("ss", FEW_LISTENERS, m))
    if netlink is None or ss is None:
        return []
    speedup = ss / netlink
    return [
        Check(
            f"netlink >= {minimum:g}x cheaper than ss at N={FEW_LISTENERS}, M={m}",
            speedup >= minimum,
            f"{speedup:.1f}x (ss {ss:.3f} ms, netlink {netlink:.3f} ms)",
        )
    ]


def _flat_in_connections(medians: Medians) -> list[Check]:
    """netlink with M connections against netlink with none, measured side by side.

    The M=0 reference is `netlink_m0`: the same N listeners in a sibling
    namespace without connections, timed interleaved with the M point. The
    M=0 grid point, run minutes earlier, is shown alongside when it exists.
    """
    checks = []
    for method, n, m in sorted(medians):
        if method != "netlink" or m != HEAVY_CONNECTIONS:
            continue
        idle = medians.get((IDLE_METHOD, n, m))
        if idle is None:
            continue
        heavy = medians[(method, n, m)]
        slowdown = heavy / idle
        detail = f"{slowdown:.2f}x ({heavy:.3f} ms vs {idle:.3f} ms side by side"
        earlier = medians.get(("netlink", n, 0))
        if earlier is not None:
            detail += f"; {heavy / earlier:.2f}x against the M=0 point"
        checks.append(
            Check(
                f"netlink at M={m} within {CONNECTION_SLOWDOWN_MAX:g}x of M=0, N={n}",
                slowdown <= CONNECTION_SLOWDOWN_MAX,
                detail + ")",
            )
        )
    return checks


def _near_floor(medians: Medians) -> list[Check]:
    checks = []
    for method, n, m in sorted(medians):
        if method != "netlink" or n > FLOOR_RATIO_MAX_N:
            continue
        floor = medians.get(("floor", n, m))
        if floor is None:
            continue
        netlink = medians[(method, n, m)]
        ratio = netlink / floor
        checks.append(
            Check(
                f"netlink within {FLOOR_RATIO_MAX:g}x of the floor, N={n}, M={m}",
                ratio <= FLOOR_RATIO_MAX,
                f"{ratio:.2f}x ({netlink:.3f} ms vs floor {floor:.3f} ms)",
            )
        )
    return checks


def _owner_fast(medians: Medians) -> list[Check]:
    checks = []
    for method, n, m in sorted(medians):
        if method != "owner" or m != HEAVY_CONNECTIONS:
            continue
        owner = medians[(method, n, m)]
        checks.append(
            Check(
                f"owner of a new listener found in <= {OWNER_MAX_MS:g} ms, N={n}, M={m}",
                owner <= OWNER_MAX_MS,
                f"median {owner:.3f} ms",
            )
        )
    return checks


def check_scan_targets(medians: Medians) -> list[Check]:
    """PASS/FAIL for every target that applies to the measured points."""
    return [
        *_ss_speedup(medians, 0, SS_SPEEDUP_IDLE),
        *_ss_speedup(medians, HEAVY_CONNECTIONS, SS_SPEEDUP_HEAVY),
        *_flat_in_connections(medians),
        *_near_floor(medians),
        *_owner_fast(medians),
    ]
