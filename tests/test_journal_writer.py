"""The journal writer: its own thread, fed from the log, never blocking the loop.

The booted-systemd tests stop the real journald; here a sink that blocks or
refuses stands in for it, so each case runs in well under a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portwatchd.log import EventLog
from portwatchd.model import Endpoint, Event, EventDraft, Loss, Owner
from portwatchd.outputs.journal_writer import STALL_AFTER_S, JournalWriter
from portwatchd.reactor import Reactor
from portwatchd.store import Store


class Sink:
    """Records what it is sent; `gate` cleared makes sends block, `refuse` makes them fail."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lines: list[str] = []
        self.losses: list[Loss] = []
        self.gate = threading.Event()
        self.gate.set()
        self.refuse = False

    def _wait(self) -> None:
        self.gate.wait()
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")

    def event(self, event: Event) -> None:
        self._wait()
        self.events.append(event)

    def loss(self, loss: Loss) -> None:
        self._wait()
        self.losses.append(loss)

    def log(self, priority: int, message: str, **fields: str) -> None:
        self._wait()
        self.lines.append(message)


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    reactor = Reactor()
    yield reactor
    reactor.close()


def open_log(path: Path) -> EventLog:
    return EventLog(Store.open(str(path)), history_size=10_000, history_max_age_s=None)


def draft(port: int) -> EventDraft:
    endpoint = Endpoint("tcp", "ipv4", "127.0.0.1", port, inode=port)
    return EventDraft("opened", endpoint, Owner(), "2026-11-30T10:00:00.000000Z")


def run_until(reactor: Reactor, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        reactor.run_once(0.05)


def test_events_are_sent_in_order_and_marked_journaled(tmp_path: Path, reactor: Reactor) -> None:
    log = open_log(tmp_path)
    sink = Sink()
    writer = JournalWriter(sink, log, reactor, queue_events=7)
    log.subscribe(lambda _items: writer.feed())
    log.append([draft(port) for port in range(1000, 1050)])
    run_until(reactor, lambda: log.journaled_seq == 50)
    assert [event.seq for event in sink.events] == list(range(1, 51))
    writer.close(1.0)


def test_a_stalled_journal_blocks_nothing_and_is_reported(tmp_path: Path, reactor: Reactor) -> None:
    log = open_log(tmp_path)
    sink = Sink()
    clock = [0.0]
    writer = JournalWriter(sink, log, reactor, queue_events=10, monotonic=lambda: clock[0])
    log.subscribe(lambda _items: writer.feed())
    sink.gate.clear()  # journald stops taking messages
    started = time.monotonic()
    for port in range(2000, 2300):
        log.append([draft(port)])
        writer.say(6, f"line {port}")
    assert time.monotonic() - started < 2.0  # nothing waited for the journal
    clock[0] += STALL_AFTER_S + 1
    assert writer.error is not None and "journald" in writer.error
    assert writer.pending == 300
    sink.gate.set()  # journald is back
    run_until(reactor, lambda: log.journaled_seq == 300)
    assert [event.seq for event in sink.events] == list(range(1, 301))
    assert writer.error is None
    writer.close(1.0)


def test_refused_sends_are_retried_and_the_recovery_is_said(
    tmp_path: Path, reactor: Reactor
) -> None:
    log = open_log(tmp_path)
    sink = Sink()
    writer = JournalWriter(sink, log, reactor)
    log.subscribe(lambda _items: writer.feed())
    sink.refuse = True
    log.append([draft(3000)])
    run_until(reactor, lambda: writer.error is not None)
    assert "Connection refused" in str(writer.error)
    assert log.journaled_seq == 0
    sink.refuse = False
    run_until(reactor, lambda: log.journaled_seq == 1)
    assert writer.error is None
    run_until(reactor, lambda: any("works again" in line for line in sink.lines))
    writer.close(1.0)


def test_what_was_not_journaled_at_stop_is_sent_by_the_next_start(
    tmp_path: Path, reactor: Reactor
) -> None:
    log = open_log(tmp_path)
    sink = Sink()
    writer = JournalWriter(sink, log, reactor)
    log.subscribe(lambda _items: writer.feed())
    sink.refuse = True
    [event] = log.append([draft(4000)])
    writer.close(0.3)
    log.close()
    sink.refuse = False
    log = open_log(tmp_path)
    assert log.journaled_seq == 0
    writer = JournalWriter(sink, log, reactor)
    writer.feed()
    run_until(reactor, lambda: log.journaled_seq == 1)
    assert [(sent.seq, sent.id) for sent in sink.events] == [(event.seq, event.id)]
    writer.close(1.0)
