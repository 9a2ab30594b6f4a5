"""EventLog: the one ordered history of events and losses, durable first.

The log mints each event's seq (never reused, across restarts and store
failures too) and id, hands the batch to the store in one transaction, and
only then tells its subscribers. It is core: it touches no file and imports
no database; the store behind it (`portwatchd.store.Store`, SQLite) is
given to it, and so is the clock.

A store that fails never makes the log fail. The events keep their seqs,
wait in memory (at most `max_unstored`; past that the oldest are dropped
and a Loss says so), are readable through `page` meanwhile, and are
written, in order, once a write works again (`heartbeat` retries a failing
store). `store_error` says what is wrong in between.

Seqs are reserved ahead in the store (`SEQ_BLOCK` at a time, in the same
transaction as the events that need them). A run that ends without
`close()` leaves the reservation in place: the next run starts above it and
records the unused or unstored range as a Loss, so no seq is handed out
twice.

What waits for the disk: an append's commit survives a kill -9 when it
returns, but does not wait for the disk (an fsync, 0.2 to several ms)
before its subscribers hear of it, unless it raises the reservation: a
seq never reaches anyone before its reservation would survive a power
loss. `heartbeat` waits for the disk, and so makes every append before it
survive a power loss; the loop writes one right after it delivered each
append.

Only the loop thread calls it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from portwatchd.logstore import EventFilter, EventStore, StoredState, StoreError, Unstored
from portwatchd.model import Endpoint, Event, EventDraft, Loss, Owner, rfc3339, utc_now

if TYPE_CHECKING:
    from portwatchd.protocol import EventQuery

__all__ = ["SEQ_BLOCK", "EventLog", "StoreError"]

AGE_CHECK_EVERY = timedelta(seconds=60)
SEQ_BLOCK = 1000  # seqs reserved per store write that runs out of them
MAX_UNSTORED = 100_000  # events kept in memory while the store fails

Subscriber = Callable[[Sequence[Event | Loss]], None]
T = TypeVar("T")


class _ReadSide:
    """The read side of the log (control handlers, journal writer, metrics): stored
    events by SQL through the store, then those still waiting in memory."""

    _store: EventStore
    _unstored: Unstored
    _loaded: bool
    _stored_count: int
    _stored_oldest: int | None
    last_seq: int
    store_error: str | None

    @property
    def count(self) -> int:
        """Events held, stored or waiting to be."""
        return self._stored_count + len(self._unstored.events)

    @property
    def oldest_seq(self) -> int | None:
        if self._stored_oldest is not None:
            return self._stored_oldest
        return self._unstored.first_seq

    def page(self, query: EventQuery, after_seq: int, limit: int) -> list[Event]:
        """Oldest first: the first `limit` matches of `query` with seq > after_seq.

        Matching: type, proto, port, since (time >= since) and until (time <=
        until) of `query`; its own after_seq and limit are the caller's to
        pass. ValueError for a since/until that is not a timestamp.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        wanted = EventFilter.of(query)
        if limit == 0:
            return []
        found: list[Event] = []
        first_unstored = self._unstored.first_seq or self.last_seq + 1
        if self._loaded and after_seq < first_unstored - 1:
            found = self._read(lambda: self._store.page(wanted, after_seq, limit), [])
        return found + self._unstored.page(wanted, after_seq, limit - len(found))

    def newest_start(self, query: EventQuery, count: int) -> int:
        """The after_seq from which page(query, after_seq, count) is the `count` newest matches."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        wanted = EventFilter.of(query)
        if count == 0:
            return self.last_seq
        seq, count = self._unstored.newest(wanted, count)
        if seq is None and self._loaded:
            seq = self._read(lambda: self._store.newest_match(wanted, count - 1), None)
        return seq - 1 if seq is not None else 0

    def losses(self, after_seq: int, upto_seq: int) -> list[Loss]:
        """The losses overlapping (after_seq, upto_seq], by their first seq."""
        found: list[Loss] = []
        if self._loaded:
            found = self._read(lambda: self._store.losses(after_seq, upto_seq), [])
        found += self._unstored.losses_between(after_seq, upto_seq)
        return sorted(found, key=lambda loss: (loss.from_seq, loss.to_seq))

    def _read(self, read: Callable[[], T], fallback: T) -> T:
        try:
            return read()
        except StoreError as error:
            self.store_error = str(error)
            return fallback


class EventLog(_ReadSide):
    """The history: write side for the engine, read side for control and outputs."""

    def __init__(
        self,
        store: EventStore,
        *,
        history_size: int,
        history_max_age_s: float | None,
        make_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        journal_last_seq: Callable[[], int | None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
        max_unstored: int = MAX_UNSTORED,
    ) -> None:
        if history_size < 1:
            raise ValueError(f"history_size must be at least 1, got {history_size}")
        self._store = store
        self.history_size = history_size
        self.history_max_age_s = history_max_age_s
        self._make_id = make_id
        self._clock = clock
        self._subscribers: list[Subscriber] = []
        self._unstored = Unstored(max_unstored)  # written by the next write that works
        self._loaded = False
        self._started_blind = False  # the store could not be read at start
        self._written: tuple[int, int, int, str | None] | None = None  # meta last stored
        self._reserved = 0
        self._stored_count = 0
        self._stored_oldest: int | None = None
        self._saved_sockets: list[tuple[Endpoint, Owner]] = []
        self._age_checked: datetime | None = None  # the last prune by age
        self.warnings: list[str] = []
        self.store_error: str | None = None
        self.is_new = True
        self.last_alive: str | None = None
        self.last_seq = journal_last_seq() or 0
        self.journaled_seq = 0
        self._load(at_start=True)
        self._flush()

    # -- start-up --------------------------------------------------------------

    def _load(self, at_start: bool = False) -> None:
        """Read what the store holds; on failure, start from memory and retry later."""
        try:
            state = self._store.load()
        except StoreError as error:
            self.store_error = str(error)
            if at_start:
                self._started_blind = True
                self.warnings.extend(self._store.take_warnings())
                self.warnings.append(
                    f"{error}; starting without the saved history, keeping new events"
                    " in memory until the store works"
                )
            return
        self.warnings.extend(self._store.take_warnings())
        first = self._unstored.first_seq
        if first is not None and state.top_seq >= first:
            # This run could not read the store at start and handed out seqs
            # that the store also holds: keep ours, set the old file aside.
            try:
                self.warnings.append(self._store.move_aside("it holds seqs this run also used"))
            except StoreError as error:
                self.store_error = str(error)
                return
            self._load()
            return
        self._adopt(state, at_start)

    def _adopt(self, state: StoredState, at_start: bool) -> None:
        self._loaded = True
        self._unstored.replace_sockets = self._started_blind
        if at_start:
            self.is_new = state.fresh
            self._saved_sockets = list(state.sockets)
            self.last_alive = state.last_alive
        self.journaled_seq = max(self.journaled_seq, state.journaled_seq)
        self._stored_count = state.count
        self._stored_oldest = state.oldest_seq
        self._reserved = state.reserved_seq
        self._written = None
        top = max(state.top_seq, self.last_seq)  # last_seq: the journal's, or minted since
        first = self._unstored.first_seq
        upto = first - 1 if first is not None else top
        if upto > state.last_seq:
            self._unstored.losses.append(self._startup_loss(state, upto))
        self.last_seq = top

    def _startup_loss(self, state: StoredState, upto: int) -> Loss:
        first = state.last_seq + 1
        if state.fresh:
            reason = (
                "these events are not in the event store (it was new or set aside at start);"
                " the journal may hold them"
            )
        else:
            reason = (
                "portwatchd stopped before storing these events (killed or crashed;"
                " some of these seqs may never have been used)"
            )
        self.warnings.append(f"events {first} to {upto} are missing from the history: {reason}")
        return Loss(first, upto, rfc3339(self._clock()), reason)

    def sockets(self) -> list[tuple[Endpoint, Owner]]:
        """The sockets the last run saved: what the first scan is diffed against."""
        return list(self._saved_sockets)

    # -- the write side --------------------------------------------------------

    def append(
        self,
        drafts: Sequence[EventDraft],
        *,
        added: Sequence[tuple[Endpoint, Owner]] = (),
        removed: Sequence[Endpoint] = (),
    ) -> list[Event]:
        """Mint, store (one transaction), notify; the events, in seq order.

        Never raises for a storage failure: see `store_error`. While the
        store fails, appends only queue (their cost stays the batch's);
        `heartbeat` retries.
        """
        events = []
        for draft in drafts:
            self.last_seq += 1
            events.append(draft.minted(self.last_seq, self._make_id()))
        self._unstored.change_sockets(added, removed)
        self._unstored.events.extend(events)
        self._flush(retry=False, durable=False)
        dropped = self._unstored.drop_beyond_bound(
            f"the event store failed ({self.store_error}) while more than"
            f" {self._unstored.bound} events waited to be stored; the oldest were dropped",
            rfc3339(self._clock()),
        )
        items: list[Event | Loss] = [*dropped, *events]
        if items:
            self._notify(items)
        return events

    def record_loss(self, from_seq: int, to_seq: int, reason: str, time: str) -> Loss:
        """Announce seqs whose events the log does not hold; stored and notified."""
        if to_seq < from_seq:
            raise ValueError(f"a loss from seq {from_seq} to {to_seq} is empty")
        loss = Loss(from_seq, to_seq, time, reason)
        self.last_seq = max(self.last_seq, to_seq)
        self._unstored.losses.append(loss)
        self._flush(retry=False)
        self._notify([loss])
        return loss

    def mark_journaled(self, seq: int) -> None:
        """Every event up to `seq` is in the journal."""
        if seq > self.journaled_seq:
            self.journaled_seq = min(seq, self.last_seq)
            # Lost to a power loss, the mark only makes events journaled twice.
            self._flush(retry=False, durable=False)

    def heartbeat(self, time: str) -> None:
        """Record that portwatchd is alive, waiting for the disk (so every write
        before survives a power loss too); retries a failed store."""
        self.last_alive = time
        self._flush()

    def prune_step(self, now: datetime, max_rows: int = 1000) -> bool:
        """Delete at most `max_rows` events past the retention; True when more is due."""
        before = None
        # By age at most once a minute: a daemon idle for a day must not
        # write (and fsync) the store every second to find nothing old.
        age_due = self._age_checked is None or now - self._age_checked >= AGE_CHECK_EVERY
        if self.history_max_age_s is not None and age_due:
            before = rfc3339(now - timedelta(seconds=self.history_max_age_s))
            self._age_checked = now
        if not self._loaded or self.store_error is not None:
            return False
        if before is None and self._stored_count <= self.history_size:
            return False  # nothing past the retention: no transaction at all
        try:
            # An event the journal does not have yet stays, whatever the
            # retention: pruning it would lose it for good.
            result = self._store.prune(self.history_size, before, max_rows, self.journaled_seq)
        except StoreError as error:
            self.store_error = str(error)
            return False
        self._stored_count = result.count
        self._stored_oldest = result.oldest_seq
        if result.more:
            self._age_checked = None  # more to delete: the next step goes on at once
        return result.more

    def close(self) -> None:
        """A clean stop: store what waits, give back the unused seq reservation."""
        self._flush(shrink=True)
        self._store.close()

    def _flush(self, *, shrink: bool = False, retry: bool = True, durable: bool = True) -> None:
        """Write what waits, in one transaction. A failing store is tried again only
        when `retry`: an outage then costs each append its own batch, not the backlog.
        A write that changes the reservation waits for the disk, `durable` or not."""
        if self.store_error is not None and not retry:
            return
        if not self._loaded:
            self._load()
            if not self._loaded:
                return
        reserve = self._reserved
        if shrink:
            reserve = self.last_seq
        elif self.last_seq + SEQ_BLOCK // 2 > self._reserved:
            # Always half a block ahead, from the first write at open on:
            # a store that fails later (a full disk) then still has durable
            # seqs reserved for the events minted meanwhile, and a kill -9
            # during the outage cannot make the next run hand them out again.
            reserve = self.last_seq + SEQ_BLOCK
        meta = (self.last_seq, reserve, self.journaled_seq, self.last_alive)
        if meta == self._written and not self._unstored:
            return  # nothing new: no commit, no fsync
        try:
            durable = durable or reserve != self._reserved
            self._store.write(self._unstored.batch(*meta), durable=durable)
        except StoreError as error:
            self.store_error = str(error)
            return
        self.store_error = None
        self._reserved = reserve
        self._written = meta
        first = self._unstored.first_seq
        if first is not None and self._stored_oldest is None:
            self._stored_oldest = first
        self._stored_count += len(self._unstored.events)
        self._unstored.clear()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with each append's events (and losses), in seq order."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, items: list[Event | Loss]) -> None:
        for callback in list(self._subscribers):
            callback(items)
