"""What each control request means: a table of request name -> handler.

Handlers read the event log's read side (`HistoryReader`, docs/PIPELINE.md)
and a few injected callables; they never reach into the engine. Long
answers are iterators of bounded slices (EVENTS_PER_SLICE events each),
pulled by the transport while the client keeps up; every wire line comes
from portwatchd.protocol.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from portwatchd import protocol
from portwatchd.control.follow import EVENTS_PER_SLICE, FollowStream, LiveFeed, PageWalker
from portwatchd.control.transport import Caller, DeferredReply, Reply
from portwatchd.model import HOST_PLACE, Endpoint, Event, Loss, Owner, Place
from portwatchd.protocol import EventQuery, ProtocolError
from portwatchd.protocol_requests import parse_request

__all__ = ["EVENTS_PER_SLICE", "ConfigErrorHandlers", "HistoryReader", "RequestHandlers"]

# EVENTS_PER_SLICE (follow.py): about 3 ms of encoding at 10 us an event and
# about 100 KB of text, the longest a request keeps the loop between slices.
# Each row is described (place_of, then every [[expect]] rule) as its slice
# is encoded: measured 8 ms for 256 rows with 20 rules on a loaded 2-core
# machine (3.6 ms undescribed), so 128 keep a slice near the events' 3 ms.
PORTS_PER_SLICE = 128


class HistoryReader(Protocol):
    """The read side of log.EventLog, as docs/PIPELINE.md defines it.

    `page` and `newest_start` honour every filter of the query, `until`
    included (time <= until). Only the loop thread calls these.
    """

    @property
    def last_seq(self) -> int: ...

    @property
    def oldest_seq(self) -> int | None: ...

    def page(self, query: EventQuery, after_seq: int, limit: int) -> list[Event]: ...

    def newest_start(self, query: EventQuery, count: int) -> int: ...

    def losses(self, after_seq: int, upto_seq: int) -> list[Loss]: ...

    def subscribe(
        self, callback: Callable[[Sequence[Event | Loss]], None]
    ) -> Callable[[], None]: ...


Handler = Callable[[EventQuery | None, Caller], Reply]
# Where a socket lives and whether an [[expect]] rule accepts it (None: no rules).
Describe = Callable[[Endpoint, Owner], tuple[Place, bool | None]]


def _nowhere_known(_endpoint: Endpoint, _owner: Owner) -> tuple[Place, bool | None]:
    return HOST_PLACE, None


def _log_to_stderr(message: str) -> None:
    print(f"portwatchd: control: {message}", file=sys.stderr, flush=True)


def _parse(line: bytes) -> tuple[str, EventQuery | None]:
    return parse_request(protocol.decode(line))


def _require_root(caller: Caller, request: str) -> None:
    if caller.uid != 0:
        raise ProtocolError(
            protocol.PERMISSION_DENIED, f"{request} changes the daemon's state: only root may ask"
        )


class RequestHandlers:
    """Answers request lines for a ControlServer: pass `answer` as its Answer."""

    def __init__(
        self,
        history: HistoryReader,
        *,
        status: Callable[[], dict[str, Any]],
        ports: Callable[[], list[tuple[Endpoint, Owner]]],
        request_rescan: Callable[[], None],
        reload: Callable[[Callable[[dict[str, Any]], None]], None],
        metrics: Callable[[], str],
        describe: Describe = _nowhere_known,
        follow_queue: int = 1024,
        log: Callable[[str], None] = _log_to_stderr,
    ) -> None:
        self.history = history
        self._status = status
        self._ports = ports
        self._request_rescan = request_rescan
        self._reload = reload
        self._metrics = metrics
        self._describe = describe
        self.follow_queue = follow_queue
        self._log = log
        self._feed = LiveFeed(history, log)
        self._table: dict[str, Handler] = {
            "events": self._events,
            "follow": self._follow,
            "ports": self._ports_reply,
            "status": self._status_reply,
            "rescan": self._rescan,
            "reload": self._reload_reply,
            "metrics": self._metrics_reply,
        }

    @property
    def followers(self) -> int:
        return self._feed.followers

    def answer(self, line: bytes, caller: Caller) -> Reply:
        """The reply to one request line; a failure is an error reply, never raised."""
        try:
            name, query = _parse(line)
            return self._table[name](query, caller)
        except ProtocolError as exc:
            return protocol.error_line(exc.code, exc.message)
        except Exception as exc:
            self._log(f"internal error answering a request: {type(exc).__name__}: {exc}")
            return protocol.error_line(
                protocol.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )

    # --- the requests -----------------------------------------------------------

    def _status_reply(self, _query: EventQuery | None, caller: Caller) -> Reply:
        status = dict(self._status())
        status["protocol"] = protocol.PROTOCOL_VERSION
        status["clients"] = caller.connections
        status["followers"] = self.followers
        return protocol.encode(protocol.ok(status=status))

    def _ports_reply(self, _query: EventQuery | None, _caller: Caller) -> Reply:
        return _ports_slices(self._ports(), self._describe)

    def _rescan(self, _query: EventQuery | None, caller: Caller) -> Reply:
        _require_root(caller, "rescan")
        self._request_rescan()
        return protocol.encode(protocol.ok())

    def _reload_reply(self, _query: EventQuery | None, caller: Caller) -> Reply:
        """Answered when the daemon calls done(outcome) on the loop thread."""
        _require_root(caller, "reload")
        reply = DeferredReply()

        def done(outcome: dict[str, Any]) -> None:
            reply.resolve(protocol.encode(protocol.ok(reload=outcome)))

        self._reload(done)
        return reply

    def _metrics_reply(self, _query: EventQuery | None, _caller: Caller) -> Reply:
        return protocol.encode(protocol.ok(metrics=self._metrics()))

    def _events(self, query: EventQuery | None, _caller: Caller) -> Reply:
        assert query is not None
        history = self.history
        upto = history.last_seq
        oldest = history.oldest_seq
        after = query.after_seq
        fields: dict[str, Any] = {"oldest_seq": oldest, "last_seq": upto}
        if after is not None and after > upto:
            # A seq past the newest one belongs to a history this daemon does
            # not have (its store was lost): start the client over at 0.
            fields["reset"] = True
            after = 0
        if after is not None and oldest is not None and after + 1 < oldest:
            fields["gap"] = protocol.gap(after + 1, oldest - 1)
        limit = query.limit
        if limit is None:
            start, count = after or 0, None
        elif after is not None:
            start, count = after, limit
        else:
            start, count = history.newest_start(query, limit), limit
        return _events_slices(fields, PageWalker(history, query, start, upto, count))

    def _follow(self, query: EventQuery | None, _caller: Caller) -> Reply:
        assert query is not None
        return FollowStream(self._feed, query, self.follow_queue)

    def close(self) -> None:
        """Drop the log subscription (the server closes the streams themselves)."""
        self._feed.close()


def _events_slices(fields: dict[str, Any], walk: PageWalker) -> Iterator[bytes]:
    """The `events` reply, one line, sent as a head, slices of events and a tail.

    Seqs lost within the range the reply covers (never stored) are listed
    after the events, as "losses"; the field is left out when there are none.
    """
    yield protocol.list_head(protocol.ok(**fields), "events")
    first = True
    for page in walk:
        yield protocol.list_items(
            [protocol.encode_item(event.to_dict()) for event in page], first=first
        )
        first = False
    losses = walk.history.losses(walk.start, walk.covered) if walk.covered > walk.start else []
    tail: dict[str, Any] = {}
    if losses:
        tail["losses"] = [
            protocol.loss(loss.from_seq, loss.to_seq, loss.time, loss.reason) for loss in losses
        ]
    yield protocol.list_tail(tail)


def _ports_slices(ports: list[tuple[Endpoint, Owner]], describe: Describe) -> Iterator[bytes]:
    """The `ports` reply in slices; each socket's place and judgement are worked
    out as its slice is encoded, so a long reply never holds the loop long."""
    yield protocol.list_head(protocol.ok(), "ports")
    for start in range(0, len(ports), PORTS_PER_SLICE):
        items = []
        for endpoint, owner in ports[start : start + PORTS_PER_SLICE]:
            place, expected = describe(endpoint, owner)
            record = endpoint.to_dict()
            record.update(place.to_dict())
            record["expected"] = expected
            record["owner"] = owner.to_dict()
            items.append(protocol.encode_item(record))
        yield protocol.list_items(items, first=start == 0)
    yield protocol.LIST_END


class ConfigErrorHandlers:
    """Answers for a daemon that started with a broken configuration.

    `status` works (and names the error); `reload` (root) reads the file
    again and answers with the outcome; every other request is refused with
    config_error, so that `portwatchctl` says what is wrong rather than
    that the daemon is not running.
    """

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        error: str,
        *,
        reload: Callable[[], dict[str, Any]] | None = None,
        advice: str = "",
    ) -> None:
        self._status = status
        self.error = error
        self._reload = reload
        self._advice = advice or "fix it, then: systemctl reload portwatchd"

    def answer(self, line: bytes, caller: Caller) -> Reply:
        try:
            name, _query = _parse(line)
            if name == "reload" and self._reload is not None:
                _require_root(caller, "reload")
                return protocol.encode(protocol.ok(reload=self._reload()))
        except ProtocolError as exc:
            return protocol.error_line(exc.code, exc.message)
        if name != "status":
            return protocol.error_line(protocol.CONFIG_ERROR, f"{self.error}; {self._advice}")
        status = dict(self._status())
        status.update(
            protocol=protocol.PROTOCOL_VERSION,
            clients=caller.connections,
            followers=0,
            config_error=self.error,
        )
        return protocol.encode(protocol.ok(status=status))
