"""The control socket's wire format, imported by the daemon and by portwatchctl.

Framing: one JSON object per line, UTF-8, terminated by "\\n"; a request line
may be at most MAX_LINE bytes. Every message carries the protocol version "v".

Requests (client -> daemon)::

    {"v": 1, "req": "status"}
    {"v": 1, "req": "ports"}
    {"v": 1, "req": "rescan"}                           # root only (SO_PEERCRED)
    {"v": 1, "req": "reload"}                           # root only; answered when done
    {"v": 1, "req": "metrics"}
    {"v": 1, "req": "events", "after_seq": 41, "since": "2026-11-25T14:00:00Z",
     "until": "2026-11-25T15:00:00Z", "limit": 10, "type": "opened", "proto": "tcp",
     "port": 22, "netns": "web", "container": "3f2a", "host_only": true}
                                                        # every filter optional
    {"v": 1, "req": "follow", ...same filters as events but until...}

Responses (daemon -> client), one line each::

    {"v": 1, "ok": true, "status": {...}}
    {"v": 1, "ok": true, "ports": [{...endpoint..., "owner": {...}}, ...]}
    {"v": 1, "ok": true}                                            # rescan
    {"v": 1, "ok": true, "reload": {...the daemon's outcome...}}    # reload
    {"v": 1, "ok": true, "metrics": "# HELP ...\n"}                 # Prometheus text
    {"v": 1, "ok": true, "oldest_seq": 7, "last_seq": 1006, "events": [...]}
    {"v": 1, "ok": false, "error": {"code": "bad_request", "message": "..."}}

Where a listener lives (additive fields, old clients send none of them):
`netns` is a network namespace's name (`ip netns` or container name) or its
inode in decimal ("0" and the host's own inode name the host's);
`container` a container's id, a prefix of its id (hex, like docker), or its
name; `host_only: true` keeps the host's namespace only and cannot be
combined with the other two. `ports` rows carry the listener's place
(netns_inode, netns_name, scope, container, container_runtime, exposure)
and `expected` (true/false, null when no [[expect]] rule exists), flat, as
events do.

`events` semantics: every filter must match (`since`: time >= since,
`until`: time <= until); `limit` keeps the OLDEST matches after `after_seq`
when it is given (paging forward misses nothing), else the NEWEST matches
("the last 10"); the result is oldest first and ends at the `last_seq` the
reply names. When `after_seq` is older than the oldest event still held,
the response also carries `"gap": {"from": first_missing, "to": last_missing}`;
seqs that were handed out but never stored are listed in
`"losses": [{"from_seq": .., "to_seq": .., "time": .., "reason": ..}, ...]`.
A daemon that started with a broken configuration answers `status` only and
refuses every other request with `config_error`.

`follow` answers with an ok header `{"v": 1, "ok": true, "follow": {"after_seq": N}}`
(N: the seq the stream continues after), then the backlog selected like
`events`, then live events, one per line, as `{"v": 1, "event": {...}}`,
each seq greater than the one before: nothing falls between backlog and live
stream and nothing comes twice. A `{"v": 1, "gap": {"from": .., "to": ..}}`
line says events were lost from history before they could be sent; a
`{"v": 1, "loss": {"from_seq": .., "to_seq": .., "time": .., "reason": ..}}` line
says seqs were handed out whose events were never stored. The stream ends
with an error line (e.g. follow_overrun) or when either side closes.
Without after_seq, since and limit the stream is live only.

Event objects are `portwatchd.model.Event.to_dict()`.

The daemon validates requests with `portwatchd.protocol_requests`, which
only the daemon imports.

Kept to `json` alone on purpose: portwatchctl imports this module on every
start, and `portwatchctl status` must answer in a few tens of milliseconds.
"""

from __future__ import annotations

import json

# typing costs portwatchctl a few milliseconds at start-up; the annotations
# are strings (PEP 563), so only the type checker needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024
DEFAULT_SOCKET = "/run/portwatchd/control.sock"
SOCKET_ENV = "PORTWATCHD_SOCKET"

REQUESTS = ("events", "ports", "status", "follow", "rescan", "reload", "metrics")
MUTATING_REQUESTS = frozenset({"rescan", "reload"})

