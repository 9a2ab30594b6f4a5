"""Real time: closes from the kernel's destroy messages, opens from exec
events, listeners that lived between two looks, and what happens when a
notice is not available. The real daemon (tests/daemon_harness.py) with a
poll interval far longer than any wait here, so that only a notice can
explain an event on time; and the engine with a real RealTime, reactor and
destroy subscription for the overrun."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portwatchd.classify import Judge
from portwatchd.engine import Engine
from portwatchd.log import EventLog
from portwatchd.lookup import InlineLookup
from portwatchd.model import Detection
from portwatchd.protocol import EventQuery
from portwatchd.reactor import Reactor
from portwatchd.realtime import RealTime
from portwatchd.sources.destroy import DestroyWatch
from portwatchd.sources.execwatch import ExecWatch, TriggerUnavailable
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.store import Store
from tests.daemon_harness import Daemon, listen_tcp, tcp_key

# Longer than any wait below: an event on time came from a notice.
POLL_S = 60


def status_of(daemon: Daemon) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(daemon.socket_path)
        client.sendall(b'{"v": 1, "req": "status"}\n')
        reply: dict[str, Any] = json.loads(client.makefile().readline())
    return reply["status"]


@pytest.fixture
def slow_poll(netns: None) -> Iterator[Daemon]:
    daemon = Daemon(interval=POLL_S)
    try:
        daemon.start().wait_ready()
        yield daemon
    finally:
        daemon.close()


def test_a_close_is_reported_from_the_destroy_message(slow_poll: Daemon) -> None:
    sock = listen_tcp()
    key = tcp_key(sock)
    rescan(slow_poll)
    slow_poll.wait_event("opened", key)
    sock.close()
    closed = slow_poll.wait_event("closed", key, timeout=5)
    assert closed["detected"] == "destroy"
    assert status_of(slow_poll)["triggers"]["closes"] == "active"


def test_a_listener_that_lives_50_ms_is_reported_transient(slow_poll: Daemon) -> None:
    sock = listen_tcp()
    key = tcp_key(sock)
    time.sleep(0.05)
    sock.close()
    event = slow_poll.wait_event("transient", key, timeout=5)
    assert event["detected"] == "destroy"
    assert 0 < event["lifetime_max_seconds"] <= POLL_S + 5
    assert event["owner"]["pid"] is None  # gone with its socket: never a guess


def test_a_flood_of_transient_listeners_is_bounded_counted_and_said(slow_poll: Daemon) -> None:
    flood = 1500
    for _ in range(flood):
        listen_tcp().close()
    warning = slow_poll.wait_line(lambda r: "not reported one by one" in r.get("message", ""))
    assert warning["priority"] == "warning"
    slow_poll.drain_events()
    status = status_of(slow_poll)
    reported, suppressed = (
        status["events_by_type"]["transient"],
        status["transients_suppressed_total"],
    )
    # The burst (1,000) and what the bucket refilled meanwhile (100 a second).
    assert 1000 <= reported < flood
    # Each message either reported or counted (a flood this fast may overrun
    # the subscription: those messages the kernel dropped, and says so).
    assert reported + suppressed == status["destroy_messages_total"]
    # Said at once: those of the first batch past the bound, the rest within 10 s.
    assert 1 <= int(warning["message"].split()[0]) <= suppressed


def test_a_udp_socket_in_the_ephemeral_range_is_not_a_transient_listener(
    slow_poll: Daemon,
) -> None:
    sysctl = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low = int(sysctl.split()[0])
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(b"x", ("127.0.0.1", 9))  # auto-bound to an ephemeral port
    client.close()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = low - 1  # below the range: a port a server binds on purpose
    server.bind(("127.0.0.1", port))
    server.close()
    event = slow_poll.wait_event("transient", f"udp:127.0.0.1:{port}", timeout=5)
    assert event["proto"] == "udp"
    others = [e for e in slow_poll.drain_events() if e.get("type") == "transient"]
    assert others == []  # the client's socket was no listener


def rescan(daemon: Daemon) -> None:
    """Ask for a look now (portwatchctl rescan), as root may."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(daemon.socket_path)
        client.sendall(b'{"v": 1, "req": "rescan"}\n')
        assert json.loads(client.makefile().readline())["ok"] is True


NEW_SERVER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def exec_trigger_unavailable() -> str | None:
    try:
        ExecWatch().close()
    except TriggerUnavailable as refused:
        return refused.reason
    return None


@pytest.mark.skipif(exec_trigger_unavailable() is not None, reason=str(exec_trigger_unavailable()))
def test_a_new_program_s_listener_is_found_by_the_looks_after_its_exec() -> None:
    # The proc connector works in the initial network namespace only: this
    # daemon watches the machine's own, and the test's port is chosen free.
    daemon = Daemon(interval=POLL_S)
    try:
        daemon.start().wait_ready()
        server = subprocess.Popen(
            [sys.executable, "-c", NEW_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            opened = daemon.wait_event("opened", f"tcp:127.0.0.1:{port}", timeout=5)
            assert opened["detected"] == "exec"
            assert opened["owner"]["pid"] == server.pid
            assert status_of(daemon)["triggers"]["new programs"] == "active"
        finally:
            server.kill()
            server.wait()
    finally:
        daemon.close()


def test_without_exec_events_status_says_why_and_the_poll_still_works(netns: None) -> None:
    # Inside a network namespace of its own the proc connector refuses.
    daemon = Daemon(interval=0.2)
    try:
        ready = daemon.start().wait_ready()
        assert "polling only for new programs" in ready  # STATUS=
        status = status_of(daemon)
        assert "initial network namespace" in status["triggers"]["new programs"]
        assert status["triggers"]["closes"] == "active"
        start_line = daemon.wait_line(lambda r: "real-time notices" in r.get("message", ""))
        assert "initial network namespace" in start_line["message"]
        with listen_tcp() as sock:
            opened = daemon.wait_event("opened", tcp_key(sock))
            assert opened["detected"] == "scan"
    finally:
        daemon.close()


class StepLooker:
    """What the runner does for a look a notice asks for: step the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.asked: list[Detection] = []

    def request_look(self, detected: Detection) -> None:
        self.asked.append(detected)
        self.engine.step(detected)


def test_an_overrun_is_counted_and_a_full_look_finds_every_close(
    netns: None, tmp_path: Path
) -> None:
    log = EventLog(Store.open(str(tmp_path)), history_size=10_000, history_max_age_s=None)
    engine = Engine(
        scanner=NetlinkScanner(),
        log=log,
        lookup=InlineLookup(OwnerResolver()),
        judge=Judge(ignored=lambda *_: False),
        say=lambda _priority, _message: None,
    )
    reactor = Reactor()
    # The smallest receive buffer the kernel allows: 400 closes overrun it.
    realtime = RealTime(
        engine, reactor, say=lambda *_: None, open_destroy=lambda: DestroyWatch(receive_buffer=1)
    )
    looker = StepLooker(engine)
    realtime.start(looker)
    engine.step()
    listeners = [listen_tcp() for _ in range(400)]
    engine.step()
    for sock in listeners:
        sock.close()
    deadline = time.monotonic() + 5
    while realtime.overruns_total == 0 and time.monotonic() < deadline:
        reactor.run_once(0.1)
    assert realtime.overruns_total >= 1
    assert "scan" in looker.asked
    closed = log.page(EventQuery(type="closed"), 0, 1000)
    assert len(closed) == 400
    assert engine.ports() == []
    realtime.close()
