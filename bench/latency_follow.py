"""The daemon's live event stream as a client sees it: a `follow` on the control socket.

`Follower` holds one follow connection (what `portwatchctl events --follow`
reads) and a thread that stamps each event line with CLOCK_MONOTONIC as it
arrives, so a trial can ask "when did the event for this key come?".
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Collection
from types import TracebackType
from typing import Any, Self

from bench.load import LoadError
from portwatchd import protocol


class Follower:
    """Events from a follow stream, each with its arrival time (time.monotonic())."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(socket_path)
            self._sock.sendall(protocol.encode(protocol.request("follow")))
            self._file = self._sock.makefile("rb")
            header = json.loads(self._file.readline() or b"{}")
        except (OSError, ValueError) as exc:
            self._sock.close()
            raise LoadError(f"cannot follow portwatchd's events on {socket_path}: {exc}") from exc
        if header.get("ok") is not True:
            self._sock.close()
            raise LoadError(f"portwatchd refused to follow: {header}")
        self._sock.settimeout(None)
        self._arrived: list[tuple[float, dict[str, Any]]] = []
        self._changed = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._file:
                arrived = time.monotonic()
                event = json.loads(line).get("event")
                if isinstance(event, dict):
                    with self._changed:
                        self._arrived.append((arrived, event))
                        self._changed.notify_all()
        except (OSError, ValueError):
            pass
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _take(self, key: str, types: Collection[str]) -> tuple[float, dict[str, Any]] | None:
        for index, (arrived, event) in enumerate(self._arrived):
            if event.get("key") == key and event.get("type") in types:
                del self._arrived[index]
                return arrived, event
        return None

    def wait(
        self, key: str, types: Collection[str], timeout: float
    ) -> tuple[float, dict[str, Any]] | None:
        """The first unclaimed event of `types` for `key`: (arrival, event); None at timeout."""
        give_up = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._take(key, types)
                if found is not None or self._ended:
                    return found
                left = give_up - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def forget(self) -> None:
        """Drop every event not claimed yet (between trials)."""
        with self._changed:
            self._arrived.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
