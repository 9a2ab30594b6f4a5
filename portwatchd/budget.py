"""A token bucket: at most `rate` things a second, `burst` at once. Pure:
the caller passes the time (any monotonic clock, in seconds).

>>> bucket = TokenBucket(rate=10.0, burst=3.0)
>>> bucket.take(5, now=0.0)      # the burst
3
>>> bucket.take(5, now=0.25)     # 2.5 tokens came back: whole ones only
2
>>> bucket.spend(now=0.25)       # one more, in debt
>>> round(bucket.next_token_at(), 3)
0.4
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a rate > 0 and room for one token")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None  # when _tokens was last brought up to date

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now

    def take(self, count: int, now: float) -> int:
        """Take up to `count` whole tokens; how many were taken."""
        self._refill(now)
        taken = max(0, min(count, int(self._tokens)))
        self._tokens -= taken
        return taken

    def spend(self, now: float) -> None:
        """Take one token whether or not one is left: what was done anyway
        (a poll) counts against what may be done later."""
        self._refill(now)
        self._tokens -= 1.0

    def next_token_at(self) -> float:
        """When a whole token is there again (the past when one is now)."""
        if self._at is None:
            return float("-inf")
        return self._at + max(0.0, 1.0 - self._tokens) / self.rate
