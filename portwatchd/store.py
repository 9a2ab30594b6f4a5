"""The durable event store: events.db in the state directory (SQLite, WAL).

The adapter behind `portwatchd.log.EventLog`: every `sqlite3.Error` and
`OSError` becomes a StoreError naming the file, the reason and what to do.
`Store.open` never fails: a store that cannot be opened now is opened by
the first call that can (load, write, ...), so a full or read-only file
system heals without a restart.

Durability: WAL, one transaction per write. Every commit survives a
kill -9 at once (SQLite's WAL is in the kernel's page cache when COMMIT
returns). A write with `durable=True` (synchronous=FULL) also waits for
the disk, and makes every commit before it survive a power loss; one
without (synchronous=NORMAL) does not wait, so that an event reaches its
clients without an fsync in the way. The log decides which writes wait.

A file that is not a database, is damaged, or holds another schema is
renamed events.db.corrupt-<UTC time> (never deleted) and a new one is
started; a 0.1 state.json is imported once and renamed state.json.migrated.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from portwatchd import migrate, storefile
from portwatchd.logstore import (
    Batch,
    EventFilter,
    PruneResult,
    StoredState,
    StoreError,
    normal_time,
)
from portwatchd.model import Endpoint, Event, Loss, Owner, utc_now
from portwatchd.protocol import is_id_prefix
from portwatchd.state import STATE_FILE

__all__ = ["DB_FILE", "Store", "StoreError"]

DB_FILE = "events.db"
_EVENT_INSERT = (
    "INSERT OR IGNORE INTO events"
    " (seq, id, type, time, key, proto, port, detected, time_reached, json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_META_SET = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"


def place_clauses(wanted: EventFilter) -> tuple[str, list[Any]]:
    """SQL for the netns/container/host_only filters, on the stored event JSON.

    The same test as protocol.EventQuery.matches_place. Events stored before
    namespaces were watched carry no place: they are the host's.
    """
    netns = "coalesce(json_extract(json, '$.netns'), 0)"
    name = "json_extract(json, '$.netns_name')"
    container = "json_extract(json, '$.container')"
    clauses: list[str] = []
    params: list[Any] = []
    if wanted.host_only:
        clauses.append(f"{netns} = 0")
    if wanted.netns is not None:
        if wanted.netns.isdigit():
            clauses.append(f"({netns} = ? OR json_extract(json, '$.netns_inode') = ?)")
            params += [int(wanted.netns), int(wanted.netns)]
        else:
            clauses.append(f"{name} = ?")
            params.append(wanted.netns)
    if wanted.container is not None:
        tests = [f"{container} = ?", f"{name} = ?"]
        params += [wanted.container, wanted.container]
        if is_id_prefix(wanted.container):
            tests.append(f"substr({container}, 1, ?) = ?")
            params += [len(wanted.container), wanted.container]
        clauses.append(f"({container} IS NOT NULL AND ({' OR '.join(tests)}))")
    return " AND ".join(clauses), params


class Store:
    """events.db, opened lazily; only the loop thread uses it."""

    def __init__(self, state_dir: str, now: Callable[[], datetime] = utc_now) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, DB_FILE)
        self._now = now
        self._connection: sqlite3.Connection | None = None
        self._durable = True  # the connection's synchronous: FULL (storefile.connect's)
        self._warnings: list[str] = []
        self._fresh = False
        self._count = 0
        self._time_reached = ""

    @classmethod
    def open(cls, state_dir: str, *, now: Callable[[], datetime] = utc_now) -> Store:
        """The store of `state_dir`, opened now if it can be (else at first use)."""
        store = cls(state_dir, now)
        with contextlib.suppress(StoreError):
            store._open()
        return store

    def take_warnings(self) -> list[str]:
        warnings, self._warnings = self._warnings, []
        return warnings

    # -- opening ---------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(f"cannot {doing} {self.path}: {storefile.describe(error)}") from None

    def _open(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        with self._translated("open"):
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            try:
                connection, self._fresh = storefile.connect(self.path)
            except storefile.CorruptError as error:
                self._warnings.append(self._move_aside(str(error)))
                connection, self._fresh = storefile.connect(self.path)
        try:
            with self._translated("read"):
                self._read_tail(connection)
            with self._translated("import the 0.1 state into"):
                self._import_state_json(connection)
        except StoreError:
            connection.close()
            raise
        self._connection = connection
        self._durable = True
        return connection

    def _read_tail(self, connection: sqlite3.Connection) -> None:
        row = connection.execute(
            "SELECT time_reached FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        self._time_reached = row[0] if row else ""
        count = connection.execute("SELECT value FROM meta WHERE name = 'event_count'").fetchone()
        self._count = int(count[0]) if count else 0

    def move_aside(self, reason: str) -> str:
        """Rename events.db (and its -wal, -shm) to events.db.corrupt-<UTC time>."""
        with self._translated("set aside"):
            return self._move_aside(reason)

    def _move_aside(self, reason: str) -> str:
        self.close()
        target = storefile.set_aside(self.path, self._now())
        return (
            f"{self.path} could not be used ({reason}); moved it to {target} and started"
            " a new history; seqs continue above the last one journaled"
        )

    def _import_state_json(self, connection: sqlite3.Connection) -> None:
        done = connection.execute("SELECT 1 FROM meta WHERE name = 'migrated_from'").fetchone()

        def write(batch: Batch) -> None:
            self._write(connection, batch, extra_meta={"migrated_from": STATE_FILE})
            self._fresh = False

        self._warnings.extend(
            migrate.import_state_json(
                self.state_dir, empty=self._fresh, done=done is not None, write=write
            )
        )

    def _live(self) -> sqlite3.Connection:
        connection = self._connection
        if connection is None:
            connection = self._open()
        return connection

    # -- the write side --------------------------------------------------------

    def load(self) -> StoredState:
        connection = self._live()
        with self._translated("read"):
            meta = dict(connection.execute("SELECT name, value FROM meta").fetchall())
            # Apart: SQLite answers a lone MIN or MAX from the key, a pair by a scan.
            (low,) = connection.execute("SELECT MIN(seq) FROM events").fetchone()
            (high,) = connection.execute("SELECT MAX(seq) FROM events").fetchone()
            (lost,) = connection.execute("SELECT MAX(to_seq) FROM losses").fetchone()
            sockets = [
                (Endpoint.from_dict(json.loads(e)), Owner.from_dict(json.loads(o)))
                for e, o in connection.execute("SELECT endpoint, owner FROM sockets")
            ]
            last_seq = max(int(meta.get("last_seq", 0)), high or 0, lost or 0)
            reserved = int(meta.get("reserved_seq", 0))
            return StoredState(
                fresh=self._fresh,
                last_seq=last_seq,
                reserved_seq=reserved,
                top_seq=max(last_seq, reserved),
                journaled_seq=int(meta.get("journaled_seq", 0)),
                last_alive=meta.get("last_alive"),
                count=self._count,
                oldest_seq=low,
                sockets=sockets,
            )

    def write(self, batch: Batch, *, durable: bool = True) -> None:
        """Store everything in `batch` in one transaction; `durable`: wait for the disk."""
        connection = self._live()
        with self._translated("write"):
            self._wait_for_disk(connection, durable)
            self._write(connection, batch)

    def _write(
        self,
        connection: sqlite3.Connection,
        batch: Batch,
        extra_meta: dict[str, Any] | None = None,
    ) -> None:
        reached = self._time_reached
        rows = []
        for event in batch.events:
            reached = max(reached, normal_time(event.time))
            rows.append(storefile.event_row(event, reached))
        meta = {
            "last_seq": batch.last_seq,
            "reserved_seq": batch.reserved_seq,
            "journaled_seq": batch.journaled_seq,
            "last_alive": batch.last_alive,
            **(extra_meta or {}),
        }
        connection.execute("BEGIN IMMEDIATE")
        try:
            added = connection.executemany(_EVENT_INSERT, rows).rowcount if rows else 0
            connection.executemany(
                "INSERT INTO losses (from_seq, to_seq, time, reason) VALUES (?, ?, ?, ?)",
                [(x.from_seq, x.to_seq, x.time, x.reason) for x in batch.losses],
            )
            storefile.write_sockets(connection, batch)
            meta["event_count"] = self._count + added
            connection.executemany(_META_SET, list(meta.items()))
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        self._count += added
        self._time_reached = reached

    def prune(self, keep: int, before: str | None, max_rows: int, upto_seq: int) -> PruneResult:
        connection = self._live()
        with self._translated("prune"):
            # A deletion lost to a power loss is done again: nothing to wait for.
            self._wait_for_disk(connection, False)
            connection.execute("BEGIN IMMEDIATE")
            try:
                deleted = storefile.prune_rows(
                    connection, self._count - keep, before, max_rows, upto_seq
                )
                (oldest,) = connection.execute("SELECT MIN(seq) FROM events").fetchone()
                if oldest is not None:
                    connection.execute("DELETE FROM losses WHERE to_seq < ?", (oldest,))
                connection.execute(_META_SET, ("event_count", self._count - deleted))
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise
        self._count -= deleted
        return PruneResult(deleted, self._count, oldest, more=deleted >= max_rows > 0)

    def _wait_for_disk(self, connection: sqlite3.Connection, durable: bool) -> None:
        if durable != self._durable:
            connection.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    # -- the read side ---------------------------------------------------------

    def _where(self, wanted: EventFilter, after_seq: int) -> tuple[str, list[Any]] | None:
        """The WHERE clause of a query, None when nothing can match."""
        start = 0
        if wanted.since is not None:
            row = (
                self._live()
                .execute(
                    "SELECT seq FROM events WHERE time_reached >= ?"
                    " ORDER BY time_reached, seq LIMIT 1",
                    (wanted.since,),
                )
                .fetchone()
            )
            if row is None:
                return None
            start = row[0]
        clause, params = storefile.where_clause(wanted, after_seq, start)
        if wanted.filters_place:
            place_clause, place_params = place_clauses(wanted)
            clause, params = f"{clause} AND {place_clause}", [*params, *place_params]
        return clause, params

    def page(self, wanted: EventFilter, after_seq: int, limit: int) -> list[Event]:
        with self._translated("read"):
            where = self._where(wanted, after_seq)
            if where is None:
                return []
            rows = self._live().execute(
                f"SELECT json FROM events WHERE {where[0]} ORDER BY seq LIMIT ?",
                [*where[1], limit],
            )
            return [Event.from_dict(json.loads(text)) for (text,) in rows]

    def newest_match(self, wanted: EventFilter, skip: int) -> int | None:
        with self._translated("read"):
            where = self._where(wanted, 0)
            if where is None:
                return None
            row = (
                self._live()
                .execute(
                    f"SELECT seq FROM events WHERE {where[0]} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                    [*where[1], skip],
                )
                .fetchone()
            )
            return int(row[0]) if row else None

    def losses(self, after_seq: int, upto_seq: int) -> list[Loss]:
        with self._translated("read"):
            rows = self._live().execute(
                "SELECT from_seq, to_seq, time, reason FROM losses"
                " WHERE from_seq <= ? AND to_seq > ? ORDER BY from_seq, to_seq",
                (upto_seq, after_seq),
            )
            return [Loss(*row) for row in rows]
