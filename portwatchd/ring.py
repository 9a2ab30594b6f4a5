"""The bounded history of events, newest kept, queryable by seq, time and kind.

Pure: the ring never reads a clock; `since` is compared against the time
each event already carries.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

from portwatchd.model import Event


def parse_time(value: str | datetime) -> datetime:
    """An RFC 3339 string or a datetime as an aware datetime; naive means UTC.

    Raises ValueError naming the value when it is not a timestamp.
    """
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"not an RFC 3339 timestamp: {value!r} (like 2026-11-25T14:00:00Z)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


class _SeqView:
    """The ring's sequence numbers as a sequence, for bisect, without copying."""

    def __init__(self, events: deque[Event]) -> None:
        self._events = events

    def __len__(self) -> int:
        return len(self._events)

    def __getitem__(self, index: int) -> int:
        return self._events[index].seq


class EventRing:
    """The newest `capacity` events, oldest first, with strictly rising seq."""

    def __init__(self, capacity: int, events: Iterable[Event] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        self._events: deque[Event] = deque(maxlen=capacity)
        # Survives the oldest events being dropped, so that last_seq stays
        # right for an empty ring after resize too.
        self._last_seq = 0
        self.extend(events)

    @property
    def capacity(self) -> int:
        capacity = self._events.maxlen
        assert capacity is not None
        return capacity

    @property
    def last_seq(self) -> int:
        """The seq of the newest event ever appended, 0 when none was."""
        return self._last_seq

    @property
    def oldest_seq(self) -> int | None:
        """The seq of the oldest event still held, None when empty."""
        return self._events[0].seq if self._events else None

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: Event) -> None:
        """Add the newest event; drops the oldest when full.

        Raises ValueError when `event.seq` does not follow the last one:
        the after_seq queries rely on the order.
        """
        if event.seq <= self._last_seq:
            raise ValueError(f"event seq {event.seq} does not follow last seq {self._last_seq}")
        self._events.append(event)
        self._last_seq = event.seq

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping the newest events that fit."""
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        self._events = deque(self._events, maxlen=capacity)

    def events(self) -> list[Event]:
        """Every event held, oldest first."""
        return list(self._events)

    def _tail_from(self, start: int) -> Iterable[Event]:
        """The events from index `start` on, without walking a deque by index.

        A follower usually asks for the last few events: take those from the
        right end, so the cost is what is returned, not the ring's size.
        """
        count = len(self._events) - start
        if count <= 0:
            return []
        if count <= start:
            tail = list(itertools.islice(reversed(self._events), count))
            tail.reverse()
            return tail
        return itertools.islice(self._events, start, None)

    def query(
        self,
        *,
        after_seq: int | None = None,
        since: str | datetime | None = None,
        limit: int | None = None,
        type: str | None = None,  # shadows the builtin: it is the protocol's field name
        proto: str | None = None,
        port: int | None = None,
    ) -> list[Event]:
        """The events matching every given filter, oldest first.

        - `after_seq`: only events with a greater seq (a client resuming
          after the last event it saw);
        - `since`: only events whose time is at or after this moment (an
          RFC 3339 string or a datetime; naive means UTC); ValueError when
          it is not a timestamp;
        - `type`, `proto`, `port`: exact matches;
        - `limit`: at most this many. With `after_seq` they are the OLDEST
          matches after it, so that a client paging forward misses nothing;
          without it they are the NEWEST matches ("the last 10 events").
          Either way the result is oldest first.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        moment = parse_time(since) if since is not None else None
        if limit == 0:
            return []
        start = 0
        if after_seq is not None:
            start = bisect.bisect_right(_SeqView(self._events), after_seq)
        matches: list[Event] = []
        for event in self._tail_from(start):
            if type is not None and event.type != type:
                continue
            if proto is not None and event.endpoint.proto != proto:
                continue
            if port is not None and event.endpoint.port != port:
                continue
            if moment is not None and parse_time(event.time) < moment:
                continue
            matches.append(event)
            if limit is not None and after_seq is not None and len(matches) >= limit:
                break
        if limit is not None and after_seq is None:
            matches = matches[-limit:]
        return matches
