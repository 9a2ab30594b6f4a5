"""When to look again after new processes started: the follow-up schedule of exec events.

A server listens some milliseconds after its exec (a Python server took
20 to 40 ms), so one look at the exec is too early and a look per exec is
too many. `FollowUps` answers "when is the next look due?" from the execs
seen and the looks done. Pure: the caller passes the time (any monotonic
clock in seconds) and does the looking.

- Each exec asks for looks at fixed delays after it (DELAYS): each about
  1.5 times the one before, so a listener waits at most about half the
  time its program took to listen.
- Requests coalesce: one look satisfies every request due by then, and
  two looks are never closer than `min_gap`.
- A budget bounds the looks whatever the execs: `look_rate` a second,
  `look_burst` at once (a token bucket, polls included). A host that
  execs a few programs a second, below the storm, then costs no more
  than one in a storm.
- Storm: above `storm_rate` execs per second (over the last `window`
  seconds) per-exec follow-ups cost more than they find; the schedule
  then asks for a plain look every `storm_interval` until the rate is
  back under half the threshold (the half keeps it from flapping), and
  then follows up once more as if an exec came at that moment.

>>> f = FollowUps()
>>> f.next_look_at() is None
True
>>> f.exec_seen(100.0)
>>> round(f.next_look_at(), 3)
100.01
>>> f.looked(100.010)
>>> round(f.next_look_at(), 3)
100.02
>>> f.exec_seen(100.015)          # asks for 100.025, 100.035, ...
>>> f.looked(100.020)
>>> f.looked(100.024)             # a poll
>>> round(f.next_look_at(), 3)    # 100.025 is due, but not before the gap
100.034
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Final

from portwatchd.budget import TokenBucket

DELAYS: Final = (0.010, 0.020, 0.030, 0.045, 0.065, 0.090, 0.130, 0.250, 0.500)
MIN_GAP_S: Final = 0.010
LOOK_RATE: Final = 20.0  # looks per second, sustained
LOOK_BURST: Final = 12.0  # one exec's follow-ups, and some
STORM_RATE: Final = 50.0  # execs per second
STORM_WINDOW_S: Final = 1.0
STORM_INTERVAL_S: Final = 0.050


class FollowUps:
    """The look schedule after exec events; see the module's docstring."""

    def __init__(
        self,
        delays: tuple[float, ...] = DELAYS,
        *,
        min_gap: float = MIN_GAP_S,
        storm_rate: float = STORM_RATE,
        window: float = STORM_WINDOW_S,
        storm_interval: float = STORM_INTERVAL_S,
        look_rate: float = LOOK_RATE,
        look_burst: float = LOOK_BURST,
    ) -> None:
        if not delays or min(delays) < 0:
            raise ValueError("follow-up delays must be a non-empty list of times >= 0")
        self.delays = tuple(sorted(delays))
        self.min_gap = min_gap
        self.storm_rate = storm_rate
        self.window = window
        self.storm_interval = storm_interval
        self.look_rate = look_rate
        self.look_burst = look_burst
        self._budget = TokenBucket(look_rate, look_burst)
        self.storm = False
        self._due: list[float] = []  # a heap of times a look was asked for
        self._execs: deque[tuple[float, int]] = deque()  # (when, how many), within the window
        self._in_window = 0
        self._last_look: float | None = None
        self._storm_since = 0.0

    def exec_rate(self, now: float) -> float:
        """Execs per second over the last `window` seconds."""
        self._forget_before(now - self.window)
        return self._in_window / self.window

    def exec_seen(self, now: float, count: int = 1) -> None:
        """`count` execs were seen at `now`."""
        if count <= 0:
            return
        self._execs.append((now, count))
        self._in_window += count
        self._update_storm(now)
        if self.storm:
            return
        for delay in self.delays:
            heapq.heappush(self._due, now + delay)

    def read_pause(self) -> float:
        """How long execs may wait unread without moving a look: the gap
        between two looks (the storm's interval in a storm)."""
        return self.storm_interval if self.storm else self.min_gap

    def next_look_at(self) -> float | None:
        """When the next look is due (possibly in the past: look now); None: no look needed."""
        if self.storm:
            if self._last_look is None:
                return self._storm_since
            return max(self._last_look + self.storm_interval, self._storm_since)
        if not self._due:
            return None
        earliest = self._due[0]
        if self._last_look is None:
            return earliest
        return max(earliest, self._last_look + self.min_gap, self._budget.next_token_at())

    def looked(self, now: float) -> None:
        """A full look started at `now`, for whatever reason: it satisfies what was due by then."""
        self._budget.spend(now)
        self._last_look = now
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
        self._update_storm(now)

    def _update_storm(self, now: float) -> None:
        rate = self.exec_rate(now)
        if not self.storm and rate > self.storm_rate:
            self.storm = True
            self._storm_since = now
            self._due.clear()  # the short poll covers them
        elif self.storm and rate <= self.storm_rate / 2:
            self.storm = False
            # A server exec'd just before the rate fell may not listen yet:
            # follow up as if one exec came now.
            for delay in self.delays:
                heapq.heappush(self._due, now + delay)

    def _forget_before(self, horizon: float) -> None:
        while self._execs and self._execs[0][0] <= horizon:
            self._in_window -= self._execs.popleft()[1]
