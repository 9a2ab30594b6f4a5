"""Metrics in the Prometheus text exposition format, and the textfile that carries them.

`render_metrics` is pure: the daemon's status (the dict `status` answers
with) and the sockets it watches in, the exposition text (format 0.0.4) out.
`portwatchctl metrics` prints it; with `metrics_textfile = PATH` the daemon
hands it to a `TextfileWriter`, which keeps node_exporter's textfile
collector fed with a file that is always whole.

Status keys read (each one optional; a family whose key is missing is left
out rather than shown as a made-up 0): version, events_by_type (else
events_total), scans_total, last_scan_duration_ms, last_scan_time, detections, scan_error,
journal_error, store_error, scan_errors_total, journal_errors_total,
store_errors_total, last_seq, transients_suppressed_total.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

from portwatchd.model import EVENT_TYPES, PROTOS, Endpoint, Owner
from portwatchd.text import printable_name

PREFIX = "portwatchd_"
# Attributes an Endpoint gains in 0.2 (classify's exposure, the network
# namespace it was seen in); read with getattr so this works before them.
OPTIONAL_ENDPOINT_LABELS = ("exposure", "netns")
SUBSYSTEMS = ("scan", "journal", "store")
TEXTFILE_MODE = 0o644

Labels = tuple[tuple[str, str], ...]


class _Family:
    """One metric family: its HELP, its TYPE and its samples, rendered together."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = PREFIX + name
        self.kind = kind
        self.help_text = help_text
        self.samples: list[tuple[Labels, float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((tuple(labels.items()), value))

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {_escape_help(self.help_text)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            yield f"{self.name}{_format_labels(labels)} {_format_value(value)}"


def render_metrics(status: Mapping[str, Any], ports: Sequence[tuple[Endpoint, Owner]]) -> str:
    """The exposition text for one status answer and the sockets watched.

    Every family appears once, with its HELP and TYPE lines; the text ends
    with a newline, as the textfile collector requires. No sample carries a
    timestamp (the textfile collector refuses them).
    """
    families = [
        _build_info(status),
        *_port_families(ports),
        _events(status),
        *_scan_families(status),
        *_detections(status),
        *_error_families(status),
        _gauge(status, "last_seq", "last_event_seq", "Seq of the newest event handed out."),
    ]
    lines = [line for family in families if family is not None for line in family.lines()]
    return "\n".join(lines) + "\n"


def _build_info(status: Mapping[str, Any]) -> _Family:
    family = _Family("build_info", "gauge", "Always 1; the version of the running portwatchd.")
    family.add(1, version=str(status.get("version") or "unknown"))
    return family


def _optional_labels(endpoint: Endpoint) -> dict[str, str]:
    labels = {}
    for name in OPTIONAL_ENDPOINT_LABELS:
        value = getattr(endpoint, name, None)
        if value:  # netns 0 is the host's: no label, as before namespaces
            labels[name] = str(value)
    return labels


def _port_families(ports: Sequence[tuple[Endpoint, Owner]]) -> list[_Family]:
    """Sockets by proto (and exposure / netns when known), and one series per listener."""
    optional = [_optional_labels(endpoint) for endpoint, _ in ports]
    # Every sample of a family gets the same label names; "" is how the
    # format says a label is absent.
    extra_names = sorted({name for labels in optional for name in labels})
    by_proto: Counter[Labels] = Counter()
    by_listener: Counter[Labels] = Counter()
    for (endpoint, owner), known in zip(ports, optional, strict=True):
        extras = tuple((name, known.get(name, "")) for name in extra_names)
        by_proto[(("proto", endpoint.proto), *extras)] += 1
        listener = (
            ("proto", endpoint.proto),
            ("address", endpoint.address),
            ("port", str(endpoint.port)),
            ("interface", endpoint.interface),
            ("comm", owner.comm or ""),
            ("unit", owner.unit or ""),
            ("user", owner.user or ""),
        )
        by_listener[listener + extras] += 1
    for proto in PROTOS:
        if not any(labels[0] == ("proto", proto) for labels in by_proto):
            by_proto[(("proto", proto), *((name, "") for name in extra_names))] = 0

    watched = _Family(
        "ports_watched",
        "gauge",
        "Listening sockets watched, by protocol (and exposure and network namespace when known).",
    )
    watched.samples = sorted(by_proto.items())
    listeners = _Family(
        "listening_sockets",
        "gauge",
        "Listening sockets by address, port and owner (comm, systemd unit, user).",
    )
    listeners.samples = sorted(by_listener.items())
    return [watched, listeners]


def _events(status: Mapping[str, Any]) -> _Family:
    family = _Family("events_total", "counter", "Events since the history began, by type.")
    by_type = status.get("events_by_type")
    if isinstance(by_type, Mapping):
        counts: dict[str, float] = dict.fromkeys(EVENT_TYPES, 0)
        counts.update({str(k): v for k, v in by_type.items() if _is_number(v)})
        for event_type, count in sorted(counts.items()):
            family.add(count, type=event_type)
    else:
        total = status.get("events_total")
        family.add(total if _is_number(total) else 0)
    return family


def _scan_families(status: Mapping[str, Any]) -> list[_Family | None]:
    duration_s = None
    if _is_number(status.get("last_scan_duration_ms")):
        duration_s = status["last_scan_duration_ms"] / 1000
    return [
        _counter(status, "scans_total", "scans_total", "Scans of the listening sockets."),
        _counter(
            status,
            "transients_suppressed_total",
            "transients_suppressed_total",
            "Transient listeners counted but not reported one by one (the rate bound).",
        ),
        _value_family(
            "last_scan_duration_seconds", "How long the last scan took, in seconds.", duration_s
        ),
        _value_family(
            "last_scan_timestamp_seconds",
            "When the last scan ended, in seconds since the epoch.",
            _epoch_seconds(status.get("last_scan_time")),
        ),
    ]


def _detections(status: Mapping[str, Any]) -> list[_Family]:
    sources = status.get("detections")
    if not isinstance(sources, Mapping):
        return []
    family = _Family(
        "detections_total", "counter", "Changes detected, by what detected them (source)."
    )
    for source, count in sorted((str(k), v) for k, v in sources.items()):
        if _is_number(count):
            family.add(count, source=source)
    return [family]


def _error_families(status: Mapping[str, Any]) -> list[_Family | None]:
    """1/0 for each subsystem failing now, and errors counted so far, where known."""
    failing = _Family(
        "failing", "gauge", "1 while the subsystem (scan, journal, store) is failing, else 0."
    )
    errors = _Family("errors_total", "counter", "Errors by subsystem (scan, journal, store).")
    for subsystem in SUBSYSTEMS:
        if f"{subsystem}_error" in status:
            failing.add(1 if status[f"{subsystem}_error"] else 0, subsystem=subsystem)
        count = status.get(f"{subsystem}_errors_total")
        if _is_number(count):
            errors.add(count, subsystem=subsystem)
    return [family if family.samples else None for family in (failing, errors)]


def _gauge(status: Mapping[str, Any], key: str, name: str, help_text: str) -> _Family | None:
    value = status.get(key)
    return _value_family(name, help_text, value if _is_number(value) else None)


def _counter(status: Mapping[str, Any], key: str, name: str, help_text: str) -> _Family | None:
    value = status.get(key)
    if not _is_number(value):
        return None
    family = _Family(name, "counter", help_text)
    family.add(value)
    return family


def _value_family(name: str, help_text: str, value: float | None) -> _Family | None:
    if value is None:
        return None
    family = _Family(name, "gauge", help_text)
    family.add(value)
    return family


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _epoch_seconds(text: object) -> float | None:
    """An rfc3339() time as seconds since the epoch; None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _format_value(value: float) -> str:
    """A sample value as the format spells it (Go's ParseFloat syntax).

    >>> [_format_value(v) for v in (3, 0.0125, 1e-06, math.inf, -math.inf, math.nan)]
    ['3', '0.0125', '1e-06', '+Inf', '-Inf', 'NaN']
    """
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _utf8(text: str) -> str:
    """Valid UTF-8 text: names decoded with surrogateescape keep odd bytes as \\xNN."""
    return printable_name(text)


def _escape_label_value(text: str) -> str:
    r"""A label value between double quotes: backslash, quote and newline escaped.

    >>> print(_escape_label_value('a\\b"c\nd'))
    a\\b\"c\nd
    """
    return _utf8(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return _utf8(text).replace("\\", "\\\\").replace("\n", "\\n")


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in labels)
    return "{" + inner + "}"


class MetricsError(OSError):
    """The metrics textfile could not be written; names the file, why, and what to do."""

    def __init__(self, path: Path, reason: str, code: int | None = None) -> None:
        super().__init__(code or 0, reason, str(path))
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot write the metrics textfile {self.path}: {self.reason}"


_HINTS = {
    errno.EACCES: "make its directory writable by the user portwatchd runs as",
    errno.EPERM: "make its directory writable by the user portwatchd runs as",
    errno.EROFS: "the file system is read-only: choose another metrics_textfile",
    errno.ENOENT: "its directory does not exist: create it or fix metrics_textfile",
    errno.ENOTDIR: "a part of the path is not a directory: fix metrics_textfile",
    errno.ENOSPC: "the file system is full",
    errno.EISDIR: "the path is a directory: metrics_textfile names a file",
}


class TextfileWriter:
    """Keeps one file current for node_exporter's textfile collector.

    Each write goes to a temporary file in the same directory, which is
    flushed to disk and renamed over the target: a reader (the collector
    scrapes at any moment) sees the old file or the new one, never half of
    one. The temporary name does not end in ".prom", so the collector never
    reads it either.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, text: str) -> None:
        """Replace the file's contents with `text`; MetricsError when that fails."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise MetricsError(self.path, f"the text is not valid UTF-8 ({err.reason})") from err
        directory = self.path.parent
        try:
            fd, temp_name = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=directory
            )
        except OSError as err:
            raise self._error(err) from err
        try:
            with os.fdopen(fd, "wb") as temp:
                # mkstemp makes the file 0600; the collector may run as another user.
                os.fchmod(temp.fileno(), TEXTFILE_MODE)
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise self._error(err) from err
        self._sync_directory(directory)

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        """Make the rename durable; a file system that cannot sync a directory is no error."""
        with contextlib.suppress(OSError):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _error(self, err: OSError) -> MetricsError:
        reason = err.strerror or str(err)
        hint = _HINTS.get(err.errno or 0)
        if hint:
            reason += f" ({hint})"
        return MetricsError(self.path, reason, err.errno)
