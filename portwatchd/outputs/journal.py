"""Where events and log lines go: the systemd journal, or stderr.

What an entry says is `entries.py`'s (pure); the sinks here only deliver it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from portwatchd.model import Event, Loss
from portwatchd.outputs.entries import (
    PRIORITY_NAMES,
    SYSLOG_IDENTIFIER,
    event_fields,
    event_line,
    loss_fields,
    loss_message,
)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


class Sink(Protocol):
    """Where the daemon's events and log messages go."""

    def event(self, event: Event) -> None: ...

    def loss(self, loss: Loss) -> None: ...

    def log(self, priority: int, message: str, **fields: str) -> None: ...


Sender = Callable[..., None]


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """One journal entry in journald's native protocol (systemd.journal-fields(7),
    "Native Journal Protocol"): FIELD=value lines; a value holding a newline
    goes as FIELD, a newline, its length as 64-bit little-endian, the value
    and a newline. Values are binary-safe: a name that was not UTF-8
    (surrogate escapes) goes to the journal as the bytes it was.

    >>> encode_entry({"MESSAGE": "hi", "X": "a\\nb"})
    b'MESSAGE=hi\\nX\\n\\x03\\x00\\x00\\x00\\x00\\x00\\x00\\x00a\\nb\\n'
    """
    parts = []
    for name, value in fields.items():
        data = value.encode("utf-8", "surrogateescape")
        if b"\n" in data:
            parts.append(b"%s\n%s%s\n" % (name.encode(), struct.pack("<Q", len(data)), data))
        else:
            parts.append(b"%s=%s\n" % (name.encode(), data))
    return b"".join(parts)


class JournalSocket:
    """journald's native socket, written with a plain blocking socket.

    Not systemd-python's `journal.send`: its C code calls sd_journal_sendv
    without releasing the GIL, so a send that blocks on a stopped journald
    (its socket queue full, net.unix.max_dgram_qlen) froze every thread of
    the daemon, the loop that pings the watchdog included. socket.send
    releases the GIL while it waits: only the journal writer's thread waits.
    journald learns our unit from the credentials the kernel attaches.
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self._path = path
        self._socket: socket.socket | None = None

    def send(self, **fields: str) -> None:
        if self._socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self._path)
            except OSError:
                sock.close()
                raise
            self._socket = sock
        try:
            self._socket.send(encode_entry(fields))
        except OSError:
            # journald restarted (ECONNREFUSED) or went away: connect anew next time.
            self._socket.close()
            self._socket = None
            raise


class JournalSink:
    """Events and log lines as journal entries (native protocol)."""

    def __init__(self, send: Sender | None = None) -> None:
        self._send = send if send is not None else JournalSocket().send

    def event(self, event: Event) -> None:
        self._send(**event_fields(event))

    def loss(self, loss: Loss) -> None:
        self._send(**loss_fields(loss))

    def log(self, priority: int, message: str, **fields: str) -> None:
        self._send(
            MESSAGE=message,
            PRIORITY=str(priority),
            SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
            **fields,
        )


class StderrSink:
    """One line per event or message; `json=True` gives JSON lines."""

    def __init__(self, stream: TextIO | None = None, *, json_lines: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._json = json_lines
        # Under systemd, stderr is a journal stream: sd-daemon(3) "<N>"
        # prefixes keep the priority. On a terminal they are noise.
        self._syslog_prefix = "JOURNAL_STREAM" in os.environ

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def event(self, event: Event) -> None:
        if self._json:
            self._write(json.dumps({"event": event.to_dict()}, separators=(",", ":")))
        else:
            self._write(event_line(event))

    def loss(self, loss: Loss) -> None:
        if self._json:
            self._write(json.dumps({"loss": loss.to_dict()}, separators=(",", ":")))
        else:
            self._write(f"{loss.time} {loss_message(loss)}")

    def log(self, priority: int, message: str, **fields: str) -> None:
        if self._json:
            record: dict[str, Any] = {"priority": PRIORITY_NAMES.get(priority, str(priority))}
            record["message"] = message
            record.update({k.lower(): v for k, v in fields.items()})
            self._write(json.dumps(record, separators=(",", ":")))
        elif self._syslog_prefix:
            self._write(f"<{priority}>{message}")
        else:
            self._write(f"portwatchd: {PRIORITY_NAMES.get(priority, priority)}: {message}")


def journal_available(socket_path: str = JOURNAL_SOCKET) -> bool:
    return os.path.exists(socket_path)


def open_sink(target: str, *, json_lines: bool = False) -> Sink:
    """`target` is "auto", "journal" or "stderr"; auto means the journal when
    its socket exists."""
    if target == "journal" or (target == "auto" and journal_available()):
        return JournalSink()
    return StderrSink(json_lines=json_lines)


def journal_last_seq(max_entries: int = 20_000) -> int | None:
    """The highest PORT_EVENT_SEQ portwatchd wrote to the journal, None when
    none is found or the journal cannot be read (no permission: the unit
    grants the systemd-journal group).

    The event store's seq watermark is the first authority; this one is for
    a store lost or moved aside as corrupt, so that seqs still continue
    above every seq ever sent. Reads backwards from the newest entry, at
    most `max_entries` of ours: a re-send after a crash can write a lower
    seq after a higher one, so the highest is taken, not the newest.
    """
    try:
        from systemd import journal

        reader = journal.Reader()
    except (ImportError, OSError):
        return None
    highest: int | None = None
    try:
        reader.add_match(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        reader.seek_tail()
        for _ in range(max_entries):
            entry = reader.get_previous()
            if not entry:
                break
            for name in ("PORT_EVENT_SEQ", "PORT_LOSS_TO_SEQ"):
                value = entry.get(name)
                if value is not None and str(value).isdigit():
                    highest = max(highest or 0, int(value))
    except OSError:
        pass
    finally:
        reader.close()
    return highest
