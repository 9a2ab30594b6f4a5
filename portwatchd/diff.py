"""Two scans in, opened/closed changes out. Pure: no clock, no I/O.

A listening *key* ("tcp:0.0.0.0:22") can be held by several sockets at
once: SO_REUSEPORT lets a group of workers each bind the same address, and a
server can hand its socket to a new process on reload. What a person cares
about is whether the key is being listened on, so the diff works on keys,
and uses socket inodes only to tell "still the same listener" from "closed
and reopened between two scans":

- a key that appears opens, reported with its first socket (lowest inode);
- a key that disappears closes, reported with its first socket as last seen;
- a key held by the same sockets, or by a set that overlaps the previous
  one (one SO_REUSEPORT worker restarted while the others kept listening),
  gives no event;
- a key now held only by sockets that were not there before (no inode in
  common) was closed and reopened between the scans, perhaps by another
  process: it closes (old socket), then opens (new socket).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from portwatchd.model import Endpoint, EventType

# key -> the sockets sharing it, sorted by inode (then by the remaining fields,
# so that a snapshot built from the same endpoints is always equal).
Snapshot = dict[str, tuple[Endpoint, ...]]


@dataclass(frozen=True, slots=True)
class Change:
    """A key that opened or closed, with the socket that stands for it."""

    type: EventType
    endpoint: Endpoint

    @property
    def key(self) -> str:
        return self.endpoint.key


def _socket_order(endpoint: Endpoint) -> tuple[int, str, int, str]:
    return (endpoint.inode, endpoint.family, endpoint.uid, repr(endpoint.v6only))


def snapshot_of(endpoints: Iterable[Endpoint]) -> Snapshot:
    """Group endpoints by key; an endpoint seen twice in one scan counts once."""
    grouped: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        sockets = grouped.get(key := endpoint.key)
        if sockets is None:
            grouped[key] = [endpoint]
        else:
            sockets.append(endpoint)
    # Most keys have one socket: a 50,000-socket burst is one pass, not
    # 50,000 sets and sorts.
    return {
        key: (sockets[0],) if len(sockets) == 1 else tuple(sorted(set(sockets), key=_socket_order))
        for key, sockets in grouped.items()
    }


def _inodes(sockets: tuple[Endpoint, ...]) -> set[int]:
    return {socket.inode for socket in sockets}


def _changed(previous: Snapshot, current: Snapshot) -> set[str]:
    """The keys in both whose sockets are not the very same."""
    return {
        key
        for key, after in current.items()
        if (before := previous.get(key)) is not None and before != after
    }


def diff_snapshots(previous: Snapshot, current: Snapshot) -> list[Change]:
    """The changes that turn `previous` into `current`, sorted by key.

    For a key closed and reopened between the scans, "closed" comes first.
    Empty sockets tuples are treated as absent keys.
    """
    changes: list[Change] = []
    for key in sorted(previous.keys() ^ current.keys() | _changed(previous, current)):
        before = previous.get(key, ())
        after = current.get(key, ())
        if before and after:
            if _inodes(before).isdisjoint(_inodes(after)):
                changes.append(Change("closed", before[0]))
                changes.append(Change("opened", after[0]))
        elif before:
            changes.append(Change("closed", before[0]))
        elif after:
            changes.append(Change("opened", after[0]))
    return changes


def without(snapshot: Snapshot, closed: Iterable[Endpoint]) -> tuple[Snapshot, list[Change]]:
    """`snapshot` less the `closed` sockets, and the changes that makes.

    The same as `snapshot_of` and `diff_snapshots` over every socket left,
    at the cost of the keys the closed sockets held only: a close the
    kernel announced costs as much on a host of 50,000 listeners as on one
    of ten.

    >>> a = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=1)
    >>> b = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=2)
    >>> c = Endpoint("tcp", "ipv4", "0.0.0.0", 22, inode=3)
    >>> before = snapshot_of([a, b, c])
    >>> after, changes = without(before, [b, c])
    >>> after == snapshot_of([a]), [(x.type, x.key) for x in changes]
    (True, [('closed', 'tcp:0.0.0.0:22')])
    """
    inodes: set[int] = set()
    keys: set[str] = set()
    for endpoint in closed:
        inodes.add(endpoint.inode)
        keys.add(endpoint.key)
    after = dict(snapshot)
    for key in keys:
        left = tuple(s for s in snapshot.get(key, ()) if s.inode not in inodes)
        if left:
            after[key] = left
        else:
            after.pop(key, None)
    touched_before = {key: snapshot[key] for key in keys if key in snapshot}
    touched_after = {key: after[key] for key in keys if key in after}
    return after, diff_snapshots(touched_before, touched_after)
