"""What the EventLog and the store behind it hand each other.

Core: plain values and a Protocol, so that `log.py` needs neither SQLite nor
the file system, and `store.py` (the adapter) implements `EventStore`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from portwatchd.model import Endpoint, Event, Loss, Owner, rfc3339

if TYPE_CHECKING:
    from portwatchd.protocol import EventQuery

SocketId = tuple[str, int]  # (endpoint key, inode): one socket in the saved set
_RFC3339_LENGTH = len("2026-11-25T14:20:31.123456Z")


class StoreError(Exception):
    """The store cannot be read or written; the message names the file and the reason."""


def normal_time(value: str) -> str:
    """A timestamp as the store keeps it: rfc3339() form, fixed width, so text order is
    time order. A naive time means UTC. ValueError names a value that is no timestamp.

    >>> normal_time("2026-11-25T15:07:00+01:00")
    '2026-11-25T14:07:00.000000Z'
    """
    if len(value) == _RFC3339_LENGTH and value.endswith("Z") and value[10] == "T":
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not an RFC 3339 timestamp: {value!r} (like 2026-11-25T14:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return rfc3339(moment)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The matching part of an EventQuery, times in store form."""

    type: str | None = None
    proto: str | None = None
    port: int | None = None
    since: str | None = None  # time >= since
    until: str | None = None  # time <= until
    # Where the listener lives: protocol.EventQuery.matches_place says how.
    netns: str | None = None
    container: str | None = None
    host_only: bool | None = None

    @property
    def filters_place(self) -> bool:
        return self.netns is not None or self.container is not None or self.host_only is not None

    @classmethod
    def of(cls, query: EventQuery) -> EventFilter:
        # `until` is newer than some EventQuery versions: read it if it is there.
        since = query.since
        until = getattr(query, "until", None)
        return cls(
            type=query.type,
            proto=query.proto,
            port=query.port,
            since=normal_time(since) if since is not None else None,
            until=normal_time(until) if until is not None else None,
            netns=getattr(query, "netns", None),
            container=getattr(query, "container", None),
            host_only=getattr(query, "host_only", None),
        )

    def matches(self, event: Event) -> bool:
        if self.type is not None and event.type != self.type:
            return False
        if self.proto is not None and event.endpoint.proto != self.proto:
            return False
        if self.port is not None and event.endpoint.port != self.port:
            return False
        if self.filters_place and not self._place_matches(event):
            return False
        if self.since is None and self.until is None:
            return True
        time = normal_time(event.time)
        return (self.since is None or time >= self.since) and (
            self.until is None or time <= self.until
        )

    def _place_matches(self, event: Event) -> bool:
        from portwatchd.protocol import EventQuery

        place = event.place
        query = EventQuery(netns=self.netns, container=self.container, host_only=self.host_only)
        return query.matches_place(
            event.endpoint.netns, place.netns_inode, place.netns_name, place.container
        )


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a store holds at start-up."""

    fresh: bool  # created by this open (new, or the old file was set aside): no history
    last_seq: int  # the newest seq stored or recorded as lost
    reserved_seq: int  # every seq handed out is at most this (the durable reservation)
    top_seq: int  # the highest seq the store knows of in any way
    journaled_seq: int
    last_alive: str | None
    count: int
    oldest_seq: int | None
    sockets: Sequence[tuple[Endpoint, Owner]] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    """One write: everything in it is stored in one transaction, or nothing is."""

    events: Sequence[Event] = ()
    losses: Sequence[Loss] = ()
    # None: the socket is gone. replace_sockets: these are all the sockets there are.
    sockets: Mapping[SocketId, tuple[Endpoint, Owner] | None] = field(default_factory=dict)
    replace_sockets: bool = False
    last_seq: int = 0
    reserved_seq: int = 0
    journaled_seq: int = 0
    last_alive: str | None = None


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted: int
    count: int  # events held after the step
    oldest_seq: int | None
    more: bool  # another step is due


class EventStore(Protocol):
    """The durable side of the EventLog (portwatchd.store.Store). Every method raises
    StoreError, never another error, for a storage failure."""

    def take_warnings(self) -> list[str]:
        """What opening the store did that a person should read (and forget them)."""
        ...

    def load(self) -> StoredState: ...

    def write(self, batch: Batch, *, durable: bool = True) -> None:
        """One transaction; survives a kill -9 at once, a power loss only when
        `durable` (which waits for the disk, for it and every write before)."""
        ...

    def page(self, wanted: EventFilter, after_seq: int, limit: int) -> list[Event]:
        """The first `limit` matches with seq > after_seq, oldest first."""
        ...

    def newest_match(self, wanted: EventFilter, skip: int) -> int | None:
        """The seq of the newest match after skipping `skip` newer ones; None if too few."""
        ...

    def losses(self, after_seq: int, upto_seq: int) -> list[Loss]: ...

    def prune(self, keep: int, before: str | None, max_rows: int, upto_seq: int) -> PruneResult:
        """Delete the oldest events beyond `keep` and those older than `before`,
        never one above `upto_seq` (not yet journaled)."""
        ...

    def move_aside(self, reason: str) -> str:
        """Set the file aside (never deleted) and start empty; the warning to log."""
        ...

    def close(self) -> None: ...


class Unstored:
    """What the log handed out and the store does not hold yet, oldest first.

    While the store fails, events wait here (at most `bound`; past that the
    oldest are dropped and a Loss records them); readers see them through
    `page` and `newest`. Every seq here is above every stored one.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.events: deque[Event] = deque()
        self.losses: list[Loss] = []
        self.sockets: dict[SocketId, tuple[Endpoint, Owner] | None] = {}
        self.replace_sockets = False  # the socket changes are every socket there is
        self._dropped: Loss | None = None  # the growing loss of dropped events

    def __bool__(self) -> bool:
        return bool(self.events or self.losses or self.sockets)

    @property
    def first_seq(self) -> int | None:
        return self.events[0].seq if self.events else None

    def change_sockets(
        self, added: Sequence[tuple[Endpoint, Owner]], removed: Sequence[Endpoint]
    ) -> None:
        for endpoint in removed:
            self.sockets[(endpoint.key, endpoint.inode)] = None
        for endpoint, owner in added:
            self.sockets[(endpoint.key, endpoint.inode)] = (endpoint, owner)

    def batch(
        self, last_seq: int, reserved_seq: int, journaled_seq: int, alive: str | None
    ) -> Batch:
        return Batch(
            events=list(self.events),
            losses=list(self.losses),
            sockets=dict(self.sockets),
            replace_sockets=self.replace_sockets,
            last_seq=last_seq,
            reserved_seq=reserved_seq,
            journaled_seq=journaled_seq,
            last_alive=alive,
        )

    def clear(self) -> None:
        self.events.clear()
        self.losses.clear()
        self.sockets.clear()
        self.replace_sockets = False
        self._dropped = None

    def drop_beyond_bound(self, reason: str, time: str) -> list[Loss]:
        """Drop the oldest events past the bound; the Loss of this drop, for subscribers."""
        excess = len(self.events) - self.bound
        if excess <= 0:
            return []
        first = last = self.events[0].seq
        for _ in range(excess):
            last = self.events.popleft().seq
        if self._dropped is not None and self._dropped.to_seq + 1 == first:
            # One outage, one growing loss in the store.
            self.losses.remove(self._dropped)
            self._dropped = Loss(self._dropped.from_seq, last, time, reason)
        else:
            self._dropped = Loss(first, last, time, reason)
        self.losses.append(self._dropped)
        return [Loss(first, last, time, reason)]

    def page(self, wanted: EventFilter, after_seq: int, limit: int) -> list[Event]:
        found: list[Event] = []
        for event in self.events:
            if len(found) >= limit:
                break
            if event.seq > after_seq and wanted.matches(event):
                found.append(event)
        return found

    def newest(self, wanted: EventFilter, count: int) -> tuple[int | None, int]:
        """(seq of the count-th newest match, 0), or (None, how many more to find)."""
        for event in reversed(self.events):
            if wanted.matches(event):
                count -= 1
                if count == 0:
                    return event.seq, 0
        return None, count

    def losses_between(self, after_seq: int, upto_seq: int) -> list[Loss]:
        return [x for x in self.losses if x.from_seq <= upto_seq and x.to_seq > after_seq]
