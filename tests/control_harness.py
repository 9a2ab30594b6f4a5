"""Shared by the control tests: a server on a reactor thread, and raw-line clients.

The server runs on its own reactor in a thread (as in the daemon, where the
scan loop runs the same reactor between scans) while the test's main thread
acts as the clients; a periodic reactor timer counts ticks and keeps the
longest gap between two, so a test can show the loop kept running while a
client misbehaved.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from portwatchd import protocol
from portwatchd.control.transport import Answer, ControlServer
from portwatchd.reactor import Reactor, Timer

TICK_S = 0.01


class ServerThread:
    """A ControlServer on a Reactor looping in a background thread, plus a ticker.

    A callback that raised into the reactor would end the loop thread: stop()
    then fails the test with that exception.
    """

    def __init__(self, answer: Answer, path: str, **options: Any) -> None:
        self.path = path
        self.logs: list[str] = []
        options.setdefault("log", self.logs.append)
        self.reactor = Reactor()
        self.server = ControlServer(answer, self.reactor, path=path, **options)
        self.ticks = 0
        self.longest_tick_gap = 0.0
        self._last_tick = time.monotonic()
        self._ticker: Timer | None = None
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = False
        self._crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tick(self) -> None:
        now = time.monotonic()
        self.longest_tick_gap = max(self.longest_tick_gap, now - self._last_tick)
        self._last_tick = now
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
        self._last_tick = time.monotonic()
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
        return done.result(timeout=30)

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

    def read_line(self) -> bytes:
        line: bytes = self.stream.readline()
        assert line.endswith(b"\n"), f"connection closed, got {line[:200]!r}"
        return line

    def read(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.read_line())
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


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
