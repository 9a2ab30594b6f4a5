"""`portwatchctl events`: the history read in pages, and the live stream (`--follow`).

The history may hold a million events: it is asked for in pages of
PAGE_SIZE (an `after_seq` cursor) and printed page by page, so memory stays
bounded whatever its size. Events that cannot be shown (a `gap`: they left
the history; a `loss`: they never reached it) are told on standard error,
in their place among the events.
"""

from __future__ import annotations

import json
import time

from portwatchd import protocol
from portwatchd.ctl_client import (
    EXIT_DAEMON_ERROR,
    EXIT_UNREACHABLE,
    REQUEST_TIMEOUT_S,
    ConnectionLostError,
    CtlError,
    DaemonConnection,
    connect,
    raise_for_error,
)
from portwatchd.ctl_format import (
    EVENT_HEADERS,
    EVENT_STREAM_WIDTHS,
    Style,
    TableWriter,
    event_row,
    gap_line,
    loss_line,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, TextIO

PAGE_SIZE = 1000
# The newest N in one answer up to this N; beyond, two passes over pages
# (count, then print) keep memory bounded.
NEWEST_IN_ONE_REQUEST = 10_000
FOLLOW_DEFAULT_BACKLOG = 10  # like journalctl -f
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def _seq(item: dict[str, Any], key: str = "seq") -> int:
    value = item.get(key)
    return value if isinstance(value, int) else 0


class EventPrinter:
    """Prints events (a table or JSON Lines) and the lines about missing ones."""

    def __init__(
        self, out: TextIO, err: TextIO, *, as_json: bool, stream: bool, legend: bool, local: bool
    ) -> None:
        self.out = out
        self.err = err
        self.as_json = as_json
        self.stream = stream
        self.legend = legend
        self.local = local
        self.style = Style(out)
        widths = EVENT_STREAM_WIDTHS if stream else ()
        self.table = TableWriter(EVENT_HEADERS, paint=self._paint, min_widths=widths, legend=legend)
        self.printed = 0
        self._losses_told: set[tuple[int, int]] = set()

    def _paint(self, column: int, cell: str) -> str:
        return self.style.event_type(cell) if column == 2 else cell

    def events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        if self.as_json:
            self.out.write("".join(json.dumps(event) + "\n" for event in events))
        else:
            rows = [event_row(event, self.local) for event in events]
            self.out.write("".join(line + "\n" for line in self.table.lines(rows)))
        self.printed += len(events)
        self.out.flush()

    def _tell(self, line: str) -> None:
        self.out.flush()  # keep the line in its place among the events on a terminal
        self.err.write(line)
        self.err.flush()

    def gap(self, gap: dict[str, Any]) -> None:
        self._tell(gap_line(gap))

    def loss(self, loss: dict[str, Any]) -> None:
        span = (_seq(loss, "from_seq"), _seq(loss, "to_seq"))
        if span not in self._losses_told:  # pages may overlap a loss
            self._losses_told.add(span)
            self._tell(loss_line(loss, self.local))

    def answer(self, response: dict[str, Any], skip: int = 0) -> None:
        """An `events` answer: its losses in seq order among its events (less the first `skip`)."""
        events = _events_of(response)[skip:]
        first_shown = _seq(events[0]) if events else None
        pending = sorted(_losses_of(response), key=_seq_of_loss)
        if skip and first_shown is not None:  # losses among the skipped events are not news
            pending = [loss for loss in pending if _seq(loss, "to_seq") >= first_shown]
        batch: list[dict[str, Any]] = []
        for event in events:
            while pending and _seq_of_loss(pending[0]) < _seq(event):
                self.events(batch)
                batch = []
                self.loss(pending.pop(0))
            batch.append(event)
        self.events(batch)
        for loss in pending:
            self.loss(loss)

    def finish(self) -> None:
        if not self.printed and not self.as_json and self.legend:
            self.err.write("No events.\n")


def _seq_of_loss(loss: dict[str, Any]) -> int:
    return _seq(loss, "from_seq")


def _events_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    events = response.get("events")
    if not isinstance(events, list):
        return []
    return [e for e in events if isinstance(e, dict) and "loss" not in e]


def _losses_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The losses an answer reports: a `losses` list, or `{"loss": ...}` items among the events."""
    losses = response.get("losses")
    found = [loss for loss in losses if isinstance(loss, dict)] if isinstance(losses, list) else []
    events = response.get("events")
    if isinstance(events, list):
        found += [
            e["loss"] for e in events if isinstance(e, dict) and isinstance(e.get("loss"), dict)
        ]
    return found


def _pages(
    connection: DaemonConnection, query: dict[str, Any], after_seq: int, wanted: int | None = None
) -> Iterator[dict[str, Any]]:
    """`events` answers page by page after `after_seq`, up to `wanted` events in all.

    Reads up to the newest seq there was at the first answer: events that
    arrive meanwhile are for `--follow`, not a reason to page forever.
    """
    cursor, got, end = after_seq, 0, None
    while wanted is None or got < wanted:
        limit = PAGE_SIZE if wanted is None else min(PAGE_SIZE, wanted - got)
        response = connection.ask(
            protocol.request("events", **query, after_seq=cursor, limit=limit)
        )
        if end is None and isinstance(response.get("last_seq"), int):
            end = response["last_seq"]
        yield response
        events = _events_of(response)
        if not events:
            return
        if _seq(events[-1]) <= cursor:
            raise CtlError(EXIT_DAEMON_ERROR, "portwatchd answered a page that does not move on")
        cursor, got = _seq(events[-1]), got + len(events)
        if end is not None and cursor >= end:
            return


def print_history(
    path: str,
    query: dict[str, Any],
    after_seq: int | None,
    limit: int | None,
    printer: EventPrinter,
) -> None:
    """Print the events that match: the first `limit` after `after_seq`, else the newest `limit`."""
    with connect(path) as connection:
        if after_seq is None and limit is not None:
            if limit <= NEWEST_IN_ONE_REQUEST:
                printer.answer(connection.ask(protocol.request("events", **query, limit=limit)))
            else:
                _print_newest(connection, query, limit, printer)
        else:
            for response in _pages(connection, query, after_seq or 0, limit):
                # From the start of history, a gap only says the oldest events were pruned.
                if after_seq is not None and isinstance(response.get("gap"), dict):
                    printer.gap(response["gap"])
                printer.answer(response)
    printer.finish()


def _print_newest(
    connection: DaemonConnection, query: dict[str, Any], count: int, printer: EventPrinter
) -> None:
    """The newest `count` matches in bounded memory: count pages, then print from the right one."""
    pages: list[tuple[int, int]] = []  # (the seq a page starts after, its events)
    cursor = 0
    for response in _pages(connection, query, 0):
        events = _events_of(response)
        if events:
            pages.append((cursor, len(events)))
            cursor = _seq(events[-1])
    to_skip = max(0, sum(size for _, size in pages) - count)
    start, skip_in_page = 0, 0
    for page_start, size in pages:
        if to_skip < size:
            start, skip_in_page = page_start, to_skip
            break
        to_skip -= size
    for number, response in enumerate(_pages(connection, query, start, skip_in_page + count)):
        if start and isinstance(response.get("gap"), dict):
            printer.gap(response["gap"])  # pruned between the two passes
        printer.answer(response, skip=skip_in_page if number == 0 else 0)


class _FollowState:
    """Where a follow stream stands, across reconnections."""

    def __init__(self, after_seq: int | None) -> None:
        self.last_seq = after_seq  # the last seq printed, or where the stream began
        self.streaming = False  # a daemon accepted the follow at least once


class FollowOverrunError(Exception):
    """The daemon cut us off for falling behind; its history has what we missed."""


def _follow_session(
    path: str, args: dict[str, Any], printer: EventPrinter, state: _FollowState
) -> None:
    """One follow connection, until the daemon goes away (ConnectionLostError)."""
    with connect(path, timeout=REQUEST_TIMEOUT_S) as connection:
        header = connection.ask(protocol.request("follow", **args))
        state.streaming = True
        connection.settimeout(None)  # from here on, silence just means no port changed
        start = (header.get("follow") or {}).get("after_seq")
        if state.last_seq is None and isinstance(start, int):
            state.last_seq = start
        while True:
            message = connection.read_message()
            if isinstance(message.get("event"), dict):
                event = message["event"]
                printer.events([event])
                state.last_seq = max(state.last_seq or 0, _seq(event))
            elif isinstance(message.get("loss"), dict):
                printer.loss(message["loss"])
            elif isinstance(message.get("gap"), dict):
                printer.gap(message["gap"])
            elif "reset" in message:
                printer.err.write(
                    "portwatchctl: portwatchd's event numbers started over (its state was "
                    "lost); showing its whole history\n"
                )
                printer.err.flush()
                state.last_seq = 0
            elif message.get("ok") is False:
                error = message.get("error") or {}
                if error.get("code") == protocol.FOLLOW_OVERRUN:
                    raise FollowOverrunError()
                raise_for_error(message)


def follow(path: str, query: dict[str, Any], printer: EventPrinter) -> None:
    """Print events as they happen until Ctrl-C, reconnecting across daemon restarts.

    Returns only by an exception: CtlError, or KeyboardInterrupt for main().
    """
    args = dict(query)
    if all(args.get(k) is None for k in ("after_seq", "since", "limit")):
        args["limit"] = FOLLOW_DEFAULT_BACKLOG
    state = _FollowState(args.get("after_seq"))
    failures = 0
    while True:
        try:
            _follow_session(path, args, printer, state)
        except ConnectionLostError:
            printer.err.write("portwatchd restarted; reconnecting...\n")
            failures = 0
        except FollowOverrunError:
            printer.err.write(
                f"portwatchctl: fell behind the live stream (follow_overrun); "
                f"resuming after seq {state.last_seq}\n"
            )
            failures = 0
        except CtlError as exc:
            # "Not reachable" is worth retrying once we had a stream: the
            # daemon is restarting. Anything else, or no stream yet, is final.
            if not state.streaming or exc.exit_code != EXIT_UNREACHABLE:
                raise
            failures += 1
        printer.err.flush()
        if not state.streaming:
            raise CtlError(EXIT_UNREACHABLE, f"portwatchd on {path} closed the connection")
        if state.last_seq is not None:
            args = {k: v for k, v in args.items() if k not in ("since", "limit")}
            args["after_seq"] = state.last_seq
        time.sleep(RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)])
