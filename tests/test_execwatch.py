"""Exec events from the proc connector, and each way the kernel refuses or ignores them.

The connector works only from the initial network, PID and user
namespaces; the refusals are shown by running the subscription in a
subprocess inside a new namespace (`unshare`) or without CAP_NET_ADMIN
(`setpriv`), which reports what it got on stdout.
"""

from __future__ import annotations

import doctest
import errno
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd.sources import execwatch
from portwatchd.sources.execwatch import (
    CN_MSG,
    EVENT_DATA,
    NLMSGHDR,
    PROC_EVENT,
    PROC_EVENT_EXEC,
    ExecWatch,
    TriggerUnavailable,
    kernel_filters_events,
    parse_events,
)

REPO = Path(__file__).resolve().parent.parent
# A kernel from 6.6 on neither filters nor checks CAP_NET_ADMIN the old way.
NEW_KERNEL = kernel_filters_events(os.uname().release)

SUBSCRIBE = """
from portwatchd.sources.execwatch import ExecWatch, TriggerUnavailable
try:
    ExecWatch(ack_timeout=0.3).close()
    print("subscribed")
except TriggerUnavailable as exc:
    print(exc.errno, exc.reason, sep="|")
"""


def subscribe_in(*prefix: str) -> str:
    """What a subscription says when run under the command prefix `prefix`."""
    result = subprocess.run(
        [*prefix, sys.executable, "-c", SUBSCRIBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create namespaces and to drop capabilities with setpriv")


@pytest.fixture
def watch() -> Iterator[ExecWatch]:
    try:
        opened = ExecWatch()
    except TriggerUnavailable as exc:
        pytest.skip(f"the proc connector cannot be used here: {exc.reason}")
    with opened:
        yield opened


def execs_until(watch: ExecWatch, pid: int, timeout: float = 2.0) -> list[int]:
    """Every exec PID read until `pid` shows up (or `timeout` passes)."""
    pids: list[int] = []
    while pid not in pids and select.select([watch], [], [], timeout)[0]:
        batch = watch.read()
        assert batch.execs == len(batch.pids)
        pids += batch.pids
    return pids


def test_exec_of_a_new_program_is_seen(watch: ExecWatch) -> None:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    assert child.pid in execs_until(watch, child.pid)


def test_fork_without_exec_is_not_an_exec(watch: ExecWatch) -> None:
    forked = os.fork()
    if forked == 0:
        os._exit(0)
    os.waitpid(forked, 0)
    marker = subprocess.Popen(["/bin/true"])  # an exec after the fork, to read up to
    marker.wait()
    pids = execs_until(watch, marker.pid)
    assert marker.pid in pids
    assert forked not in pids


def test_read_without_events_returns_at_once(watch: ExecWatch) -> None:
    batch = watch.read()
    assert batch.execs == len(batch.pids)
    assert not batch.overrun


def test_overrun_is_reported_when_the_buffer_is_too_small() -> None:
    # The kernel's floor for a receive buffer holds a few events; 100 execs
    # not read in time cannot fit.
    try:
        small = ExecWatch(receive_buffer=1)
    except TriggerUnavailable as exc:
        pytest.skip(f"the proc connector cannot be used here: {exc.reason}")
    with small:
        ours = set()
        for _ in range(100):
            child = subprocess.Popen(["/bin/true"])
            ours.add(child.pid)
            child.wait()
        batches = []
        # The connector tells of every exec on the host, not only ours: read
        # what is queued, for a bounded time on a busy machine.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and select.select([small], [], [], 0.3)[0]:
            batches.append(small.read())
    assert any(batch.overrun for batch in batches)
    assert len(ours & {pid for batch in batches for pid in batch.pids}) < 100


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_events_or_nothing(data: bytes) -> None:
    for what, _seq, _ack, _first, _second in parse_events(data):
        assert 0 <= what <= 0xFFFFFFFF


def test_an_exec_event_decodes_to_its_thread_group() -> None:
    body = CN_MSG.pack(1, 1, 5, 0, 24, 0) + PROC_EVENT.pack(PROC_EVENT_EXEC, 0, 123)
    body += EVENT_DATA.pack(4242, 4240)
    datagram = NLMSGHDR.pack(NLMSGHDR.size + len(body), 3, 0, 5, 0) + body
    assert parse_events(datagram) == [(PROC_EVENT_EXEC, 5, 0, 4242, 4240)]


def test_refused_in_a_private_network_namespace() -> None:
    needs_root()
    code, reason = subscribe_in("unshare", "--net").split("|")
    assert int(code) == errno.ECONNREFUSED
    assert "initial network namespace" in reason


@pytest.mark.parametrize(
    "prefix",
    [("unshare", "--pid", "--fork"), ("unshare", "--user", "--map-root-user")],
    ids=["pid", "user"],
)
def test_ignored_in_a_private_pid_or_user_namespace(prefix: tuple[str, ...]) -> None:
    needs_root()
    code, reason = subscribe_in(*prefix).split("|")
    assert code == "None"
    assert "non-initial PID or user namespace" in reason


@pytest.mark.skipif(
    NEW_KERNEL,
    reason=f"Linux {os.uname().release} (>= 6.6) does not require "
    "CAP_NET_ADMIN for the proc connector",
)
def test_refused_without_cap_net_admin_on_older_kernels() -> None:
    needs_root()
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) to drop CAP_NET_ADMIN")
    said = subscribe_in("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    code, reason = said.split("|")
    assert int(code) == errno.EPERM
    assert "CAP_NET_ADMIN" in reason


@pytest.mark.skipif(
    not NEW_KERNEL,
    reason=f"Linux {os.uname().release} (< 6.6) requires CAP_NET_ADMIN for the proc connector",
)
def test_works_without_cap_net_admin_on_newer_kernels() -> None:
    needs_root()
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) to drop CAP_NET_ADMIN")
    with_all = subscribe_in()
    if with_all != "subscribed":
        pytest.skip(f"the proc connector cannot be used here at all: {with_all}")
    said = subscribe_in("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    assert said == "subscribed"


def test_kernel_release_decides_the_event_filter() -> None:
    failures, tried = doctest.testmod(execwatch)
    assert tried > 0 and failures == 0
    assert not kernel_filters_events("6.5.13")
    assert kernel_filters_events("6.6.0")
    assert kernel_filters_events("7.0-rc1")
