"""A test double of the event log's read side (docs/PIPELINE.md), in memory.

Follows the contract of log.EventLog's read side exactly, and nothing else:
`last_seq`, `oldest_seq`, `page`, `newest_start`, `losses`, `subscribe`.
The test-side writers (`add`, `record_loss`, `prune`) stand in for the
engine. Until the real EventLog lands, the control handlers are tested
against this; afterwards the same tests can run against EventLog itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from portwatchd.model import Endpoint, Event, Loss, Owner, rfc3339
from portwatchd.protocol import EventQuery

Subscriber = Callable[[Sequence[Event | Loss]], None]


_EPOCH = datetime(2026, 11, 25, 14, 0, 0, tzinfo=UTC)


def make_event(seq: int, *, type: str = "opened", proto: str = "tcp", port: int = 0) -> Event:
    """Event `seq`, at 14:00:00 plus `seq` seconds."""
    port = port or 1000 + seq % 50000
    return Event(
        seq=seq,
        id=f"00000000-0000-4000-8000-{seq:012d}",
        type=type,  # type: ignore[arg-type]
        time=rfc3339(_EPOCH + timedelta(seconds=seq)),
        endpoint=Endpoint(proto=proto, family="ipv4", address="127.0.0.1", port=port, inode=seq),  # type: ignore[arg-type]
        owner=Owner(pid=100 + seq, pids=(100 + seq,), comm="sshd", unit="ssh.service"),
    )


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _matches(event: Event, query: EventQuery) -> bool:
    endpoint = event.endpoint
    if not query.matches_live(event.type, endpoint.proto, endpoint.port):
        return False
    place = event.place
    if not query.matches_place(
        endpoint.netns, place.netns_inode, place.netns_name, place.container
    ):
        return False
    if query.since is None and query.until is None:
        return True
    moment = _moment(event.time)
    if query.since is not None and moment < _moment(query.since):
        return False
    return query.until is None or moment <= _moment(query.until)


class HistoryDouble:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.seqs: list[int] = []  # parallel to events, for bisect
        self.loss_list: list[Loss] = []
        self.last_seq = 0
        self.subscribers: list[Subscriber] = []
        self.pages: list[tuple[int, int]] = []  # (after_seq, limit) of every page() call
        self.fail: Exception | None = None  # raised by the next read

    # --- the read side (the contract) ---------------------------------------

    @property
    def oldest_seq(self) -> int | None:
        return self.seqs[0] if self.seqs else None

    def page(self, query: EventQuery, after_seq: int, limit: int) -> list[Event]:
        self._maybe_fail()
        self.pages.append((after_seq, limit))
        found: list[Event] = []
        for index in range(bisect.bisect_right(self.seqs, after_seq), len(self.events)):
            if len(found) >= limit:
                break
            if _matches(self.events[index], query):
                found.append(self.events[index])
        return found

    def newest_start(self, query: EventQuery, count: int) -> int:
        self._maybe_fail()
        seen, start = 0, 0
        for event in reversed(self.events):
            if seen >= count:
                break
            if _matches(event, query):
                seen += 1
                start = event.seq - 1
        return start

    def losses(self, after_seq: int, upto_seq: int) -> list[Loss]:
        return [x for x in self.loss_list if x.to_seq > after_seq and x.from_seq <= upto_seq]

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    # --- the test's writers -------------------------------------------------

    def add(self, count: int, **kwargs: Any) -> list[Event]:
        start = self.last_seq + 1
        events = [make_event(seq, **kwargs) for seq in range(start, start + count)]
        self.append(events)
        return events

    def append(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self.seqs.extend(event.seq for event in events)
        self.last_seq = events[-1].seq
        self._notify(events)

    def record_loss(self, from_seq: int, to_seq: int, reason: str = "not stored") -> Loss:
        loss = Loss(from_seq, to_seq, "2026-11-25T15:00:00.000000Z", reason)
        self.loss_list.append(loss)
        self.last_seq = max(self.last_seq, to_seq)
        self._notify([loss])
        return loss

    def prune(self, keep: int) -> None:
        """Retention: keep the newest `keep` events."""
        del self.events[:-keep], self.seqs[:-keep]

    def _notify(self, items: Sequence[Event | Loss]) -> None:
        for callback in list(self.subscribers):
            callback(items)

    def _maybe_fail(self) -> None:
        failure, self.fail = self.fail, None
        if failure is not None:
            raise failure
