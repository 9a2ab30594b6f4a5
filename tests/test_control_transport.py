"""The control transport over real Unix sockets: limits, slices, deferred replies, the file.

The answers come from a small stub, so that what is tested here is the
transport alone; control.handlers has its own tests.
"""

from __future__ import annotations

import grp
import json
import os
import select
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portwatchd import protocol
from portwatchd.control.transport import (
    ROOT_RESERVED_SLOTS,
    Caller,
    ControlError,
    DeferredReply,
    Reply,
    Stream,
)
from tests.control_harness import Client, ServerThread, ask, error_code, wait_for
from tests.other_user import BASE_PYTHON

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Endless(Stream):
    """A follow-like stream that never ends by itself."""

    exclusive = True
    closed = 0

    def pull(self) -> bytes | None:
        return None

    def close(self) -> None:
        super().close()
        Endless.closed += 1


class Stub:
    """Answers by request name; records what the transport handed it."""

    def __init__(self) -> None:
        self.deferred: list[DeferredReply] = []
        self.callers: list[Caller] = []

    def __call__(self, line: bytes, caller: Caller) -> Reply:
        self.callers.append(caller)
        try:
            request = json.loads(line)["req"]
        except (ValueError, KeyError, TypeError):
            return protocol.error_line(protocol.BAD_JSON, "stub: not a request")
        if request == "status":
            return protocol.encode(protocol.ok(clients=caller.connections, uid=caller.uid))
        if request == "length":
            return protocol.encode(protocol.ok(length=len(line)))
        if request == "chunks":
            return iter([b'{"v":1,"ok":true,"n":[', b"1", b"", b",2", b"]}\n"])
        if request == "broken_after_half":
            return _broken(b'{"v":1,"ok":true,"n":[')
        if request == "broken_at_start":
            return _broken(b"")
        if request == "wait":
            reply = DeferredReply()
            self.deferred.append(reply)
            return reply
        if request == "endless":
            return Endless()
        if request == "explode":
            raise RuntimeError("answer bug")
        return protocol.error_line(protocol.UNKNOWN_REQUEST, f"stub: {request}")


def _broken(first: bytes) -> Iterator[bytes]:
    if first:
        yield first
    raise RuntimeError("slice failed")


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
def serve(sockdir: str, stub: Stub) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        thread = ServerThread(stub, os.path.join(sockdir, "c.sock"), **options).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as other users")


# A client process as another uid: opens `count` connections, says which were
# turned away (and why), then sends one byte a second on the others.
_SLOW_CLIENTS = textwrap.dedent(
    """
    import json, select, socket, sys, time
    path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    held, busy = [], []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        held.append(sock)
    time.sleep(0.3)
    for sock in list(held):
        if select.select([sock], [], [], 0)[0]:
            line = sock.makefile().readline()
            busy.append(json.loads(line)["error"]) if line else busy.append(None)
            held.remove(sock)
    print(json.dumps({"held": len(held), "busy": busy}), flush=True)
    request = b'{"v":1,"req":"status"}'
    for i in range(int(seconds)):
        for sock in held:
            sock.send(request[i % len(request):][:1])
        time.sleep(1)
    """
)


