"""The control requests (control.handlers) over real Unix sockets, on a real reactor.

The handlers read tests.history_double.HistoryDouble, a test double of the
event log's read side; the server is the real transport.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd import protocol
from portwatchd.control.connection import WRITE_BUFFER_HIGH
from portwatchd.control.follow import EVENTS_PER_SLICE
from portwatchd.control.handlers import ConfigErrorHandlers, RequestHandlers
from portwatchd.control.transport import Caller
from portwatchd.model import Endpoint, Event, Owner
from tests.control_harness import Client, ServerThread, ask, error_code, wait_for
from tests.history_double import HistoryDouble
from tests.other_user import python_as


class Daemon:
    """What the handlers are given besides the history: recorded calls."""

    def __init__(self) -> None:
        self.ports: list[tuple[Endpoint, Owner]] = []
        self.rescans = 0
        self.fail_status = False
        self.reloads: list[Callable[[dict[str, Any]], None]] = []

    def status(self) -> dict[str, Any]:
        if self.fail_status:
            raise RuntimeError("status exploded")
        return {"version": "0.2.0", "ports_watched": len(self.ports)}

    def request_rescan(self) -> None:
        self.rescans += 1

    def metrics(self) -> str:
        return '# TYPE portwatchd_ports gauge\nportwatchd_ports{proto="tcp"} 3\n'


class Served:
    def __init__(self, history: HistoryDouble, daemon: Daemon, path: str, **options: Any):
        follow_queue = options.pop("follow_queue", 1024)
        self.history = history
        self.daemon = daemon
        self.handlers = RequestHandlers(
            history,
            status=daemon.status,
            ports=lambda: list(daemon.ports),
            request_rescan=daemon.request_rescan,
            reload=daemon.reloads.append,
            metrics=daemon.metrics,
            follow_queue=follow_queue,
            log=lambda message: None,
        )
        self.thread = ServerThread(self.handlers.answer, path, **options).start()
        self.path = path

    def add(self, count: int, **kwargs: Any) -> list[Event]:
        """Append to the history on the loop thread, as the engine does."""
        events: list[Event] = self.thread.run(lambda: self.history.add(count, **kwargs))
        return events


@pytest.fixture
def history() -> HistoryDouble:
    return HistoryDouble()


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


@pytest.fixture
def serve(sockdir: str, history: HistoryDouble, daemon: Daemon) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**options: Any) -> Served:
        served = Served(history, daemon, os.path.join(sockdir, "c.sock"), **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.thread.stop()


def as_nobody(path: str, line: bytes) -> dict[str, Any]:
    """Send one line as uid nobody and return the answer."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    os.chmod(path, 0o666)  # reach the uid check, past the file mode
    code = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "s.sendall(sys.argv[2].encode()+b'\\n'); print(s.makefile().readline())"
    )
    nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    result = python_as(nobody, "-c", code, path, line.decode(), check=True, timeout=30)
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


# --- status, ports, rescan, reload, metrics ---------------------------------


def test_status_adds_protocol_clients_and_followers(serve: Any, history: HistoryDouble) -> None:
    served = serve()
    follower = Client(served.path)
    try:
        follower.ask(req="follow")
        status = ask(served.path, req="status")["status"]
        assert status["version"] == "0.2.0"
        assert status["protocol"] == protocol.PROTOCOL_VERSION
        assert status["clients"] == 2 and status["followers"] == 1
    finally:
        follower.close()


def test_ports_lists_endpoints_with_owners(serve: Any, daemon: Daemon) -> None:
    endpoint = Endpoint(proto="udp", family="ipv6", address="::", port=53, inode=7, uid=0)
    daemon.ports = [(endpoint, Owner(pid=42, comm="dnsmasq", unit="dnsmasq.service"))]
    served = serve()
    ports = ask(served.path, req="ports")["ports"]
    assert len(ports) == 1 and ports[0]["key"] == "udp:[::]:53"
    assert ports[0]["owner"]["pid"] == 42
    assert Endpoint.from_dict(ports[0]) == endpoint


def test_many_ports_come_in_slices_as_one_line(serve: Any, daemon: Daemon) -> None:
    daemon.ports = [
        (Endpoint(proto="tcp", family="ipv4", address="0.0.0.0", port=port), Owner())
        for port in range(1, 2001)
    ]
    served = serve()
    ports = ask(served.path, req="ports")["ports"]
    assert [record["port"] for record in ports] == list(range(1, 2001))


