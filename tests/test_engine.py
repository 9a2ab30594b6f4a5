"""The engine driven through its public step, on real sockets in a private
network namespace, a real owner resolver and a real event store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from portwatchd.classify import Judge
from portwatchd.engine import Engine
from portwatchd.log import EventLog
from portwatchd.lookup import Done, InlineLookup, LookupJob, run_job
from portwatchd.model import Endpoint, Event, Owner, Place
from portwatchd.protocol import EventQuery
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.store import Store
from tests.netns import netns_unavailable_reason

pytestmark = pytest.mark.skipif(
    netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())
)


def open_log(state_dir: Path) -> EventLog:
    return EventLog(Store.open(str(state_dir)), history_size=10_000, history_max_age_s=None)


def new_engine(log: EventLog, lookup: object = None, ignored: object = None) -> Engine:
    said: list[tuple[int, str]] = []
    engine = Engine(
        scanner=NetlinkScanner(),
        log=log,
        lookup=lookup or InlineLookup(OwnerResolver()),  # type: ignore[arg-type]
        judge=Judge(ignored=ignored or (lambda *_: False)),  # type: ignore[arg-type]
        say=lambda priority, message: said.append((priority, message)),
    )
    engine.said = said  # type: ignore[attr-defined]
    return engine


def events_of(log: EventLog) -> list[Event]:
    return log.page(EventQuery(), 0, 1000)


def listen(port: int = 0, *, reuseport: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def key_of(sock: socket.socket) -> str:
    return f"tcp:127.0.0.1:{sock.getsockname()[1]}"


class Child:
    """Another process listening on a port, until closed."""

    def __init__(self, port: int, *, reuseport: bool = False) -> None:
        code = (
            "import socket,sys\n"
            "s=socket.socket()\n"
            f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, {int(reuseport)})\n"
            f"s.bind(('127.0.0.1',{port})); s.listen(); print('ok', flush=True); sys.stdin.read()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ok\n"
        self.pid = self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def test_first_step_of_a_new_store_is_a_baseline_that_names_owners(
    netns: None, tmp_path: Path
) -> None:
    sock = listen()
    log = open_log(tmp_path)
    engine = new_engine(log)
    assert engine.step()
    assert events_of(log) == []
    [(endpoint, owner)] = engine.ports()
    assert endpoint.key == key_of(sock)
    assert owner.pid == os.getpid()
    assert any("baseline" in message for _, message in engine.said)  # type: ignore[attr-defined]
    sock.close()


def test_opened_then_closed_with_the_owner_it_had(netns: None, tmp_path: Path) -> None:
    log = open_log(tmp_path)
    engine = new_engine(log)
    engine.step()
    sock = listen()
    key = key_of(sock)
    engine.step()
    sock.close()
    engine.step()
    opened, closed = events_of(log)
    assert (opened.type, opened.key, opened.owner.pid) == ("opened", key, os.getpid())
    assert (closed.type, closed.key, closed.owner.pid) == ("closed", key, os.getpid())
    assert closed.seq == opened.seq + 1
    assert engine.ports() == []


def test_a_key_reopened_by_another_process_names_each_owner(netns: None, tmp_path: Path) -> None:
    log = open_log(tmp_path)
    engine = new_engine(log)
    engine.step()
    mine = listen()
    port = mine.getsockname()[1]
    engine.step()
    mine.close()
    child = Child(port)
    try:
        engine.step()
        [(_, owner)] = engine.ports()
        assert owner.pid == child.pid
    finally:
        child.close()
    engine.step()
    events = events_of(log)
    types_and_pids = [(event.type, event.owner.pid) for event in events]
    # The same program (this Python) reopened it within the restart grace.
    assert types_and_pids == [
        ("opened", os.getpid()),
        ("closed", os.getpid()),
        ("restarted", child.pid),
        ("closed", child.pid),
    ]
    assert events[2].previous_owner is not None
    assert events[2].previous_owner.pid == os.getpid()


def test_every_socket_of_a_shared_port_has_its_own_owner(netns: None, tmp_path: Path) -> None:
    log = open_log(tmp_path)
    engine = new_engine(log)
    engine.step()
    first = Child(0, reuseport=True)
    port = int(_port_of_pid(first.pid))
    children = [first] + [Child(port, reuseport=True) for _ in range(3)]
    try:
        engine.step()
        rows = engine.ports()
        assert len(rows) == 4
        assert sorted(owner.pid or 0 for _, owner in rows) == sorted(c.pid for c in children)
    finally:
        for child in children:
            child.close()


def _port_of_pid(pid: int) -> int:
    for endpoint in NetlinkScanner().scan():
        resolved = OwnerResolver().resolve([endpoint.inode])[endpoint.inode]
        if resolved.pid == pid:
            return endpoint.port
    raise AssertionError(f"no listener of pid {pid}")


def test_changes_while_stopped_are_startup_events_dated_by_the_last_run(
    netns: None, tmp_path: Path
) -> None:
    log = open_log(tmp_path)
    engine = new_engine(log)
    before = listen()
    engine.step()
    engine.step()
    log.heartbeat("2026-11-30T10:00:00.000000Z")
    engine.close()
    log.close()
    before_key = key_of(before)
    before.close()
    after = listen()
    log = open_log(tmp_path)
    engine = new_engine(log)
    engine.step()
    events = {(event.type, event.key): event for event in events_of(log)}
    closed = events[("closed", before_key)]
    opened = events[("opened", key_of(after))]
    assert closed.owner.pid == os.getpid()  # the owner saved with the socket
    assert {closed.detected, opened.detected} == {"startup"}
    assert opened.down_since == "2026-11-30T10:00:00.000000Z"
    after.close()


class DeferredLookup:
    """Holds each job until the test hands the result back, as the worker
    thread would, later."""

    def __init__(self) -> None:
        self.resolver = OwnerResolver()
        self.jobs: list[tuple[LookupJob, Done]] = []

    def submit(self, job: LookupJob, done: Done) -> None:
        self.jobs.append((job, done))

    def finish(self) -> None:
        job, done = self.jobs.pop(0)
        done(run_job(self.resolver, job, wait_max_s=0.0))

    def close(self) -> None:
        pass


def test_a_pass_waits_for_its_owners_without_blocking_and_in_order(
    netns: None, tmp_path: Path
) -> None:
    lookup = DeferredLookup()
    log = open_log(tmp_path)
    engine = new_engine(log, lookup)
    engine.step()
    # The baseline of an empty namespace has nothing to look up: no job.
    assert lookup.jobs == [] and engine.waiting_since is None
    sock = listen()
    assert engine.step()
    assert engine.waiting_since is not None
    assert events_of(log) == []  # nothing is reported before its owner is looked for
    assert not engine.step()  # the next pass waits for this one's continuation
    assert len(lookup.jobs) == 1
    lookup.finish()
    assert engine.waiting_since is None
    [opened] = events_of(log)
    assert (opened.type, opened.owner.pid) == ("opened", os.getpid())
    sock.close()
    engine.step()
    # A close needs no lookup (its owner is known): it is reported at once.
    assert lookup.jobs == [] and engine.waiting_since is None
    assert [(event.type, event.owner.pid) for event in events_of(log)] == [
        ("opened", os.getpid()),
        ("closed", os.getpid()),
    ]


def test_ignored_sockets_make_no_events_but_are_still_watched(netns: None, tmp_path: Path) -> None:
    log = open_log(tmp_path)

    def ignored(endpoint: Endpoint, owner: Owner, event: str, place: Place) -> bool:
        return owner.pid == os.getpid()

    engine = new_engine(log, ignored=ignored)
    engine.step()
    sock = listen()
    engine.step()
    assert events_of(log) == []
    assert [endpoint.key for endpoint, _ in engine.ports()] == [key_of(sock)]
    sock.close()


class HiddenOwnerLookup(DeferredLookup):
    """Runs each job at once, as the worker would, but cannot see who holds
    `hidden`: a socket the kernel holds, or a process in a PID namespace
    portwatchd cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[int] = set()
        self.asked: list[set[int]] = []

    def submit(self, job: LookupJob, done: Done) -> None:
        self.asked.append(set(job.wanted | job.retry) & self.hidden)
        result = run_job(self.resolver, job, wait_max_s=0.0)
        for inode in self.hidden:
            result.owners.pop(inode, None)
        done(result)


def test_a_socket_nobody_is_seen_holding_is_looked_for_less_and_less_often(
    netns: None, tmp_path: Path
) -> None:
    lookup = HiddenOwnerLookup()
    clock = [0.0]
    engine = Engine(
        scanner=NetlinkScanner(),
        log=open_log(tmp_path),
        lookup=lookup,
        judge=Judge(ignored=lambda *_: False),
        say=lambda priority, message: None,
        monotonic=lambda: clock[0],
    )
    engine.step()
    sock = listen()
    [endpoint] = [e for e in engine.scanner.scan() if e.key == key_of(sock)]
    lookup.hidden.add(endpoint.inode)
    looked_at = []
    for second in range(0, 40):
        clock[0] = float(second)
        lookup.asked.clear()
        engine.step()
        if any(lookup.asked):
            looked_at.append(second)
    # First sight, then after 2, 4, 8 and 16 more seconds.
    assert looked_at == [0, 2, 6, 14, 30]
    assert dict(engine.ports())[endpoint].pid is None
    sock.close()
