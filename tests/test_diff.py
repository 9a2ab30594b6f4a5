from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from portwatchd.diff import Change, diff_snapshots, snapshot_of, without
from portwatchd.model import Endpoint, Family


def tcp(port: int, inode: int, address: str = "0.0.0.0") -> Endpoint:
    family: Family = "ipv6" if ":" in address else "ipv4"
    return Endpoint(proto="tcp", family=family, address=address, port=port, inode=inode)


def udp(port: int, inode: int, address: str = "0.0.0.0") -> Endpoint:
    return Endpoint(proto="udp", family="ipv4", address=address, port=port, inode=inode)


def test_snapshot_groups_sockets_by_key_sorted_by_inode() -> None:
    snapshot = snapshot_of([tcp(80, 30), tcp(22, 5), tcp(80, 10), tcp(80, 20), udp(80, 7)])
    assert snapshot == {
        "tcp:0.0.0.0:22": (tcp(22, 5),),
        "tcp:0.0.0.0:80": (tcp(80, 10), tcp(80, 20), tcp(80, 30)),
        "udp:0.0.0.0:80": (udp(80, 7),),
    }


def test_snapshot_counts_a_socket_seen_twice_once() -> None:
    assert snapshot_of([tcp(22, 5), tcp(22, 5)]) == {"tcp:0.0.0.0:22": (tcp(22, 5),)}


def test_empty_snapshots_give_no_changes() -> None:
    assert diff_snapshots({}, {}) == []
    assert diff_snapshots(snapshot_of([]), snapshot_of([])) == []


def test_unchanged_snapshot_gives_no_changes() -> None:
    snapshot = snapshot_of([tcp(22, 5), udp(53, 6)])
    assert diff_snapshots(snapshot, dict(snapshot)) == []


def test_new_key_opens_and_vanished_key_closes() -> None:
    before = snapshot_of([tcp(22, 5), tcp(25, 6)])
    after = snapshot_of([tcp(22, 5), tcp(80, 7)])
    assert diff_snapshots(before, after) == [
        Change("closed", tcp(25, 6)),
        Change("opened", tcp(80, 7)),
    ]


def test_everything_opens_from_an_empty_start_and_closes_at_the_end() -> None:
    sockets = [tcp(22, 5), udp(53, 6), tcp(443, 7, "::")]
    opened = diff_snapshots({}, snapshot_of(sockets))
    assert [(change.type, change.endpoint) for change in opened] == [
        ("opened", tcp(22, 5)),
        ("opened", tcp(443, 7, "::")),
        ("opened", udp(53, 6)),
    ]
    closed = diff_snapshots(snapshot_of(sockets), {})
    assert {change.type for change in closed} == {"closed"}
    assert {change.endpoint for change in closed} == set(sockets)


def test_key_reopened_by_another_socket_closes_then_opens() -> None:
    # The same port, but socket 5 is gone and socket 9 listens now: it was
    # closed and reopened between the scans (perhaps by another process).
    before = snapshot_of([tcp(8080, 5)])
    after = snapshot_of([tcp(8080, 9)])
    assert diff_snapshots(before, after) == [
        Change("closed", tcp(8080, 5)),
        Change("opened", tcp(8080, 9)),
    ]


def test_reuseport_group_opens_with_its_first_socket_and_closes_with_its_last() -> None:
    first = snapshot_of([tcp(443, 10)])
    group = snapshot_of([tcp(443, 10), tcp(443, 11), tcp(443, 12)])
    one_left = snapshot_of([tcp(443, 12)])

    assert diff_snapshots({}, first) == [Change("opened", tcp(443, 10))]
    # More workers join: the port was already listening.
    assert diff_snapshots(first, group) == []
    # Workers leave but one still listens: still open.
    assert diff_snapshots(group, one_left) == []
    # The last one goes: now it closes.
    assert diff_snapshots(one_left, {}) == [Change("closed", tcp(443, 12))]


def test_reuseport_worker_replaced_while_others_listen_gives_no_event() -> None:
    before = snapshot_of([tcp(443, 10), tcp(443, 11)])
    after = snapshot_of([tcp(443, 11), tcp(443, 12)])
    assert diff_snapshots(before, after) == []


def test_whole_reuseport_group_replaced_closes_then_opens() -> None:
    before = snapshot_of([tcp(443, 10), tcp(443, 11)])
    after = snapshot_of([tcp(443, 20), tcp(443, 21)])
    assert diff_snapshots(before, after) == [
        Change("closed", tcp(443, 10)),
        Change("opened", tcp(443, 20)),
    ]


def test_changes_come_sorted_by_key_with_close_before_open() -> None:
    before = snapshot_of([tcp(9, 1), tcp(3, 2), udp(5, 3)])
    after = snapshot_of([tcp(9, 4), tcp(1, 5), udp(5, 3)])
    changes = diff_snapshots(before, after)
    assert [(change.key, change.type) for change in changes] == [
        ("tcp:0.0.0.0:1", "opened"),
        ("tcp:0.0.0.0:3", "closed"),
        ("tcp:0.0.0.0:9", "closed"),
        ("tcp:0.0.0.0:9", "opened"),
    ]


endpoints = st.builds(
    Endpoint,
    proto=st.sampled_from(["tcp", "udp"]),
    family=st.just("ipv4"),
    address=st.sampled_from(["0.0.0.0", "127.0.0.1"]),
    port=st.integers(1, 4),
    inode=st.integers(1, 6),
)


@given(st.lists(endpoints, max_size=8), st.lists(endpoints, max_size=8))
def test_diff_replayed_on_the_open_keys_gives_the_current_keys(
    before: list[Endpoint], after: list[Endpoint]
) -> None:
    previous, current = snapshot_of(before), snapshot_of(after)
    open_keys = set(previous)
    for change in diff_snapshots(previous, current):
        if change.type == "opened":
            assert change.key not in open_keys, "opened twice"
            open_keys.add(change.key)
        else:
            assert change.key in open_keys, "closed while not open"
            open_keys.remove(change.key)
    assert open_keys == set(current)


@given(st.lists(endpoints, max_size=8), st.sets(st.integers(1, 6)))
def test_without_is_a_full_diff_at_the_cost_of_the_closed_keys(
    listed: list[Endpoint], closing: set[int]
) -> None:
    # One socket per inode, as the kernel has it.
    sockets = list({endpoint.inode: endpoint for endpoint in listed}.values())
    closed = [endpoint for endpoint in sockets if endpoint.inode in closing]
    left = [endpoint for endpoint in sockets if endpoint.inode not in closing]
    before = snapshot_of(sockets)
    after, changes = without(before, closed)
    assert after == snapshot_of(left)
    assert changes == diff_snapshots(before, snapshot_of(left))
