"""Service pieces driven directly, with an injected clock."""

from __future__ import annotations

import os
from pathlib import Path

from portwatchd.config import Config
from portwatchd.model import Event
from portwatchd.notify import Notifier
from portwatchd.reactor import Reactor
from portwatchd.service import HEARTBEAT_S, Service


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.messages: list[tuple[int, str]] = []

    def event(self, event: Event) -> None:
        self.events.append(event)

    def log(self, priority: int, message: str, **fields: str) -> None:
        self.messages.append((priority, message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_touches_the_state_file_so_downtime_is_dated(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    state_file.write_text("{}")
    os.utime(state_file, (1, 1))
    clock = Clock()
    reactor = Reactor()
    service = Service(
        Config(state_dir=str(tmp_path)),
        sink=RecordingSink(),
        notifier=Notifier(send=lambda _message: None),
        reload_config=Config,
        reactor=reactor,
        monotonic=clock,
    )
    service._heartbeat_if_due()  # not due yet: the first comes HEARTBEAT_S after start
    assert state_file.stat().st_mtime == 1
    clock.now += HEARTBEAT_S + 1
    service._heartbeat_if_due()
    assert state_file.stat().st_mtime > 1
    reactor.close()
