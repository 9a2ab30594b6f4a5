"""The follow-up look schedule after execs, driven by a fake clock.

`run` plays the caller: it looks whenever a look is due, and returns the
times it looked; execs arrive at given times.
"""

from __future__ import annotations

import doctest
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd import followups
from portwatchd.followups import DELAYS, LOOK_RATE, FollowUps


def run(schedule: FollowUps, execs: list[tuple[float, int]], until: float) -> list[float]:
    """Look whenever due; feed `execs` (time, count) in order. The look times."""
    pending = sorted(execs)
    looks: list[float] = []
    now = 0.0
    while True:
        due = schedule.next_look_at()
        next_exec = pending[0][0] if pending else None
        candidates = [t for t in (due, next_exec) if t is not None]
        if not candidates or min(candidates) > until:
            return looks
        now = max(now, min(candidates))
        if next_exec is not None and next_exec <= now:
            schedule.exec_seen(now, pending.pop(0)[1])
            continue
        schedule.looked(now)
        looks.append(now)


def test_nothing_to_do_without_execs() -> None:
    schedule = FollowUps()
    assert schedule.next_look_at() is None
    schedule.looked(5.0)
    assert schedule.next_look_at() is None


def test_one_exec_gives_one_look_per_delay() -> None:
    looks = run(FollowUps(), [(10.0, 1)], until=20.0)
    assert looks == pytest.approx([10.0 + d for d in DELAYS])


def test_a_burst_of_execs_is_coalesced() -> None:
    # Ten execs within 5 ms: the looks are not ten times as many.
    burst = [(10.0 + i * 0.0005, 1) for i in range(10)]
    looks = run(FollowUps(), burst, until=20.0)
    assert len(looks) <= 2 * len(DELAYS)
    last_due = 10.0045 + DELAYS[-1]
    assert last_due <= looks[-1] <= last_due + FollowUps().min_gap


def test_a_poll_in_between_satisfies_what_was_due() -> None:
    schedule = FollowUps()
    schedule.exec_seen(10.0)
    schedule.looked(10.2)  # the safety-net poll happened to run
    assert schedule.next_look_at() == pytest.approx(10.25)


def test_looks_keep_the_minimum_gap() -> None:
    schedule = FollowUps(min_gap=0.010)
    schedule.exec_seen(10.0)
    schedule.looked(10.009)  # a poll, just before the first follow-up
    assert schedule.next_look_at() == pytest.approx(10.019)


@given(
    st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 3)), min_size=1, max_size=40
    )
)
def test_every_exec_is_followed_up_to_its_last_delay_with_gaps_kept(
    execs: list[tuple[float, int]],
) -> None:
    # No storm and no budget: per-exec follow-ups only (the budget's own test is below).
    schedule = FollowUps(storm_rate=1e9, look_rate=1e9)
    looks = run(schedule, execs, until=100.0)
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    assert all(gap >= schedule.min_gap - 1e-9 for gap in gaps)
    for when, _count in execs:
        for delay in DELAYS:
            # Some look at or after each due time, at most one gap late.
            assert any(when + delay <= t <= when + delay + schedule.min_gap + 1e-9 for t in looks)


@given(
    st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 3)), min_size=1, max_size=60
    )
)
def test_the_budget_bounds_the_looks_and_every_exec_is_still_followed_to_its_end(
    execs: list[tuple[float, int]],
) -> None:
    schedule = FollowUps(storm_rate=1e9)  # the budget alone
    looks = run(schedule, execs, until=100.0)
    for start in looks:
        in_a_second = [t for t in looks if start <= t < start + 1.0]
        assert len(in_a_second) <= schedule.look_burst + schedule.look_rate
    # Late, perhaps, but each exec's last follow-up has a look at or after it.
    assert looks[-1] >= max(when for when, _ in execs) + DELAYS[-1]
    assert schedule.next_look_at() is None


def test_a_storm_below_the_storm_rate_costs_no_more_than_the_budget() -> None:
    steady = [(10.0 + i / 40, 1) for i in range(200)]  # 40 execs/s for 5 s
    looks = run(FollowUps(), steady, until=15.0)
    in_steady = [t for t in looks if 11.0 <= t < 14.0]
    assert len(in_steady) <= 3 * LOOK_RATE + 1


def test_a_storm_turns_into_a_plain_short_poll_and_back() -> None:
    schedule = FollowUps(storm_rate=50.0, storm_interval=0.05)
    storm = [(10.0 + i / 200, 1) for i in range(400)]  # 200 execs/s for 2 s
    looks = run(schedule, storm, until=11.99)
    assert schedule.storm
    in_storm = [t for t in looks if 10.5 <= t < 11.5]
    assert 18 <= len(in_storm) <= 21  # about one look per 50 ms, not per exec
    # The rate falls (no exec after 12.0): the poll stops, one last follow-up runs.
    after = run(schedule, [], until=20.0)
    assert not schedule.storm
    assert schedule.next_look_at() is None
    assert after[-1] < 13.6


def test_below_the_storm_rate_each_exec_is_followed() -> None:
    schedule = FollowUps(storm_rate=50.0)
    steady = [(10.0 + i / 20, 1) for i in range(40)]  # 20 execs/s
    run(schedule, steady, until=12.0)
    assert not schedule.storm
    assert schedule.exec_rate(12.0) == pytest.approx(20.0, abs=1.0)


def test_delays_must_be_given() -> None:
    with pytest.raises(ValueError, match="delays"):
        FollowUps(())


def test_the_example_in_the_module_docstring() -> None:
    failures, tried = doctest.testmod(followups)
    assert tried > 0 and failures == 0
