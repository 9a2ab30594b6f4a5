"""Time several methods fairly: interleaved rounds, more repetitions for fast ones.

Methods are timed in rounds, each round giving every method a slice of time
(at least one call), so that a burst of load from elsewhere on the machine
hits all methods alike instead of skewing the one that happened to run
then. A fast method fits many calls into its slice, a slow one a single
call: fast methods get more repetitions, and the total time stays bounded.
"""

from __future__ import annotations

import itertools
import math
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one method (by one clock), in milliseconds.

    `rounds` gives, for each sample, the round of `time_methods` it was
    taken in (empty when the samples were not taken in rounds).
    """

    samples_ms: tuple[float, ...]
    rounds: tuple[int, ...] = ()

    @property
    def reps(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        """The 90th percentile, nearest rank: 90% of the calls took at most this.

        >>> Timing(tuple(float(x) for x in range(1, 11))).p90_ms
        9.0
        >>> Timing((5.0,)).p90_ms
        5.0
        """
        ordered = sorted(self.samples_ms)
        return ordered[math.ceil(0.9 * len(ordered)) - 1]


def wall_clock_ns() -> int:
    return time.perf_counter_ns()


def cpu_clock_ns() -> int:
    """CPU time of this thread plus that of every child reaped so far.

    The kernel runs a sock_diag dump or a /proc read inside the calling
    thread's system call, so thread CPU time includes it; `ss` runs in a
    child, whose user and system time are added once it is waited for. On a
    machine shared with other work this measures the cost of a scan rather
    than the time spent waiting for a core.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.thread_time_ns() + round((children.ru_utime + children.ru_stime) * 1e9)


CLOCKS: dict[str, Callable[[], int]] = {"wall": wall_clock_ns, "cpu": cpu_clock_ns}


def time_call_ms(
    method: Callable[[], T], clock: Callable[[], int] = wall_clock_ns
) -> tuple[T, float]:
    """Call `method` once: its result and the milliseconds it took by `clock`."""
    start = clock()
    result = method()
    return result, (clock() - start) / 1e6


def time_methods(
    methods: Mapping[str, Callable[[], object]],
    *,
    budget_s: float,
    min_reps: int = 5,
    max_reps: int = 500,
    slice_s: float = 0.02,
    clock: Callable[[], int] = wall_clock_ns,
) -> dict[str, Timing]:
    """Time each method until `budget_s` is spent and each has `min_reps` calls.

    `clock` is `wall_clock_ns` (elapsed time) or `cpu_clock_ns` (CPU
    spent). Every method is called once untimed first (caches, lazy imports). Each
    round then gives each method `slice_s` of calls (at least one, at most
    a fortieth of `max_reps`); rounds stop when the budget is spent and every
    method has `min_reps` samples, or when every method has `max_reps`.
    """
    for method in methods.values():
        method()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    rounds: dict[str, list[int]] = {name: [] for name in methods}
    # A fast method could otherwise reach max_reps in its first slice and
    # sit out every later round: spread its calls over forty rounds at least,
    # which gives `paired_ratio` as many rounds to take the median of.
    calls_per_slice = max(1, max_reps // 40)
    deadline = time.monotonic() + budget_s
    for round_number in itertools.count():
        for name, method in methods.items():
            taken = samples[name]
            slice_end = time.monotonic() + slice_s
            stop_at = min(max_reps, len(taken) + calls_per_slice)
            while len(taken) < stop_at:
                taken.append(time_call_ms(method, clock)[1])
                rounds[name].append(round_number)
                if time.monotonic() >= slice_end:
                    break
        counts = [len(taken) for taken in samples.values()]
        if all(count >= max_reps for count in counts):
            break
        if time.monotonic() >= deadline and all(count >= min_reps for count in counts):
            break
    return {name: Timing(tuple(taken), tuple(rounds[name])) for name, taken in samples.items()}


def paired_ratio(top: Timing, bottom: Timing) -> float:
    """How many times `top` costs `bottom`, judged round by round.

    In each round both methods were timed (bench/timing.py gives them
    adjacent slices), the ratio of their medians in that round; then the
    median of those ratios. Whatever the machine did during a round (other
    work on the cores, a move to another core, a change of clock speed) hits
    both sides of that round's ratio alike, and a round in which it hit
    only one side is outvoted by the others. Without rounds in common, the
    ratio of the medians.

    Both methods were slowed down ninefold in round 1, and the slow one
    alone in round 2; the ratio of the medians says 270x, the rounds 30x:

    >>> fast = Timing((1.0, 1.0, 9.0, 9.0, 1.0), rounds=(0, 0, 1, 1, 2))
    >>> slow = Timing((30.0, 270.0, 900.0), rounds=(0, 1, 2))
    >>> paired_ratio(slow, fast), slow.median_ms / fast.median_ms
    (30.0, 270.0)
    """
    top_rounds = _by_round(top)
    bottom_rounds = _by_round(bottom)
    common = sorted(top_rounds.keys() & bottom_rounds.keys())
    if not common:
        return top.median_ms / bottom.median_ms
    return statistics.median(
        statistics.median(top_rounds[r]) / statistics.median(bottom_rounds[r]) for r in common
    )


def _by_round(timing: Timing) -> dict[int, list[float]]:
    grouped: dict[int, list[float]] = {}
    for round_number, sample in zip(timing.rounds, timing.samples_ms, strict=True):
        grouped.setdefault(round_number, []).append(sample)
    return grouped
