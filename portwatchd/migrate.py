"""The schema of events.db, and the one-time import of a 0.1 state.json.

The schema is a documented read-only interface (README, "The event store";
portwatchd(8), FILES): people query it with sqlite3. Change it only by
raising SCHEMA_VERSION (kept in `PRAGMA user_version`) with a migration.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from portwatchd.logstore import Batch, EventFilter, normal_time
from portwatchd.model import Event, printable_name, rfc3339
from portwatchd.state import STATE_FILE, State, load_state

SCHEMA_VERSION = 1
TABLES = frozenset({"events", "sockets", "meta", "losses"})
MIGRATED_SUFFIX = ".migrated"

# `time` is rfc3339() text (fixed width: text order is time order).
# `time_reached` is the latest time of this event and every one before it:
# it never decreases with seq, even when the clock stepped back, so a
# `since` query finds its first possible seq through an index.
SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    time TEXT NOT NULL,
    key TEXT NOT NULL,
    proto TEXT NOT NULL,
    port INTEGER NOT NULL,
    detected TEXT NOT NULL,
    time_reached TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_time_reached ON events (time_reached);
CREATE INDEX events_port ON events (port);
CREATE TABLE sockets (
    key TEXT NOT NULL,
    inode INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (key, inode)
) WITHOUT ROWID;
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE losses (
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    time TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


def to_json(value: dict[str, Any]) -> str:
    # ASCII: a stray surrogate in a name can then never fail the UTF-8 encoding.
    return json.dumps(value, separators=(",", ":"))


def event_row(event: Event, time_reached: str) -> tuple[Any, ...]:
    """One events row; time_reached is the latest time up to this event included."""
    return (
        event.seq,
        event.id,
        event.type,
        normal_time(event.time),
        printable_name(event.key),
        event.endpoint.proto,
        event.endpoint.port,
        event.detected,
        time_reached,
        to_json(event.to_dict()),
    )


def where_clause(wanted: EventFilter, after_seq: int, start: int) -> tuple[str, list[Any]]:
    """The WHERE clause for events matching `wanted` with seq > after_seq and >= start.

    The seq primary key walks the table, or for a port the port index (whose
    entries are in seq order for one port); `+time` keeps the planner off
    the time index. A page costs what it skips and returns, never a sort of
    the whole history. `start` is the first seq whose time_reached is
    at `since` or later: no event before it can match.
    """
    # One lower bound: SQLite walks the key from one bound and only filters by another.
    clauses = ["seq > ?"]
    params: list[Any] = [max(after_seq, start - 1)]
    for column, value in (
        ("+time >=", wanted.since),
        ("+time <=", wanted.until),
        ("type =", wanted.type),
        ("proto =", wanted.proto),
        ("port =", wanted.port),
    ):
        if value is not None:
            clauses.append(f"{column} ?")
            params.append(value)
    return " AND ".join(clauses), params


def truncation(connection: sqlite3.Connection, path: str) -> str | None:
    """Why the database file is shorter than its header says, or None."""
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        return None  # the missing pages may be in the WAL
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    expected = pages * connection.execute("PRAGMA page_size").fetchone()[0]
    actual = os.path.getsize(path)
    return f"truncated: {actual} of {expected} bytes" if actual < expected else None


class WrongSchemaError(Exception):
    """events.db is a database, but not one this portwatchd can use."""


def check_schema(connection: sqlite3.Connection) -> bool:
    """True for an empty database, False for ours; WrongSchemaError for anything else.

    Reads only: a file that is not ours is left exactly as it was found.
    """
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    tables = {
        name
        for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if version == 0 and not tables:
        return True
    if version != SCHEMA_VERSION:
        newer = " (written by a newer portwatchd?)" if version > SCHEMA_VERSION else ""
        raise WrongSchemaError(f"schema version {version}, not {SCHEMA_VERSION}{newer}")
    missing = TABLES - tables
    if missing:
        raise WrongSchemaError(f"table(s) {', '.join(sorted(missing))} missing")
    return False


def create_schema(connection: sqlite3.Connection) -> None:
    # One transaction: a crash leaves either no schema or all of it.
    connection.executescript(
        f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
    )


def import_state_json(
    state_dir: str, *, empty: bool, done: bool, write: Callable[[Batch], None]
) -> list[str]:
    """Import a 0.1 state.json into an empty store with `write`, then rename it.

    The snapshot becomes the saved sockets, last_seq the seq watermark, the
    ring the first events. `done` (the store says it imported one before,
    and the rename was lost to a crash) and a store that already holds a
    history only rename it. The warnings to log.
    """
    state, alive, warnings = read_state_json(state_dir)
    if state is None:
        return warnings
    if done:
        note = "already imported"
    elif not empty:
        note = "not imported: events.db already holds a history"
    else:
        write(
            Batch(
                events=state.ring,
                sockets={(e.key, e.inode): (e, o) for e, o in state.snapshot},
                replace_sockets=True,
                last_seq=state.last_seq,
                reserved_seq=state.last_seq,
                journaled_seq=state.journaled_seq,
                last_alive=alive,
            )
        )
        note = f"imported {len(state.ring)} events and {len(state.snapshot)} sockets"
    target = retire_state_json(state_dir)
    return [*warnings, f"0.1 state {STATE_FILE}: {note}; renamed it {target}"]


def read_state_json(state_dir: str) -> tuple[State | None, str | None, list[str]]:
    """A 0.1 state.json waiting to be imported: (state, last alive, warnings).

    A corrupt one is moved aside by state.load_state (with a warning); none
    at all is (None, None, []).
    """
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        return None, None, []
    try:
        # 0.1's heartbeat touched the file: its mtime is when that run was last alive.
        alive: str | None = rfc3339(datetime.fromtimestamp(os.stat(path).st_mtime, UTC))
    except OSError:
        alive = None
    state, warning = load_state(state_dir)
    warnings = [warning] if warning else []
    if state is not None and alive is None:
        alive = state.saved_at
    return state, alive, warnings


def retire_state_json(state_dir: str) -> str:
    """Rename state.json once its content is in events.db; the new name."""
    path = os.path.join(state_dir, STATE_FILE)
    target = path + MIGRATED_SUFFIX
    os.replace(path, target)
    return target
