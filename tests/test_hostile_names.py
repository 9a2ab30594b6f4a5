"""Names a process or another user controls cannot forge a line of text.

A real process renames itself with prctl(PR_SET_NAME) to "x\\nPort closed: "
(any local user can), listens in a private network namespace, and is seen
by the real scanner and owner lookup. Every text output built from what was
seen stays one line per record and shows the name escaped; the journal's
fields and the JSON keep the real value. Names with bytes that are not
UTF-8 (an interface, a user) are pure tests: making such a device or user
needs more than a namespace.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwatchd import ctl
from portwatchd.ctl_format import EVENT_HEADERS, event_row, format_table, port_record, print_ports
from portwatchd.model import Endpoint, Event, Owner
from portwatchd.notify import Notifier
from portwatchd.outputs.entries import event_fields, event_line
from portwatchd.outputs.journal import JournalSocket, StderrSink
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.text import escape_text
from tests.named_listener import listener_named
from tests.test_journal import _decode_entry

FORGING_COMM = "x\nPort closed: "  # 15 bytes: the most a comm holds
SHOWN_COMM = "x\\nPort closed: "


@pytest.fixture
def renamed_server(netns: None) -> Iterator[int]:
    """The port of a real listener whose process is named FORGING_COMM."""
    with listener_named(FORGING_COMM.encode()) as port:
        yield port


def seen_event(port: int) -> Event:
    """The `opened` event of the listener on `port`, as the daemon would build it."""
    with NetlinkScanner() as scanner:
        [endpoint] = [e for e in scanner.scan() if e.port == port]
    owner = OwnerResolver().resolve_walk({endpoint.inode})[endpoint.inode]
    assert owner.comm == FORGING_COMM  # the kernel kept the name as given
    return Event(
        seq=1,
        id="0b5e4a52-8f0e-4a43-9d1e-6f2a0c9d2a11",
        type="opened",
        time="2026-11-25T14:20:31.123456Z",
        endpoint=endpoint,
        owner=owner,
    )


def test_the_stderr_line_of_a_renamed_process_stays_one_line(renamed_server: int) -> None:
    event = seen_event(renamed_server)
    out = io.StringIO()
    StderrSink(out).event(event)
    [line] = out.getvalue().splitlines()
    assert line == event_line(event)
    assert f"tcp:127.0.0.1:{renamed_server} by {SHOWN_COMM}[{event.owner.pid}]" in line


def test_json_lines_keep_the_real_name(renamed_server: int) -> None:
    event = seen_event(renamed_server)
    out = io.StringIO()
    StderrSink(out, json_lines=True).event(event)
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["event"]["owner"]["comm"] == FORGING_COMM


def test_the_journal_message_is_one_line_and_the_field_is_raw(
    renamed_server: int, tmp_path: Path
) -> None:
    event = seen_event(renamed_server)
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(path)
        JournalSocket(path).send(**event_fields(event))
        entry = _decode_entry(journald.recv(65536))
    message = entry["MESSAGE"].decode()
    assert "\n" not in message
    assert message == (
        f"Port opened: tcp:127.0.0.1:{renamed_server} by {SHOWN_COMM}[{event.owner.pid}]"
    )
    assert entry["PORT_COMM"] == FORGING_COMM.encode()


def test_the_scan_table_of_a_renamed_process_has_one_row(
    renamed_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl.main(["scan", "--backend", "netlink"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines  # the legend and the one listener
    row = lines[1].split(maxsplit=4)
    assert row[:3] == ["tcp", "127.0.0.1", str(renamed_server)]
    assert row[4].startswith(SHOWN_COMM)


def test_the_ports_and_events_tables_have_one_row_per_record(renamed_server: int) -> None:
    event = seen_event(renamed_server)
    out = io.StringIO()
    record = port_record(event.endpoint.to_dict(), event.owner.to_dict())
    print_ports([record], as_json=False, out=out, legend=False)
    [ports_row] = out.getvalue().splitlines()
    assert f"{event.owner.pid}  {SHOWN_COMM}" in ports_row
    [events_row] = format_table(EVENT_HEADERS, [event_row(event.to_dict())], legend=False)
    assert f"{event.owner.pid}  {SHOWN_COMM}" in events_row
    json_out = io.StringIO()
    print_ports([record], as_json=True, out=json_out, legend=False)
    assert json.loads(json_out.getvalue())[0]["comm"] == FORGING_COMM


def test_status_text_is_one_assignment() -> None:
    sent: list[str] = []
    Notifier(send=sent.append).status(f"scan failing: {FORGING_COMM}STATUS=x")
    assert sent == ["STATUS=scan failing: x\\nPort closed: STATUS=x"]


# --- names that are not UTF-8 (surrogate escapes, as os.fsdecode gives them) ---

ODD_INTERFACE = b"eth\xff".decode("utf-8", "surrogateescape")
ODD_USER = b"\xe9ve".decode("utf-8", "surrogateescape")


def odd_event() -> Event:
    endpoint = Endpoint("tcp", "ipv6", "fe80::1", 22, interface=ODD_INTERFACE, inode=7)
    owner = Owner(pid=612, pids=(612,), comm="ssh\udcfed", user=ODD_USER, unit="a\tb.service")
    return Event(1, "id", "closed", "2026-11-25T14:20:31.123456Z", endpoint, owner)


def test_a_name_not_utf8_is_escaped_in_the_message_and_raw_in_the_fields() -> None:
    fields = event_fields(odd_event())
    assert fields["MESSAGE"] == (
        "Port closed: tcp:[fe80::1%eth\\xff]:22 by ssh\\xfed[612] (a\\tb.service)"
    )
    assert fields["PORT_INTERFACE"] == ODD_INTERFACE
    assert fields["PORT_USER"] == ODD_USER
    assert fields["PORT"] == "tcp:[fe80::1%" + ODD_INTERFACE + "]:22"


def test_a_name_not_utf8_reaches_the_journal_as_its_bytes(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(path)
        JournalSocket(path).send(**event_fields(odd_event()))
        entry = _decode_entry(journald.recv(65536))
    assert entry["PORT_INTERFACE"] == b"eth\xff"
    assert entry["PORT_USER"] == b"\xe9ve"
    entry["MESSAGE"].decode("utf-8")  # MESSAGE itself is clean UTF-8


def test_a_name_not_utf8_in_the_tables() -> None:
    event = odd_event()
    [events_row] = format_table(EVENT_HEADERS, [event_row(event.to_dict())], legend=False)
    assert events_row.split() == [
        "1", "2026-11-25", "14:20:31", "UTC", "closed", "tcp",
        "fe80::1%eth\\xff", "22", "host", "612", "ssh\\xfed", "a\\tb.service",
    ]  # fmt: skip
    out = io.StringIO()
    record = port_record(event.endpoint.to_dict(), event.owner.to_dict())
    print_ports([record], as_json=False, out=out, legend=False)
    assert out.getvalue().split() == [
        "tcp", "fe80::1%eth\\xff", "22", "612", "ssh\\xfed", "a\\tb.service",
    ]  # fmt: skip


def test_an_escape_in_a_name_cannot_pass_for_a_byte() -> None:
    # A device literally named `eth\xff` (backslash is allowed) and one with
    # the byte 0xff must not read the same.
    assert escape_text("eth\\xff") != escape_text(ODD_INTERFACE)
    assert escape_text("eth\\xff") == "eth\\\\xff"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\x00b", "a\\x00b"),
        ("a\x1bc", "a\\x1bc"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("cr\r", "cr\\r"),
        ("sep\u2028", "sep\\u2028"),
        ("lone\ud800", "lone\\ud800"),
        ("caf\u00e9 \u2192 ok", "caf\u00e9 \u2192 ok"),
    ],
)
def test_every_control_character_is_escaped_and_other_text_kept(name: str, shown: str) -> None:
    assert escape_text(name) == shown
    assert len((escape_text(name) + "\n").splitlines()) == 1
