"""Service pieces driven directly, with an injected clock."""

from __future__ import annotations

import os
from pathlib import Path

from portwatchd.config import Config
from portwatchd.model import Endpoint, Event
from portwatchd.notify import Notifier
from portwatchd.protocol import EventQuery
from portwatchd.reactor import Reactor
from portwatchd.service import HEARTBEAT_S, Service


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.messages: list[tuple[int, str]] = []

    def event(self, event: Event) -> None:
        self.events.append(event)

    def log(self, priority: int, message: str, **fields: str) -> None:
        self.messages.append((priority, message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_touches_the_state_file_so_downtime_is_dated(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    state_file.write_text("{}")
    os.utime(state_file, (1, 1))
    clock = Clock()
    reactor = Reactor()
    service = Service(
        Config(state_dir=str(tmp_path)),
        sink=RecordingSink(),
        notifier=Notifier(send=lambda _message: None),
        reload_config=Config,
        reactor=reactor,
        monotonic=clock,
    )
    service._heartbeat_if_due()  # not due yet: the first comes HEARTBEAT_S after start
    assert state_file.stat().st_mtime == 1
    clock.now += HEARTBEAT_S + 1
    service._heartbeat_if_due()
    assert state_file.stat().st_mtime > 1
    reactor.close()


class FlakySink(RecordingSink):
    """A journal that refuses events while `failing` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def event(self, event: Event) -> None:
        if self.failing:
            raise ConnectionRefusedError(111, "Connection refused")
        super().event(event)


class ListScanner:
    name = "fake"

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def scan(self) -> list[Endpoint]:
        return list(self.endpoints)

    def close(self) -> None:
        pass


def make_service(tmp_path: Path, sink: RecordingSink, scanner: ListScanner) -> Service:
    return Service(
        Config(state_dir=str(tmp_path), owners=False),
        sink=sink,
        notifier=Notifier(send=lambda _message: None),
        reload_config=Config,
        reactor=Reactor(),
        scanner_factory=lambda _backend: scanner,
    )


def test_events_journald_refuses_stay_pending_until_it_takes_them(tmp_path: Path) -> None:
    sink, scanner = FlakySink(), ListScanner()
    service = make_service(tmp_path, sink, scanner)
    service._scanner = scanner
    service._first_batch(scanner.scan(), None)

    sink.failing = True
    scanner.endpoints = [Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=11)]
    service._scan_once()
    assert sink.events == []
    assert "journal failing, 1 events pending" in service.status_line()
    assert service.status()["journal_error"]

    # Still refused: another change queues behind the first, in order.
    scanner.endpoints.append(Endpoint("tcp", "ipv4", "0.0.0.0", 443, inode=12))
    service._scan_once()
    sink.failing = False
    service._scan_once()
    assert [(e.seq, e.endpoint.port) for e in sink.events] == [(1, 80), (2, 443)]
    assert service.status()["journal_error"] is None


def test_events_pending_at_a_crash_are_sent_at_the_next_start_with_the_same_id(
    tmp_path: Path,
) -> None:
    sink, scanner = FlakySink(), ListScanner()
    first = make_service(tmp_path, sink, scanner)
    first._scanner = scanner
    first._first_batch(scanner.scan(), None)
    sink.failing = True
    scanner.endpoints = [Endpoint("udp", "ipv4", "127.0.0.1", 53, inode=21)]
    first._scan_once()  # written ahead to the state file, not journaled; then "crash"

    later_sink = RecordingSink()
    second = make_service(tmp_path, later_sink, scanner)
    second._restore_state()
    assert [e.endpoint.port for e in later_sink.events] == [53]
    pending_id = later_sink.events[0].id
    assert pending_id == first.query_events(EventQuery())[0].id
    assert any("re-sending 1 event" in message for _, message in later_sink.messages)


def test_a_batch_larger_than_the_ring_is_journaled_whole(tmp_path: Path) -> None:
    sink, scanner = RecordingSink(), ListScanner()
    service = Service(
        Config(state_dir=str(tmp_path), owners=False, ring_size=5),
        sink=sink,
        notifier=Notifier(send=lambda _message: None),
        reload_config=Config,
        reactor=Reactor(),
        scanner_factory=lambda _backend: scanner,
    )
    service._scanner = scanner
    service._first_batch(scanner.scan(), None)
    scanner.endpoints = [Endpoint("tcp", "ipv4", "0.0.0.0", 1000 + i, inode=i) for i in range(12)]
    service._scan_once()
    assert [e.seq for e in sink.events] == list(range(1, 13))
    assert len(service.query_events(EventQuery())) == 5


def test_a_restart_that_re_sends_pending_events_keeps_the_saved_snapshot(
    tmp_path: Path,
) -> None:
    sink, scanner = FlakySink(), ListScanner()
    scanner.endpoints = [Endpoint("tcp", "ipv4", "0.0.0.0", 22, inode=1)]
    first = make_service(tmp_path, sink, scanner)
    first._scanner = scanner
    first._first_batch(scanner.scan(), None)
    sink.failing = True
    scanner.endpoints.append(Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=2))
    first._scan_once()  # port 80 pending; then "crash"

    # A start that re-sends the pending event and dies before its first scan...
    second = make_service(tmp_path, RecordingSink(), scanner)
    second._restore_state()
    # ...must leave the next start the same picture: no spurious events.
    third_sink = RecordingSink()
    third = make_service(tmp_path, third_sink, scanner)
    state = third._restore_state()
    third._scanner = scanner
    third._first_batch(scanner.scan(), state)
    assert third_sink.events == []


def test_an_event_that_cannot_be_encoded_does_not_block_the_others(tmp_path: Path) -> None:
    class PickySink(RecordingSink):
        def event(self, event: Event) -> None:
            if event.endpoint.port == 666:
                raise UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates not allowed")
            super().event(event)

    sink, scanner = PickySink(), ListScanner()
    service = make_service(tmp_path, sink, scanner)
    service._scanner = scanner
    service._first_batch(scanner.scan(), None)
    scanner.endpoints = [
        Endpoint("tcp", "ipv4", "0.0.0.0", 666, inode=1),
        Endpoint("tcp", "ipv4", "0.0.0.0", 667, inode=2),
    ]
    service._scan_once()
    assert [e.endpoint.port for e in sink.events] == [667]
    assert any("cannot journal event 1" in message for _, message in sink.messages)
    scanner.endpoints.append(Endpoint("tcp", "ipv4", "0.0.0.0", 668, inode=3))
    service._scan_once()
    assert [e.endpoint.port for e in sink.events] == [667, 668]


def test_owner_lookup_failure_is_logged_and_events_still_go_out(tmp_path: Path) -> None:
    class BrokenResolver:
        def resolve_new(self, inodes: object) -> dict[int, object]:
            raise OSError(24, "Too many open files")

        def forget(self, inodes: object) -> None:
            pass

        def walk_due_in(self, inodes: object) -> None:
            return None

    sink, scanner = RecordingSink(), ListScanner()
    service = Service(
        Config(state_dir=str(tmp_path)),
        sink=sink,
        notifier=Notifier(send=lambda _message: None),
        reload_config=Config,
        reactor=Reactor(),
        scanner_factory=lambda _backend: scanner,
        resolver=BrokenResolver(),  # type: ignore[arg-type]
    )
    service._scanner = scanner
    service._first_batch(scanner.scan(), None)
    scanner.endpoints = [Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=1)]
    service._scan_once()
    assert [(e.endpoint.port, e.owner.known) for e in sink.events] == [(80, False)]
    assert any("owner lookup failed" in message for _, message in sink.messages)


def test_events_last_hour_counts_by_the_minute_and_forgets_after_an_hour(
    tmp_path: Path,
) -> None:
    clock = Clock()
    sink, scanner = RecordingSink(), ListScanner()
    service = Service(
        Config(state_dir=str(tmp_path), owners=False),
        sink=sink,
        notifier=Notifier(send=lambda _message: None),
        reload_config=Config,
        reactor=Reactor(),
        scanner_factory=lambda _backend: scanner,
        monotonic=clock,
    )
    service._scanner = scanner
    service._first_batch(scanner.scan(), None)
    for port in range(1, 4):
        scanner.endpoints = [Endpoint("tcp", "ipv4", "0.0.0.0", port, inode=port)]
        service._scan_once()  # each: one closed (but the first) and one opened
    assert service.status()["events_last_hour"] == 5
    clock.now += 30 * 60
    scanner.endpoints = []
    service._scan_once()
    assert service.status()["events_last_hour"] == 6
    clock.now += 31 * 60
    assert service.status()["events_last_hour"] == 1
    assert "1 event in the last hour" in service.status_line()
