"""What portwatchctl's tests share with the control tests: a daemon stand-in
(history double plus recorded requests) served by the real transport and
handlers, and the fixtures `backend`, `serve`, `sockdir`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from portwatchd.control.handlers import RequestHandlers
from portwatchd.model import Endpoint, Event, Owner
from tests import control_harness
from tests.history_double import HistoryDouble


class _History:
    """`ring.extend()` and `ring.events()` over the history double."""

    def __init__(self, history: HistoryDouble) -> None:
        self._history = history

    def extend(self, events: Sequence[Event]) -> None:
        self._history.append(events)

    def events(self) -> list[Event]:
        return list(self._history.events)


class MemoryBackend:
    """The daemon's side of the control socket: its history, ports and requests."""

    def __init__(self, capacity: int = 1000) -> None:
        self.history = HistoryDouble()
        self.ring = _History(self.history)
        self.capacity = capacity
        self.ports: list[tuple[Endpoint, Owner]] = []
        self.rescans = 0
        self.fail_status = False

    def add(self, count: int, **kwargs: Any) -> list[Event]:
        events = self.history.add(count, **kwargs)
        self.history.prune(keep=self.capacity)
        return events

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
            "events_total": self.history.last_seq,
            "ring_size": len(self.history.events),
            "ring_capacity": self.capacity,
            "last_scan_time": "2026-11-25T14:00:00.000000Z",
            "last_scan_duration_ms": 1.5,
            "config_path": "/etc/portwatchd/portwatchd.toml",
            "last_reload": {"time": None, "ok": True, "error": None},
        }

    def request_rescan(self) -> None:
        self.rescans += 1

    def handlers(self, follow_queue: int) -> RequestHandlers:
        return RequestHandlers(
            self.history,
            status=self.status,
            ports=lambda: list(self.ports),
            request_rescan=self.request_rescan,
            reload=lambda done: done({"outcome": "ok", "error": None}),
            metrics=lambda: "# TYPE portwatchd_events_total counter\nportwatchd_events_total 0\n",
            follow_queue=follow_queue,
            log=lambda message: None,
        )


class ServerThread(control_harness.ServerThread):
    """The control server for one MemoryBackend, on its own loop thread."""

    def __init__(self, backend: MemoryBackend, path: str, **options: Any) -> None:
        self.backend = backend
        self.handlers = backend.handlers(options.pop("follow_queue", 1024))
        super().__init__(self.handlers.answer, path, **options)

    def add_and_publish(self, count: int, **kwargs: Any) -> list[Event]:
        """New events, recorded on the loop thread: followers get them as the log says so."""
        events: list[Event] = self.run(lambda: self.backend.add(count, **kwargs))
        return events

    @property
    def followers(self) -> int:
        return self.handlers.followers


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
