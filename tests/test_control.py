"""The control socket server, over real Unix sockets, on a real reactor.

The server runs on its own reactor in a thread (as in the daemon, where the
scan loop runs the same reactor between scans) while the test's main thread
acts as the clients; a periodic reactor timer counts ticks, so a test can
show the loop kept running while a client misbehaved.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import queue
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd import protocol
from portwatchd.control import ControlError, ControlServer
from portwatchd.model import Endpoint, Event, Owner
from portwatchd.protocol import EventQuery
from portwatchd.reactor import Reactor, Timer
from portwatchd.ring import EventRing
from tests.other_user import python_as

TICK_S = 0.01


def make_event(seq: int, *, type: str = "opened", proto: str = "tcp", port: int = 0) -> Event:
    port = port or 1000 + seq % 50000
    return Event(
        seq=seq,
        id=f"00000000-0000-4000-8000-{seq:012d}",
        type=type,  # type: ignore[arg-type]
        time=f"2026-11-25T14:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
        endpoint=Endpoint(proto=proto, family="ipv4", address="127.0.0.1", port=port, inode=seq),  # type: ignore[arg-type]
        owner=Owner(pid=100 + seq, pids=(100 + seq,), comm="sshd", unit="ssh.service"),
    )


class MemoryBackend:
    """A ControlBackend over a real EventRing and a list of ports."""

    def __init__(self, capacity: int = 1000) -> None:
        self.ring = EventRing(capacity)
        self.ports: list[tuple[Endpoint, Owner]] = []
        self.rescans = 0
        self.fail_status = False
        self.during_query: Callable[[], None] | None = None

    def add(self, count: int, **kwargs: Any) -> list[Event]:
        start = self.ring.last_seq + 1
        events = [make_event(seq, **kwargs) for seq in range(start, start + count)]
        self.ring.extend(events)
        return events

    def query_events(self, query: EventQuery) -> list[Event]:
        if self.during_query is not None:
            hook, self.during_query = self.during_query, None
            hook()
        return self.ring.query(**query.as_args())

    def oldest_seq(self) -> int | None:
        return self.ring.oldest_seq

    def last_seq(self) -> int:
        return self.ring.last_seq

    def current_ports(self) -> list[tuple[Endpoint, Owner]]:
        return list(self.ports)

    def status(self) -> dict[str, Any]:
        if self.fail_status:
            raise RuntimeError("status exploded")
        return {
            "version": "0.1.0",
            "pid": os.getpid(),
            "uptime_s": 3723.5,
            "interval_s": 2.0,
            "backend": "netlink",
            "ports_watched": len(self.ports),
            "events_total": self.ring.last_seq,
            "ring_size": len(self.ring),
            "ring_capacity": self.ring.capacity,
            "last_scan_time": "2026-11-25T14:00:00.000000Z",
            "last_scan_duration_ms": 1.5,
            "config_path": "/etc/portwatchd/portwatchd.toml",
            "last_reload": {"time": None, "ok": True, "error": None},
        }

    def request_rescan(self) -> None:
        self.rescans += 1


class ServerThread:
    """A ControlServer on a Reactor looping in a background thread, plus a ticker.

    A callback that raised into the reactor would end the loop thread: stop()
    then fails the test with that exception.
    """

    def __init__(self, backend: MemoryBackend, path: str, **options: Any) -> None:
        self.backend = backend
        self.path = path
        self.logs: list[str] = []
        options.setdefault("log", self.logs.append)
        self.reactor = Reactor()
        self.server = ControlServer(backend, self.reactor, path=path, **options)
        self.ticks = 0
        self._ticker: Timer | None = None
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = False
        self._crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tick(self) -> None:
        self.ticks += 1
        self._ticker = self.reactor.call_later(TICK_S, self._tick)

    def _run(self) -> None:
        try:
            while not self._stopping:
                self.reactor.run_once(0.05)
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._calls.get_nowait()()
        except BaseException as exc:
            self._crash = exc

    def start(self) -> ServerThread:
        # Before the loop thread exists: a failure to listen raises here.
        try:
            self.server.start()
        except BaseException:
            self.reactor.close()
            raise
        self._ticker = self.reactor.call_later(TICK_S, self._tick)
        self._thread.start()
        return self

    def run(self, function: Callable[[], Any]) -> Any:
        """Run a plain function on the loop thread and return its result."""
        done: Future[Any] = Future()

        def call() -> None:
            try:
                done.set_result(function())
            except BaseException as exc:
                done.set_exception(exc)

        self._calls.put(call)
        self.reactor.wake()
        return done.result(timeout=10)

    def publish(self, events: list[Event]) -> None:
        self.run(lambda: self.server.publish(events))

    def add_and_publish(self, count: int, **kwargs: Any) -> list[Event]:
        # As the daemon does: into the ring, then to the followers, in one step.
        def step() -> list[Event]:
            events = self.backend.add(count, **kwargs)
            self.server.publish(events)
            return events

        result: list[Event] = self.run(step)
        return result

    def ticks_after(self, seconds: float) -> int:
        before = self.ticks
        time.sleep(seconds)
        return self.ticks - before

    def stop(self) -> None:
        if self._stopping:
            return

        def shutdown() -> None:
            self.server.close()
            if self._ticker is not None:
                self._ticker.cancel()
            self._stopping = True

        if self._thread.is_alive():
            self.run(shutdown)
        self._thread.join(timeout=10)
        self._stopping = True
        self.reactor.close()
        if self._crash is not None:
            raise AssertionError("a callback raised into the reactor") from self._crash


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(dir="/tmp", prefix="pw")
    os.chmod(path, 0o755)  # so that a test may knock as another user
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def serve(sockdir: str, backend: MemoryBackend) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        thread = ServerThread(backend, os.path.join(sockdir, "c.sock"), **options).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


class Client:
    """A blocking test client speaking raw lines."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect waits in the kernel while the accept queue is
        # full (a timeout makes it non-blocking, and that fails with EAGAIN).
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10, 0))
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, **message: Any) -> dict[str, Any]:
        self.send(protocol.encode({"v": 1, **message}))
        return self.read()

    def read(self) -> dict[str, Any]:
        line = self.stream.readline()
        assert line.endswith(b"\n"), f"connection closed, got {line!r}"
        result: dict[str, Any] = json.loads(line)
        return result

    def read_until_closed(self) -> list[dict[str, Any]]:
        messages = []
        try:
            for line in self.stream:
                messages.append(json.loads(line))
        except ConnectionResetError:
            pass
        return messages

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def ask(path: str, **message: Any) -> dict[str, Any]:
    client = Client(path)
    try:
        return client.ask(**message)
    finally:
        client.close()


