"""events.db on real files: its schema as people query it, failures, corruption, 0.1 import.

Full and read-only file systems are real: a tmpfs mounted in a private
mount namespace (tests/mountns.py), as root; elsewhere those tests skip.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd.log import EventLog
from portwatchd.model import Endpoint, Event, Loss, Owner
from portwatchd.state import STATE_FILE, State, save_state
from portwatchd.store import DB_FILE, Store
from tests.mountns import mount_tmpfs, mountns_unavailable_reason, private_mounts, remount
from tests.test_log import ANY, draft, filled, open_log, seqs

MOMENT = datetime(2026, 11, 30, 9, 15, 2, tzinfo=UTC)
SSH = Endpoint("tcp", "ipv4", "0.0.0.0", 22, inode=101, uid=0)
SSHD = Owner(pid=700, pids=(700,), comm="sshd", exe="/usr/sbin/sshd", uid=0, user="root")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own, in a private mount namespace."""
    reason = mountns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    with private_mounts():
        mount_tmpfs(str(mountpoint), "256k")
        yield mountpoint


def sql(directory: Path, query: str) -> list[tuple[Any, ...]]:
    """What a person gets from `sqlite3 events.db 'select ...'`, read-only."""
    connection = sqlite3.connect(f"file:{directory / DB_FILE}?mode=ro", uri=True)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def test_the_schema_is_what_the_readme_documents(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([draft(1), draft(2, "closed", "udp", 53)], added=[(SSH, SSHD)])
    log.close()
    assert sql(tmp_path, "PRAGMA user_version") == [(1,)]
    rows = sql(tmp_path, "SELECT seq, id, type, time, key, proto, port, detected FROM events")
    assert rows == [
        (1, "id-1", "opened", "2026-11-25T14:01:00.000000Z", "tcp:0.0.0.0:22", "tcp", 22, "scan"),
        (2, "id-2", "closed", "2026-11-25T14:02:00.000000Z", "udp:0.0.0.0:53", "udp", 53, "scan"),
    ]
    (text,) = sql(tmp_path, "SELECT json FROM events WHERE seq = 2")[0]
    assert Event.from_dict(json.loads(text)) == log.page(ANY, 1, 1)[0]
    (endpoint, owner) = sql(tmp_path, "SELECT endpoint, owner FROM sockets")[0]
    assert (Endpoint.from_dict(json.loads(endpoint)), Owner.from_dict(json.loads(owner))) == (
        SSH,
        SSHD,
    )
    meta = dict(sql(tmp_path, "SELECT name, value FROM meta"))
    assert meta["last_seq"] == meta["reserved_seq"] == 2
    assert sql(tmp_path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command")
def test_the_sqlite3_command_reads_it_while_the_log_holds_it_open(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([draft(1), draft(2, "closed", "udp", 53)])
    shown = subprocess.run(
        [
            "sqlite3",
            "-readonly",
            str(tmp_path / DB_FILE),
            "select seq, type, key from events where port = 53",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == "2|closed|udp:0.0.0.0:53\n"


def test_every_write_is_committed_before_append_returns(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([draft(1)])
    # Another connection (another process could do the same) sees it at once.
    assert sql(tmp_path, "SELECT seq FROM events") == [(1,)]


def test_events_db_being_a_directory_keeps_events_in_memory_until_it_is_gone(
    tmp_path: Path,
) -> None:
    (tmp_path / DB_FILE).mkdir()
    log = open_log(tmp_path, journal_last_seq=lambda: 7)
    assert log.store_error is not None
    assert f"cannot open {tmp_path / DB_FILE}" in log.store_error
    assert "is a directory" in log.store_error
    assert log.is_new and any("keeping new events in memory" in w for w in log.warnings)
    seen: list[Any] = []
    log.subscribe(seen.append)
    events = log.append([draft(1), draft(2)], added=[(SSH, SSHD)])
    assert seqs(events) == [8, 9] and seen == [events]  # above the journal, and announced
    assert log.page(ANY, 0, 10) == events and log.count == 2
    (tmp_path / DB_FILE).rmdir()
    log.heartbeat("2026-11-25T15:00:00.000000Z")
    assert log.store_error is None
    assert sql(tmp_path, "SELECT seq FROM events") == [(8,), (9,)]
    assert [(x.from_seq, x.to_seq) for x in log.losses(0, 100)] == [(1, 7)]
    log.close()
    again = open_log(tmp_path)
    assert again.page(ANY, 0, 10) == events and again.sockets() == [(SSH, SSHD)]


def test_a_store_that_returns_holding_seqs_this_run_reused_is_set_aside(
    tmp_path: Path,
) -> None:
    filled(tmp_path, 3)  # killed: seqs up to 1003 are reserved
    (tmp_path / DB_FILE).rename(tmp_path / "away.db")
    (tmp_path / DB_FILE).mkdir()
    log = EventLog(
        Store.open(str(tmp_path), now=lambda: MOMENT),
        history_size=100,
        history_max_age_s=None,
        journal_last_seq=lambda: 3,  # the journal had only what was stored
    )
    events = log.append([draft(4)])
    assert seqs(events) == [4]
    (tmp_path / DB_FILE).rmdir()
    (tmp_path / "away.db").rename(tmp_path / DB_FILE)
    log.heartbeat("2026-11-25T15:00:00.000000Z")
    assert log.store_error is None
    moved = tmp_path / "events.db.corrupt-20261130T091502Z"
    assert any(f"moved it to {moved}" in w and "this run also used" in w for w in log.warnings)
    assert moved.is_file()
    assert log.page(ANY, 0, 10) == events
    assert [(x.from_seq, x.to_seq) for x in log.losses(0, 10)] == [(1, 3)]


def test_a_full_disk_keeps_events_and_stores_them_once_there_is_room(tmpfs: Path) -> None:
    state = tmpfs / "state"
    log = open_log(state)
    filler = tmpfs / "filler"
    with pytest.raises(OSError, match="No space left"), filler.open("wb") as file:
        file.write(b"x" * 1024 * 1024)
    minted: list[Event] = []
    while log.store_error is None and len(minted) < 2000:
        minted += log.append([draft(len(minted))])
    assert log.store_error is not None, "the tmpfs never filled up"
    assert f"cannot write {state / DB_FILE}: database or disk is full" in log.store_error
    assert "free space" in log.store_error
    minted += log.append([draft(1), draft(2)])
    assert seqs(minted) == list(range(1, len(minted) + 1))
    assert log.page(ANY, 0, 10_000) == minted and log.count == len(minted)
    filler.unlink()
    log.heartbeat("2026-11-25T15:00:00.000000Z")
    assert log.store_error is None
    log.close()
    assert open_log(state).page(ANY, 0, 10_000) == minted


def test_a_full_disk_then_kill_reuses_no_seq_and_announces_the_gap(tmpfs: Path) -> None:
    state = tmpfs / "state"
    log = open_log(state)
    stored = log.append([draft(n) for n in range(20)])
    assert log.store_error is None
    with pytest.raises(OSError), (tmpfs / "filler").open("wb") as file:
        file.write(b"x" * 1024 * 1024)
    minted = [event for n in range(300) for event in log.append([draft(n % 50)])]
    assert log.store_error is not None
    del log  # kill -9: nothing more is written
    (tmpfs / "filler").unlink()
    # The journal writer may lag: the durable reservation alone keeps seqs unique.
    again = open_log(state, journal_last_seq=lambda: None)
    after = again.append([draft(1)])
    assert after[0].seq > minted[-1].seq
    held = again.page(ANY, 0, 10_000)
    assert held == [*stored, *after]
    (loss,) = again.losses(0, 10**9)
    assert loss.from_seq == stored[-1].seq + 1 and loss.to_seq == after[0].seq - 1


def test_a_read_only_file_system_heals_without_a_restart(tmpfs: Path) -> None:
    state = tmpfs / "state"
    filled(state, 3).close()
    remount(str(tmpfs), "ro")
    log = open_log(state)
    event = log.append([draft(4)])
    assert log.store_error is not None and str(state / DB_FILE) in log.store_error
    assert seqs(log.page(ANY, 0, 10))[-1] == event[0].seq
    remount(str(tmpfs), "rw")
    log.append([])
    log.heartbeat("2026-11-25T15:00:00.000000Z")
    assert log.store_error is None
    log.close()
    assert seqs(open_log(state).page(ANY, 0, 10))[-1] == event[0].seq


def test_past_the_memory_bound_the_oldest_unstored_events_become_a_loss(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).mkdir()
    log = open_log(tmp_path, max_unstored=3)
    seen: list[Any] = []
    log.subscribe(seen.append)
    log.append([draft(n) for n in range(5)])
    log.append([draft(6)])
    assert seqs(log.page(ANY, 0, 10)) == [4, 5, 6]
    dropped = [item for batch in seen for item in batch if isinstance(item, Loss)]
    assert [(x.from_seq, x.to_seq) for x in dropped] == [(1, 2), (3, 3)]
    assert [(x.from_seq, x.to_seq) for x in log.losses(0, 10)] == [(1, 3)]
    assert "oldest were dropped" in dropped[0].reason


def _set_version(path: Path, version: int) -> None:
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {version}")
    connection.close()


def _other_schema(path: Path) -> None:
    path.unlink()
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (text)")
    connection.close()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda path: path.write_bytes(b"not a database at all\n" * 100), id="garbage"),
        pytest.param(lambda path: os.truncate(path, os.path.getsize(path) // 2), id="truncated"),
        pytest.param(lambda path: _set_version(path, 7), id="newer-schema"),
        pytest.param(_other_schema, id="other-schema"),
    ],
)
def test_a_corrupt_store_is_moved_aside_and_seqs_continue(tmp_path: Path, damage: Any) -> None:
    filled(tmp_path, 200).close()
    path = tmp_path / DB_FILE
    damage(path)
    before = path.read_bytes()
    log = EventLog(
        Store.open(str(tmp_path), now=lambda: MOMENT),
        history_size=10,
        history_max_age_s=None,
        journal_last_seq=lambda: 200,
    )
    moved = tmp_path / "events.db.corrupt-20261130T091502Z"
    assert moved.read_bytes() == before
    assert any(f"moved it to {moved}" in warning for warning in log.warnings)
    assert log.is_new and log.count == 0 and log.store_error is None
    assert seqs(log.append([draft(1)])) == [201]


def state_01() -> State:
    ring = [
        Event(41, "id-41", "opened", "2026-11-25T14:00:00.000000Z", SSH, SSHD),
        Event(42, "id-42", "closed", "2026-11-25T14:01:00.000000Z", SSH, detected="startup"),
    ]
    return State(45, 41, [(SSH, SSHD)], ring, "2026-11-25T14:02:00.000000Z")


def test_a_01_state_json_is_imported_once_and_renamed(tmp_path: Path) -> None:
    save_state(str(tmp_path), state_01())  # the 0.1 code writes it
    os.utime(tmp_path / STATE_FILE, (1764600000, 1764600000))
    log = open_log(tmp_path)
    assert not log.is_new
    assert log.page(ANY, 0, 10) == list(state_01().ring)
    assert log.sockets() == [(SSH, SSHD)]
    assert (log.last_seq, log.journaled_seq) == (45, 41)
    assert log.last_alive == "2025-12-01T14:40:00.000000Z"  # the 0.1 heartbeat's mtime
    assert any("imported 2 events and 1 sockets" in w for w in log.warnings)
    assert not (tmp_path / STATE_FILE).exists()
    assert (tmp_path / "state.json.migrated").exists()
    assert seqs(log.append([draft(1)])) == [46]
    log.close()
    # A crash between the import and the rename: the file is back, not imported twice.
    shutil.copy(tmp_path / "state.json.migrated", tmp_path / STATE_FILE)
    again = open_log(tmp_path)
    assert seqs(again.page(ANY, 0, 10)) == [41, 42, 46]
    assert any("already imported" in w for w in again.warnings)


def test_a_corrupt_01_state_json_is_moved_aside_not_imported(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text('{"format": "portwatchd-state", "vers')
    log = open_log(tmp_path)
    assert log.is_new and log.count == 0
    assert any("state.json is corrupt" in w for w in log.warnings)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]


operations = st.lists(
    st.sampled_from(["append", "append", "crash", "close", "blind", "heal", "corrupt"]),
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_no_seq_is_ever_handed_out_twice(tmp_path_factory: Any, steps: list[str]) -> None:
    """Whatever happens to the store between runs, a seq names one event only.

    The journal is a subscriber (it hears every event as it is minted), as
    the journal writer will be; its last seq is consulted only when the
    store was lost.
    """
    directory = tmp_path_factory.mktemp("seqs")
    path = directory / DB_FILE
    journal: dict[int, str] = {}
    counter = itertools.count()

    def journal_send(items: Any) -> None:
        for item in items:
            if isinstance(item, Event):
                assert journal.setdefault(item.seq, item.id) == item.id, f"seq {item.seq} reused"

    def start(journal_read: bool = False) -> EventLog:
        # The journal is read only when the store's own record is gone: the
        # reservation alone must carry the seqs across crashes and restarts.
        store_lost = journal_read or not path.is_file()
        last = max(journal, default=None) if store_lost else None
        log = open_log(directory, journal_last_seq=lambda: last)
        log.subscribe(journal_send)
        return log

    log = start()
    for step in steps:
        if step == "append":
            log.append([draft(next(counter) % 50) for _ in range(3)])
            continue
        if step == "close":
            log.close()
        elif step == "blind" and path.is_file():
            log.close()
            path.rename(directory / "away.db")
            path.mkdir()
            log = start(journal_read=True)
            continue
        elif step == "heal" and path.is_dir():
            path.rmdir()
            if (directory / "away.db").exists():
                (directory / "away.db").rename(path)
            log.heartbeat("2026-11-25T15:00:00.000000Z")
            continue
        elif step == "corrupt" and path.is_file():
            log.close()
            path.write_bytes(b"garbage")
            log = start(journal_read=True)
            continue
        log = start()
    stored = log.page(ANY, 0, 100_000)
    assert all(journal[event.seq] == event.id for event in stored)
    assert seqs(stored) == sorted(set(seqs(stored)))