# Named error codes: clients branch on these, never on message text.
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_REQUEST = "unknown_request"
LINE_TOO_LONG = "line_too_long"
BUSY = "busy"
IDLE_TIMEOUT = "idle_timeout"
PERMISSION_DENIED = "permission_denied"
FOLLOW_OVERRUN = "follow_overrun"
VERSION_MISMATCH = "version_mismatch"
INTERNAL = "internal"
CONFIG_ERROR = "config_error"  # the daemon runs on a broken configuration: status only
ERROR_CODES = frozenset(
    {
        BAD_JSON,
        BAD_REQUEST,
        UNKNOWN_REQUEST,
        LINE_TOO_LONG,
        BUSY,
        IDLE_TIMEOUT,
        PERMISSION_DENIED,
        FOLLOW_OVERRUN,
        VERSION_MISMATCH,
        INTERNAL,
        CONFIG_ERROR,
    }
)

# The arguments of an `events` request; `follow` takes them all but `until`.
QUERY_FIELDS = (
    "after_seq",
    "since",
    "until",
    "limit",
    "type",
    "proto",
    "port",
    "netns",
    "container",
    "host_only",
)
PLACE_FIELDS = ("netns", "container", "host_only")


class ProtocolError(Exception):
    """A message that breaks the protocol; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventQuery:
    """The filters of an `events` or `follow` request; None means "any".

    `since` and `until` are RFC 3339 timestamps (naive means UTC), bounds
    included: the events with since <= time <= until.
    A plain slotted class rather than a dataclass: importing `dataclasses`
    would cost portwatchctl's start-up time for nothing.
    """

    __slots__ = QUERY_FIELDS

    def __init__(
        self,
        *,
        after_seq: int | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        type: str | None = None,  # shadows the builtin: it is the wire's field name
        proto: str | None = None,
        port: int | None = None,
        netns: str | None = None,
        container: str | None = None,
        host_only: bool | None = None,
    ) -> None:
        self.after_seq = after_seq
        self.since = since
        self.until = until
        self.limit = limit
        self.type = type
        self.proto = proto
        self.port = port
        self.netns = netns
        self.container = container
        self.host_only = host_only or None  # false is no filter: left off the wire

    def as_args(self) -> dict[str, Any]:
        """The filters that are set, as request arguments (and ring.query keywords)."""
        return {
            name: getattr(self, name) for name in QUERY_FIELDS if getattr(self, name) is not None
        }

    def matches_live(self, type: str, proto: str, port: int) -> bool:
        """Whether a live event passes the type/proto/port filters (`since` is for history)."""
        return (
            (self.type is None or type == self.type)
            and (self.proto is None or proto == self.proto)
            and (self.port is None or port == self.port)
        )

    @property
    def filters_place(self) -> bool:
        return self.netns is not None or self.container is not None or self.host_only is not None

    def matches_place(
        self, netns: int, netns_inode: int, netns_name: str | None, container: str | None
    ) -> bool:
        """Whether a listener passes the netns/container/host_only filters.

        `netns` is the Endpoint's (0 for the host's namespace), `netns_inode`
        the Place's (the host's real inode included). The store's SQL
        (store.place_clauses) says the same in SQLite.
        """
        if self.host_only and netns != 0:
            return False
        if self.netns is not None and not netns_matches(self.netns, netns, netns_inode, netns_name):
            return False
        return self.container is None or container_matches(self.container, container, netns_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventQuery) and self.as_args() == other.as_args()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.as_args().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.as_args().items())
        return f"EventQuery({args})"


def netns_matches(wanted: str, netns: int, netns_inode: int, netns_name: str | None) -> bool:
    """`--netns`: a decimal inode (the Endpoint's or the Place's), else the name."""
    if wanted.isdigit():
        return int(wanted) in (netns, netns_inode)
    return netns_name == wanted


def is_id_prefix(text: str) -> bool:
    """Whether `text` can be the start of a container id (lowercase hex, as docker prints)."""
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def container_matches(wanted: str, container: str | None, netns_name: str | None) -> bool:
    """`--container`: the id, a prefix of it, or the container's name (in netns_name)."""
    if container is None:
        return False
    if container == wanted or (is_id_prefix(wanted) and container.startswith(wanted)):
        return True
    return netns_name == wanted


