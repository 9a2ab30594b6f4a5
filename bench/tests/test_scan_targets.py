"""Which targets apply to which points, and where each one's line is drawn."""

from __future__ import annotations

from bench.scan_targets import check_scan_targets
from bench.timing import Timing


def _by_target(timings: dict[tuple[str, int, int], float | Timing]) -> dict[str, bool]:
    """Target -> passed; a number stands for a method that took that long in every round."""
    as_timings = {
        key: value if isinstance(value, Timing) else Timing((value,) * 3, rounds=(0, 1, 2))
        for key, value in timings.items()
    }
    return {check.target: check.passed for check in check_scan_targets(as_timings)}


def test_ss_speedups_at_idle_and_under_connections() -> None:
    checks = _by_target(
        {
            ("netlink", 10, 0): 0.1,
            ("ss", 10, 0): 3.0,  # exactly 30x: passes
            ("netlink", 10, 50_000): 0.1,
            ("ss", 10, 50_000): 19.9,  # 199x: fails
        }
    )
    assert checks["netlink >= 30x cheaper than ss at N=10, M=0"] is True
    assert checks["netlink >= 200x cheaper than ss at N=10, M=50000"] is False


def test_connection_flatness_uses_the_side_by_side_idle_netlink() -> None:
    checks = _by_target(
        {
            ("netlink", 1000, 50_000): 1.31,
            ("netlink_m0", 1000, 50_000): 1.0,
            ("netlink", 10_000, 0): 5.0,  # an M=0 point far off does not decide
            ("netlink", 10_000, 50_000): 12.0,
            ("netlink_m0", 10_000, 50_000): 10.0,
        }
    )
    assert checks == {
        "netlink at M=50000 within 1.3x of M=0, N=1000": False,
        "netlink at M=50000 within 1.3x of M=0, N=10000": True,
    }


def test_floor_ratio_applies_only_up_to_n_1000() -> None:
    checks = _by_target(
        {
            ("netlink", 1000, 0): 1.0,
            ("floor", 1000, 0): 0.5,
            ("netlink", 1000, 50_000): 1.3,
            ("floor", 1000, 50_000): 0.6,
            ("netlink", 10_000, 0): 10.0,
            ("floor", 10_000, 0): 1.0,  # 10x, but N > 1000: no target
        }
    )
    assert checks == {
        "netlink within 2x of the floor, N=1000, M=0": True,
        "netlink within 2x of the floor, N=1000, M=50000": False,
    }


def test_owner_target_applies_only_at_50000_connections() -> None:
    checks = _by_target({("owner", 10, 0): 9.0, ("owner", 10, 50_000): 4.9})
    assert checks == {"owner of a new listener found in <= 5 ms, N=10, M=50000": True}


def test_a_ratio_is_judged_round_by_round() -> None:
    # The machine slowed both methods fivefold in rounds 1 and 2; netlink
    # stayed 30x cheaper in every round, though the medians say 18x.
    netlink = Timing((0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.1), rounds=(0, 0, 1, 1, 2, 2, 3))
    ss = Timing((3.0, 15.0, 15.0, 3.0), rounds=(0, 1, 2, 3))
    assert ss.median_ms / netlink.median_ms < 30
    checks = _by_target({("netlink", 10, 0): netlink, ("ss", 10, 0): ss})
    assert checks == {"netlink >= 30x cheaper than ss at N=10, M=0": True}


def test_a_burst_in_one_round_does_not_decide_a_ratio() -> None:
    # netlink is 1.5x its idle twin in one round out of five, 1.0x in the rest.
    idle = Timing((1.0,) * 5, rounds=(0, 1, 2, 3, 4))
    heavy = Timing((1.0, 1.5, 1.0, 1.0, 1.0), rounds=(0, 1, 2, 3, 4))
    checks = _by_target({("netlink", 10, 50_000): heavy, ("netlink_m0", 10, 50_000): idle})
    assert checks == {"netlink at M=50000 within 1.3x of M=0, N=10": True}
    # ... but slower in most rounds is slower.
    heavy = Timing((1.5, 1.5, 1.5, 1.0, 1.0), rounds=(0, 1, 2, 3, 4))
    checks = _by_target({("netlink", 10, 50_000): heavy, ("netlink_m0", 10, 50_000): idle})
    assert checks == {"netlink at M=50000 within 1.3x of M=0, N=10": False}


def test_the_owner_target_is_judged_on_the_median_repetition() -> None:
    owner = Timing((1.0, 1.2, 40.0, 1.1, 0.9))  # one repetition met a burst of new processes
    assert _by_target({("owner", 10, 50_000): owner}) == {
        "owner of a new listener found in <= 5 ms, N=10, M=50000": True
    }
    owner = Timing((1.0, 6.0, 6.0, 7.0, 9.0))  # one fast repetition does not hide the rest
    assert _by_target({("owner", 10, 50_000): owner}) == {
        "owner of a new listener found in <= 5 ms, N=10, M=50000": False
    }


def test_no_points_no_targets() -> None:
    assert check_scan_targets({}) == []
