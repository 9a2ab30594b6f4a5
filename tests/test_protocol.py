"""The wire format: framing, validation, version check; any input gives a clean error."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd import protocol, protocol_requests
from portwatchd.model import Endpoint, Event, Owner
from portwatchd.protocol import EventQuery, ProtocolError


def test_encode_is_one_line_that_decodes_back() -> None:
    message = {"v": 1, "req": "events", "note": "line\nbreak \u00e9 \u2603"}
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode(line) == message


def test_event_round_trips_through_the_wire() -> None:
    event = Event(
        seq=7,
        id="6d1f0a8e-7a51-4c3b-9f0e-2f7c1b9f2a11",
        type="opened",
        time="2026-11-25T14:00:00.123456Z",
        endpoint=Endpoint(proto="tcp", family="ipv6", address="::1", port=8080, inode=99),
        owner=Owner(pid=5, pids=(5, 6), comm="python3", unit="app.service"),
    )
    line = protocol.encode({"v": 1, "event": event.to_dict()})
    assert Event.from_dict(protocol.decode(line)["event"]) == event


def test_request_leaves_out_unset_arguments() -> None:
    assert protocol.request("events", limit=5, port=None) == {"v": 1, "req": "events", "limit": 5}


def test_parse_request_returns_the_query() -> None:
    name, query = protocol_requests.parse_request(
        {"v": 1, "req": "events", "after_seq": 3, "type": "closed", "port": 22, "limit": 0}
    )
    assert name == "events"
    assert query == EventQuery(after_seq=3, type="closed", port=22, limit=0)
    assert query is not None and query.as_args() == {
        "after_seq": 3,
        "limit": 0,
        "type": "closed",
        "port": 22,
    }
    assert protocol_requests.parse_request({"v": 1, "req": "status"}) == ("status", None)


def test_query_matches_live_filters() -> None:
    assert EventQuery().matches_live("opened", "udp", 53)
    assert EventQuery(type="opened", proto="udp", port=53).matches_live("opened", "udp", 53)
    assert not EventQuery(type="closed").matches_live("opened", "udp", 53)
    assert not EventQuery(proto="tcp").matches_live("opened", "udp", 53)
    assert not EventQuery(port=54).matches_live("opened", "udp", 53)


def test_encode_with_list_splices_preencoded_items() -> None:
    items = [protocol.encode({"seq": n})[:-1] for n in (1, 2)]
    line = protocol.encode_with_list(protocol.ok(last_seq=2), "events", items)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode(line) == {
        "v": 1,
        "ok": True,
        "last_seq": 2,
        "events": [{"seq": 1}, {"seq": 2}],
    }
    assert protocol.decode(protocol.encode_with_list({}, "x", [])) == {"x": []}


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        ({"req": "status"}, protocol.VERSION_MISMATCH, "speaks protocol None"),
        ({"v": True, "req": "status"}, protocol.VERSION_MISMATCH, "speaks protocol True"),
        ({"v": 1}, protocol.BAD_REQUEST, "'req'"),
        ({"v": 1, "req": "reboot"}, protocol.UNKNOWN_REQUEST, "'reboot'"),
        ({"v": 1, "req": "events", "port": 1.5}, protocol.BAD_REQUEST, "'port'"),
        ({"v": 1, "req": "events", "type": ["opened"]}, protocol.BAD_REQUEST, "'type'"),
        ({"v": 1, "req": "events", "since": "2026-13-01"}, protocol.BAD_REQUEST, "'since'"),
        ({"v": 1, "req": "ports", "limit": 3}, protocol.BAD_REQUEST, "limit"),
    ],
)
def test_parse_request_errors_name_the_problem(
    message: dict[str, Any], code: str, text: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol_requests.parse_request(message)
    assert caught.value.code == code
    assert text in caught.value.message


def test_version_mismatch_message_names_both_versions() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.check_version({"v": 2, "ok": True}, side="portwatchd")
    assert caught.value.message == "portwatchd speaks protocol 2, this portwatchctl speaks 1"


def test_decode_refuses_over_long_line() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(b"1" * (protocol.MAX_LINE + 2))
    assert caught.value.code == protocol.LINE_TOO_LONG


def test_every_error_code_is_named() -> None:
    assert {
        "bad_json",
        "bad_request",
        "unknown_request",
        "line_too_long",
        "busy",
        "idle_timeout",
        "permission_denied",
        "follow_overrun",
        "version_mismatch",
        "internal",
    } <= protocol.ERROR_CODES


def test_importing_protocol_stays_light() -> None:
    # portwatchctl's start-up time depends on this.
    code = (
        "import sys; import portwatchd.protocol; "
        "print(sorted(m for m in ('asyncio', 'dataclasses', 'typing', 'datetime') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.replace("'", '"')) == []


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        message = protocol.decode(data)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
    else:
        assert isinstance(message, dict)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=4,
)
_request_like = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, "1", None]),
        "req": st.sampled_from([*protocol.REQUESTS, "x"]),
    },
    optional={
        "after_seq": st.integers(-5, 10**20) | _json_values,
        "since": st.sampled_from(["2026-11-25T14:00:00Z", "2026-11-25", "later"]) | _json_values,
        "limit": st.integers(-5, 10**6) | _json_values,
        "type": st.sampled_from(["opened", "closed", "moved"]) | _json_values,
        "proto": st.sampled_from(["tcp", "udp", "sctp"]) | _json_values,
        "port": st.integers(-5, 70000) | _json_values,
        "extra": _json_values,
    },
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_request_like)
def test_any_request_validates_or_fails_cleanly(message: dict[str, Any]) -> None:
    try:
        name, query = protocol_requests.parse_request(message)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
        assert exc.message
    else:
        assert name in protocol.REQUESTS
        if query is not None:
            port = query.port
            assert port is None or (isinstance(port, int) and 0 <= port <= 65535)
            assert query.type in (None, "opened", "closed")
            assert query.proto in (None, "tcp", "udp")


def test_until_is_an_events_filter_and_follow_refuses_it() -> None:
    _name, query = protocol_requests.parse_request(
        {"v": 1, "req": "events", "since": "2026-11-25T14:00:00Z", "until": "2026-11-26"}
    )
    assert query == EventQuery(since="2026-11-25T14:00:00Z", until="2026-11-26")
    assert query is not None and query.as_args()["until"] == "2026-11-26"
    with pytest.raises(ProtocolError) as caught:
        protocol_requests.parse_request({"v": 1, "req": "follow", "until": "2026-11-26"})
    assert caught.value.code == protocol.BAD_REQUEST
    assert "'until' is for events" in caught.value.message
    with pytest.raises(ProtocolError, match="'until' is not an RFC 3339 timestamp"):
        protocol_requests.parse_request({"v": 1, "req": "events", "until": "tomorrow"})


def test_reload_and_metrics_are_requests_and_reload_mutates() -> None:
    assert protocol_requests.parse_request({"v": 1, "req": "reload"}) == ("reload", None)
    assert protocol_requests.parse_request({"v": 1, "req": "metrics"}) == ("metrics", None)
    assert "reload" in protocol.MUTATING_REQUESTS and "metrics" not in protocol.MUTATING_REQUESTS
    assert protocol.CONFIG_ERROR == "config_error" and "config_error" in protocol.ERROR_CODES


def test_stream_lines_are_one_json_object_each() -> None:
    event = Event(
        seq=7,
        id="6d1f0a8e-7a51-4c3b-9f0e-2f7c1b9f2a11",
        type="opened",
        time="2026-11-25T14:00:00.123456Z",
        endpoint=Endpoint(proto="tcp", family="ipv4", address="0.0.0.0", port=22),
    )
    line = protocol.event_line(protocol.encode_item(event.to_dict()))
    assert line == protocol.encode({"v": 1, "event": event.to_dict()})  # 0.1's bytes
    assert protocol.decode(protocol.gap_line(3, 9)) == {"v": 1, "gap": {"from": 3, "to": 9}}
    assert protocol.decode(protocol.reset_line(500, 3)) == {
        "v": 1,
        "reset": {"after_seq": 500, "last_seq": 3},
    }
    loss = protocol.decode(protocol.loss_line(4, 6, "2026-11-25T15:00:00.000000Z", "crash"))
    assert loss == {
        "v": 1,
        "loss": {
            "from_seq": 4,
            "to_seq": 6,
            "time": "2026-11-25T15:00:00.000000Z",
            "reason": "crash",
        },
    }
    assert protocol.decode(protocol.follow_header(41)) == {
        "v": 1,
        "ok": True,
        "follow": {"after_seq": 41},
    }
    for text in (line, protocol.gap_line(1, 2), protocol.error_line("busy", "x\ny")):
        assert text.endswith(b"\n") and text.count(b"\n") == 1


def test_a_list_sent_in_slices_is_the_line_built_whole() -> None:
    items = [protocol.encode_item({"seq": n}) for n in range(1, 6)]
    head = protocol.list_head(protocol.ok(last_seq=5), "events")
    sliced = b"".join(
        [
            head,
            protocol.list_items(items[:2], first=True),
            protocol.list_items([], first=False),
            protocol.list_items(items[2:], first=False),
            protocol.list_tail({}),
        ]
    )
    assert sliced == protocol.encode_with_list(protocol.ok(last_seq=5), "events", items)
    with_losses = head + protocol.list_items(items, first=True) + protocol.list_tail({"n": 1})
    assert protocol.decode(with_losses)["n"] == 1
    assert len(protocol.decode(with_losses)["events"]) == 5
