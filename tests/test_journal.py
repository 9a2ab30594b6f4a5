"""The journal field mapping is a pure function: test it as one."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from pathlib import Path

from portwatchd.model import EVENT_TYPES, UNKNOWN_OWNER, Endpoint, Event, Owner
from portwatchd.outputs.entries import (
    MESSAGE_ID_CLOSED,
    MESSAGE_ID_OPENED,
    MESSAGE_ID_OWNER_CHANGED,
    MESSAGE_ID_RESTARTED,
    MESSAGE_ID_UNEXPECTED,
    MESSAGE_IDS,
    event_fields,
)
from portwatchd.outputs.journal import JournalSocket, StderrSink

NGINX = Owner(
    pid=1234,
    pids=(1234, 1240),
    comm="nginx",
    exe="/usr/sbin/nginx",
    cmdline="nginx: master process /usr/sbin/nginx",
    uid=0,
    user="root",
    unit="nginx.service",
)


def make_event(endpoint: Endpoint, owner: Owner = UNKNOWN_OWNER, **kw: object) -> Event:
    fields: dict[str, object] = {
        "seq": 7,
        "id": "0b5e4a52-8f0e-4a43-9d1e-6f2a0c9d2a11",
        "type": "opened",
        "time": "2026-11-25T14:20:31.123456Z",
        "endpoint": endpoint,
        "owner": owner,
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def test_opened_event_has_every_field_journalctl_filters_on() -> None:
    ep = Endpoint("tcp", "ipv4", "0.0.0.0", 8080, inode=4242, uid=0)
    fields = event_fields(make_event(ep, NGINX))
    assert fields == {
        "MESSAGE": "Port opened: tcp:0.0.0.0:8080 by nginx[1234] (nginx.service)",
        "MESSAGE_ID": MESSAGE_ID_OPENED,
        "PRIORITY": "5",
        "SYSLOG_IDENTIFIER": "portwatchd",
        "PORT_EVENT": "opened",
        "PORT": "tcp:0.0.0.0:8080",
        "PORT_PROTO": "tcp",
        "PORT_FAMILY": "ipv4",
        "PORT_ADDRESS": "0.0.0.0",
        "PORT_NUMBER": "8080",
        "PORT_INTERFACE": "",
        "PORT_INODE": "4242",
        "PORT_EVENT_SEQ": "7",
        "PORT_EVENT_ID": "0b5e4a52-8f0e-4a43-9d1e-6f2a0c9d2a11",
        "PORT_EVENT_TIME": "2026-11-25T14:20:31.123456Z",
        "PORT_DETECTED": "scan",
        "PORT_PID": "1234",
        "PORT_PIDS": "1234 1240",
        "PORT_COMM": "nginx",
        "PORT_EXE": "/usr/sbin/nginx",
        "PORT_CMDLINE": "nginx: master process /usr/sbin/nginx",
        "PORT_UID": "0",
        "PORT_USER": "root",
        "PORT_UNIT": "nginx.service",
    }


def test_closed_ipv6_bound_to_device_and_detected_at_startup() -> None:
    ep = Endpoint("udp", "ipv6", "fe80::1", 546, interface="eth0", v6only=True, inode=9, uid=101)
    event = make_event(
        ep, type="closed", detected="startup", down_since="2026-11-25T10:00:00.000000Z"
    )
    fields = event_fields(event)
    assert fields["MESSAGE_ID"] == MESSAGE_ID_CLOSED
    assert fields["PORT"] == "udp:[fe80::1%eth0]:546"
    assert fields["PORT_INTERFACE"] == "eth0"
    assert fields["PORT_V6ONLY"] == "1"
    assert fields["PORT_DETECTED"] == "startup"
    assert fields["PORT_DOWN_SINCE"] == "2026-11-25T10:00:00.000000Z"
    assert fields["MESSAGE"] == (
        "Port closed while portwatchd was not running: udp:[fe80::1%eth0]:546 by unknown process"
    )


def test_unknown_owner_leaves_owner_fields_out_but_keeps_socket_uid() -> None:
    ep = Endpoint("tcp", "ipv4", "127.0.0.1", 5432, inode=1, uid=105)
    fields = event_fields(make_event(ep))
    for absent in ("PORT_PID", "PORT_COMM", "PORT_EXE", "PORT_UNIT", "PORT_USER"):
        assert absent not in fields
    assert fields["PORT_UID"] == "105"


def test_every_value_is_a_string_and_message_ids_are_128_bit_hex() -> None:
    ep = Endpoint("tcp", "ipv6", "::", 22, v6only=False, inode=3, uid=0)
    fields = event_fields(make_event(ep, NGINX))
    assert all(isinstance(v, str) for v in fields.values())
    for mid in (MESSAGE_ID_OPENED, MESSAGE_ID_CLOSED):
        assert len(mid) == 32 and int(mid, 16) > 0
    assert MESSAGE_ID_OPENED != MESSAGE_ID_CLOSED


def test_stderr_json_lines_carry_the_event_and_its_id() -> None:
    out = io.StringIO()
    ep = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=5)
    event = make_event(ep, NGINX)
    StderrSink(out, json_lines=True).event(event)
    record = json.loads(out.getvalue())
    assert record["event"]["id"] == event.id
    assert record["event"]["key"] == "tcp:0.0.0.0:80"
    assert record["event"]["owner"]["unit"] == "nginx.service"


def test_stderr_text_line_is_one_line_per_event() -> None:
    out = io.StringIO()
    ep = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=5)
    StderrSink(out).event(make_event(ep, NGINX))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "Port opened: tcp:0.0.0.0:80 by nginx[1234]" in lines[0]
    assert "seq=7" in lines[0]


def test_names_that_are_not_utf8_become_escapes_the_journal_can_take() -> None:
    from portwatchd.text import printable_name

    odd = b"\xe9o".decode("utf-8", "surrogateescape")  # as Python reads such a name
    assert printable_name(odd) == "\\xe9o"
    assert printable_name("eth0") == "eth0"
    ep = Endpoint("tcp", "ipv4", "127.0.0.1", 80, interface=printable_name(odd), inode=1)
    for value in event_fields(make_event(ep)).values():
        value.encode("utf-8")


def _decode_entry(data: bytes) -> dict[str, bytes]:
    """journald's side of the native protocol, for the round trip below."""
    fields: dict[str, bytes] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value
            data = rest
        else:
            size = int.from_bytes(rest[:8], "little")
            fields[line.decode()] = rest[8 : 8 + size]
            data = rest[8 + size + 1 :]
    return fields


