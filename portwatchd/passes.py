"""A pass of the engine: what one look found, waiting for its owners, and
how its events are cut into store transactions. Pure data and functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portwatchd.diff import Change, Snapshot
from portwatchd.model import Detection, Endpoint, EventDraft, Owner


@dataclass(slots=True)
class Pass:
    """One scan's results, waiting for the owners of its new sockets."""

    endpoints: list[Endpoint]
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