# --- framing ----------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line: compact JSON, UTF-8, "\\n" at the end.

    json.dumps escapes control characters, so a "\\n" never occurs inside.
    """
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def encode_with_list(message: dict[str, Any], key: str, items: Sequence[bytes]) -> bytes:
    """encode(message) with `key` set to a list of items that are already JSON text.

    The daemon encodes each event once and reuses the text: a whole-ring
    `events` answer is then a join, not a thousand dict conversions.
    """
    return b"".join((list_head(message, key), list_items(items, first=True), LIST_END))


def list_head(message: dict[str, Any], key: str) -> bytes:
    """The start of encode_with_list's line, up to and including `"key":[`.

    With list_items() and LIST_END it lets the daemon send a long list in
    slices, each slice encoded just before it is sent, byte for byte the
    line encode_with_list would build whole.
    """
    head = json.dumps(message, separators=(",", ":"), ensure_ascii=False)[:-1]
    separator = "," if message else ""
    return f'{head}{separator}"{key}":['.encode()


def list_items(items: Sequence[bytes], *, first: bool) -> bytes:
    """A slice of a list's items (JSON text); `first`: no comma before it."""
    if not items:
        return b""
    joined = b",".join(items)
    return joined if first else b"," + joined


LIST_END = b"]}\n"


def list_tail(fields: dict[str, Any]) -> bytes:
    """The end of a list_head() line, with `fields` after the list (LIST_END if none)."""
    if not fields:
        return LIST_END
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return b"]," + text[1:].encode() + b"\n"


def decode(line: bytes | str) -> dict[str, Any]:
    """One received line (with or without its "\\n") as a JSON object.

    Raises ProtocolError: line_too_long past MAX_LINE, bad_json for bytes
    that are not UTF-8 JSON, bad_request for JSON that is not an object.
    """
    if len(line) > MAX_LINE + 1:
        raise ProtocolError(LINE_TOO_LONG, f"line longer than {MAX_LINE} bytes")
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        raise ProtocolError(BAD_JSON, "line is not valid UTF-8") from None
    except ValueError as exc:
        raise ProtocolError(BAD_JSON, f"line is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(BAD_JSON, "line is nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError(BAD_REQUEST, f"expected a JSON object, got {type(value).__name__}")
    return value


# --- messages ---------------------------------------------------------------


def request(req: str, **args: Any) -> dict[str, Any]:
    """A request object; None-valued arguments are left out."""
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "req": req}
    message.update({k: v for k, v in args.items() if v is not None})
    return message


def ok(**fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, **fields}


def error(code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": {"code": code, "message": message}}


def error_line(code: str, message: str) -> bytes:
    return encode(error(code, message))


def version_mismatch_message(theirs: object, side: str = "portwatchd") -> str:
    ours = "portwatchctl" if side == "portwatchd" else "portwatchd"
    return f"{side} speaks protocol {theirs}, this {ours} speaks {PROTOCOL_VERSION}"


def check_version(message: dict[str, Any], side: str = "portwatchd") -> None:
    """Raise version_mismatch unless `message` speaks our protocol version.

    `side` names who sent the message, for the error text.
    """
    theirs = message.get("v")
    if theirs != PROTOCOL_VERSION or isinstance(theirs, bool):
        raise ProtocolError(VERSION_MISMATCH, version_mismatch_message(theirs, side))


# --- stream lines (daemon side) ----------------------------------------------
# Every line of an `events` reply or a `follow` stream is built here, so that
# the wire format has one definition. Items arrive as plain values: this
# module must not import portwatchd.model (dataclasses costs the client).


def encode_item(item: dict[str, Any]) -> bytes:
    """One object (an event's to_dict()) as compact JSON text, without "\\n"."""
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


def event_line(encoded_event: bytes) -> bytes:
    """`{"v": 1, "event": {...}}` around an event already encoded by encode_item."""
    return b'{"v":%d,"event":%s}\n' % (PROTOCOL_VERSION, encoded_event)


def gap(first_missing: int, last_missing: int) -> dict[str, int]:
    """The seqs that left the history before a client could see them."""
    return {"from": first_missing, "to": last_missing}


def gap_line(first_missing: int, last_missing: int) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "gap": gap(first_missing, last_missing)})


def reset_line(after_seq: int | None, last_seq: int) -> bytes:
    """The client's after_seq lies past the newest seq: it starts over at 0."""
    return encode({"v": PROTOCOL_VERSION, "reset": {"after_seq": after_seq, "last_seq": last_seq}})


def loss(from_seq: int, to_seq: int, time: str, reason: str) -> dict[str, Any]:
    """Seqs handed out whose events were never stored (model.Loss on the wire)."""
    return {"from_seq": from_seq, "to_seq": to_seq, "time": time, "reason": reason}


def loss_line(from_seq: int, to_seq: int, time: str, reason: str) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "loss": loss(from_seq, to_seq, time, reason)})


def follow_header(after_seq: int) -> bytes:
    """A follow stream's first line: the seq the stream continues after."""
    return encode(ok(follow={"after_seq": after_seq}))
