"""A pass of the engine: what one look found, waiting for its owners, and
how its events are cut into store transactions. Pure data and functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from portwatchd.diff import Change, Snapshot, without
from portwatchd.model import Detection, Endpoint, EventDraft, Owner
from portwatchd.sources.base import Scanner


@dataclass(slots=True)
class Pass:
    """One scan's results, waiting for the owners of its new sockets."""

    endpoints: list[Endpoint] | None  # what the scan listed; None: no scan (destroy messages)
    snapshot: Snapshot
    sockets: dict[int, Endpoint]  # inode -> socket, for the whole scan
    changes: list[Change]
    detected: Detection
    started: float
    baseline: bool  # the first scan of a fresh install: no events, only the snapshot
    new: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    # Destroy messages of listening-shaped sockets no look saw, and how long
    # before they came the last look was: `transient` events.
    transients: list[Endpoint] = field(default_factory=list)
    since_look_s: float = 0.0


def destroy_pass(
    snapshot: Snapshot,
    sockets: Mapping[int, Endpoint],
    gone: set[int],
    *,
    started: float,
    transients: list[Endpoint],
    since_look_s: float,
) -> Pass:
    """The pass of destroy messages: the watched `sockets` less those `gone`
    (at the cost of their keys, see diff.without), and the `transients`."""
    closed = [sockets[inode] for inode in gone if inode in sockets]
    after, changes = without(snapshot, closed)
    left = dict(sockets)
    for endpoint in closed:
        del left[endpoint.inode]
    return Pass(
        endpoints=None,
        snapshot=after,
        sockets=left,
        changes=changes,
        detected="destroy",
        started=started,
        baseline=False,
        gone={endpoint.inode for endpoint in closed},
        transients=transients,
        since_look_s=since_look_s,
    )


# Events (with their sockets) appended per turn of the loop.
APPEND_CHUNK = 2000
Chunk = tuple[list[EventDraft], list[tuple[Endpoint, Owner]], list[Endpoint]]


def chunks_of(
    drafts: list[EventDraft], added: list[tuple[Endpoint, Owner]], removed: list[Endpoint]
) -> list[Chunk]:
    """Split a pass into chunks of at most APPEND_CHUNK events, each with the
    socket changes of its events' keys; socket changes of no event go last."""
    added_by_key: dict[str, list[tuple[Endpoint, Owner]]] = {}
    for row in added:
        added_by_key.setdefault(row[0].key, []).append(row)
    removed_by_key: dict[str, list[Endpoint]] = {}
    for endpoint in removed:
        removed_by_key.setdefault(endpoint.key, []).append(endpoint)
    chunks: list[Chunk] = []
    for start in range(0, len(drafts), APPEND_CHUNK):
        part = drafts[start : start + APPEND_CHUNK]
        keys = {draft.endpoint.key for draft in part}
        chunks.append(
            (
                part,
                [row for key in keys for row in added_by_key.pop(key, ())],
                [endpoint for key in keys for endpoint in removed_by_key.pop(key, ())],
            )
        )
    rest_added = [row for rows in added_by_key.values() for row in rows]
    rest_removed = [endpoint for rows in removed_by_key.values() for endpoint in rows]
    for start in range(0, max(len(rest_added), len(rest_removed)), APPEND_CHUNK):
        chunks.append(
            (
                [],
                rest_added[start : start + APPEND_CHUNK],
                rest_removed[start : start + APPEND_CHUNK],
            )
        )
    return chunks


@dataclass(slots=True)
class EngineStats:
    scans_total: int = 0
    scan_errors_total: int = 0
    confirmations_total: int = 0  # second looks at sockets one scan missed
    last_scan_time: str | None = None
    last_scan_duration_ms: float | None = None
    scan_error: str | None = None
    events_by_type: dict[str, int] = field(default_factory=dict)
    detections: dict[str, int] = field(default_factory=dict)


class Confirmation:
    """Departures believed only once a second look confirms them.

    Neither a sock_diag dump nor a /proc/net read is an atomic snapshot:
    the kernel resumes each chunk at a hash bucket and an index into it, so
    a socket removed before that index in the same bucket shifts a stable
    socket past the cut, and one read misses it (or lists it twice). A
    departure is therefore believed only when a second look misses the
    socket too; sockets the second look sees are kept. Where a re-read is
    no independent look (/proc), a socket must also be missed by the next
    step's looks: until then it is a suspect, and stays.
    """

    def __init__(self, stats: EngineStats) -> None:
        self._stats = stats
        self._suspects: set[int] = set()

    def reset(self) -> None:
        self._suspects.clear()

    def confirm(
        self, scanner: Scanner, endpoints: list[Endpoint], watched: Mapping[int, Endpoint]
    ) -> list[Endpoint]:
        """`endpoints` (one look) with the watched sockets it missed but a
        second look saw, or that are still only suspects. Raises ScanError."""
        seen = {endpoint.inode for endpoint in endpoints}
        if all(inode in seen for inode in watched):
            self._suspects.clear()
            return endpoints
        again = scanner.scan()
        self._stats.confirmations_total += 1
        confirmed = endpoints + [endpoint for endpoint in again if endpoint.inode not in seen]
        if scanner.rereads_independent:
            return confirmed
        seen.update(endpoint.inode for endpoint in again)
        missing = {inode for inode in watched if inode not in seen}
        kept = missing - self._suspects
        self._suspects = kept
        return confirmed + [watched[inode] for inode in sorted(kept)]