def test_the_native_protocol_round_trips_newlines_and_raw_bytes(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(path)
        JournalSocket(path).send(
            MESSAGE="Port opened: x", PORT_COMM="evil\nPort closed: forged", PORT_USER="\udcff"
        )
        entry = _decode_entry(journald.recv(65536))
    assert entry == {
        "MESSAGE": b"Port opened: x",
        "PORT_COMM": b"evil\nPort closed: forged",
        "PORT_USER": b"\xff",
    }


def test_a_send_blocked_on_a_stopped_journald_does_not_stop_other_threads(
    tmp_path: Path,
) -> None:
    """journald stopped: its socket queue fills and sends block. Only the
    sending thread may wait; systemd-python's send held the GIL and froze
    the whole daemon, watchdog pings included."""
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(path)  # never read: a stopped journald
        sender = JournalSocket(path)
        sent = [0]

        def flood() -> None:
            with contextlib.suppress(OSError):
                while True:
                    sender.send(MESSAGE="x" * 100)
                    sent[0] += 1

        threading.Thread(target=flood, daemon=True).start()
        deadline = time.monotonic() + 5
        while sent[0] == 0 or _still_sending(sent):
            assert time.monotonic() < deadline, "the queue never filled"
        # The sender is blocked now; this thread still runs Python code.
        started = time.monotonic()
        spins = sum(1 for _ in range(200_000))
        assert spins == 200_000
        assert time.monotonic() - started < 2.0


def _still_sending(sent: list[int]) -> bool:
    before = sent[0]
    time.sleep(0.2)
    return sent[0] != before


def test_a_restart_is_info_with_both_owners_and_the_downtime() -> None:
    ep = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=77, uid=0)
    old = Owner(pid=900, pids=(900,), comm="nginx", exe="/usr/sbin/nginx", unit="nginx.service")
    event = make_event(ep, NGINX, type="restarted", previous_owner=old, down_seconds=1.25)
    fields = event_fields(event)
    assert fields["MESSAGE"] == (
        "Port restarted: tcp:0.0.0.0:80 by nginx[1234] (nginx.service), down 1.25 s,"
        " was nginx[900] (nginx.service)"
    )
    assert fields["MESSAGE_ID"] == MESSAGE_ID_RESTARTED != MESSAGE_ID_OPENED
    assert fields["PRIORITY"] == "6"
    assert fields["PORT_EVENT"] == "restarted"
    assert fields["PORT_DOWN_SECONDS"] == "1.25"
    assert (fields["PORT_PID"], fields["PORT_PREVIOUS_PID"]) == ("1234", "900")
    assert fields["PORT_PREVIOUS_EXE"] == "/usr/sbin/nginx"
    assert fields["PORT_PREVIOUS_UNIT"] == "nginx.service"
    assert "PORT_PREVIOUS_USER" not in fields  # not seen: absent, never a guess


def test_an_owner_change_names_the_new_holder_and_the_old_one() -> None:
    ep = Endpoint("tcp", "ipv4", "0.0.0.0", 80, inode=77, uid=0)
    old = Owner(pid=900, comm="python3", exe="/usr/bin/python3.11")
    fields = event_fields(make_event(ep, NGINX, type="owner_changed", previous_owner=old))
    assert fields["MESSAGE"] == (
        "Port owner changed: tcp:0.0.0.0:80 now held by nginx[1234] (nginx.service),"
        " was python3[900]"
    )
    assert fields["MESSAGE_ID"] == MESSAGE_ID_OWNER_CHANGED
    assert fields["PRIORITY"] == "5"
    assert fields["PORT_PREVIOUS_COMM"] == "python3"
    assert "PORT_DOWN_SECONDS" not in fields


def test_every_event_type_has_its_own_message_id_and_a_catalog_entry() -> None:
    catalog = (Path(__file__).parents[1] / "packaging" / "portwatchd.catalog").read_text()
    ids = [MESSAGE_IDS[kind] for kind in EVENT_TYPES]
    assert len(set(ids)) == len(EVENT_TYPES)
    for message_id in [*ids, MESSAGE_ID_UNEXPECTED]:
        assert f"-- {message_id}\n" in catalog