def error_code(message: dict[str, Any]) -> str:
    assert message["ok"] is False, message
    code: str = message["error"]["code"]
    return code


# --- requests and filters ---------------------------------------------------


def test_status_answers_backend_state_and_protocol(serve: Any, backend: MemoryBackend) -> None:
    backend.add(3)
    server = serve()
    response = ask(server.path, req="status")
    assert response["ok"] is True and response["v"] == protocol.PROTOCOL_VERSION
    status = response["status"]
    assert status["events_total"] == 3
    assert status["protocol"] == protocol.PROTOCOL_VERSION
    assert status["clients"] == 1


def test_ports_lists_endpoints_with_owners(serve: Any, backend: MemoryBackend) -> None:
    endpoint = Endpoint(proto="udp", family="ipv6", address="::", port=53, inode=7, uid=0)
    backend.ports = [(endpoint, Owner(pid=42, comm="dnsmasq", unit="dnsmasq.service"))]
    server = serve()
    ports = ask(server.path, req="ports")["ports"]
    assert len(ports) == 1
    assert ports[0]["key"] == "udp:[::]:53"
    assert ports[0]["owner"]["pid"] == 42
    assert Endpoint.from_dict(ports[0]) == endpoint


def test_events_filters(serve: Any, backend: MemoryBackend) -> None:
    backend.add(5, type="opened", proto="tcp", port=22)
    backend.add(5, type="closed", proto="udp", port=53)
    backend.add(5, type="opened", proto="udp", port=80)
    server = serve()

    def seqs(**args: Any) -> list[int]:
        response = ask(server.path, req="events", **args)
        assert response["ok"] is True, response
        return [event["seq"] for event in response["events"]]

    assert seqs() == list(range(1, 16))
    assert seqs(type="closed") == list(range(6, 11))
    assert seqs(proto="udp") == list(range(6, 16))
    assert seqs(port=80) == list(range(11, 16))
    assert seqs(type="opened", proto="udp") == list(range(11, 16))
    assert seqs(limit=3) == [13, 14, 15]  # the newest three
    assert seqs(after_seq=4, limit=3) == [5, 6, 7]  # paging forward
    assert seqs(after_seq=13) == [14, 15]
    assert seqs(since="2026-11-25T14:00:12Z") == [12, 13, 14, 15]
    response = ask(server.path, req="events", limit=1)
    assert response["last_seq"] == 15 and response["oldest_seq"] == 1
    event = Event.from_dict(response["events"][0])
    assert event == backend.ring.events()[-1]


