"""Validation of decoded control requests: the daemon's side of `protocol`.

Split from protocol.py, which portwatchctl imports on every start and which
must stay light; only the daemon's request handlers import this module.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from portwatchd.model import EVENT_TYPES, PROTOS
from portwatchd.protocol import (
    BAD_REQUEST,
    QUERY_FIELDS,
    REQUESTS,
    UNKNOWN_REQUEST,
    EventQuery,
    ProtocolError,
    check_version,
)


def _int_field(message: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = message.get(name)
    if value is None:
        return None
    # bool is an int subclass; "port": true is a type error, not port 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(BAD_REQUEST, f"'{name}' must be an integer, got {json.dumps(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ProtocolError(BAD_REQUEST, f"'{name}' must be {bounds}, got {value}")
    return value


def _choice_field(message: dict[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    if value not in choices or not isinstance(value, str):
        raise ProtocolError(
            BAD_REQUEST, f"'{name}' must be one of {', '.join(choices)}, got {json.dumps(value)}"
        )
    return value


def _time_field(message: dict[str, Any], name: str) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(
            BAD_REQUEST, f"'{name}' must be an RFC 3339 string, got {json.dumps(value)}"
        )
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolError(
            BAD_REQUEST,
            f"'{name}' is not an RFC 3339 timestamp: {value!r} (like 2026-11-25T14:00:00Z)",
        ) from None
    return value


# Longer than any name a namespace or a container can have.
MAX_NAME = 255


def _name_field(message: dict[str, Any], name: str, what: str) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and name == "netns" and value >= 0:
        return str(value)  # an inode sent as a number
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ProtocolError(
            BAD_REQUEST,
            f"'{name}' must be {what}: a string of 1 to {MAX_NAME} characters,"
            f" got {json.dumps(value)[:80]}",
        )
    return value


def _host_only_field(message: dict[str, Any]) -> bool | None:
    value = message.get("host_only")
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ProtocolError(
            BAD_REQUEST, f"'host_only' must be true or false, got {json.dumps(value)}"
        )
    if value and (message.get("netns") is not None or message.get("container") is not None):
        raise ProtocolError(
            BAD_REQUEST,
            "'host_only' cannot be combined with 'netns' or 'container': nothing could match",
        )
    return value or None


def parse_query(message: dict[str, Any]) -> EventQuery:
    """The EventQuery of an `events`/`follow` request; bad_request names the field."""
    return EventQuery(
        netns=_name_field(message, "netns", "a network namespace's name or inode"),
        container=_name_field(message, "container", "a container's name, id or id prefix"),
        host_only=_host_only_field(message),
        after_seq=_int_field(message, "after_seq", 0, None),
        since=_time_field(message, "since"),
        until=_time_field(message, "until"),
        limit=_int_field(message, "limit", 0, None),
        type=_choice_field(message, "type", EVENT_TYPES),
        proto=_choice_field(message, "proto", PROTOS),
        port=_int_field(message, "port", 0, 65535),
    )


_ALLOWED_ARGS: dict[str, frozenset[str]] = {
    "events": frozenset(QUERY_FIELDS),
    "follow": frozenset(QUERY_FIELDS) - {"until"},
    "ports": frozenset(),
    "status": frozenset(),
    "rescan": frozenset(),
    "reload": frozenset(),
    "metrics": frozenset(),
}


def parse_request(message: dict[str, Any]) -> tuple[str, EventQuery | None]:
    """Validate a decoded request: (request name, its query for events/follow).

    Raises ProtocolError: version_mismatch, unknown_request, or bad_request
    naming the offending field (unknown arguments included, so that a typo
    such as "prot" is not silently ignored).
    """
    check_version(message, side="portwatchctl")
    name = message.get("req")
    if not isinstance(name, str):
        raise ProtocolError(BAD_REQUEST, f"'req' must be a string, got {json.dumps(name)}")
    if name not in _ALLOWED_ARGS:
        raise ProtocolError(
            UNKNOWN_REQUEST, f"unknown request {name!r}: expected one of {', '.join(REQUESTS)}"
        )
    if name == "follow" and "until" in message:
        raise ProtocolError(
            BAD_REQUEST, "'until' is for events: a follow stream has no end (use events --until)"
        )
    unknown = sorted(set(message) - {"v", "req"} - _ALLOWED_ARGS[name])
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"unknown argument(s) for {name!r}: {', '.join(unknown)}")
    query = parse_query(message) if name in ("events", "follow") else None
    return name, query
