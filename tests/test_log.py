"""EventLog on a real events.db in a temporary directory: seqs, paging, losses, retention.

The paging cases are the 0.1 ring's (tests/test_ring.py), asked through
page() and newest_start() as the control handlers ask them.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd.log import SEQ_BLOCK, EventLog
from portwatchd.logstore import Batch
from portwatchd.model import Endpoint, Event, EventDraft, Loss, Owner, rfc3339
from portwatchd.protocol import EventQuery
from portwatchd.store import Store

START = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
ANY = EventQuery()


def draft(
    minutes: int, type: str = "opened", proto: str = "tcp", port: int = 22, inode: int = 1
) -> EventDraft:
    endpoint = Endpoint(proto=proto, family="ipv4", address="0.0.0.0", port=port, inode=inode)  # type: ignore[arg-type]
    return EventDraft(type, endpoint, Owner(), rfc3339(START + timedelta(minutes=minutes)))  # type: ignore[arg-type]


def open_log(directory: Path | str, **options: Any) -> EventLog:
    counter = itertools.count(1)
    options.setdefault("history_size", 1_000_000)
    options.setdefault("history_max_age_s", None)
    options.setdefault("make_id", lambda: f"id-{next(counter)}")
    return EventLog(Store.open(str(directory)), **options)


def filled(directory: Path, count: int, **options: Any) -> EventLog:
    """A log of `count` events, all of them journaled (retention may prune them)."""
    log = open_log(directory, **options)
    log.append([draft(minutes) for minutes in range(1, count + 1)])
    log.mark_journaled(log.last_seq)
    return log


def seqs(events: Sequence[Event]) -> list[int]:
    return [event.seq for event in events]


def newest(log: EventLog, query: EventQuery, count: int) -> list[int]:
    return seqs(log.page(query, log.newest_start(query, count), count))


def test_empty_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    assert (log.count, log.last_seq, log.oldest_seq, log.journaled_seq) == (0, 0, None, 0)
    assert log.is_new and log.warnings == [] and log.store_error is None
    assert log.page(ANY, 0, 10) == []
    assert log.newest_start(ANY, 3) == 0
    assert log.losses(0, 100) == []


def test_append_mints_seqs_and_ids_and_returns_what_page_reads(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    events = log.append([draft(1), draft(2, "closed", "udp", 53)])
    assert seqs(events) == [1, 2] and [e.id for e in events] == ["id-1", "id-2"]
    assert events[1].type == "closed" and events[1].endpoint.port == 53
    assert log.page(ANY, 0, 10) == events
    assert (log.count, log.last_seq, log.oldest_seq) == (2, 2, 1)


def test_history_survives_a_clean_restart_without_a_gap(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([draft(minutes) for minutes in range(1, 4)])
    ssh = Endpoint("tcp", "ipv4", "0.0.0.0", 22, inode=7)
    dns = Endpoint("udp", "ipv6", "::1", 53, inode=8)
    log.append([], added=[(ssh, Owner(pid=1, comm="sshd")), (dns, Owner())])
    log.append([], removed=[dns])
    log.mark_journaled(2)
    log.heartbeat("2026-11-25T15:00:00.000000Z")
    events = log.page(ANY, 0, 10)
    log.close()
    again = open_log(tmp_path)
    assert again.warnings == [] and not again.is_new
    assert again.page(ANY, 0, 10) == events
    assert again.sockets() == [(ssh, Owner(pid=1, comm="sshd"))]
    assert (again.journaled_seq, again.last_alive) == (2, "2026-11-25T15:00:00.000000Z")
    assert seqs(again.append([draft(9)])) == [4]
    assert again.losses(0, 100) == []


def test_a_restart_without_close_starts_above_the_reservation_and_says_so(tmp_path: Path) -> None:
    filled(tmp_path, 5)  # never closed: as after kill -9
    # SEQ_BLOCK seqs were reserved when the store opened; 5 are used.
    again = open_log(tmp_path, clock=lambda: START)
    assert again.last_seq == SEQ_BLOCK
    loss = Loss(6, SEQ_BLOCK, rfc3339(START), again.losses(0, 10**9)[0].reason)
    assert again.losses(0, 10**9) == [loss]
    assert "portwatchd stopped before storing" in loss.reason
    assert any("events 6 to 1000 are missing" in warning for warning in again.warnings)
    assert seqs(again.append([draft(6)])) == [SEQ_BLOCK + 1]
    again.close()
    third = open_log(tmp_path)
    assert third.losses(0, 10**9) == [loss] and third.warnings == []


class DiskWaits(Store):
    """The real store, noting which writes waited for the disk (durable)."""

    def __init__(self, state_dir: str) -> None:
        super().__init__(state_dir)
        self.writes: list[tuple[int, bool]] = []  # (events in it, durable)

    def write(self, batch: Batch, *, durable: bool = True) -> None:
        self.writes.append((len(batch.events), durable))
        super().write(batch, durable=durable)


def test_only_reservations_and_heartbeats_wait_for_the_disk(tmp_path: Path) -> None:
    store = DiskWaits(str(tmp_path))
    log = EventLog(store, history_size=1_000_000, history_max_age_s=None)
    log.append([draft(1)])
    log.append([draft(2)])
    log.mark_journaled(2)
    log.heartbeat(rfc3339(START))
    log.append([draft(minutes) for minutes in range(3, SEQ_BLOCK // 2 + 3)])  # a new block
    assert store.writes == [
        (0, True),  # at open: the first block of seqs is reserved
        (1, False),
        (1, False),
        (0, False),  # mark_journaled
        (0, True),  # the heartbeat
        (SEQ_BLOCK // 2, True),  # the next block
    ]
    del log  # kill -9: what did not wait for the disk is still there
    again = open_log(tmp_path)
    assert again.journaled_seq == 2
    assert seqs(again.page(ANY, 0, 10**6)) == list(range(1, SEQ_BLOCK // 2 + 3))


def test_seqs_stay_reserved_ahead_so_an_outage_after_open_reuses_none(tmp_path: Path) -> None:
    log = open_log(tmp_path)  # the store works at open, and fails later
    log.append([draft(minutes) for minutes in range(1, 600)])  # past half the first block
    reserved_at = log.last_seq + SEQ_BLOCK
    again = open_log(tmp_path)  # as after a kill -9 at this point
    assert again.last_seq == reserved_at


def test_the_journal_s_last_seq_wins_over_a_lower_store(tmp_path: Path) -> None:
    filled(tmp_path, 2).close()
    log = open_log(tmp_path, journal_last_seq=lambda: 40)
    assert log.last_seq == 40
    assert [(x.from_seq, x.to_seq) for x in log.losses(0, 100)] == [(3, 40)]
    assert seqs(log.append([draft(1)])) == [41]


def test_subscribers_get_each_batch_in_seq_order(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    seen: list[Sequence[Event | Loss]] = []
    unsubscribe = log.subscribe(seen.append)
    events = log.append([draft(1), draft(2)])
    loss = log.record_loss(1, 2, "journald refused them", "2026-11-25T14:05:00.000000Z")
    log.append([])  # nothing new: nobody is called
    unsubscribe()
    log.append([draft(3)])
    assert seen == [events, [loss]]
    assert log.losses(0, 1) == [loss] and log.losses(2, 9) == []


def test_limit_without_after_seq_gives_the_newest(tmp_path: Path) -> None:
    log = filled(tmp_path, 30)
    assert newest(log, ANY, 3) == [28, 29, 30]
    assert newest(log, ANY, 100) == list(range(1, 31))
    assert log.newest_start(ANY, 0) == 30 and log.page(ANY, 30, 0) == []


def test_page_after_seq_gives_the_oldest_after_it(tmp_path: Path) -> None:
    log = filled(tmp_path, 30)
    assert seqs(log.page(ANY, 10, 3)) == [11, 12, 13]
    assert seqs(log.page(ANY, 27, 100)) == [28, 29, 30]
    assert log.page(ANY, 30, 10) == [] and log.page(ANY, 99, 10) == []
    with pytest.raises(ValueError, match="limit"):
        log.page(ANY, 0, -1)


def test_retention_keeps_the_newest_and_paging_skips_what_is_gone(tmp_path: Path) -> None:
    log = filled(tmp_path, 50, history_size=20)
    while log.prune_step(START, max_rows=7):
        pass
    assert (log.count, log.oldest_seq, log.last_seq) == (20, 31, 50)
    assert seqs(log.page(ANY, 45, 100)) == [46, 47, 48, 49, 50]
    # A client that fell behind the history gets everything still held.
    assert seqs(log.page(ANY, 3, 100)) == list(range(31, 51))
    assert newest(log, ANY, 100) == list(range(31, 51))


def test_retention_never_prunes_what_the_journal_does_not_have_yet(tmp_path: Path) -> None:
    log = open_log(tmp_path, history_size=20)
    log.append([draft(minutes) for minutes in range(1, 51)])
    log.mark_journaled(10)  # journald stalled after seq 10
    while log.prune_step(START, max_rows=7):
        pass
    assert (log.count, log.oldest_seq) == (40, 11)
    assert seqs(log.page(ANY, 10, 100)) == list(range(11, 51))
    log.mark_journaled(50)
    while log.prune_step(START, max_rows=7):
        pass
    assert (log.count, log.oldest_seq) == (20, 31)


def test_retention_by_age_in_bounded_steps(tmp_path: Path) -> None:
    log = filled(tmp_path, 30, history_max_age_s=600)  # event n at 14:00 + n min
    now = START + timedelta(minutes=30)
    assert log.prune_step(now, max_rows=15) is True
    assert log.count == 15
    assert log.prune_step(now, max_rows=15) is False
    assert (log.count, log.oldest_seq) == (11, 20)  # 14:20 and later: at most 10 min old
    log.close()
    assert open_log(tmp_path).count == 11


def test_page_across_a_gap(tmp_path: Path) -> None:
    filled(tmp_path, 2)  # no close: the next run starts above the reservation, at 1001
    again = open_log(tmp_path)
    again.append([draft(5), draft(9)])
    assert seqs(again.page(ANY, 1, 10)) == [2, 1001, 1002]
    assert seqs(again.page(ANY, 2, 10)) == [1001, 1002]
    assert newest(again, ANY, 2) == [1001, 1002]


def test_filters_by_type_proto_and_port(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(
        [
            draft(1, "opened", "tcp", 22),
            draft(2, "opened", "udp", 53),
            draft(3, "closed", "tcp", 22),
            draft(4, "opened", "tcp", 80),
            draft(5, "closed", "udp", 53),
        ]
    )
    assert seqs(log.page(EventQuery(type="closed"), 0, 10)) == [3, 5]
    assert seqs(log.page(EventQuery(proto="udp"), 0, 10)) == [2, 5]
    assert seqs(log.page(EventQuery(port=22), 0, 10)) == [1, 3]
    assert seqs(log.page(EventQuery(type="opened", proto="tcp"), 0, 10)) == [1, 4]
    assert log.page(EventQuery(type="opened", proto="tcp", port=53), 0, 10) == []
    # Filters apply before the limit: the newest matching, not the newest overall.
    assert newest(log, EventQuery(proto="tcp"), 2) == [3, 4]
    assert seqs(log.page(EventQuery(proto="tcp"), 1, 1)) == [3]


def test_since_and_until_compare_moments_not_strings(tmp_path: Path) -> None:
    log = filled(tmp_path, 10)  # event n happens at 14:00 + n minutes UTC
    assert seqs(log.page(EventQuery(since="2026-11-25T14:07:00Z"), 0, 99)) == [7, 8, 9, 10]
    # 15:07 at +01:00 is 14:07 UTC: as a string it would sort after every event.
    assert seqs(log.page(EventQuery(since="2026-11-25T15:07:00+01:00"), 0, 99)) == [7, 8, 9, 10]
    assert seqs(log.page(EventQuery(since="2026-11-25T14:09:00"), 0, 99)) == [9, 10]  # naive: UTC
    assert newest(log, EventQuery(since="2026-11-25T14:07:00Z"), 2) == [9, 10]
    assert log.page(EventQuery(since="2030-01-01T00:00:00Z"), 0, 99) == []
    assert log.newest_start(EventQuery(since="2030-01-01T00:00:00Z"), 5) == 0
    until = QueryWithUntil(since="2026-11-25T14:02:00Z")
    until.until = "2026-11-25T14:04:00Z"  # time <= until
    assert seqs(log.page(until, 0, 99)) == [2, 3, 4]
    assert newest(log, until, 2) == [3, 4]


class QueryWithUntil(EventQuery):
    """EventQuery as it is about to be: with `until` (protocol.py gains it separately)."""

    until: str | None = None


def test_since_is_not_a_bisect_when_the_clock_stepped_back(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([draft(30), draft(5), draft(40)])
    since = EventQuery(since=rfc3339(START + timedelta(minutes=20)))
    assert seqs(log.page(since, 0, 10)) == [1, 3]
    assert newest(log, since, 1) == [3]


def test_since_that_is_not_a_timestamp_says_so(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    with pytest.raises(ValueError, match="not an RFC 3339 timestamp"):
        log.page(EventQuery(since="yesterday"), 0, 10)


def test_paging_near_either_end_of_a_large_history(tmp_path: Path) -> None:
    log = filled(tmp_path, 5000, history_size=1000)
    while log.prune_step(START, max_rows=1500):
        pass
    assert seqs(log.page(ANY, 4997, 10)) == [4998, 4999, 5000]
    assert seqs(log.page(ANY, 4001, 2)) == [4002, 4003]
    assert len(log.page(ANY, 4500, 10_000)) == 500
    assert len(log.page(ANY, 0, 10_000)) == 1000


history_specs = st.lists(
    st.tuples(
        st.sampled_from(["opened", "closed"]),
        st.sampled_from(["tcp", "udp"]),
        st.integers(1, 3),  # port
        st.integers(0, 20),  # minutes
    ),
    max_size=30,
)
queries = st.fixed_dictionaries(
    {
        "since": st.none() | st.integers(0, 20),
        "type": st.none() | st.sampled_from(["opened", "closed"]),
        "proto": st.none() | st.sampled_from(["tcp", "udp"]),
        "port": st.none() | st.integers(1, 3),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history_specs, st.integers(1, 12), queries, st.integers(0, 40), st.integers(0, 8))
def test_page_and_newest_start_agree_with_a_plain_filter(
    specs: list[tuple[str, str, int, int]],
    history_size: int,
    query: dict[str, Any],
    after_seq: int,
    limit: int,
) -> None:
    since = query.pop("since")
    moment = None if since is None else START + timedelta(minutes=since)
    event_query = EventQuery(since=None if moment is None else rfc3339(moment), **query)
    with tempfile.TemporaryDirectory() as directory:
        log = open_log(directory, history_size=history_size)
        appended = log.append([draft(m, t, p, n) for t, p, n, m in specs])
        log.mark_journaled(log.last_seq)
        log.prune_step(START, max_rows=100)
        expected = [
            event
            for event in appended[-history_size:]
            if (moment is None or event.time >= rfc3339(moment))
            and (query["type"] is None or event.type == query["type"])
            and (query["proto"] is None or event.endpoint.proto == query["proto"])
            and (query["port"] is None or event.endpoint.port == query["port"])
        ]
        after = [event for event in expected if event.seq > after_seq]
        assert log.page(event_query, after_seq, limit) == after[:limit]
        assert newest(log, event_query, limit) == seqs(expected[max(0, len(expected) - limit) :])
        log.close()


def test_an_idle_prune_writes_nothing(tmp_path: Path) -> None:
    """Pruning runs every second: with nothing past the retention it must
    not commit (each commit is an fsync)."""
    log = filled(tmp_path, 10, history_size=100, history_max_age_s=3600)
    log.prune_step(START)  # the age check of this minute
    wal = tmp_path / "events.db-wal"
    before = (wal.stat().st_size, wal.stat().st_mtime_ns)
    for seconds in range(1, 30):
        assert log.prune_step(START + timedelta(seconds=seconds)) is False
    assert (wal.stat().st_size, wal.stat().st_mtime_ns) == before
