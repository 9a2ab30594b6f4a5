"""The journal, written from its own thread so that a stalled journald never
stops the loop.

`journal.send` is a blocking write to journald's socket: with journald
stopped (SIGSTOP, or a full disk it is busy rotating), it waits, and 0.1's
loop waited with it until the watchdog killed it. Here the loop only hands
work over. Events are read from the event log by seq (`feed`), at most
`queue_events` at a time, so a long outage keeps them in the log, not in
memory; log lines go into a bounded queue (the oldest dropped and counted
past it). The worker sends in order and hands "journaled up to seq N" back
through the reactor; the loop then records it in the log. An event that
was sent but not yet marked is sent again after a crash, with the same
PORT_EVENT_ID.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from portwatchd.log import EventLog
from portwatchd.model import PRIORITY_INFO, PRIORITY_WARNING, Event, Loss
from portwatchd.outputs.journal import Sink
from portwatchd.protocol import EventQuery
from portwatchd.reactor import Reactor

# A send pending this long makes journal_error say that journald is stalled.
STALL_AFTER_S = 5.0
QUEUE_EVENTS = 1024
QUEUE_LINES = 1000
# After a failed send, wait this long before the next try, doubling up to the max.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
_ALL = EventQuery()


@dataclass(frozen=True, slots=True)
class _Line:
    priority: int
    message: str
    fields: tuple[tuple[str, str], ...]


_Item = Event | Loss | _Line


class JournalWriter:
    def __init__(
        self,
        sink: Sink,
        log: EventLog,
        reactor: Reactor,
        *,
        queue_events: int = QUEUE_EVENTS,
        queue_lines: int = QUEUE_LINES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._log = log
        self._reactor = reactor
        self._queue_events = queue_events
        self._queue_lines = queue_lines
        self._monotonic = monotonic
        self._items: deque[_Item] = deque()
        self._events_queued = 0
        self._lines_queued = 0
        self._cursor = log.journaled_seq  # the newest seq handed to the worker
        self._wakeup = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()  # set by close(): retries give up
        # Written by the worker, read by the loop: plain values, read whole.
        self._confirmed = log.journaled_seq
        self._confirm_scheduled = False
        self._error: str | None = None
        self._sending_since: float | None = None
        self.lines_dropped = 0
        self.errors_total = 0
        self._thread = threading.Thread(target=self._work, name="journal", daemon=True)
        self._thread.start()

    # -- the loop's side -------------------------------------------------------

    def feed(self) -> None:
        """Hand the worker the events after its cursor, as far as the queue has room."""
        with self._wakeup:
            if self._stopping:
                return
            room = self._queue_events - self._events_queued
            if room <= 0 or self._cursor >= self._log.last_seq:
                return
            events = self._log.page(_ALL, self._cursor, room)
            if not events:
                # Nothing held after the cursor: the seqs up to last_seq were
                # lost (announced as such), not pending. Move on, and once
                # the worker has nothing in flight, nothing is pending.
                self._cursor = self._log.last_seq
                if self._events_queued == 0:
                    self._confirmed = self._cursor
                    self._log.mark_journaled(self._cursor)
                return
            self._items.extend(events)
            self._events_queued += len(events)
            self._cursor = events[-1].seq
            self._wakeup.notify()

    def loss(self, loss: Loss) -> None:
        with self._wakeup:
            self._items.append(loss)
            self._wakeup.notify()

    def say(self, priority: int, message: str, **fields: str) -> None:
        """A log line, sent in order with the events; never blocks."""
        with self._wakeup:
            if self._lines_queued >= self._queue_lines:
                self._drop_oldest_line()
            self._items.append(_Line(priority, message, tuple(fields.items())))
            self._lines_queued += 1
            self._wakeup.notify()

    @property
    def error(self) -> str | None:
        """Why the journal is not taking what we send, None when it is."""
        since = self._sending_since
        if self._error is not None:
            return self._error
        if since is not None and self._monotonic() - since > STALL_AFTER_S:
            return f"journald has not taken a message for {self._monotonic() - since:.0f} s"
        return None

    @property
    def pending(self) -> int:
        """Events handed out but not yet known to be journaled."""
        return self._log.last_seq - self._confirmed

    def close(self, timeout: float) -> None:
        """Send what is queued within `timeout`, then stop; what is left is
        sent by the next start (it is still unjournaled in the log)."""
        deadline = self._monotonic() + timeout
        with self._wakeup:
            while self._items and self._monotonic() < deadline:
                self._wakeup.wait(0.05)
            self._stopping = True
            self._stopped.set()
            self._wakeup.notify()
        self._thread.join(max(0.0, deadline - self._monotonic()))
        self._mark_confirmed()

    def _mark_confirmed(self) -> None:
        self._confirm_scheduled = False
        confirmed = self._confirmed
        if confirmed > self._log.journaled_seq:
            self._log.mark_journaled(confirmed)
        self.feed()

    def _drop_oldest_line(self) -> None:
        for index, item in enumerate(self._items):
            if isinstance(item, _Line):
                del self._items[index]
                self._lines_queued -= 1
                self.lines_dropped += 1
                return

    # -- the worker --------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wakeup:
                while not self._items and not self._stopping:
                    self._wakeup.wait()
                if not self._items:
                    return
                item = self._items[0]
            if not self._send_until_taken(item):
                return  # stopping while the journal refuses: the log keeps it unjournaled
            with self._wakeup:
                self._items.popleft()
                if isinstance(item, Event):
                    self._events_queued -= 1
                    self._confirmed = item.seq
                    self._schedule_confirm()
                elif isinstance(item, _Line):
                    self._lines_queued -= 1
                self._wakeup.notify_all()

    def _schedule_confirm(self) -> None:
        if not self._confirm_scheduled:
            self._confirm_scheduled = True
            self._reactor.call_soon_threadsafe(self._mark_confirmed)

    def _send_until_taken(self, item: _Item) -> bool:
        """Whether the item was sent (or dropped as unsendable); False only
        when asked to stop while the journal refuses it."""
        delay = RETRY_FIRST_S
        while True:
            self._sending_since = self._monotonic()
            try:
                self._send(item)
            except OSError as err:
                self.errors_total += 1
                self._error = f"cannot write to the journal: {err}"
                # Woken early by close(): a stopping writer sends no more.
                if self._stopped.wait(delay):
                    return False
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except ValueError as err:
                # This item cannot be encoded, now or ever: retrying would
                # block everything behind it.
                self.errors_total += 1
                self._sink.log(PRIORITY_WARNING, f"cannot journal {_describe(item)}: {err}")
            finally:
                self._sending_since = None
            if self._error is not None:
                self._error = None
                self._sink.log(PRIORITY_INFO, "journaling works again; pending events sent")
            return True

    def _send(self, item: _Item) -> None:
        if isinstance(item, Event):
            self._sink.event(item)
        elif isinstance(item, Loss):
            self._sink.loss(item)
        else:
            self._sink.log(item.priority, item.message, **dict(item.fields))


def _describe(item: _Item) -> str:
    if isinstance(item, Event):
        return f"event {item.seq}"
    if isinstance(item, Loss):
        return f"the loss of events {item.from_seq}-{item.to_seq}"
    return "a log line"
