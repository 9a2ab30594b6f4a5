"""Event store benchmark: the EventLog over events.db with a large history.

Set-up: a scratch state directory (under --store-dir, default the system's
temporary directory) with an events.db of --store-events events (default
1,000,000), written the fast way (one transaction, executemany, rows as the
store writes them), and an empty one beside it.

Measured, in interleaved rounds (bench/timing.py) so that both sides of
each ratio share the machine's load of the same moments:
- append: `EventLog.append` of one event, with the large history and with
  an empty one. Each is a durable commit (WAL, synchronous=FULL), so the
  fsync is part of it. Target: large <= 1.5x empty (medians);
- page: `events --limit 50` as the control handler asks it,
  page(query, newest_start(query, 50), 50), at the large history. Target:
  <= 10 ms (median);
- open: Store.open + EventLog(...) + close() of the large history (an empty
  one alongside). Target: <= 1 s (the issue's start-to-READY budget).

Run: `python -m bench store` (about 40 s, most of it building the file).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from bench.section import Check, SectionResult, format_ms, format_ratio, format_table
from bench.timing import Timing, time_methods
from portwatchd.log import SEQ_BLOCK, EventLog
from portwatchd.model import Endpoint, EventDraft, Owner, rfc3339
from portwatchd.protocol import EventQuery
from portwatchd.store import DB_FILE, Store

APPEND_MAX_RATIO = 1.5
PAGE_MAX_MS = 10.0
OPEN_MAX_MS = 1000.0
_ROW = (
    '{{"seq":{seq},"id":"{id}","type":"{type}","time":"{time}","detected":"scan",'
    '"down_since":null,"key":"tcp:0.0.0.0:{port}","proto":"tcp","family":"ipv4",'
    '"address":"0.0.0.0","port":{port},"interface":"","v6only":null,"inode":{seq},'
    '"uid":0,"owner":{{"pid":{pid},"pids":[{pid}],"comm":"server","exe":"/usr/bin/server",'
    '"cmdline":"/usr/bin/server --port {port}","uid":0,"user":"root",'
    '"unit":"server.service"}}}}'
)


def build_history(directory: str, count: int) -> None:
    """events.db holding `count` events, as if a long run had stored them (closed cleanly)."""
    Store.open(directory).close()  # the schema, as the store makes it
    connection = sqlite3.connect(os.path.join(directory, DB_FILE), isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")  # scratch data: speed over safety
    start = time.time() - count  # one event a second up to now
    rows = []
    connection.execute("BEGIN")
    for seq in range(1, count + 1):
        moment = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(start + seq))
        kind = "opened" if seq % 2 else "closed"
        port = 1024 + seq % 60000
        uid = f"{seq:08x}-0000-4000-8000-000000000000"
        text = _ROW.format(seq=seq, id=uid, type=kind, time=moment, port=port, pid=seq % 4000)
        key = f"tcp:0.0.0.0:{port}"
        rows.append((seq, uid, kind, moment, key, "tcp", port, "scan", moment, text))
        if len(rows) == 50_000:
            connection.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            rows.clear()
    connection.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    connection.executemany(
        "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
        [("last_seq", count), ("reserved_seq", count), ("event_count", count)],
    )
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def _open(directory: str, size: int) -> EventLog:
    return EventLog(Store.open(directory), history_size=size, history_max_age_s=None)


def _appender(log: EventLog) -> Callable[[], None]:
    """One event per call, and its socket, as the engine hands them over."""
    inodes = itertools.count(1)
    owner = Owner(pid=1, comm="bench")

    def append() -> None:
        endpoint = Endpoint("tcp", "ipv4", "127.0.0.1", 1, inode=next(inodes))
        draft = EventDraft("opened", endpoint, owner, rfc3339(datetime.now(UTC)))
        log.append([draft], added=[(endpoint, owner)])

    return append


def measure(args: argparse.Namespace, out: TextIO) -> SectionResult:
    count = args.store_events
    scratch = tempfile.mkdtemp(prefix="portwatchd-bench-store-", dir=args.store_dir)
    try:
        big, empty = os.path.join(scratch, "big"), os.path.join(scratch, "empty")
        began = time.monotonic()
        build_history(big, count)
        size_mb = os.path.getsize(os.path.join(big, DB_FILE)) / 1e6
        print(
            f"built {count:,} events in {time.monotonic() - began:.1f} s ({size_mb:.0f} MB)",
            file=out,
        )
        return _measure(big, empty, count, args.store_budget, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _open_close(directory: str, size: int) -> None:
    _open(directory, size).close()


def _measure(big: str, empty: str, count: int, budget: float, out: TextIO) -> SectionResult:
    os.makedirs(empty)
    opens = time_methods(
        {
            "open_big": lambda: _open_close(big, count),
            "open_empty": lambda: _open_close(empty, count),
        },
        budget_s=budget / 3,
        min_reps=5,
        max_reps=50,
    )
    big_log, empty_log = _open(big, count + 10 * SEQ_BLOCK), _open(empty, count)
    query = EventQuery()

    def page() -> None:
        events = big_log.page(query, big_log.newest_start(query, 50), 50)
        if len(events) != 50 or events[-1].seq != big_log.last_seq:
            raise RuntimeError("page(limit 50) did not return the 50 newest events")

    page()
    timings = time_methods(
        {"append_big": _appender(big_log), "append_empty": _appender(empty_log), "page_50": page},
        budget_s=budget,
        min_reps=20,
        max_reps=400,
    )
    big_log.close()
    empty_log.close()
    timings.update(opens)
    return _report(timings, count, out)


def _report(timings: dict[str, Timing], count: int, out: TextIO) -> SectionResult:
    rows = [
        [name, str(t.reps), format_ms(t.median_ms), format_ms(t.p90_ms)]
        for name, t in timings.items()
    ]
    print(format_table(["method", "reps", "median ms", "p90 ms"], rows), file=out)
    append_ratio = timings["append_big"].median_ms / timings["append_empty"].median_ms
    page_ms = timings["page_50"].median_ms
    open_ms = timings["open_big"].median_ms
    checks = [
        Check(
            f"append of one event with {count:,} events held <= {APPEND_MAX_RATIO}x empty",
            append_ratio <= APPEND_MAX_RATIO,
            f"{format_ratio(append_ratio)} ({format_ms(timings['append_big'].median_ms)} vs "
            f"{format_ms(timings['append_empty'].median_ms)} ms, medians)",
        ),
        Check(
            f"page(limit 50), newest, of {count:,} events <= {PAGE_MAX_MS:g} ms",
            page_ms <= PAGE_MAX_MS,
            f"{format_ms(page_ms)} ms median, {format_ms(timings['page_50'].p90_ms)} ms p90",
        ),
        Check(
            f"open of {count:,} events <= {OPEN_MAX_MS:g} ms",
            open_ms <= OPEN_MAX_MS,
            f"{format_ms(open_ms)} ms median (empty: {format_ms(timings['open_empty'].median_ms)})",
        ),
    ]
    records = [
        {
            "section": "store",
            "method": name,
            "events": count,
            "median_ms": t.median_ms,
            "p90_ms": t.p90_ms,
            "reps": t.reps,
        }
        for name, t in timings.items()
    ]
    return SectionResult(records=records, checks=checks)


def add_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument(
        "--store-events",
        type=int,
        default=1_000_000,
        metavar="N",
        help="events in the large history (default: %(default)s)",
    )
    group.add_argument(
        "--store-budget",
        type=float,
        default=8.0,
        metavar="S",
        help="seconds of timing after the build (default: %(default)s)",
    )
    group.add_argument(
        "--store-dir",
        default=None,
        metavar="DIR",
        help="where the scratch events.db goes (default: the temporary directory)",
    )


class StoreSection:
    name = "store"
    help = "events.db with 1,000,000 events: append vs empty, page(limit 50), open"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add_arguments(group)

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        return measure(args, out)


SECTION = StoreSection()
