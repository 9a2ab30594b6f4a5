"""The `events` place filters (netns, container, host_only) on a real events.db.

The store answers them in SQLite (json_extract on the stored event), the
events not stored yet in Python: both must pick the same events, the ones
protocol.EventQuery.matches_place picks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from portwatchd.logstore import EventFilter
from portwatchd.model import HOST_PLACE, Endpoint, EventDraft, Owner, Place, rfc3339
from portwatchd.protocol import EventQuery
from portwatchd.store import DB_FILE
from tests.test_log import START, open_log, seqs

WEB_ID = "3f2a9c1b0d4e" + "a" * 52
HOST_INODE = 4026531840
PLACES = {
    # seq: (Endpoint.netns, Place)
    1: (0, Place(netns_inode=HOST_INODE, scope="host", exposure="public")),
    2: (
        4026532281,
        Place(
            netns_inode=4026532281,
            netns_name="web",
            scope="container",
            container=WEB_ID,
            container_runtime="docker",
        ),
    ),
    3: (4026532300, Place(netns_inode=4026532300, netns_name="blue", scope="container")),
    4: (4026532301, Place(netns_inode=4026532301, scope="container")),
    5: (0, HOST_PLACE),
}


def placed_draft(seq: int) -> EventDraft:
    netns, place = PLACES[seq]
    endpoint = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=seq, netns=netns)
    return EventDraft("opened", endpoint, Owner(), rfc3339(START), place=place, expected=None)


QUERIES = [
    (EventQuery(host_only=True), [1, 5]),
    (EventQuery(netns="web"), [2]),
    (EventQuery(netns="blue"), [3]),
    (EventQuery(netns="4026532301"), [4]),
    (EventQuery(netns="0"), [1, 5]),  # the Endpoint's 0: the host's
    (EventQuery(netns=str(HOST_INODE)), [1]),  # the host's real inode, where it was known
    (EventQuery(netns="nosuch"), []),
    (EventQuery(container="web"), [2]),
    (EventQuery(container=WEB_ID), [2]),
    (EventQuery(container="3f2a"), [2]),  # an id prefix, as docker takes it
    (EventQuery(container="3f2b"), []),
    (EventQuery(container="blue"), []),  # an `ip netns` name is not a container
    (EventQuery(container="web", port=80), [2]),
    (EventQuery(container="web", port=81), []),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES, ids=repr)
def test_stored_and_unstored_events_filter_alike(
    tmp_path: Path, query: EventQuery, expected: list[int]
) -> None:
    log = open_log(tmp_path)
    log.append([placed_draft(seq) for seq in sorted(PLACES)])
    stored = sqlite3.connect(tmp_path / DB_FILE).execute("SELECT count(*) FROM events")
    assert stored.fetchone() == (5,)  # the SQL path answers
    assert seqs(log.page(query, 0, 100)) == expected
    assert seqs(log.page(query, log.newest_start(query, 1), 1)) == expected[-1:]
    every = log.page(EventQuery(), 0, 100)
    assert [e.seq for e in every if EventFilter.of(query).matches(e)] == expected


def test_events_stored_before_namespaces_were_watched_are_the_host_s(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([placed_draft(1), placed_draft(2)])
    log.close()
    # An event row written by 0.2: no netns, no place keys in its JSON.
    connection = sqlite3.connect(tmp_path / DB_FILE)
    with connection:
        connection.execute(
            "UPDATE events SET json = json_remove(json, '$.netns', '$.netns_inode',"
            " '$.scope', '$.netns_name', '$.container') WHERE seq = 1"
        )
    connection.close()
    log = open_log(tmp_path)
    assert seqs(log.page(EventQuery(host_only=True), 0, 10)) == [1]
    assert seqs(log.page(EventQuery(netns="0"), 0, 10)) == [1]
    assert seqs(log.page(EventQuery(container="3f2a"), 0, 10)) == [2]
