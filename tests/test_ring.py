from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd.model import Endpoint, Event
from portwatchd.ring import EventRing, parse_time

START = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)


def event(
    seq: int,
    type: str = "opened",
    proto: str = "tcp",
    port: int = 22,
    minutes: int | None = None,
) -> Event:
    moment = START + timedelta(minutes=seq if minutes is None else minutes)
    endpoint = Endpoint(proto=proto, family="ipv4", address="0.0.0.0", port=port, inode=seq)  # type: ignore[arg-type]
    return Event(
        seq=seq,
        id=f"id-{seq}",
        type=type,  # type: ignore[arg-type]
        time=moment.isoformat(timespec="microseconds"),
        endpoint=endpoint,
    )


def seqs(events: list[Event]) -> list[int]:
    return [item.seq for item in events]


def full_ring(count: int, capacity: int | None = None) -> EventRing:
    return EventRing(capacity or count, (event(seq) for seq in range(1, count + 1)))


def test_empty_ring() -> None:
    ring = EventRing(10)
    assert len(ring) == 0
    assert ring.capacity == 10
    assert ring.last_seq == 0
    assert ring.oldest_seq is None
    assert ring.events() == []
    assert ring.query() == []
    assert ring.query(after_seq=5, limit=3) == []


def test_ring_keeps_the_newest_events_oldest_first() -> None:
    ring = full_ring(25, capacity=10)
    assert len(ring) == 10
    assert seqs(ring.events()) == list(range(16, 26))
    assert ring.oldest_seq == 16
    assert ring.last_seq == 25


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventRing(0)
    with pytest.raises(ValueError, match="at least 1"):
        EventRing(3).resize(0)


def test_append_refuses_a_seq_that_does_not_follow() -> None:
    ring = full_ring(3)
    with pytest.raises(ValueError, match="does not follow"):
        ring.append(event(3))
    with pytest.raises(ValueError, match="does not follow"):
        ring.append(event(1))
    ring.append(event(7))  # gaps are fine: ignored events also take no seq
    assert ring.last_seq == 7


def test_resize_smaller_keeps_the_newest_and_larger_keeps_all() -> None:
    ring = full_ring(10)
    ring.resize(4)
    assert ring.capacity == 4
    assert seqs(ring.events()) == [7, 8, 9, 10]
    ring.resize(100)
    assert seqs(ring.events()) == [7, 8, 9, 10]
    ring.extend(event(seq) for seq in range(11, 20))
    assert len(ring) == 13
    assert ring.last_seq == 19


def test_query_after_seq_returns_only_later_events() -> None:
    ring = full_ring(50, capacity=20)  # holds 31..50
    assert seqs(ring.query(after_seq=45)) == [46, 47, 48, 49, 50]
    assert seqs(ring.query(after_seq=50)) == []
    assert seqs(ring.query(after_seq=99)) == []
    # A client that fell behind the ring gets everything still held.
    assert seqs(ring.query(after_seq=3)) == list(range(31, 51))
    assert seqs(ring.query(after_seq=0)) == list(range(31, 51))


def test_query_after_seq_between_gaps() -> None:
    ring = EventRing(10, [event(2), event(5), event(9)])
    assert seqs(ring.query(after_seq=4)) == [5, 9]
    assert seqs(ring.query(after_seq=5)) == [9]


def test_limit_without_after_seq_gives_the_newest() -> None:
    ring = full_ring(30)
    assert seqs(ring.query(limit=3)) == [28, 29, 30]
    assert seqs(ring.query(limit=100)) == list(range(1, 31))
    assert ring.query(limit=0) == []


def test_limit_with_after_seq_gives_the_oldest_after_it() -> None:
    ring = full_ring(30)
    assert seqs(ring.query(after_seq=10, limit=3)) == [11, 12, 13]
    assert ring.query(after_seq=10, limit=0) == []


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        full_ring(3).query(limit=-1)


