"""portwatchctl's output: tables, times, the status page, and the lines about lost events.

The daemon returns data; this module turns it into text. It imports only
`json` and `os` at start-up; `datetime` only to show a time in local time
or one that is not in the wire's own form.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, TextIO

EVENT_HEADERS = (
    "SEQ", "TIME", "TYPE", "PROTO", "ADDRESS", "PORT", "WHERE", "PID", "PROCESS", "UNIT",
)  # fmt: skip
# Rows printed before all are known cannot be measured in advance: widths that fit most.
EVENT_STREAM_WIDTHS = (6, 23, 6, 5, 15, 5, 5, 7, 15, 0)
PORT_HEADERS = ("PROTO", "ADDRESS", "PORT", "PID", "PROCESS", "UNIT")
# `ports` with where each listener lives; EXPECTED only once any [[expect]] rule exists.
PLACE_PORT_HEADERS = ("PROTO", "ADDRESS", "PORT", "EXPOSURE", "WHERE", "PID", "PROCESS", "UNIT")
PLACE_KEYS = ("netns_inode", "netns_name", "scope", "container", "container_runtime", "exposure")
SHORT_ID = 12  # as `docker ps` shows a container's id


class Style:
    """ANSI colour, only on a terminal and only when NO_COLOR is unset."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR")

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled and text else text

    def event_type(self, kind: str) -> str:
        return self.paint(kind, _TYPE_COLOURS.get(kind.strip(), "0"))


# green, red, yellow, cyan, magenta
_TYPE_COLOURS = {
    "opened": "32",
    "closed": "31",
    "restarted": "33",
    "owner_changed": "36",
    "transient": "35",
}


def format_time(rfc3339: str | None, local: bool = False) -> str:
    """A wire time for people: "2026-11-30 10:00:01 UTC", or local with its zone's abbreviation.

    A time that cannot be read is shown as it came.

    >>> format_time("2026-11-30T10:00:01.123456Z")
    '2026-11-30 10:00:01 UTC'
    """
    if not rfc3339:
        return "-"
    text = rfc3339
    # The wire's own form (model.rfc3339) needs no datetime for UTC.
    if not local and len(text) >= 20 and text[10] == "T" and text[-1] == "Z" and text.isascii():
        return f"{text[:10]} {text[11:19]} UTC"
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # the protocol's naive times are UTC
        shown = moment.astimezone() if local else moment.astimezone(UTC)
        return shown.strftime("%Y-%m-%d %H:%M:%S %Z")
    except (ValueError, OverflowError, OSError):
        return text


def text_or_dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def address_text(record: dict[str, Any]) -> str:
    """The ADDRESS cell: the key's host ("fe80::1%eth0", "127.0.0.53%lo"), without
    the brackets that in the key only set the port apart (it has its own column)."""
    address = str(record.get("address", "?"))
    interface = record.get("interface")
    return f"{address}%{interface}" if interface else address


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    paint: Callable[[int, str], str] | None = None,
    min_widths: Sequence[int] = (),
    legend: bool = True,
) -> Iterator[str]:
    """Aligned columns; `paint(column, padded_cell)` colours after padding."""
    table = TableWriter(headers, paint=paint, min_widths=min_widths, legend=legend)
    yield from table.lines(rows)


class TableWriter:
    """A table printed in parts: the first part sets the column widths.

    Later rows wider than a column push the rest of their line right, as
    rows printed before the others are known must.
    """

    def __init__(
        self,
        headers: Sequence[str],
        *,
        paint: Callable[[int, str], str] | None = None,
        min_widths: Sequence[int] = (),
        legend: bool = True,
    ) -> None:
        self.headers = headers
        self.paint = paint
        self.min_widths = [*min_widths, *[0] * (len(headers) - len(min_widths))]
        self.widths: list[int] | None = None
        self.legend_due = legend

    def lines(self, rows: Sequence[Sequence[str]]) -> Iterator[str]:
        if self.widths is None:
            self.widths = [
                max([len(header), minimum, *(len(row[i]) for row in rows)])
                for i, (header, minimum) in enumerate(
                    zip(self.headers, self.min_widths, strict=True)
                )
            ]
        if self.legend_due:
            self.legend_due = False
            yield self._line(self.headers, painted=False)
        for row in rows:
            yield self._line(row, painted=True)

    def _line(self, cells: Sequence[str], painted: bool) -> str:
        assert self.widths is not None
        last = len(cells) - 1
        out = []
        for column, cell in enumerate(cells):
            padded = cell if column == last else cell.ljust(self.widths[column])
            out.append(self.paint(column, padded) if painted and self.paint else padded)
        return "  ".join(out).rstrip()