def test_rescan_allowed_for_root(serve: Any, daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: rescan is root-only")
    served = serve()
    assert ask(served.path, req="rescan") == {"v": 1, "ok": True}
    assert daemon.rescans == 1


@pytest.mark.parametrize("request_name", ["rescan", "reload"])
def test_mutating_requests_refused_for_non_root(
    serve: Any, daemon: Daemon, request_name: str
) -> None:
    served = serve()
    answer = as_nobody(served.path, protocol.encode(protocol.request(request_name))[:-1])
    assert error_code(answer) == protocol.PERMISSION_DENIED
    assert f"{request_name} changes the daemon's state" in answer["error"]["message"]
    assert daemon.rescans == 0 and daemon.reloads == []


def test_reload_is_answered_when_the_daemon_is_done(serve: Any, daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: reload is root-only")
    served = serve()
    client = Client(served.path)
    try:
        client.send(b'{"v":1,"req":"reload"}\n{"v":1,"req":"status"}\n')
        assert wait_for(lambda: len(daemon.reloads) == 1)
        # Nothing yet, not even the status asked after it.
        assert select.select([client.sock], [], [], 0.3)[0] == []
        outcome = {
            "ok": False,
            "error": "/etc/portwatchd/portwatchd.toml:3: interval: not a number",
        }
        served.thread.run(lambda: daemon.reloads[0](outcome))
        assert client.read() == {"v": 1, "ok": True, "reload": outcome}
        assert client.read()["status"]["version"] == "0.2.0"  # answered in order, after it
    finally:
        client.close()


def test_reload_done_after_the_client_left_is_harmless(serve: Any, daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: reload is root-only")
    served = serve()
    client = Client(served.path)
    client.send(b'{"v":1,"req":"reload"}\n')
    assert wait_for(lambda: len(daemon.reloads) == 1)
    client.close()
    served.thread.run(lambda: daemon.reloads[0]({"ok": True}))
    assert wait_for(lambda: served.thread.server.client_count == 0)  # the slot is free
    assert ask(served.path, req="status")["ok"] is True


def test_metrics_returns_the_exposition_text(serve: Any) -> None:
    served = serve()
    assert ask(served.path, req="metrics")["metrics"].startswith("# TYPE portwatchd_ports gauge")


def test_several_requests_on_one_connection(serve: Any) -> None:
    served = serve()
    client = Client(served.path)
    try:
        for _ in range(5):
            assert client.ask(req="status")["ok"] is True
        assert error_code(client.ask(req="nope")) == protocol.UNKNOWN_REQUEST
        assert client.ask(req="ports")["ok"] is True  # an error does not end the connection
    finally:
        client.close()


def test_a_failing_provider_is_an_internal_error_not_a_crash(serve: Any, daemon: Daemon) -> None:
    served = serve()
    daemon.fail_status = True
    response = ask(served.path, req="status")
    assert error_code(response) == protocol.INTERNAL
    assert "status exploded" in response["error"]["message"]
    daemon.fail_status = False
    assert ask(served.path, req="status")["ok"] is True


def test_config_error_daemon_answers_status_only(sockdir: str) -> None:
    error = "/etc/portwatchd/portwatchd.toml:3: [socket] group: group 'x' does not exist"
    handlers = ConfigErrorHandlers(lambda: {"version": "0.2.0"}, error)
    thread = ServerThread(handlers.answer, os.path.join(sockdir, "e.sock")).start()
    try:
        status = ask(thread.path, req="status")["status"]
        assert status["config_error"] == error and status["protocol"] == 1
        for name in ("events", "follow", "ports", "rescan", "reload", "metrics"):
            answer = ask(thread.path, req=name)
            assert error_code(answer) == protocol.CONFIG_ERROR
            assert error in answer["error"]["message"]
            assert "systemctl reload portwatchd" in answer["error"]["message"]
        assert error_code(ask(thread.path, req="nope")) == protocol.UNKNOWN_REQUEST
    finally:
        thread.stop()


# --- events -----------------------------------------------------------------


def test_events_filters(serve: Any, history: HistoryDouble) -> None:
    history.add(5, type="opened", proto="tcp", port=22)
    history.add(5, type="closed", proto="udp", port=53)
    history.add(5, type="opened", proto="udp", port=80)
    served = serve()

    def seqs(**args: Any) -> list[int]:
        response = ask(served.path, req="events", **args)
        assert response["ok"] is True, response
        return [event["seq"] for event in response["events"]]

    assert seqs() == list(range(1, 16))
    assert seqs(type="closed") == list(range(6, 11))
    assert seqs(proto="udp") == list(range(6, 16))
    assert seqs(port=80) == list(range(11, 16))
    assert seqs(type="opened", proto="udp") == list(range(11, 16))
    assert seqs(limit=3) == [13, 14, 15]  # the newest three
    assert seqs(limit=2, type="closed") == [9, 10]
    assert seqs(after_seq=4, limit=3) == [5, 6, 7]  # paging forward
    assert seqs(after_seq=13) == [14, 15]
    assert seqs(limit=0) == []
    assert seqs(since="2026-11-25T14:00:12Z") == [12, 13, 14, 15]
    assert seqs(until="2026-11-25T14:00:03Z") == [1, 2, 3]
    assert seqs(until="2026-11-25T14:00:08Z", limit=2) == [7, 8]  # the newest two until then
    assert seqs(since="2026-11-25T14:00:04Z", until="2026-11-25T15:00:06+01:00") == [4, 5, 6]
    response = ask(served.path, req="events", limit=1)
    assert response["last_seq"] == 15 and response["oldest_seq"] == 1
    assert Event.from_dict(response["events"][0]) == history.events[-1]


def test_events_reply_is_byte_for_byte_the_0_1_line(serve: Any, history: HistoryDouble) -> None:
    history.add(EVENTS_PER_SLICE * 2 + 7)
    served = serve()
    client = Client(served.path)
    try:
        client.send(b'{"v":1,"req":"events","after_seq":3}\n')
        line = client.read_line()
    finally:
        client.close()
    expected = protocol.encode_with_list(
        protocol.ok(oldest_seq=1, last_seq=history.last_seq),
        "events",
        [protocol.encode(event.to_dict())[:-1] for event in history.events[3:]],
    )
    assert line == expected


def test_events_reports_gap_when_after_seq_left_the_history(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(30)
    history.prune(keep=10)
    served = serve()
    response = ask(served.path, req="events", after_seq=5)
    assert response["gap"] == {"from": 6, "to": 20}
    assert [e["seq"] for e in response["events"]] == list(range(21, 31))
    assert "gap" not in ask(served.path, req="events", after_seq=20)


def test_events_lists_the_losses_in_its_range(serve: Any, history: HistoryDouble) -> None:
    history.add(5)
    history.record_loss(6, 9, "portwatchd stopped before storing them")
    history.add(1)  # seq 10
    served = serve()
    response = ask(served.path, req="events", after_seq=2)
    assert [e["seq"] for e in response["events"]] == [3, 4, 5, 10]
    assert response["losses"] == [
        {
            "from_seq": 6,
            "to_seq": 9,
            "time": "2026-11-25T15:00:00.000000Z",
            "reason": "portwatchd stopped before storing them",
        }
    ]
    assert "losses" not in ask(served.path, req="events", after_seq=2, limit=2)  # 3, 4 only


def test_a_seq_from_a_lost_history_starts_the_client_over(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(3)
    served = serve()
    answer = ask(served.path, req="events", after_seq=500)
    assert answer["reset"] is True
    assert [event["seq"] for event in answer["events"]] == [1, 2, 3]
    client = Client(served.path)
    try:
        header = client.ask(req="follow", after_seq=500)
        assert header["follow"] == {"after_seq": 0}
        assert client.read() == {"v": 1, "reset": {"after_seq": 500, "last_seq": 3}}
        assert [client.read()["event"]["seq"] for _ in range(3)] == [1, 2, 3]
    finally:
        client.close()


def test_events_reply_is_read_in_bounded_pages(history: HistoryDouble) -> None:
    history.add(3000)
    handlers = RequestHandlers(
        history, status=dict, ports=list, request_rescan=lambda: None,
        reload=lambda done: None, metrics=str,
    )  # fmt: skip
    reply = handlers.answer(b'{"v":1,"req":"events"}\n', Caller(uid=0, connections=1))
    assert not isinstance(reply, bytes)
    chunks, pages_read = [], []
    for chunk in reply:
        chunks.append(chunk)
        pages_read.append(len(history.pages))
        assert chunk.count(b'"seq":') <= EVENTS_PER_SLICE
    # Read lazily: one page per slice, as the slices are pulled (head and tail read none).
    assert pages_read == [0, *range(1, 13), 12]
    assert all(limit <= EVENTS_PER_SLICE for _after, limit in history.pages)
    assert len(json.loads(b"".join(chunks))["events"]) == 3000


def test_events_ends_at_the_last_seq_it_names(serve: Any, history: HistoryDouble) -> None:
    history.add(2000)
    served = serve()
    client = Client(served.path)
    try:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.send(b'{"v":1,"req":"events"}\n')
        time.sleep(0.2)
        served.add(100)  # appended while the reply is on its way
        response = client.read()
    finally:
        client.close()
    assert response["last_seq"] == 2000
    assert [e["seq"] for e in response["events"]] == list(range(1, 2001))


def test_whole_history_of_200000_events_never_holds_the_loop(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(200_000)
    served = serve()
    thread = served.thread
    slowest = [0.0]
    answer = thread.server.answer

    def timed_answer(line: bytes, caller: Caller) -> Any:
        reply = answer(line, caller)
        if isinstance(reply, bytes):
            return reply

        def timed() -> Iterator[bytes]:
            iterator = iter(reply)  # type: ignore[arg-type]
            while True:
                began = time.perf_counter()
                chunk = next(iterator, None)
                slowest[0] = max(slowest[0], time.perf_counter() - began)
                if chunk is None:
                    return
                yield chunk

        return timed()

    thread.server.answer = timed_answer
    client = Client(served.path, timeout=60)
    bystander = Client(served.path)
    try:
        client.send(b'{"v":1,"req":"events"}\n')
        first = client.stream.read(100)
        thread.longest_tick_gap = 0.0
        started = time.monotonic()
        assert bystander.ask(req="status")["ok"] is True  # answered mid-stream
        assert time.monotonic() - started < 1.0
        rest = client.read_line()
        # Taken now: parsing 80 MB of JSON below holds this process's GIL for seconds.
        stall = thread.longest_tick_gap
    finally:
        client.close()
        bystander.close()
    response = json.loads(first + rest)
    assert len(response["events"]) == 200_000 and response["events"][-1]["seq"] == 200_000
    # Each slice is ~3 ms of work; generous bounds for a loaded 2-core machine.
    assert slowest[0] < 0.1, f"one slice took {slowest[0] * 1000:.0f} ms"
    assert stall < 0.25, f"loop stalled {stall:.3f} s"


def test_a_slow_reader_holds_at_most_one_slice_past_the_high_water_mark(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(20_000)
    served = serve()
    client = Client(served.path, timeout=60)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    held: list[int] = []

    def unsent() -> int:
        return max((c.outbox.size for c in served.thread.server._connections), default=0)

    try:
        client.send(b'{"v":1,"req":"events"}\n')
        received = 0
        while received < 2_000_000:  # a quarter of the answer, 64 KB at a time
            received += len(client.stream.read(65536))
            held.append(served.thread.run(unsent))
            time.sleep(0.01)
    finally:
        client.close()
    slice_bytes = EVENTS_PER_SLICE * 500  # an event is about 400 bytes of JSON
    assert max(held) <= WRITE_BUFFER_HIGH + slice_bytes


def test_pipelining_client_that_never_reads_is_closed_after_write_timeout(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(1000)  # every answer is the whole history, about 400 KB
    served = serve(write_timeout=0.3)
    client = Client(served.path)
    request = protocol.encode({"v": 1, "req": "events"})
    client.sock.setblocking(False)
    sent = 0
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += client.sock.send(request * 64)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        assert wait_for(lambda: ask(served.path, req="status")["status"]["clients"] == 1)
        assert served.thread.ticks_after(0.1) > 0
    finally:
        client.close()
    # Only what fitted in the socket buffers was sent, not five seconds of requests.
    assert sent < 4 * 1024 * 1024


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
        (b'{"v": 1, "req": "events", "until": "later"}\n', protocol.BAD_REQUEST, "'until'"),
        (b'{"v": 1, "req": "follow", "until": "2026-11-25"}\n', protocol.BAD_REQUEST, "'until'"),
        (b'{"v": 1, "req": "status", "prot": "tcp"}\n', protocol.BAD_REQUEST, "prot"),
        (b'{"v": 2, "req": "status"}\n', protocol.VERSION_MISMATCH, "protocol 2"),
        (b'{"req": "status"}\n', protocol.VERSION_MISMATCH, "protocol None"),
        (b'{"v": 1, "req": "follow", "limit": "x"}\n', protocol.BAD_REQUEST, "'limit'"),
    ],
)
def test_bad_requests_get_named_errors(serve: Any, line: bytes, code: str, names: str) -> None:
    served = serve()
    client = Client(served.path)
    try:
        client.send(line)
        response = client.read()
        assert error_code(response) == code
        assert names in response["error"]["message"]
        assert client.ask(req="status")["ok"] is True  # the connection is still usable
    finally:
        client.close()


def test_any_line_gets_one_answer_and_the_server_lives(serve: Any) -> None:
    served = serve()
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
        client = Client(served.path)
        try:
            client.send(line + b"\n")
            response = client.read()
            assert response["v"] == protocol.PROTOCOL_VERSION
            if response.get("ok") is False:
                assert response["error"]["code"] in protocol.ERROR_CODES
        finally:
            client.close()

    one_line()
    assert ask(served.path, req="status")["ok"] is True


# --- follow -----------------------------------------------------------------


def test_follow_backlog_then_live_without_gap_or_duplicate(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(50)
    served = serve()
    client = Client(served.path)
    try:
        header = client.ask(req="follow", after_seq=40)
        assert header["ok"] is True and header["follow"] == {"after_seq": 40}
        received = [client.read()["event"]["seq"] for _ in range(10)]
        served.add(5)
        served.add(5)
        received += [client.read()["event"]["seq"] for _ in range(10)]
        assert received == list(range(41, 61))
    finally:
        client.close()


def test_follow_with_after_seq_and_limit_skips_nothing(serve: Any, history: HistoryDouble) -> None:
    history.add(10)
    served = serve()
    client = Client(served.path)
    try:
        client.ask(req="follow", after_seq=0, limit=3)
        served.add(1)
        assert [client.read()["event"]["seq"] for _ in range(11)] == list(range(1, 12))
    finally:
        client.close()


def test_follow_with_limit_starts_before_the_newest(serve: Any, history: HistoryDouble) -> None:
    history.add(10)
    served = serve()
    client = Client(served.path)
    try:
        assert client.ask(req="follow", limit=3)["follow"] == {"after_seq": 7}
        served.add(1)
        assert [client.read()["event"]["seq"] for _ in range(4)] == [8, 9, 10, 11]
    finally:
        client.close()


def test_events_appended_during_a_long_backlog_come_once_in_order(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(3000)  # many slices: the live events arrive while it is sent
    served = serve()
    client = Client(served.path)
    try:
        client.send(b'{"v":1,"req":"follow","after_seq":0}\n')
        assert client.read()["follow"] == {"after_seq": 0}
        seqs = [client.read()["event"]["seq"] for _ in range(10)]
        served.add(20)
        seqs += [client.read()["event"]["seq"] for _ in range(3010)]
        assert seqs == list(range(1, 3021))
    finally:
        client.close()


def test_follow_live_only_and_filtered(serve: Any, history: HistoryDouble) -> None:
    history.add(5)
    served = serve()
    client = Client(served.path)
    try:
        header = client.ask(req="follow", type="closed")
        assert header["follow"] == {"after_seq": 5}
        served.add(3, type="opened")
        served.add(2, type="closed")
        events = [client.read()["event"] for _ in range(2)]
        assert [(e["seq"], e["type"]) for e in events] == [(9, "closed"), (10, "closed")]
    finally:
        client.close()


def test_follow_reports_gap_before_backlog(serve: Any, history: HistoryDouble) -> None:
    history.add(30)
    history.prune(keep=10)
    served = serve()
    client = Client(served.path)
    try:
        client.ask(req="follow", after_seq=5)
        assert client.read() == {"v": 1, "gap": {"from": 6, "to": 20}}
        assert client.read()["event"]["seq"] == 21
    finally:
        client.close()


def test_follow_streams_losses_in_seq_order(serve: Any, history: HistoryDouble) -> None:
    history.add(3)
    history.record_loss(4, 6, "portwatchd stopped before storing them")
    history.add(1)  # seq 7
    served = serve()
    client = Client(served.path)
    try:
        client.ask(req="follow", after_seq=2)
        assert client.read()["event"]["seq"] == 3
        assert client.read() == {
            "v": 1,
            "loss": {
                "from_seq": 4,
                "to_seq": 6,
                "time": "2026-11-25T15:00:00.000000Z",
                "reason": "portwatchd stopped before storing them",
            },
        }
        assert client.read()["event"]["seq"] == 7
        served.thread.run(lambda: history.record_loss(8, 8, "the store failed"))
        served.add(1)
        assert client.read()["loss"]["reason"] == "the store failed"
        assert client.read()["event"]["seq"] == 9
    finally:
        client.close()


def test_follow_overrun_cuts_off_slow_consumer(serve: Any, history: HistoryDouble) -> None:
    served = serve(follow_queue=16)
    client = Client(served.path)
    try:
        client.ask(req="follow")
        # The consumer does not read while far more than the queue is
        # published, in batches the queue would hold for a reading client.
        for _ in range(600):
            served.add(10)
        assert served.thread.ticks_after(0.1) > 0
        messages = client.read_until_closed()
    finally:
        client.close()
    seqs = [m["event"]["seq"] for m in messages if "event" in m]
    assert seqs  # it got what fitted in the socket buffers ...
    assert seqs == list(range(1, len(seqs) + 1))  # ... in order, nothing skipped before the cut
    assert len(seqs) < 6000
    assert error_code(messages[-1]) == protocol.FOLLOW_OVERRUN
    assert f"after_seq={seqs[-1]}" in messages[-1]["error"]["message"]
    assert ask(served.path, req="status")["status"]["followers"] == 0


def test_follow_client_that_never_reads_is_dropped(serve: Any, history: HistoryDouble) -> None:
    served = serve(follow_queue=64, write_timeout=0.3)
    client = Client(served.path)
    try:
        client.ask(req="follow")
        for _ in range(40):
            served.add(200)

        def dropped() -> bool:
            status = ask(served.path, req="status")["status"]
            return bool(status["followers"] == 0 and status["clients"] == 1)

        assert wait_for(dropped)
        assert served.thread.ticks_after(0.1) > 0
    finally:
        client.close()
    assert history.subscribers == []  # the log subscription went with the last follower


def test_follow_client_hanging_up_unsubscribes(serve: Any, history: HistoryDouble) -> None:
    served = serve()
    client = Client(served.path)
    client.ask(req="follow")
    assert ask(served.path, req="status")["status"]["followers"] == 1
    assert len(history.subscribers) == 1
    client.close()
    assert wait_for(lambda: ask(served.path, req="status")["status"]["followers"] == 0)
    assert history.subscribers == []


def test_follow_backlog_failure_is_an_internal_error(serve: Any, history: HistoryDouble) -> None:
    history.add(5)
    served = serve()
    history.fail = RuntimeError("store exploded")
    client = Client(served.path)
    try:
        response = client.ask(req="follow", after_seq=0)
        assert error_code(response) == protocol.INTERNAL
        assert "store exploded" in response["error"]["message"]
        assert client.read_until_closed() == []
    finally:
        client.close()
    assert ask(served.path, req="status")["status"]["followers"] == 0


def test_follower_stuck_on_its_backlog_is_dropped_after_write_timeout(
    serve: Any, history: HistoryDouble
) -> None:
    history.add(5000)  # a backlog of about 2 MB: more than the socket and write buffers
    served = serve(write_timeout=0.3)
    client = Client(served.path)
    try:
        client.send(protocol.encode({"v": 1, "req": "follow", "after_seq": 0}))

        def dropped() -> bool:
            status = ask(served.path, req="status")["status"]
            return bool(status["followers"] == 0 and status["clients"] == 1)

        assert wait_for(dropped)  # no event is published: only the timeout can end it
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.sock.recv(65536):
                received += chunk
        assert 0 < received.count(b"\n") < 5001  # cut off part-way through the backlog
    finally:
        client.close()


def test_closing_the_server_ends_followers_and_the_subscription(
    serve: Any, history: HistoryDouble
) -> None:
    served = serve()
    client = Client(served.path)
    try:
        client.ask(req="follow")
        assert len(history.subscribers) == 1
        served.thread.stop()
        assert client.read_until_closed() == []
    finally:
        client.close()
    assert served.handlers.followers == 0 and history.subscribers == []