def test_filters_by_type_proto_and_port() -> None:
    ring = EventRing(
        10,
        [
            event(1, "opened", "tcp", 22),
            event(2, "opened", "udp", 53),
            event(3, "closed", "tcp", 22),
            event(4, "opened", "tcp", 80),
            event(5, "closed", "udp", 53),
        ],
    )
    assert seqs(ring.query(type="closed")) == [3, 5]
    assert seqs(ring.query(proto="udp")) == [2, 5]
    assert seqs(ring.query(port=22)) == [1, 3]
    assert seqs(ring.query(type="opened", proto="tcp")) == [1, 4]
    assert seqs(ring.query(type="opened", proto="tcp", port=53)) == []
    # Filters apply before the limit: the newest matching, not the newest overall.
    assert seqs(ring.query(proto="tcp", limit=2)) == [3, 4]
    assert seqs(ring.query(after_seq=1, proto="tcp", limit=1)) == [3]


def test_since_compares_moments_not_strings() -> None:
    ring = full_ring(10)  # event n happens at 14:00 + n minutes UTC
    assert seqs(ring.query(since="2026-11-25T14:07:00Z")) == [7, 8, 9, 10]
    # 15:07 at +01:00 is 14:07 UTC: as a string it would sort after every event.
    assert seqs(ring.query(since="2026-11-25T15:07:00+01:00")) == [7, 8, 9, 10]
    assert seqs(ring.query(since=START + timedelta(minutes=9, seconds=30))) == [10]
    # A naive datetime is taken as UTC.
    assert seqs(ring.query(since=datetime(2026, 11, 25, 14, 9))) == [9, 10]
    assert seqs(ring.query(since="2026-11-25T14:07:00Z", limit=2)) == [9, 10]
    assert ring.query(since="2030-01-01T00:00:00Z") == []


def test_since_is_not_a_bisect_when_the_clock_stepped_back() -> None:
    ring = EventRing(10, [event(1, minutes=30), event(2, minutes=5), event(3, minutes=40)])
    assert seqs(ring.query(since=START + timedelta(minutes=20))) == [1, 3]


def test_since_that_is_not_a_timestamp_says_so() -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 timestamp"):
        full_ring(3).query(since="yesterday")


def test_parse_time_keeps_offsets() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert parse_time("2026-11-25T16:00:00+02:00") == datetime(2026, 11, 25, 16, tzinfo=plus_two)
    assert parse_time("2026-11-25T14:00:00Z") == START


def test_query_after_seq_near_either_end_of_a_large_ring() -> None:
    ring = full_ring(5000, capacity=1000)  # holds 4001..5000
    assert seqs(ring.query(after_seq=4997)) == [4998, 4999, 5000]
    assert seqs(ring.query(after_seq=4001, limit=2)) == [4002, 4003]
    assert len(ring.query(after_seq=4500)) == 500
    assert len(ring.query()) == 1000


ring_events = st.lists(
    st.tuples(
        st.integers(1, 3),  # seq step
        st.sampled_from(["opened", "closed"]),
        st.sampled_from(["tcp", "udp"]),
        st.integers(1, 3),  # port
        st.integers(0, 20),  # minutes
    ),
    max_size=30,
)


queries = st.fixed_dictionaries(
    {
        "after_seq": st.none() | st.integers(0, 60),
        "since_minutes": st.none() | st.integers(0, 20),
        "limit": st.none() | st.integers(0, 8),
        "type": st.none() | st.sampled_from(["opened", "closed"]),
        "proto": st.none() | st.sampled_from(["tcp", "udp"]),
        "port": st.none() | st.integers(1, 3),
    }
)


@given(ring_events, st.integers(1, 12), queries)
def test_query_agrees_with_a_plain_filter(
    specs: list[tuple[int, str, str, int, int]], capacity: int, query: dict[str, Any]
) -> None:
    seq = 0
    appended = []
    for step, kind, protocol, number, minutes in specs:
        seq += step
        appended.append(event(seq, kind, protocol, number, minutes))
    ring = EventRing(capacity, appended)
    since_minutes = query.pop("since_minutes")
    since = None if since_minutes is None else START + timedelta(minutes=since_minutes)
    after_seq, limit = query["after_seq"], query["limit"]

    expected = [
        item
        for item in appended[-capacity:]
        if (after_seq is None or item.seq > after_seq)
        and (since is None or parse_time(item.time) >= since)
        and (query["type"] is None or item.type == query["type"])
        and (query["proto"] is None or item.endpoint.proto == query["proto"])
        and (query["port"] is None or item.endpoint.port == query["port"])
    ]
    if limit is not None:
        # The oldest after a seq; otherwise the newest.
        expected = expected[:limit] if after_seq is not None else expected[::-1][:limit][::-1]
    assert ring.query(since=since, **query) == expected
