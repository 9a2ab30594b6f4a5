"""events.db itself: its schema, opening it, its rows and its queries.

The schema is a documented read-only interface (README, "The event store";
portwatchd(8), FILES): people query it with sqlite3. Change it only by
raising SCHEMA_VERSION (kept in `PRAGMA user_version`) with a migration.
Adapter code for `portwatchd.store.Store`; errors are the caller's to
translate.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
from datetime import UTC, datetime
from typing import Any

from portwatchd.logstore import Batch, EventFilter, normal_time
from portwatchd.model import Event
from portwatchd.text import printable_name

SCHEMA_VERSION = 1
TABLES = frozenset({"events", "sockets", "meta", "losses"})

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


class CorruptError(Exception):
    """events.db is not a database this portwatchd can use: to be set aside."""


def check_schema(connection: sqlite3.Connection) -> bool:
    """True for an empty database, False for ours; CorruptError for anything else.

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
        raise CorruptError(f"schema version {version}, not {SCHEMA_VERSION}{newer}")
    missing = TABLES - tables
    if missing:
        raise CorruptError(f"table(s) {', '.join(sorted(missing))} missing")
    return False


def create_schema(connection: sqlite3.Connection) -> None:
    # One transaction: a crash leaves either no schema or all of it.
    connection.executescript(
        f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
    )


_CORRUPT = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})
_HINTS = {
    "SQLITE_FULL": "free space on its file system",
    "SQLITE_READONLY": "make it and its directory writable for portwatchd",
    "SQLITE_CANTOPEN": "check that it is a file portwatchd can create and write",
    "SQLITE_IOERR": "check the disk (dmesg)",
}


def describe(error: BaseException) -> str:
    """The reason of a failure, with what to do where SQLite's code says it."""
    if isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", "") or ""
        hint = next((h for code, h in _HINTS.items() if name.startswith(code)), "")
        return str(error) + (f"; {hint}" if hint else "")
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def connect(path: str) -> tuple[sqlite3.Connection, bool]:
    """Open events.db (WAL, synchronous=FULL) and whether it was created now.

    CorruptError for a file that is not a usable database (checked before
    anything is written to it); sqlite3.Error or OSError otherwise.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "it is a directory; remove it")
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        empty = check_schema(connection)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        if empty:
            create_schema(connection)
        truncated = truncation(connection, path)
        if truncated:
            raise CorruptError(truncated)
        # The newest row and meta: what every write builds on; damage shows here.
        connection.execute("SELECT time_reached FROM events ORDER BY seq DESC LIMIT 1").fetchall()
        connection.execute("SELECT name, value FROM meta").fetchall()
    except sqlite3.DatabaseError as error:
        connection.close()
        if getattr(error, "sqlite_errorname", "") in _CORRUPT:
            raise CorruptError(str(error)) from None
        raise
    except BaseException:
        connection.close()
        raise
    return connection, empty


def set_aside(path: str, now: datetime) -> str:
    """Rename events.db (and its -wal, -shm) to events.db.corrupt-<UTC time>; the new name."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = f"{path}.corrupt-{stamp}"
    counter = 1
    while os.path.lexists(target):
        counter += 1
        target = f"{path}.corrupt-{stamp}.{counter}"
    os.rename(path, target)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, target + suffix)
    return target


def write_sockets(connection: sqlite3.Connection, batch: Batch) -> None:
    if batch.replace_sockets:
        connection.execute("DELETE FROM sockets")
    gone = [(printable_name(k), i) for (k, i), v in batch.sockets.items() if v is None]
    held = [
        (printable_name(k), i, to_json(v[0].to_dict()), to_json(v[1].to_dict()))
        for (k, i), v in batch.sockets.items()
        if v is not None
    ]
    connection.executemany("DELETE FROM sockets WHERE key = ? AND inode = ?", gone)
    connection.executemany(
        "INSERT OR REPLACE INTO sockets (key, inode, endpoint, owner) VALUES (?, ?, ?, ?)", held
    )


def prune_rows(
    connection: sqlite3.Connection, excess: int, before: str | None, max_rows: int, upto_seq: int
) -> int:
    """Delete the `excess` oldest events, then those older than `before`; at
    most max_rows, and none with a seq above `upto_seq`."""
    deleted = 0
    excess = min(excess, max_rows)
    if excess > 0:
        # The cutoff is looked up first and the delete bounded by one number:
        # given two upper bounds on seq, SQLite ranged over the first (the
        # journaled seq, past every row) and read the whole table each step.
        row = connection.execute(
            "SELECT seq FROM events ORDER BY seq LIMIT 1 OFFSET ?", (excess - 1,)
        ).fetchone()
        if row is not None:
            cutoff = min(row[0], upto_seq)
            deleted += connection.execute("DELETE FROM events WHERE seq <= ?", (cutoff,)).rowcount
    if before is not None and deleted < max_rows:
        deleted += connection.execute(
            "DELETE FROM events WHERE seq IN"
            " (SELECT seq FROM events WHERE time < ? AND seq <= ? ORDER BY time LIMIT ?)",
            (before, upto_seq, max_rows - deleted),
        ).rowcount
    return deleted
