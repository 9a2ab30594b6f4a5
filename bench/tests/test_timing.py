"""time_methods: counts of calls and the order they come in (no timing assertions)."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.timing import Timing, time_methods


def test_every_method_gets_at_least_min_reps_plus_an_untimed_warm_up() -> None:
    calls = {"a": 0, "b": 0}

    def counter(name: str) -> Callable[[], None]:
        def call() -> None:
            calls[name] += 1

        return call

    timings = time_methods({name: counter(name) for name in calls}, budget_s=0, min_reps=7)
    for name, timing in timings.items():
        assert timing.reps >= 7
        assert calls[name] == timing.reps + 1  # the warm-up is not a sample


def test_max_reps_caps_the_samples_even_with_time_left() -> None:
    timings = time_methods({"fast": lambda: None}, budget_s=5, min_reps=1, max_reps=30)
    assert timings["fast"].reps == 30


def test_a_fast_method_is_interleaved_with_a_slow_one_and_repeated_more() -> None:
    order: list[str] = []

    def slow() -> None:
        order.append("slow")
        time.sleep(0.005)

    def fast() -> None:
        order.append("fast")

    timings = time_methods(
        {"slow": slow, "fast": fast}, budget_s=0.2, min_reps=3, max_reps=200, slice_s=0.01
    )
    assert timings["fast"].reps > timings["slow"].reps
    # The fast method's samples are spread over rounds, not all taken first.
    timed = order[2:]  # after one warm-up call each
    first_slow_after_fast = timed.index("slow", timed.index("fast"))
    assert "fast" in timed[first_slow_after_fast:]


def test_median_and_nearest_rank_p90() -> None:
    timing = Timing((5.0, 1.0, 4.0, 2.0, 3.0))
    assert timing.median_ms == 3.0
    assert timing.p90_ms == 5.0
    assert Timing(tuple(float(x) for x in range(100))).p90_ms == 89.0