def slow_clients(path: str, uid: int, count: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
         BASE_PYTHON, "-c", _SLOW_CLIENTS, path, str(count), str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def first_report(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    report: dict[str, Any] = json.loads(process.stdout.readline())
    return report


# --- limits -----------------------------------------------------------------


def test_one_uid_holds_at_most_its_share(serve: Any) -> None:
    needs_root()
    server = serve(max_clients=64)
    os.chmod(server.path, 0o666)
    assert server.server.per_uid_limit == 16
    process = slow_clients(server.path, 65534, 64, 0)
    try:
        report = first_report(process)
    finally:
        process.wait(timeout=30)
    assert report["held"] == 16
    assert len(report["busy"]) == 48
    for refusal in report["busy"]:
        assert refusal["code"] == protocol.BUSY
        assert refusal["message"].startswith("too many connections from your user (uid 65534")
    assert wait_for(lambda: server.server.client_count == 0)


def test_sixty_four_slow_clients_of_four_users_cannot_lock_out_root(serve: Any) -> None:
    needs_root()
    server = serve(max_clients=64)
    os.chmod(server.path, 0o666)
    flood = [slow_clients(server.path, uid, 16, 4) for uid in (65534, 65533, 65532, 65531)]
    late: subprocess.Popen[str] | None = None
    try:
        assert [first_report(p)["held"] for p in flood] == [16, 16, 16, 16]
        assert server.server.client_count == 64
        late = slow_clients(server.path, 65530, 1, 0)
        refusal = first_report(late)["busy"][0]
        assert refusal == {"code": "busy", "message": "too many clients (64)"}
        for _ in range(3):  # while the 64 trickle one byte a second
            started = time.monotonic()
            assert ask(server.path, req="status")["ok"] is True
            assert time.monotonic() - started < 1.0
            time.sleep(0.5)
        root_clients = [Client(server.path) for _ in range(ROOT_RESERVED_SLOTS)]
        try:
            assert all(c.ask(req="status")["ok"] for c in root_clients)
            extra = Client(server.path)
            assert error_code(extra.read()) == protocol.BUSY
            extra.close()
        finally:
            for client in root_clients:
                client.close()
        assert server.ticks_after(0.2) > 0
    finally:
        for process in [*flood, *([late] if late else [])]:
            process.kill()
            process.wait()


def test_five_hundred_connections_past_the_limit_get_busy(serve: Any) -> None:
    server = serve(max_clients=8, idle_timeout=30)
    admitted = 8 + ROOT_RESERVED_SLOTS if os.geteuid() == 0 else server.server.per_uid_limit
    clients = [Client(server.path) for _ in range(500)]
    try:
        for client in clients[admitted:]:
            assert error_code(client.read()) == protocol.BUSY
        for client in clients[:admitted]:  # the first ones hold their places
            assert client.ask(req="status")["ok"] is True
    finally:
        for client in clients:
            client.close()
    assert server.ticks_after(0.2) > 0
    assert wait_for(lambda: ask(server.path, req="status")["ok"] is True)


def test_caller_carries_uid_and_connection_count(serve: Any) -> None:
    server = serve()
    other = Client(server.path)
    try:
        other.ask(req="status")
        answer = ask(server.path, req="status")
    finally:
        other.close()
    assert answer["uid"] == os.geteuid() and answer["clients"] == 2


# --- per-connection limits --------------------------------------------------


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
    assert error_code(client.read()) == protocol.LINE_TOO_LONG
    assert client.read_until_closed() == []
    client.close()
    assert server.ticks_after(0.2) > 0
    assert ask(server.path, req="status")["ok"] is True


def test_line_of_exactly_max_line_is_accepted(serve: Any) -> None:
    server = serve()
    head = b'{"v":1,"req":"length","pad":"'
    line = head + b"x" * (protocol.MAX_LINE - len(head) - 2) + b'"}'
    assert len(line) == protocol.MAX_LINE
    client = Client(server.path)
    try:
        client.send(line + b"\n")
        assert client.read()["length"] == protocol.MAX_LINE + 1
        client.send(line + b"x\n")
        assert error_code(client.read()) == protocol.LINE_TOO_LONG
    finally:
        client.close()


def test_silent_client_gets_idle_timeout(serve: Any) -> None:
    server = serve(idle_timeout=0.3)
    client = Client(server.path)
    assert error_code(client.read()) == protocol.IDLE_TIMEOUT
    assert client.read_until_closed() == []
    client.close()
    assert ask(server.path, req="status")["ok"] is True


def test_half_a_line_then_stall_gets_idle_timeout(serve: Any) -> None:
    server = serve(idle_timeout=0.3)
    client = Client(server.path)
    client.send(b'{"v": 1, "req": "sta')
    ticks = server.ticks_after(0.1)
    assert error_code(client.read()) == protocol.IDLE_TIMEOUT
    client.close()
    assert ticks > 0


def test_half_a_line_then_hang_up_is_dropped_quietly(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    client.send(b'{"v": 1, "req": "sta')
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_until_closed() == []
    client.close()
    assert ask(server.path, req="status")["ok"] is True


def test_a_client_that_shuts_down_its_side_still_gets_every_answer(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    client.send(b'{"v":1,"req":"chunks"}\n{"v":1,"req":"status"}\n')
    client.sock.shutdown(socket.SHUT_WR)
    answers = client.read_until_closed()
    client.close()
    assert answers[0]["n"] == [1, 2] and answers[1]["ok"] is True and len(answers) == 2


# --- replies: slices, deferred, failures -----------------------------------


def test_chunked_reply_is_one_line_and_the_connection_goes_on(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    try:
        assert client.ask(req="chunks") == {"v": 1, "ok": True, "n": [1, 2]}
        assert client.ask(req="status")["ok"] is True
    finally:
        client.close()


def test_deferred_reply_is_sent_when_resolved_and_keeps_the_order(serve: Any, stub: Stub) -> None:
    server = serve(idle_timeout=0.3)
    client = Client(server.path)
    try:
        client.send(b'{"v":1,"req":"wait"}\n{"v":1,"req":"status"}\n')
        assert wait_for(lambda: len(stub.deferred) == 1)
        # Waiting for the answer is not idleness, and the status waits behind it.
        assert select.select([client.sock], [], [], 0.6)[0] == []
        server.run(lambda: stub.deferred[0].resolve(b'{"v":1,"ok":true,"done":1}\n'))
        assert client.read() == {"v": 1, "ok": True, "done": 1}
        assert client.read()["uid"] == os.geteuid()
    finally:
        client.close()


def test_failure_at_a_line_boundary_is_an_internal_error(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    try:
        answer = client.ask(req="broken_at_start")
        assert (
            error_code(answer) == protocol.INTERNAL and "slice failed" in answer["error"]["message"]
        )
        assert client.ask(req="status")["ok"] is True
    finally:
        client.close()
    assert any("slice failed" in line for line in server.logs)


def test_failure_inside_a_line_closes_the_connection(serve: Any) -> None:
    server = serve()
    client = Client(server.path)
    try:
        client.send(b'{"v":1,"req":"broken_after_half"}\n')
        assert client.stream.read() == b'{"v":1,"ok":true,"n":['  # then end of stream
    finally:
        client.close()
    assert ask(server.path, req="status")["ok"] is True


def test_a_failure_inside_a_connection_closes_only_that_connection(serve: Any) -> None:
    server = serve()
    bystander = Client(server.path)
    assert bystander.ask(req="status")["ok"] is True
    victim = Client(server.path)
    try:
        victim.send(b'{"v": 1, "req": "explode"}\n')
        assert victim.read_until_closed() == []
        assert any("answer bug" in line for line in server.logs)
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
        for _ in range(500):
            assert client.ask(req="status")["ok"] is True
            assert client.ask(req="chunks")["ok"] is True
        # One deadline timer per connection (plus the ticker), not one per request.
        assert server.run(lambda: len(server.reactor._timers)) < 10
    finally:
        client.close()


def test_an_exclusive_stream_ends_on_any_byte_and_is_closed(serve: Any) -> None:
    server = serve()
    before = Endless.closed
    client = Client(server.path)
    try:
        client.send(b'{"v":1,"req":"endless"}\n')
        assert wait_for(lambda: server.server.client_count == 1)
        client.send(b"x")
        assert client.read_until_closed() == []
    finally:
        client.close()
    assert wait_for(lambda: Endless.closed == before + 1)


# --- the socket file --------------------------------------------------------


def test_socket_mode_group_and_parent_dir(sockdir: str, stub: Stub) -> None:
    needs_root()
    group = grp.getgrnam("adm")
    path = os.path.join(sockdir, "sub", "c.sock")
    old_umask = os.umask(0o077)  # as under the unit's UMask=0077
    try:
        server = ServerThread(stub, path, group="adm").start()
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


def test_unknown_group_is_a_clear_error(sockdir: str, stub: Stub) -> None:
    server = ServerThread(stub, os.path.join(sockdir, "c.sock"), group="no-such-grp")
    with pytest.raises(ControlError, match="group 'no-such-grp' does not exist"):
        server.start()


def test_stale_socket_is_replaced(sockdir: str, stub: Stub) -> None:
    path = os.path.join(sockdir, "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a crashed daemon: the file stays, nobody listens
    server = ServerThread(stub, path).start()
    try:
        assert ask(path, req="status")["ok"] is True
    finally:
        server.stop()


def test_live_socket_is_not_taken_over(sockdir: str, stub: Stub) -> None:
    first = ServerThread(stub, os.path.join(sockdir, "c.sock")).start()
    try:
        second = ServerThread(Stub(), first.path)
        with pytest.raises(ControlError, match="another portwatchd is already listening"):
            second.start()
        assert ask(first.path, req="status")["ok"] is True
    finally:
        first.stop()


def test_path_that_is_not_a_socket_is_refused(sockdir: str, stub: Stub) -> None:
    path = os.path.join(sockdir, "c.sock")
    with open(path, "w") as file:
        file.write("precious")
    with pytest.raises(ControlError, match="is not a socket"):
        ServerThread(stub, path).start()
    with open(path) as file:
        assert file.read() == "precious"


def test_close_leaves_a_socket_file_that_is_not_ours(sockdir: str, stub: Stub) -> None:
    server = ServerThread(stub, os.path.join(sockdir, "c.sock")).start()
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
        from portwatchd import protocol
        from portwatchd.control.transport import ControlServer, inherited_listen_socket
        from portwatchd.reactor import Reactor

        sock = inherited_listen_socket()
        left = [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ]
        reactor = Reactor()
        answer = lambda line, caller: protocol.encode(protocol.ok())
        server = ControlServer(answer, reactor, path=sys.argv[2], inherited=sock)
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
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
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


def test_close_ends_streams_and_idle_clients(sockdir: str, stub: Stub) -> None:
    server = ServerThread(stub, os.path.join(sockdir, "c.sock")).start()
    before = Endless.closed
    follower = Client(server.path)
    idle = Client(server.path)
    try:
        follower.send(b'{"v":1,"req":"endless"}\n')
        assert ask(server.path, req="status")["clients"] == 3
        server.stop()
        assert follower.read_until_closed() == []
        assert idle.read_until_closed() == []
        assert not os.path.exists(server.path)
        assert Endless.closed == before + 1  # its subscriptions were dropped
    finally:
        follower.close()
        idle.close()