def event_row(event: dict[str, Any], local: bool = False) -> list[str]:
    """One row of the `events` table, every cell escaped (model.escape_text)."""
    # Imported here, not at start-up: `status` never needs it.
    from portwatchd.text import escape_text

    owner = event.get("owner") or {}
    row = [
        text_or_dash(event.get("seq")),
        format_time(event.get("time"), local),
        text_or_dash(event.get("type")),
        text_or_dash(event.get("proto")),
        address_text(event),
        text_or_dash(event.get("port")),
        where_text(event),
        text_or_dash(owner.get("pid")),
        text_or_dash(owner.get("comm")),
        text_or_dash(owner.get("unit")),
    ]
    return [escape_text(cell) for cell in row]


def port_record(endpoint: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """The flat --json shape of one listening socket, for `ports` and `scan` alike:
    the endpoint, its place and judgement when the daemon sent them, the owner."""
    keys = ("key", "proto", "family", "address", "port", "interface", "v6only", "inode", "uid")
    record = {key: endpoint.get(key) for key in keys}
    record["netns"] = endpoint.get("netns", 0)
    record.update({key: endpoint.get(key) for key in PLACE_KEYS})
    record["expected"] = endpoint.get("expected")
    record.update({key: owner.get(key) for key in ("pid", "comm", "exe", "unit")})
    record.update({key: owner.get(key) for key in ("pids", "cmdline", "user", "cgroup")})
    return record


def where_text(record: dict[str, Any]) -> str:
    """The WHERE cell: "host", a container ("web (docker)", "3f2a9c1b0d4e (podman)"),
    or another namespace by its name or inode ("netns blue", "netns 4026532281")."""
    if not record.get("netns"):
        return "host"
    container = record.get("container")
    if container:
        label = record.get("netns_name") or str(container)[:SHORT_ID]
        runtime = record.get("container_runtime")
        return f"{label} ({runtime})" if runtime else str(label)
    name = record.get("netns_name")
    return f"netns {name}" if name else f"netns {record.get('netns_inode') or record['netns']}"


def _port_sort_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record.get("proto") or "",
        record.get("port") or 0,
        record.get("address") or "",
        record.get("netns") or 0,
    )


def _port_cells(record: dict[str, Any], with_place: bool, with_expected: bool) -> list[str]:
    cells = [text_or_dash(record["proto"]), address_text(record), text_or_dash(record["port"])]
    if with_place:
        cells += [text_or_dash(record.get("exposure")), where_text(record)]
    cells += [text_or_dash(record["pid"]), text_or_dash(record["comm"])]
    if with_expected:
        expected = record.get("expected")
        cells.append("yes" if expected else "NO" if expected is False else "-")
    cells.append(text_or_dash(record["unit"]))
    return cells


def print_ports(
    records: list[dict[str, Any]],
    as_json: bool,
    out: TextIO,
    legend: bool,
    *,
    with_place: bool = False,
) -> None:
    """The `ports` and `scan` table, or their JSON; in the table every cell is
    escaped (model.escape_text), so that a name cannot start a row of its own.
    `with_place`: the EXPOSURE and WHERE columns (the daemon's `ports`), and
    EXPECTED when any row was judged by an [[expect]] rule."""
    records = sorted(records, key=_port_sort_key)
    if as_json:
        out.write(json.dumps(records, indent=None) + "\n")
        return
    from portwatchd.text import escape_text

    with_expected = with_place and any(r.get("expected") is not None for r in records)
    headers = list(PLACE_PORT_HEADERS if with_place else PORT_HEADERS)
    if with_expected:
        headers.insert(-1, "EXPECTED")
    rows = [
        [escape_text(cell) for cell in _port_cells(r, with_place, with_expected)] for r in records
    ]
    for line in format_table(headers, rows, legend=legend):
        out.write(line + "\n")


def missing_events_line(from_seq: object, to_seq: object, why: str) -> str:
    """The one way a range of events that cannot be shown is told (on standard error)."""
    seqs = f"event {from_seq}" if from_seq == to_seq else f"events {from_seq}..{to_seq}"
    return f"portwatchctl: {seqs} missing: {why}\n"


def gap_line(gap: dict[str, Any]) -> str:
    """A `gap`: events that had left the daemon's history before they could be sent."""
    return missing_events_line(
        gap.get("from"), gap.get("to"), "they had already left portwatchd's history"
    )


def loss_line(loss: dict[str, Any], local: bool = False) -> str:
    """A `loss`: seqs handed out whose events never reached the log, and why."""
    reason = str(loss.get("reason") or "portwatchd gave no reason").rstrip(".")
    when = loss.get("time")
    at = f" (noticed {format_time(when, local)})" if isinstance(when, str) else ""
    return missing_events_line(loss.get("from_seq"), loss.get("to_seq"), f"{reason}{at}")
