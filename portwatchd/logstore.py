"""What the EventLog and the store behind it hand each other.

Core: plain values and a Protocol, so that `log.py` needs neither SQLite nor
the file system, and `store.py` (the adapter) implements `EventStore`.
"""

from __future__ import annotations

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
        )

    def matches(self, event: Event) -> bool:
        if self.type is not None and event.type != self.type:
            return False
        if self.proto is not None and event.endpoint.proto != self.proto:
            return False
        if self.port is not None and event.endpoint.port != self.port:
            return False
        if self.since is None and self.until is None:
            return True
        time = normal_time(event.time)
        return (self.since is None or time >= self.since) and (
            self.until is None or time <= self.until
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

    def write(self, batch: Batch) -> None: ...

    def page(self, wanted: EventFilter, after_seq: int, limit: int) -> list[Event]:
        """The first `limit` matches with seq > after_seq, oldest first."""
        ...

    def newest_match(self, wanted: EventFilter, skip: int) -> int | None:
        """The seq of the newest match after skipping `skip` newer ones; None if too few."""
        ...

    def losses(self, after_seq: int, upto_seq: int) -> list[Loss]: ...

    def prune(self, keep: int, before: str | None, max_rows: int) -> PruneResult:
        """Delete the oldest events beyond `keep` and those older than `before`."""
        ...

    def move_aside(self, reason: str) -> str:
        """Set the file aside (never deleted) and start empty; the warning to log."""
        ...

    def close(self) -> None: ...
