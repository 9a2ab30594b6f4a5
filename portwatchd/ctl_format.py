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

EVENT_HEADERS = ("SEQ", "TIME", "TYPE", "PROTO", "ADDRESS", "PORT", "PID", "PROCESS", "UNIT")
# Rows printed before all are known cannot be measured in advance: widths that fit most.
EVENT_STREAM_WIDTHS = (6, 23, 6, 5, 15, 5, 7, 15, 0)
PORT_HEADERS = ("PROTO", "ADDRESS", "PORT", "PID", "PROCESS", "UNIT")


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
    from portwatchd.model import escape_text

    owner = event.get("owner") or {}
    row = [
        text_or_dash(event.get("seq")),
        format_time(event.get("time"), local),
        text_or_dash(event.get("type")),
        text_or_dash(event.get("proto")),
        address_text(event),
        text_or_dash(event.get("port")),
        text_or_dash(owner.get("pid")),
        text_or_dash(owner.get("comm")),
        text_or_dash(owner.get("unit")),
    ]
    return [escape_text(cell) for cell in row]


def port_record(endpoint: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """The flat --json shape of one listening socket, for `ports` and `scan` alike."""
    keys = ("key", "proto", "family", "address", "port", "interface", "v6only", "inode", "uid")
    record = {key: endpoint.get(key) for key in keys}
    record.update({key: owner.get(key) for key in ("pid", "comm", "exe", "unit")})
    return record


def _port_sort_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record.get("proto") or "", record.get("port") or 0, record.get("address") or "")


def print_ports(records: list[dict[str, Any]], as_json: bool, out: TextIO, legend: bool) -> None:
    """The `ports` and `scan` table, or their JSON; in the table every cell is
    escaped (model.escape_text), so that a name cannot start a row of its own."""
    records = sorted(records, key=_port_sort_key)
    if as_json:
        out.write(json.dumps(records, indent=None) + "\n")
        return
    from portwatchd.model import escape_text

    rows = [
        [
            escape_text(cell)
            for cell in (
                text_or_dash(r["proto"]),
                address_text(r),
                text_or_dash(r["port"]),
                text_or_dash(r["pid"]),
                text_or_dash(r["comm"]),
                text_or_dash(r["unit"]),
            )
        ]
        for r in records
    ]
    for line in format_table(PORT_HEADERS, rows, legend=legend):
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


def duration_text(seconds: float) -> str:
    """A number of seconds for people.

    >>> duration_text(3723)
    '1h 2min 3s'
    """
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}min")
    parts.append(f"{secs}s")
    return " ".join(parts)


def reload_text(reload: dict[str, Any], local: bool = False) -> str:
    """The last reload's outcome in one line: "<time>, ok", "<time>, REFUSED: why", ..."""
    if reload.get("time") is None:
        return "never"
    when = format_time(reload.get("time"), local)
    outcome = reload.get("outcome") or ("ok" if reload.get("ok") else "failed")
    if outcome == "ok":
        return f"{when}, ok"
    not_applied = reload.get("not_applied")
    if not_applied:  # the error of a partial reload is these, joined
        return f"{when}, {str(outcome).upper()}: not applied: {'; '.join(map(str, not_applied))}"
    return f"{when}, {str(outcome).upper()}: {reload.get('error')}"


# Fields that are shown only while something fails, with the label that says so.
_FAILURES = (
    ("scan_error", "Scan FAILING"),
    ("journal_error", "Journal FAILING"),
    ("store_error", "Store FAILING"),
    ("config_error", "Config BROKEN"),
)


class _StatusPage:
    """The label/value pairs of the human `status` output, built in order."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.pairs: list[tuple[str, str]] = []
        self.shown: set[str] = set()

    def add(self, label: str, key: str, value: str | None = None) -> None:
        if key in self.status:
            self.pairs.append(
                (label, value if value is not None else text_or_dash(self.status[key]))
            )
            self.shown.add(key)

    def counts(self, label: str, key: str) -> None:
        """A {name: count} field as "3 opened, 2 closed"; nothing when empty."""
        value = self.status.get(key)
        if isinstance(value, dict) and value:
            self.add(label, key, ", ".join(f"{n} {name}" for name, n in sorted(value.items())))
        self.shown.add(key)

    def rest(self) -> None:
        """Fields this client has no label for (a newer daemon's), as they are."""
        for key in sorted(set(self.status) - self.shown):
            value = self.status[key]
            self.pairs.append(
                (key, json.dumps(value) if isinstance(value, dict | list) else text_or_dash(value))
            )


def status_lines(status: dict[str, Any], local: bool = False) -> list[tuple[str, str]]:
    """Label/value pairs for the human `status` output, known keys first."""
    page = _StatusPage(status)
    uptime = status.get("uptime_s")
    page.add("Version", "version")
    page.add("PID", "pid")
    page.add(
        "Uptime", "uptime_s", duration_text(uptime) if isinstance(uptime, int | float) else None
    )
    page.add("Protocol", "protocol")
    page.add("Scanner", "backend")
    page.add("Interval", "interval_s", f"{status.get('interval_s')} s")
    page.add("Owner lookup", "owners", "on" if status.get("owners") else "off")
    page.add("Ports watched", "ports_watched")
    page.add("Events total", "events_total")
    page.counts("By type", "events_by_type")
    page.counts("Found by", "detections")
    failed = status.get("scan_errors_total", 0)
    page.add("Scans", "scans_total", f"{status.get('scans_total')} ({failed} failed)")
    page.shown.add("scan_errors_total")
    page.add("Last hour", "events_last_hour", f"{status.get('events_last_hour')} events")
    page.add("Last seq", "last_seq")
    _history_line(page)
    _health_lines(page, local)
    page.rest()
    return page.pairs


def _history_line(page: _StatusPage) -> None:
    status = page.status
    if "history_size" in status:
        page.add(
            "History",
            "history_size",
            f"{status['history_size']} events held of {status.get('history_capacity', '?')}"
            f", oldest seq {text_or_dash(status.get('oldest_seq'))}",
        )
        page.shown.update(("history_capacity", "oldest_seq", "ring_size", "ring_capacity"))
    elif "ring_size" in status:  # a 0.1 daemon
        page.add(
            "Ring", "ring_size", f"{status['ring_size']} of {status.get('ring_capacity', '?')}"
        )
        page.shown.add("ring_capacity")


def _health_lines(page: _StatusPage, local: bool) -> None:
    status = page.status
    page.add("Last scan", "last_scan_time", format_time(status.get("last_scan_time"), local))
    page.add("Last scan took", "last_scan_duration_ms", f"{status.get('last_scan_duration_ms')} ms")
    for key, label in _FAILURES:
        if status.get(key):
            page.add(label, key)
        page.shown.add(key)
    if status.get("journal_pending"):
        page.add("Journal pending", "journal_pending", f"{status['journal_pending']} events")
    page.shown.add("journal_pending")
    page.add("Journal errors", "journal_errors_total")
    page.add("Config", "config_path", status.get("config_path") or "built-in defaults")
    page.add("State", "state_dir")
    reload = status.get("last_reload")
    if reload is None:
        page.add("Last reload", "last_reload", "never")
    elif isinstance(reload, dict):
        page.add("Last reload", "last_reload", reload_text(reload, local))
    page.add("Clients", "clients")
    page.add("Followers", "followers")
