"""events.db with a long history, as a long run leaves it, built quickly.

The schema is the store's own (`Store.open` makes it); the rows are
generated inside SQLite by one INSERT ... SELECT over a recursive counter,
so a million events take seconds of C rather than a Python loop. Each
row's `json` is an `Event.to_dict()` (one event a second up to now, opened
and closed in turn, 60,000 ports). bench/store.py builds the same file
for the benchmark; this one lives under tests/ because the package build
runs the tests without bench/.
"""

from __future__ import annotations

import os
import sqlite3
import time

from portwatchd.store import DB_FILE, Store

_EVENT_JSON = (
    'printf(\'{"seq":%d,"id":"%s","type":"%s","time":"%s","detected":"scan",'
    '"down_since":null,"key":"%s","proto":"tcp","family":"ipv4","address":"0.0.0.0",'
    '"port":%d,"interface":"","v6only":null,"inode":%d,"uid":0,"owner":{"pid":%d,'
    '"pids":[%d],"comm":"server","exe":"/usr/bin/server","cmdline":"/usr/bin/server",'
    '"uid":0,"user":"root","unit":"server.service"}}\', '
    "seq, id, type, time, key, port, seq, pid, pid)"
)

_INSERT_EVENTS = f"""
WITH RECURSIVE counter(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM counter WHERE seq < ?),
rows AS (
    SELECT seq,
           printf('%08x-0000-4000-8000-000000000000', seq) AS id,
           CASE seq % 2 WHEN 1 THEN 'opened' ELSE 'closed' END AS type,
           strftime('%Y-%m-%dT%H:%M:%S.000000Z', ? + seq, 'unixepoch') AS time,
           'tcp:0.0.0.0:' || (1024 + seq % 60000) AS key,
           1024 + seq % 60000 AS port,
           seq % 4000 AS pid
    FROM counter
)
INSERT INTO events SELECT seq, id, type, time, key, 'tcp', port, 'scan', time, {_EVENT_JSON}
FROM rows
"""

# A run that stored `count` events, journaled them all and stopped cleanly.
_META_AT_COUNT = ("last_seq", "reserved_seq", "event_count", "journaled_seq")


def build_journaled_history(state_dir: str, count: int) -> None:
    """`count` events in state_dir/events.db, every one of them already journaled."""
    os.makedirs(state_dir, exist_ok=True)
    Store.open(state_dir).close()
    connection = sqlite3.connect(os.path.join(state_dir, DB_FILE), isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = OFF")  # scratch data: speed over safety
        connection.execute("BEGIN")
        connection.execute(_INSERT_EVENTS, (count, int(time.time()) - count))
        connection.executemany(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
            [(name, count) for name in _META_AT_COUNT],
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
