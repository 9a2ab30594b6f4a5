"""Owners kept true while a socket stays, and restarts named as such: the
engine driven through its public step, on real sockets and real processes
in a private network namespace, with a real owner resolver and store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portwatchd.classify import Judge
from portwatchd.engine import Engine
from portwatchd.log import EventLog
from portwatchd.lookup import InlineLookup
from portwatchd.model import Endpoint, Event, EventType, Owner, Place
from portwatchd.policy import IGNORE_KEYS, IgnoreRule, is_ignored
from portwatchd.protocol import EventQuery
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.store import Store


def new_engine(
    tmp_path: Path,
    *,
    restart_grace: float = 5.0,
    monotonic: Callable[[], float] | None = None,
    ignored: Callable[[Endpoint, Owner, EventType, Place], bool] = lambda *_: False,
) -> tuple[Engine, EventLog]:
    log = EventLog(Store.open(str(tmp_path)), history_size=10_000, history_max_age_s=None)
    extra = {} if monotonic is None else {"monotonic": monotonic}
    engine = Engine(
        scanner=NetlinkScanner(),
        log=log,
        # Every step checks owners, fd tables included: no waiting in tests.
        lookup=InlineLookup(OwnerResolver(fd_check_interval_s=0.0)),
        judge=Judge(ignored=ignored),
        say=lambda _priority, _message: None,
        restart_grace=restart_grace,
        owner_recheck_s=0.0,
        **extra,  # type: ignore[arg-type]
    )
    return engine, log


def events_of(log: EventLog) -> list[Event]:
    return log.page(EventQuery(), 0, 1000)


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=[int(arg) for arg in args if arg.isdigit()],
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def tell(proc: subprocess.Popen[str], line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


@pytest.fixture
def pids_to_kill() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_dead(pid: int) -> None:
    """Until a process that is not our child is a zombie or gone (its sockets closed)."""
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return


LISTEN_THEN_FORK_AND_EXIT = """
import os, socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
child = os.fork()
if child:
    print(child, flush=True)
    os._exit(0)
