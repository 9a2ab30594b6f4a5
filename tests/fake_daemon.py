"""A stand-in portwatchd for portwatchctl's tests: a real Unix socket, the real wire format.

It answers like the 0.2 daemon (requests `reload` and `metrics`, query
field `until`, `loss` items, error codes `busy` and `config_error`) so that
the client can be tested before and apart from the daemon's own code. Its
history is computed, not stored: event N has time BASE + N seconds, so a
test can hold a million events without a million objects.

It records every request it gets, so a test can check what was asked.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from portwatchd import protocol

BASE = datetime(2026, 11, 25, 14, 0, 0, tzinfo=UTC)


def event_time(seq: int) -> str:
    return (BASE + timedelta(seconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(seq: int) -> dict[str, Any]:
    """Event `seq`: odd ones opened, even closed; tcp but every third udp; port 1000 + seq % 50."""
    proto = "udp" if seq % 3 == 0 else "tcp"
    port = 1000 + seq % 50
    return {
        "seq": seq,
        "id": f"00000000-0000-4000-8000-{seq:012d}",
        "type": "opened" if seq % 2 else "closed",
        "time": event_time(seq),
        "detected": "scan",
        "down_since": None,
        "key": f"{proto}:127.0.0.1:{port}",
        "proto": proto,
        "family": "ipv4",
        "address": "127.0.0.1",
        "port": port,
        "interface": "",
        "owner": {"pid": 100 + seq % 7, "comm": "server", "unit": "server.service"},
    }


@dataclass
class History:
    """Seqs oldest..last, less those in `losses` (from_seq, to_seq, reason)."""

    last: int = 0
    oldest: int = 1
    losses: list[tuple[int, int, str]] = field(default_factory=list)
    max_limit: int | None = None  # a daemon that caps every page at this many

    def held(self, seq: int) -> bool:
        return self.oldest <= seq <= self.last and not any(
            low <= seq <= high for low, high, _ in self.losses
        )

    def _bounds(self, query: dict[str, Any]) -> tuple[int, int]:
        """The seqs whose times are within since..until (event N's time is BASE + N s)."""
        low, high = self.oldest, self.last
        since, until = query.get("since"), query.get("until")
        if since is not None:
            seconds = (datetime.fromisoformat(since) - BASE).total_seconds()
            low = max(low, math.ceil(seconds))
        if until is not None:
            high = min(high, math.floor((datetime.fromisoformat(until) - BASE).total_seconds()))
        return low, high

    def _seqs(self, query: dict[str, Any], forward: bool, after: int) -> Iterator[int]:
        low, high = self._bounds(query)
        seqs = range(max(low, after + 1), high + 1) if forward else range(high, low - 1, -1)
        filters = [(k, query[k]) for k in ("type", "proto", "port") if query.get(k) is not None]
        for seq in seqs:
            if self.held(seq) and (not filters or all(make_event(seq)[k] == v for k, v in filters)):
                yield seq

    def answer(self, query: dict[str, Any]) -> dict[str, Any]:
        after, limit = query.get("after_seq"), query.get("limit")
        if limit is not None and self.max_limit is not None:
            limit = min(limit, self.max_limit)
        if after is None and limit is not None:  # the newest `limit`
            seqs: list[int] = []
            for seq in self._seqs(query, forward=False, after=0):
                if len(seqs) == limit:
                    break
                seqs.append(seq)
            seqs.reverse()
        else:
            seqs = []
            for seq in self._seqs(query, forward=True, after=after or 0):
                if limit is not None and len(seqs) == limit:
                    break
                seqs.append(seq)
        fields: dict[str, Any] = {"oldest_seq": self.oldest, "last_seq": self.last}
        if after is not None and after + 1 < self.oldest:
            fields["gap"] = {"from": after + 1, "to": self.oldest - 1}
        upper = seqs[-1] if seqs and limit is not None and len(seqs) == limit else self.last
        lower = after if after is not None else (seqs[0] - 1 if seqs else 0)
        fields["losses"] = [
            {"from_seq": low, "to_seq": high, "time": event_time(low), "reason": reason}
            for low, high, reason in self.losses
            if high > lower and low <= upper
        ]
        return protocol.ok(events=[make_event(seq) for seq in seqs], **fields)


class FakeDaemon:
    """Serves the protocol on `path` from a thread until stop()."""

    def __init__(self, path: str, history: History | None = None) -> None:
        self.path = path
        self.history = history or History()
        self.requests: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {"version": "0.2.0", "pid": 4242, "ports_watched": 3}
        self.reload: dict[str, Any] = {"outcome": "ok"}
        self.metrics = (
            "# HELP portwatchd_up 1 when up\n# TYPE portwatchd_up gauge\nportwatchd_up 1\n"
        )
        self.error: tuple[str, str] | None = None  # every request answered with this error
        self.busy: str | None = None  # refuse every connection with this reason, unread
        self.follow_items: list[dict[str, Any]] = []  # sent after a follow's backlog
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stopping = threading.Event()

    def start(self) -> FakeDaemon:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=10)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._converse, args=(connection,), daemon=True).start()

    def _converse(self, connection: socket.socket) -> None:
        with connection:
            if self.busy is not None:
                connection.sendall(protocol.encode(protocol.error("busy", self.busy)))
                return
            with connection.makefile("rb") as lines:
                for line in lines:
                    request = json.loads(line)
                    self.requests.append(request)
                    if request.get("req") == "follow" and self.error is None:
                        self._follow(connection, request)
                        return
                    connection.sendall(protocol.encode(self._answer(request)))

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.error is not None:
            return protocol.error(*self.error)
        name = request.get("req")
        query = {k: v for k, v in request.items() if k not in ("v", "req")}
        if name == "events":
            return self.history.answer(query)
        if name == "status":
            return protocol.ok(status=self.status)
        if name == "ports":
            return protocol.ok(ports=[])
        if name == "reload":
            return protocol.ok(reload=self.reload)
        if name == "metrics":
            return protocol.ok(metrics=self.metrics)
        return protocol.error("unknown_request", f"unknown request {name!r}")

    def _follow(self, connection: socket.socket, request: dict[str, Any]) -> None:
        query = {k: v for k, v in request.items() if k not in ("v", "req")}
        backlog = self.history.answer(query)["events"] if query else []
        after = backlog[-1]["seq"] if backlog else self.history.last
        connection.sendall(protocol.encode(protocol.ok(follow={"after_seq": after})))
        for event in backlog:
            connection.sendall(protocol.encode({"v": 1, "event": event}))
        for item in self.follow_items:
            connection.sendall(protocol.encode({"v": 1, **item}))
        self._stopping.wait()  # a live stream with nothing more to say