def test_events_reports_gap_when_after_seq_left_the_ring(sockdir: str) -> None:
    backend = MemoryBackend(capacity=10)
    backend.add(30)
    server = ServerThread(backend, os.path.join(sockdir, "g.sock")).start()
    try:
        response = ask(server.path, req="events", after_seq=5)
        assert response["gap"] == {"from": 6, "to": 20}
        assert [e["seq"] for e in response["events"]] == list(range(21, 31))
        assert "gap" not in ask(server.path, req="events", after_seq=20)
    finally:
        server.stop()


def test_rescan_allowed_for_root(serve: Any, backend: MemoryBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: rescan is root-only")
    server = serve()
    assert ask(server.path, req="rescan") == {"v": 1, "ok": True}
    assert backend.rescans == 1


def test_rescan_refused_for_non_root(serve: Any, backend: MemoryBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    server = serve()
    os.chmod(server.path, 0o666)  # reach the uid check, past the file mode
    code = (
        "import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        's.sendall(b\'{"v":1,"req":"rescan"}\\n\'); print(s.makefile().readline())'
    )
    result = python_as(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"],
        "-c", code, server.path, check=True, timeout=30,
    )  # fmt: skip
    response = json.loads(result.stdout)
    assert error_code(response) == protocol.PERMISSION_DENIED
    assert backend.rescans == 0


def test_several_requests_on_one_connection(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    try:
        for _ in range(5):
            assert client.ask(req="status")["ok"] is True
        assert error_code(client.ask(req="nope")) == protocol.UNKNOWN_REQUEST
        assert client.ask(req="ports")["ok"] is True  # an error does not end the connection
    finally:
        client.close()


# --- bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "names"),
    [
        (b"\xff\xfe\x00garbage\n", protocol.BAD_JSON, "UTF-8"),
        (b"{not json\n", protocol.BAD_JSON, "JSON"),
        (b"[1, 2]\n", protocol.BAD_REQUEST, "object"),
        (b'{"v": 1, "req": "launch"}\n', protocol.UNKNOWN_REQUEST, "launch"),
        (b'{"v": 1, "req": 5}\n', protocol.BAD_REQUEST, "'req'"),
        (b'{"v": 1, "req": "events", "port": "22"}\n', protocol.BAD_REQUEST, "'port'"),
        (b'{"v": 1, "req": "events", "port": 70000}\n', protocol.BAD_REQUEST, "'port'"),
        (b'{"v": 1, "req": "events", "limit": true}\n', protocol.BAD_REQUEST, "'limit'"),
        (b'{"v": 1, "req": "events", "after_seq": -1}\n', protocol.BAD_REQUEST, "'after_seq'"),
        (b'{"v": 1, "req": "events", "type": "moved"}\n', protocol.BAD_REQUEST, "'type'"),
        (b'{"v": 1, "req": "events", "proto": "sctp"}\n', protocol.BAD_REQUEST, "'proto'"),
        (b'{"v": 1, "req": "events", "since": "yesterday"}\n', protocol.BAD_REQUEST, "'since'"),
        (b'{"v": 1, "req": "events", "since": 5}\n', protocol.BAD_REQUEST, "'since'"),
        (b'{"v": 1, "req": "status", "prot": "tcp"}\n', protocol.BAD_REQUEST, "prot"),
        (b'{"v": 2, "req": "status"}\n', protocol.VERSION_MISMATCH, "protocol 2"),
        (b'{"req": "status"}\n', protocol.VERSION_MISMATCH, "protocol None"),
        (b'{"v": 1, "req": "follow", "limit": "x"}\n', protocol.BAD_REQUEST, "'limit'"),
    ],
)
def test_bad_requests_get_named_errors(serve: Any, line: bytes, code: str, names: str) -> None:
    server = serve()
    client = Client(server.path)
    try:
        client.send(line)
        response = client.read()
        assert error_code(response) == code
        assert names in response["error"]["message"]
        assert client.ask(req="status")["ok"] is True  # the connection is still usable
    finally:
        client.close()


def test_backend_failure_is_an_internal_error_not_a_crash(
    serve: Any, backend: MemoryBackend
) -> None:
    server = serve()
    backend.fail_status = True
    response = ask(server.path, req="status")
    assert error_code(response) == protocol.INTERNAL
    assert "status exploded" in response["error"]["message"]
    backend.fail_status = False
    assert ask(server.path, req="status")["ok"] is True


def test_ten_megabyte_line_is_cut_off_without_buffering_it(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < 10 * 1024 * 1024:
            sent += client.sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    # The server stopped reading after its limit, so the 10 MB never all went in.
    assert sent < 10 * 1024 * 1024
    response = client.read()
    assert error_code(response) == protocol.LINE_TOO_LONG
    assert client.read_until_closed() == []
    client.close()
    assert server.ticks_after(0.2) > 0
    assert ask(server.path, req="status")["ok"] is True


def test_line_of_exactly_max_line_is_accepted(serve: Any) -> None:
    server = serve()
    head = b'{"v":1,"req":"status","pad":"'
    padding = b"x" * (protocol.MAX_LINE - len(head) - 2)
    line = head + padding + b'"}'
    assert len(line) == protocol.MAX_LINE
    client = Client(server.path)
    try:
        client.send(line + b"\n")
        # Parsed (and refused for its unknown argument), not cut off as too long.
        assert error_code(client.read()) == protocol.BAD_REQUEST
        client.send(line + b"x\n")
        assert error_code(client.read()) == protocol.LINE_TOO_LONG
    finally:
        client.close()


def test_silent_client_gets_idle_timeout(serve: Any) -> None:
    server = serve(idle_timeout=0.3)
    client = Client(server.path)
    response = client.read()
    assert error_code(response) == protocol.IDLE_TIMEOUT
    assert client.read_until_closed() == []
    client.close()
    assert ask(server.path, req="status")["ok"] is True


def test_half_a_line_then_stall_gets_idle_timeout(serve: Any) -> None:
    server = serve(idle_timeout=0.3)
    client = Client(server.path)
    client.send(b'{"v": 1, "req": "sta')
    ticks = server.ticks_after(0.1)
    response = client.read()
    assert error_code(response) == protocol.IDLE_TIMEOUT
    client.close()
    assert ticks > 0
    assert ask(server.path, req="status")["ok"] is True


def test_half_a_line_then_hang_up_is_dropped_quietly(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    client.send(b'{"v": 1, "req": "sta')
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_until_closed() == []
    client.close()
    assert ask(server.path, req="status")["ok"] is True


def test_five_hundred_connections_past_max_clients_get_busy(serve: Any) -> None:
    server = serve(max_clients=8, idle_timeout=30)
    clients = [Client(server.path) for _ in range(500)]
    busy = 0
    try:
        for client in clients[8:]:
            response = client.read()
            assert error_code(response) == protocol.BUSY
            busy += 1
        assert busy == 492
        for client in clients[:8]:  # the first eight hold their places
            assert client.ask(req="status")["ok"] is True
    finally:
        for client in clients:
            client.close()
    assert server.ticks_after(0.2) > 0
    # Slots are freed once those eight leave.
    for _ in range(100):
        response = ask(server.path, req="status")
        if response["ok"]:
            break
        time.sleep(0.02)
    assert response["ok"] is True


# --- follow -----------------------------------------------------------------


def test_follow_backlog_then_live_without_gap_or_duplicate(
    serve: Any, backend: MemoryBackend
) -> None:
    backend.add(50)
    server = serve()
    client = Client(server.path)
    try:
        header = client.ask(req="follow", after_seq=40)
        assert header["ok"] is True and header["follow"] == {"after_seq": 40}
        received = [client.read()["event"]["seq"] for _ in range(10)]
        server.add_and_publish(5)
        server.add_and_publish(5)
        received += [client.read()["event"]["seq"] for _ in range(10)]
        assert received == list(range(41, 61))
    finally:
        client.close()


def test_follow_with_after_seq_and_limit_skips_nothing(serve: Any, backend: MemoryBackend) -> None:
    backend.add(10)
    server = serve()
    client = Client(server.path)
    try:
        client.ask(req="follow", after_seq=0, limit=3)
        server.add_and_publish(1)
        assert [client.read()["event"]["seq"] for _ in range(11)] == list(range(1, 12))
    finally:
        client.close()


def test_a_seq_from_a_lost_history_starts_the_client_over(
    serve: Any, backend: MemoryBackend
) -> None:
    # The daemon lost its state file and counts from 1 again; a client
    # resuming after seq 500 must get the new events, told why.
    backend.add(3)
    server = serve()
    client = Client(server.path)
    try:
        header = client.ask(req="follow", after_seq=500)
        assert header["follow"] == {"after_seq": 0}
        assert client.read() == {"v": 1, "reset": {"after_seq": 500, "last_seq": 3}}
        assert [client.read()["event"]["seq"] for _ in range(3)] == [1, 2, 3]
        other = Client(server.path)
        answer = other.ask(req="events", after_seq=500)
        other.close()
        assert answer["reset"] is True
        assert [event["seq"] for event in answer["events"]] == [1, 2, 3]
    finally:
        client.close()


def test_follow_event_arriving_during_subscription_comes_once(
    serve: Any, backend: MemoryBackend
) -> None:
    backend.add(5)
    server = serve()

    # An event recorded and published after the follower subscribed but
    # before its backlog was read: it is in the backlog AND in the live queue.
    def arrive() -> None:
        server.server.publish(backend.add(1))

    backend.during_query = arrive
    client = Client(server.path)
    try:
        client.ask(req="follow", after_seq=3)
        server.add_and_publish(1)
        assert [client.read()["event"]["seq"] for _ in range(4)] == [4, 5, 6, 7]
    finally:
        client.close()


def test_follow_live_only_and_filtered(serve: Any, backend: MemoryBackend) -> None:
    backend.add(5)
    server = serve()
    client = Client(server.path)
    try:
        header = client.ask(req="follow", type="closed")
        assert header["follow"] == {"after_seq": 5}
        server.add_and_publish(3, type="opened")
        server.add_and_publish(2, type="closed")
        events = [client.read()["event"] for _ in range(2)]
        assert [(e["seq"], e["type"]) for e in events] == [(9, "closed"), (10, "closed")]
    finally:
        client.close()


def test_follow_reports_gap_before_backlog(sockdir: str) -> None:
    backend = MemoryBackend(capacity=10)
    backend.add(30)
    server = ServerThread(backend, os.path.join(sockdir, "f.sock")).start()
    client = Client(server.path)
    try:
        client.ask(req="follow", after_seq=5)
        assert client.read() == {"v": 1, "gap": {"from": 6, "to": 20}}
        assert client.read()["event"]["seq"] == 21
    finally:
        client.close()
        server.stop()


def test_follow_overrun_cuts_off_slow_consumer(serve: Any, backend: MemoryBackend) -> None:
    server = serve(follow_queue=16)
    client = Client(server.path)
    try:
        client.ask(req="follow")
        # The consumer does not read while far more than the queue is
        # published, in batches the queue would hold for a reading client.
        for _ in range(600):
            server.add_and_publish(10)
            # As between two scans: let the follower's task take its queue
            # to the socket (until the socket is full and it waits there).
            for _ in range(100):
                if server.run(lambda: all(not f.pending for f in server.server._followers)):
                    break
                time.sleep(0.001)
        assert server.ticks_after(0.1) > 0
        messages = client.read_until_closed()
    finally:
        client.close()
    seqs = [m["event"]["seq"] for m in messages if "event" in m]
    assert seqs  # it got what fitted in the socket buffers ...
    assert seqs == list(range(1, len(seqs) + 1))  # ... in order, nothing skipped before the cut
    assert len(seqs) < 6000
    assert error_code(messages[-1]) == protocol.FOLLOW_OVERRUN
    assert f"after_seq={seqs[-1]}" in messages[-1]["error"]["message"]
    assert ask(server.path, req="status")["status"]["followers"] == 0


def test_follow_client_that_never_reads_is_dropped(serve: Any, backend: MemoryBackend) -> None:
    server = serve(follow_queue=64, write_timeout=0.3)
    client = Client(server.path)
    try:
        client.ask(req="follow")
        for _ in range(40):
            server.add_and_publish(200)
        status: dict[str, Any] = {}
        for _ in range(200):
            status = ask(server.path, req="status")["status"]
            if status["followers"] == 0 and status["clients"] == 1:
                break
            time.sleep(0.02)
        assert status["followers"] == 0 and status["clients"] == 1
        assert server.ticks_after(0.1) > 0
    finally:
        client.close()


def test_follow_client_hanging_up_unsubscribes(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    client.ask(req="follow")
    assert ask(server.path, req="status")["status"]["followers"] == 1
    client.close()
    followers = 1
    for _ in range(200):
        followers = ask(server.path, req="status")["status"]["followers"]
        if followers == 0:
            break
        time.sleep(0.01)
    assert followers == 0


def test_follow_backlog_failure_is_an_internal_error(serve: Any, backend: MemoryBackend) -> None:
    backend.add(5)
    server = serve()

    def explode() -> None:
        raise RuntimeError("ring exploded")

    backend.during_query = explode
    client = Client(server.path)
    try:
        response = client.ask(req="follow", after_seq=0)
        assert error_code(response) == protocol.INTERNAL
        assert "ring exploded" in response["error"]["message"]
        assert client.read_until_closed() == []
    finally:
        client.close()
    assert ask(server.path, req="status")["status"]["followers"] == 0


def test_follower_stuck_on_its_backlog_is_dropped_after_write_timeout(sockdir: str) -> None:
    backend = MemoryBackend(capacity=5000)
    backend.add(5000)  # a backlog of about 1.7 MB: more than the socket and write buffers
    server = ServerThread(backend, os.path.join(sockdir, "b.sock"), write_timeout=0.3).start()
    client = Client(server.path)
    try:
        client.send(protocol.encode({"v": 1, "req": "follow", "after_seq": 0}))
        status: dict[str, Any] = {}
        for _ in range(200):  # no event is published: only the timeout can end it
            status = ask(server.path, req="status")["status"]
            if status["followers"] == 0 and status["clients"] == 1:
                break
            time.sleep(0.02)
        assert status["followers"] == 0 and status["clients"] == 1
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.sock.recv(65536):
                received += chunk
        assert 0 < received.count(b"\n") < 5001  # cut off part-way through the backlog
    finally:
        client.close()
        server.stop()


# --- clients that do not read, and failures inside a connection -------------


def test_pipelining_client_that_never_reads_is_closed_after_write_timeout(
    serve: Any, backend: MemoryBackend
) -> None:
    backend.add(1000)  # every answer is the whole ring, about 330 KB
    server = serve(write_timeout=0.3)
    client = Client(server.path)
    request = protocol.encode({"v": 1, "req": "events"})
    client.sock.setblocking(False)
    sent = 0
    try:
        # Ask as much as the server takes without reading an answer: it stops
        # reading requests once its write buffer is full.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += client.sock.send(request * 64)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        status: dict[str, Any] = {}
        for _ in range(200):
            status = ask(server.path, req="status")["status"]
            if status["clients"] == 1:
                break
            time.sleep(0.02)
        assert status["clients"] == 1  # the non-reader was closed
        assert server.ticks_after(0.1) > 0
    finally:
        client.close()
    # Only what fitted in the socket buffers was sent, not five seconds of requests.
    assert sent < 4 * 1024 * 1024


def test_a_failure_inside_a_connection_closes_only_that_connection(serve: Any) -> None:
    server = serve()
    bystander = Client(server.path)
    assert bystander.ask(req="status")["ok"] is True

    def broken_parse(line: bytes) -> Any:
        raise RuntimeError("parser bug")

    server.server._parse = broken_parse  # a bug in answering, not a bad request
    victim = Client(server.path)
    try:
        victim.send(b'{"v": 1, "req": "status"}\n')
        assert victim.read_until_closed() == []
        assert any("parser bug" in line for line in server.logs)
        del server.server._parse
        assert bystander.ask(req="status")["ok"] is True
        assert ask(server.path, req="status")["ok"] is True
    finally:
        victim.close()
        bystander.close()
    assert server.ticks_after(0.1) > 0  # stop() also fails if anything reached the reactor


def test_a_busy_connection_leaves_no_pile_of_timers(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    try:
        for _ in range(1000):
            assert client.ask(req="status")["ok"] is True
        # One deadline timer per connection (plus the ticker), not one per request.
        assert server.run(lambda: len(server.reactor._timers)) < 10
    finally:
        client.close()


# --- the socket file --------------------------------------------------------


def test_socket_mode_group_and_parent_dir(sockdir: str, backend: MemoryBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the socket to a group")
    group = grp.getgrnam("adm")
    path = os.path.join(sockdir, "sub", "c.sock")
    old_umask = os.umask(0o077)  # as under the unit's UMask=0077
    try:
        server = ServerThread(backend, path, group="adm").start()
    finally:
        os.umask(old_umask)
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == group.gr_gid
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    finally:
        server.stop()
    assert not os.path.exists(path)  # removed: we created it


def test_unknown_group_is_a_clear_error(sockdir: str, backend: MemoryBackend) -> None:
    server = ServerThread(backend, os.path.join(sockdir, "c.sock"), group="no-such-grp")
    with pytest.raises(ControlError, match="group 'no-such-grp' does not exist"):
        server.start()


def test_stale_socket_is_replaced(sockdir: str, backend: MemoryBackend) -> None:
    path = os.path.join(sockdir, "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a crashed daemon: the file stays, nobody listens
    server = ServerThread(backend, path).start()
    try:
        assert ask(path, req="status")["ok"] is True
    finally:
        server.stop()


def test_live_socket_is_not_taken_over(sockdir: str, backend: MemoryBackend) -> None:
    first = ServerThread(backend, os.path.join(sockdir, "c.sock")).start()
    try:
        second = ServerThread(MemoryBackend(), first.path)
        with pytest.raises(ControlError, match="another portwatchd is already listening"):
            second.start()
        assert ask(first.path, req="status")["ok"] is True
    finally:
        first.stop()


def test_path_that_is_not_a_socket_is_refused(sockdir: str, backend: MemoryBackend) -> None:
    path = os.path.join(sockdir, "c.sock")
    with open(path, "w") as file:
        file.write("precious")
    with pytest.raises(ControlError, match="is not a socket"):
        ServerThread(backend, path).start()
    with open(path) as file:
        assert file.read() == "precious"


def test_close_leaves_a_socket_file_that_is_not_ours(sockdir: str, backend: MemoryBackend) -> None:
    server = ServerThread(backend, os.path.join(sockdir, "c.sock")).start()
    os.unlink(server.path)
    replacement = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    replacement.bind(server.path)  # another daemon took the path over
    try:
        server.stop()
        assert os.path.exists(server.path)
    finally:
        replacement.close()


def test_socket_activation_adopts_fd_3_and_keeps_the_file(sockdir: str) -> None:
    path = os.path.join(sockdir, "a.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    child = textwrap.dedent(
        """
        import os, sys
        os.dup2(int(sys.argv[1]), 3)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="control")
        from portwatchd.control import ControlServer, inherited_listen_socket
        from portwatchd.reactor import Reactor
        from tests.test_control import MemoryBackend

        sock = inherited_listen_socket()
        left = [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ]
        reactor = Reactor()
        server = ControlServer(MemoryBackend(), reactor, path=sys.argv[2], inherited=sock)
        server.start()
        print("ready", left, flush=True)
        stdin_open = [True]

        def on_stdin():
            if not os.read(0, 4096):
                stdin_open[0] = False
                reactor.remove_reader(0)

        reactor.add_reader(0, on_stdin)
        while stdin_open[0]:
            reactor.run_once(None)
        server.close()
        reactor.close()
        print("closed", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child, str(listener.fileno()), path],
        pass_fds=[listener.fileno()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    listener.close()
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready []"
        assert ask(path, req="status")["ok"] is True
        process.stdin.close()
        assert process.stdout.readline().strip() == "closed"
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
    assert os.path.exists(path)  # systemd owns it, not us


def test_close_ends_followers_and_idle_clients(sockdir: str, backend: MemoryBackend) -> None:
    server = ServerThread(backend, os.path.join(sockdir, "c.sock")).start()
    follower = Client(server.path)
    idle = Client(server.path)
    try:
        follower.ask(req="follow")
        assert ask(server.path, req="status")["status"]["clients"] == 3
        server.stop()
        assert follower.read_until_closed() == []
        assert idle.read_until_closed() == []
        assert not os.path.exists(server.path)
    finally:
        follower.close()
        idle.close()


def test_any_line_gets_one_answer_and_the_server_lives(sockdir: str) -> None:
    server = ServerThread(MemoryBackend(), os.path.join(sockdir, "h.sock")).start()
    lines = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")) | st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["v", "req", "after_seq", "limit", "port", "type", "since", "x"]),
            st.none() | st.booleans() | st.integers(-3, 70000) | st.text(max_size=12),
            max_size=5,
        ),
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lines)
    def one_line(line: bytes) -> None:
        client = Client(server.path)
        try:
            client.send(line + b"\n")
            response = client.read()
            assert response["v"] == protocol.PROTOCOL_VERSION
            if response.get("ok") is False:
                assert response["error"]["code"] in protocol.ERROR_CODES
        finally:
            client.close()

    try:
        one_line()
        assert ask(server.path, req="status")["ok"] is True
    finally:
        server.stop()