sys.stdout.close()
time.sleep(120)
"""


def test_a_parent_that_forks_and_exits_hands_its_port_to_the_child(
    netns: None, tmp_path: Path, pids_to_kill: list[int]
) -> None:
    engine, log = new_engine(tmp_path)
    engine.step()
    parent = spawn(LISTEN_THEN_FORK_AND_EXIT)
    port = int(read_line(parent))
    engine.step()
    tell(parent)
    child = int(read_line(parent))
    pids_to_kill.append(child)
    parent.wait()
    engine.step()
    [(endpoint, owner)] = engine.ports()
    assert owner.pid == child
    os.kill(child, signal.SIGKILL)
    wait_dead(child)
    engine.step()
    opened, changed, closed = events_of(log)
    assert (opened.type, opened.owner.pid) == ("opened", parent.pid)
    assert changed.type == "owner_changed"
    assert changed.key == endpoint.key == f"tcp:127.0.0.1:{port}"
    assert changed.previous_owner is not None and changed.previous_owner.pid == parent.pid
    assert changed.owner.pid == child
    assert (closed.type, closed.owner.pid) == ("closed", child)


RECEIVE_A_SOCKET = """
import socket, sys
channel = socket.socket(fileno=int(sys.argv[1]))
_, fds, _, _ = socket.recv_fds(channel, 16, 1)
print("got", len(fds), flush=True)
sys.stdin.read()
"""


def test_a_socket_handed_over_with_scm_rights_names_the_receiver(
    netns: None, tmp_path: Path
) -> None:
    engine, log = new_engine(tmp_path)
    engine.step()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    engine.step()
    mine, theirs = socket.socketpair()
    receiver = spawn(RECEIVE_A_SOCKET, str(theirs.fileno()))
    try:
        theirs.close()
        socket.send_fds(mine, [b"x"], [listener.fileno()])
        assert read_line(receiver) == "got 1"
        listener.close()  # the sender stays alive, without its copy
        engine.step()
        [(_, owner)] = engine.ports()
        assert owner.pid == receiver.pid
        opened, changed = events_of(log)
        assert opened.owner.pid == os.getpid()
        assert changed.type == "owner_changed"
        assert changed.previous_owner is not None
        assert changed.previous_owner.pid == os.getpid()
        assert changed.owner.pid == receiver.pid
    finally:
        receiver.kill()
        receiver.wait()
        mine.close()
    engine.step()
    assert [(e.type, e.owner.pid) for e in events_of(log)][-1] == ("closed", receiver.pid)


LISTEN_THEN_EXEC = """
import os, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
s.set_inheritable(True)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
os.execv("/bin/sleep", ["sleep", "120"])
"""


def test_an_exec_that_keeps_the_socket_names_the_new_program(netns: None, tmp_path: Path) -> None:
    engine, log = new_engine(tmp_path)
    engine.step()
    proc = spawn(LISTEN_THEN_EXEC)
    try:
        read_line(proc)
        engine.step()
        tell(proc)
        proc.stdout.close()  # type: ignore[union-attr]
        # Wait until the exec happened: the process's program is sleep.
        while os.readlink(f"/proc/{proc.pid}/exe") != "/usr/bin/sleep":
            pass
        engine.step()
        _opened, changed = events_of(log)
        assert changed.type == "owner_changed"
        assert changed.owner.pid == changed.previous_owner.pid == proc.pid  # type: ignore[union-attr]
        assert changed.previous_owner.exe == os.path.realpath(sys.executable)  # type: ignore[union-attr]
        assert (changed.owner.exe, changed.owner.comm) == ("/usr/bin/sleep", "sleep")
        [(_, owner)] = engine.ports()
        assert owner.exe == "/usr/bin/sleep"
    finally:
        proc.kill()
        proc.wait()


def test_an_unchanged_owner_makes_no_event(netns: None, tmp_path: Path) -> None:
    engine, log = new_engine(tmp_path)
    engine.step()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    for _ in range(5):
        engine.step()
    assert [event.type for event in events_of(log)] == ["opened"]
    sock.close()


PERL_LISTENER = (
    "use IO::Socket::INET; $| = 1;"
    ' my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],'
    ' Listen => 5, ReuseAddr => 1) or die "listen: $!";'
    ' print "ok\\n"; <STDIN>;'
)


class Clock:
    """The engine's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def close_and_reopen(
    engine: Engine, clock: Clock, *, after_s: float, program: str = "python"
) -> subprocess.Popen[str]:
    """Listen on a port from a child, close it, reopen it `after_s` later."""
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    first.listen()
    port = first.getsockname()[1]
    engine.step()
    first.close()
    engine.step()
    clock.now += after_s
    if program == "perl":
        argv = ["perl", "-e", PERL_LISTENER, str(port)]
    else:
        argv = [sys.executable, "-c", PYTHON_LISTENER, str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert read_line(proc) == "ok"
    engine.step()
    return proc


PYTHON_LISTENER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("ok", flush=True); sys.stdin.read()
"""


@pytest.mark.parametrize(
    "case",
    [
        (5.0, 3.0, "python", "restarted"),  # the same program, inside the grace
        (5.0, 6.0, "python", "opened"),  # too late: a new listener
        (5.0, 1.0, "perl", "opened"),  # another program: a new listener
        (0.0, 0.0, "python", "opened"),  # restart_grace = 0 turns it off
    ],
)
def test_a_reopening_is_a_restart_only_inside_the_grace_and_by_the_same_program(
    netns: None, tmp_path: Path, case: tuple[float, float, str, str]
) -> None:
    grace, after_s, program, expected = case
    clock = Clock()
    engine, log = new_engine(tmp_path, restart_grace=grace, monotonic=clock)
    engine.step()
    proc = close_and_reopen(engine, clock, after_s=after_s, program=program)
    try:
        events = events_of(log)
        assert [event.type for event in events] == ["opened", "closed", expected]
        reopened = events[-1]
        assert reopened.owner.pid == proc.pid
        if expected == "restarted":
            assert reopened.previous_owner is not None
            assert reopened.previous_owner.pid == os.getpid()
            assert reopened.down_seconds == pytest.approx(after_s, abs=0.5)
        else:
            assert reopened.previous_owner is None and reopened.down_seconds is None
    finally:
        proc.kill()
        proc.wait()


def test_an_ignore_rule_can_silence_one_event_type_only(netns: None, tmp_path: Path) -> None:
    check = IGNORE_KEYS["event"][1]
    rule = IgnoreRule(events=tuple(check(["restarted"])))
    clock = Clock()
    engine, log = new_engine(
        tmp_path,
        monotonic=clock,
        ignored=lambda endpoint, owner, event, place: is_ignored([rule], endpoint, owner, event),
    )
    engine.step()
    proc = close_and_reopen(engine, clock, after_s=1.0)
    try:
        assert [event.type for event in events_of(log)] == ["opened", "closed"]
        # The restart was not reported, but the socket is watched.
        [(_, owner)] = engine.ports()
        assert owner.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()
    engine.step()
    assert [event.type for event in events_of(log)] == ["opened", "closed", "closed"]
