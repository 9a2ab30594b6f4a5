"""portwatchctl: ask a running portwatchd about listening ports and their history.

The daemon returns data; this module formats it and owns the exit codes.
It imports only the stdlib pieces each command needs, and no asyncio: the
common commands must start in a few tens of milliseconds.
"""

from __future__ import annotations

import _socket
import argparse
import json
import os
import struct
import sys
import time

from portwatchd import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, TextIO

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4

REQUEST_TIMEOUT_S = 10.0
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
FOLLOW_DEFAULT_BACKLOG = 10  # like journalctl -f
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CtlError(Exception):
    """A failure to report on stderr, with the exit code it maps to."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class ConnectionLostError(Exception):
    """The daemon went away in the middle of a conversation."""


# --- talking to the daemon ------------------------------------------------


def _permission_message(path: str) -> str:
    import grp  # only on this error path

    try:
        gid = os.stat(path).st_gid
    except OSError as exc:
        return f"Permission denied on {path}: {exc.strerror} (ask an administrator for access)"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    if gid == 0:
        return f"Permission denied on {path}: only root may query (the socket's group is root)"
    return (
        f"Permission denied on {path}: members of group '{group}' may query; "
        f"ask an administrator to add you (usermod -aG {group} USER)"
    )


class DaemonConnection:
    """A stream connection to the daemon that reads whole lines.

    Built on `_socket`, the C module under `socket`: `import socket` builds
    enums of every constant and would add a third to portwatchctl's start-up.
    """

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._scanned = 0  # the buffer holds no "\n" before this offset

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def readline(self) -> bytes:
        """The next line with its "\\n"; what is left (maybe b"") at end of stream."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            chunk = self._sock.recv(256 * 1024)
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                self._scanned = 0
                return line
            self._buffer += chunk

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DaemonConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(path: str, timeout: float | None = REQUEST_TIMEOUT_S) -> DaemonConnection:
    """A connection to the daemon, or CtlError with exit code 3 or 4."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # Connect in blocking mode, bounded by SO_SNDTIMEO: a non-blocking
    # connect() to a Unix socket whose accept queue is full fails at once
    # with EAGAIN, where waiting a moment would have got us in.
    sock.setsockopt(
        _socket.SOL_SOCKET, _socket.SO_SNDTIMEO, struct.pack("ll", int(REQUEST_TIMEOUT_S), 0)
    )
    try:
        sock.connect(path)
    except BlockingIOError:
        sock.close()
        raise CtlError(
            EXIT_UNREACHABLE,
            f"portwatchd accepted no connection on {path} within {REQUEST_TIMEOUT_S:g} s "
            "(too busy, or hung)",
        ) from None
    except PermissionError:
        sock.close()
        raise CtlError(EXIT_DENIED, _permission_message(path)) from None
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise CtlError(
            EXIT_UNREACHABLE,
            f"Cannot connect to {path}: {reason}. Is portwatchd running? "
            "(systemctl status portwatchd)",
        ) from None
    sock.settimeout(timeout)
    return DaemonConnection(sock)


def parse_response(line: bytes) -> dict[str, Any]:
    """A daemon's line as a message of our protocol version, else CtlError."""
    try:
        message = json.loads(line)
    except ValueError:
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd sent a line that is not JSON") from None
    if not isinstance(message, dict):
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd sent a line that is not a JSON object")
    try:
        protocol.check_version(message, side="portwatchd")
    except protocol.ProtocolError as exc:
        raise CtlError(EXIT_DAEMON_ERROR, exc.message) from None
    return message


def _raise_for_error(message: dict[str, Any]) -> None:
    if message.get("ok") is not False:
        return
    error = message.get("error") or {}
    code = error.get("code", protocol.INTERNAL)
    text = f"portwatchd: {error.get('message', 'unknown error')} ({code})"
    raise CtlError(EXIT_DENIED if code == protocol.PERMISSION_DENIED else EXIT_DAEMON_ERROR, text)


def _read_message(connection: DaemonConnection, path: str) -> dict[str, Any]:
    try:
        line = connection.readline()
    except TimeoutError:
        raise CtlError(
            EXIT_UNREACHABLE, f"portwatchd did not answer on {path} within {REQUEST_TIMEOUT_S:g} s"
        ) from None
    except OSError as exc:
        raise ConnectionLostError(str(exc)) from None
    if not line.endswith(b"\n"):
        raise ConnectionLostError("portwatchd closed the connection")
    return parse_response(line)


def call(path: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one request, return the ok response; CtlError otherwise."""
    with connect(path) as connection:
        try:
            connection.send(protocol.encode(message))
            response = _read_message(connection, path)
        except (ConnectionLostError, OSError) as exc:
            raise CtlError(EXIT_UNREACHABLE, f"lost the connection to {path}: {exc}") from None
    _raise_for_error(response)
    return response


# --- formatting -------------------------------------------------------------


class Style:
    """ANSI colour, only on a terminal and only when NO_COLOR is unset."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR")

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled and text else text

    def event_type(self, kind: str) -> str:
        return self.paint(kind, "32" if kind == "opened" else "31")


def local_time(rfc3339: str | None) -> str:
    """An RFC 3339 UTC time as local "YYYY-MM-DD HH:MM:SS"; unparsable passes through."""
    if not rfc3339:
        return "-"
    from datetime import datetime  # events only

    try:
        return datetime.fromisoformat(rfc3339).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return rfc3339


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _address(record: dict[str, Any]) -> str:
    address = str(record.get("address", "?"))
    interface = record.get("interface")
    return f"{address}%{interface}" if interface else address


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    paint: Callable[[int, int, str], str] | None = None,
    min_widths: Sequence[int] = (),
) -> Iterator[str]:
    """Aligned columns; `paint(row, column, padded_cell)` colours after padding."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    widths = [max(w, m) for w, m in zip(widths, [*min_widths, *[0] * len(widths)], strict=False)]
    last = len(headers) - 1

    def line(cells: Sequence[str], row_index: int) -> str:
        out = []
        for col, cell in enumerate(cells):
            padded = cell if col == last else cell.ljust(widths[col])
            out.append(paint(row_index, col, padded) if paint and row_index >= 0 else padded)
        return "  ".join(out).rstrip()

    yield line(headers, -1)
    for index, row in enumerate(rows):
        yield line(row, index)


EVENT_HEADERS = ("SEQ", "TIME", "TYPE", "PROTO", "ADDRESS", "PORT", "PID", "PROCESS", "UNIT")
# Streamed rows cannot be measured in advance: widths that fit most of them.
EVENT_STREAM_WIDTHS = (6, 19, 6, 5, 15, 5, 7, 15, 0)
PORT_HEADERS = ("PROTO", "ADDRESS", "PORT", "PID", "PROCESS", "UNIT")


def event_row(event: dict[str, Any]) -> list[str]:
    owner = event.get("owner") or {}
    return [
        _text(event.get("seq")),
        local_time(event.get("time")),
        _text(event.get("type")),
        _text(event.get("proto")),
        _address(event),
        _text(event.get("port")),
        _text(owner.get("pid")),
        _text(owner.get("comm")),
        _text(owner.get("unit")),
    ]


def port_record(endpoint: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """The flat --json shape of one listening socket, for `ports` and `scan` alike."""
    keys = ("key", "proto", "family", "address", "port", "interface", "v6only", "inode", "uid")
    record = {key: endpoint.get(key) for key in keys}
    record.update({key: owner.get(key) for key in ("pid", "comm", "exe", "unit")})
    return record


def _port_sort_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record.get("proto") or "", record.get("port") or 0, record.get("address") or "")


def print_ports(records: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
    records = sorted(records, key=_port_sort_key)
    if as_json:
        out.write(json.dumps(records, indent=None) + "\n")
        return
    rows = [
        [
            _text(r["proto"]),
            _address(r),
            _text(r["port"]),
            _text(r["pid"]),
            _text(r["comm"]),
            _text(r["unit"]),
        ]
        for r in records
    ]
    for line in format_table(PORT_HEADERS, rows):
        out.write(line + "\n")


def _duration(seconds: float) -> str:
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


def status_lines(status: dict[str, Any]) -> list[tuple[str, str]]:
    """Label/value pairs for the human `status` output, known keys first."""
    pairs: list[tuple[str, str]] = []
    shown: set[str] = set()

    def add(label: str, key: str, value: str | None = None) -> None:
        if key in status:
            pairs.append((label, value if value is not None else _text(status[key])))
            shown.add(key)

    add("Version", "version")
    add("PID", "pid")
    uptime = status.get("uptime_s")
    add("Uptime", "uptime_s", _duration(uptime) if isinstance(uptime, int | float) else None)
    add("Protocol", "protocol")
    add("Scanner", "backend")
    add("Interval", "interval_s", f"{status.get('interval_s')} s")
    add("Owner lookup", "owners", "on" if status.get("owners") else "off")
    add("Ports watched", "ports_watched")
    add("Events total", "events_total")
    add("Last hour", "events_last_hour", f"{status.get('events_last_hour')} events")
    add("Last seq", "last_seq")
    if "ring_size" in status:
        add("Ring", "ring_size", f"{status['ring_size']} of {status.get('ring_capacity', '?')}")
        shown.add("ring_capacity")
    add("Last scan", "last_scan_time", local_time(status.get("last_scan_time")))
    add("Last scan took", "last_scan_duration_ms", f"{status.get('last_scan_duration_ms')} ms")
    for key, label in (("scan_error", "Scan FAILING"), ("journal_error", "Journal FAILING")):
        if status.get(key):
            add(label, key)
        else:
            shown.add(key)
    add("Config", "config_path", status.get("config_path") or "built-in defaults")
    add("State", "state_dir")
    reload = status.get("last_reload")
    if reload is None:
        add("Last reload", "last_reload", "never")
    elif isinstance(reload, dict):
        if reload.get("time") is None:
            text = "never"
        elif reload.get("ok"):
            text = f"{local_time(reload.get('time'))}, ok"
        else:
            text = f"{local_time(reload.get('time'))}, FAILED: {reload.get('error')}"
        add("Last reload", "last_reload", text)
    add("Clients", "clients")
    add("Followers", "followers")
    for key in sorted(set(status) - shown):
        value = status[key]
        pairs.append((key, json.dumps(value) if isinstance(value, dict | list) else _text(value)))
    return pairs


# --- argument types ---------------------------------------------------------


def parse_since(value: str, now: float | None = None) -> str:
    """ "10m", "2h", "1d", "30s", "1w" ago, or an ISO 8601 time (naive = local), as RFC 3339 UTC."""
    from datetime import UTC, datetime  # events only

    text = value.strip()
    if len(text) >= 2 and text[:-1].isdigit() and text[-1] in _UNITS_S:
        moment = (time.time() if now is None else now) - int(text[:-1]) * _UNITS_S[text[-1]]
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a duration (10m, 2h, 1d) nor an ISO 8601 time "
            "(2026-11-25T14:00 or 2026-11-25T14:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # a time without zone is the user's local time
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _bounded_int(low: int, high: int | None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is not {bounds}")
        return value

    return convert


# --- commands ---------------------------------------------------------------


def _query_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "after_seq": args.after_seq,
        "since": args.since,
        "limit": args.limit,
        "type": args.type,
        "proto": args.proto,
        "port": args.port,
    }


class EventPrinter:
    def __init__(self, as_json: bool, out: TextIO, err: TextIO, stream: bool) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err
        self.style = Style(out)
        self.stream = stream
        self.header_printed = False

    def _paint(self, _row: int, column: int, cell: str) -> str:
        return self.style.event_type(cell) if column == 2 else cell

    def print_events(self, events: list[dict[str, Any]]) -> None:
        if self.as_json:
            for event in events:
                self.out.write(json.dumps(event) + "\n")
        else:
            rows = [event_row(e) for e in events]
            widths = EVENT_STREAM_WIDTHS if self.stream else ()
            lines = list(format_table(EVENT_HEADERS, rows, self._paint, widths))
            if self.header_printed:
                lines = lines[1:]
            elif not self.stream and not rows:
                lines = []
            self.header_printed = self.header_printed or bool(lines)
            for line in lines:
                self.out.write(line + "\n")
        if self.stream:
            self.out.flush()

    def gap(self, gap: dict[str, Any]) -> None:
        self.err.write(
            f"portwatchctl: events {gap.get('from')}..{gap.get('to')} had already left "
            "portwatchd's history and cannot be shown\n"
        )
        self.err.flush()


def cmd_events(args: argparse.Namespace) -> int:
    printer = EventPrinter(args.json, sys.stdout, sys.stderr, stream=args.follow)
    if args.follow:
        return follow(args.socket, _query_args(args), printer)
    response = call(args.socket, protocol.request("events", **_query_args(args)))
    if "gap" in response:
        printer.gap(response["gap"])
    events = response.get("events") or []
    printer.print_events(events)
    if not events and not args.json:
        sys.stderr.write("No events.\n")
    return EXIT_OK


class _FollowState:
    """Where a follow stream stands, across reconnections."""

    def __init__(self, after_seq: int | None) -> None:
        self.last_seq = after_seq  # the last seq printed, or where the stream began
        self.streaming = False  # a daemon accepted the follow at least once


class FollowOverrunError(Exception):
    """The daemon cut us off for falling behind; the ring has what we missed."""


def _follow_session(
    path: str, args: dict[str, Any], printer: EventPrinter, state: _FollowState
) -> None:
    """One follow connection, until the daemon goes away (ConnectionLostError)."""
    with connect(path, timeout=REQUEST_TIMEOUT_S) as connection:
        try:
            connection.send(protocol.encode(protocol.request("follow", **args)))
        except OSError as exc:
            raise ConnectionLostError(str(exc)) from None
        header = _read_message(connection, path)
        _raise_for_error(header)
        state.streaming = True
        connection.settimeout(None)  # from here on, silence just means no port changed
        start = (header.get("follow") or {}).get("after_seq")
        if state.last_seq is None and isinstance(start, int):
            state.last_seq = start
        while True:
            message = _read_message(connection, path)
            if "event" in message:
                event = message["event"]
                printer.print_events([event])
                state.last_seq = max(state.last_seq or 0, int(event.get("seq", 0)))
            elif "gap" in message:
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
                _raise_for_error(message)


def follow(path: str, query: dict[str, Any], printer: EventPrinter) -> int:
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


def cmd_ports(args: argparse.Namespace) -> int:
    response = call(args.socket, protocol.request("ports"))
    records = [port_record(p, p.get("owner") or {}) for p in response.get("ports") or []]
    print_ports(records, args.json, sys.stdout)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    status = call(args.socket, protocol.request("status")).get("status") or {}
    if args.json:
        sys.stdout.write(json.dumps(status) + "\n")
        return EXIT_OK
    pairs = status_lines(status)
    width = max((len(label) for label, _ in pairs), default=0)
    for label, value in pairs:
        sys.stdout.write(f"{label.rjust(width)}: {value}\n")
    return EXIT_OK


def cmd_rescan(args: argparse.Namespace) -> int:
    call(args.socket, protocol.request("rescan"))
    return EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    """One scan in this process, no daemon needed."""
    # Lazy: the scanners and /proc walking are heavy, and only `scan` needs them.
    from portwatchd.sources.base import ScanError
    from portwatchd.sources.choose import open_scanner

    def log(message: str) -> None:
        sys.stderr.write(f"portwatchctl: {message}\n")

    try:
        scanner = open_scanner(args.backend, log=log)
    except ScanError as exc:
        raise CtlError(
            EXIT_DAEMON_ERROR, f"cannot open the {args.backend} scanner: {exc}"
        ) from None
    try:
        endpoints = scanner.scan()
    except ScanError as exc:
        raise CtlError(EXIT_DAEMON_ERROR, f"scan failed ({scanner.name}): {exc}") from None
    finally:
        scanner.close()
    owners: dict[int, Any] = {}
    if not args.no_owners:
        from portwatchd.sources.owners import OwnerResolver

        # One complete answer, not the daemon's time-sliced walk: no budget.
        resolver = OwnerResolver(walk_budget_s=float("inf"))
        owners = resolver.resolve({e.inode for e in endpoints if e.inode})
    records = []
    for endpoint in endpoints:
        owner = owners.get(endpoint.inode)
        records.append(port_record(endpoint.to_dict(), owner.to_dict() if owner else {}))
    print_ports(records, args.json, sys.stdout)
    unseen = sum(1 for r in records if r["pid"] is None)
    if unseen and not args.no_owners and os.geteuid() != 0:
        sys.stderr.write(
            f"portwatchctl: the owners of {unseen} socket(s) could not be seen; "
            "run as root to see every process\n"
        )
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "events": cmd_events,
    "ports": cmd_ports,
    "status": cmd_status,
    "rescan": cmd_rescan,
    "scan": cmd_scan,
}


class _VersionAction(argparse.Action):
    """--version, reading the installed version only when asked (it is slow)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("portwatchd")
        except PackageNotFoundError:
            text = "unknown"
        sys.stdout.write(f"portwatchctl {text} (protocol {protocol.PROTOCOL_VERSION})\n")
        parser.exit(0)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without `shutil`.

    argparse builds a formatter for every add_argument() and, without a
    width, imports shutil for the terminal size; shutil imports zlib, bz2
    and lzma, a quarter of `portwatchctl status`'s own start-up time.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(1).columns  # standard output
    except (AttributeError, OSError, ValueError):
        return 80


def build_parser() -> argparse.ArgumentParser:
    # --socket is accepted before and after the command. Its default is
    # filled in after parsing: a default set here would be shared by both
    # places (parents share action objects) and the later one would win.
    common = argparse.ArgumentParser(add_help=False, formatter_class=_HelpFormatter)
    common.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"the daemon's control socket "
        f"(default: ${protocol.SOCKET_ENV} or {protocol.DEFAULT_SOCKET})",
    )
    parser = argparse.ArgumentParser(
        formatter_class=_HelpFormatter,
        prog="portwatchctl",
        description="Query portwatchd: listening ports and their open/close history.",
        parents=[common],
        epilog="Exit status: 0 ok, 1 daemon error, 2 usage, 3 daemon not reachable, "
        "4 permission denied, 130 interrupted. See portwatchctl(1).",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], formatter_class=_HelpFormatter, help=help
        )

    events = command("events", "show the recorded open/close events")
    events.add_argument("--since", type=parse_since, metavar="WHEN", help="10m, 2h, 1d or ISO 8601")
    events.add_argument("--after-seq", type=_bounded_int(0, None), metavar="N", help="after seq N")
    events.add_argument(
        "--limit",
        type=_bounded_int(1, None),
        metavar="N",
        help="at most N events: the newest N, or the first N after --after-seq",
    )
    events.add_argument("--type", choices=("opened", "closed"))
    events.add_argument("--proto", choices=("tcp", "udp"))
    events.add_argument("--port", type=_bounded_int(1, 65535), metavar="N")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")

    ports = command("ports", "show the listening ports now")
    ports.add_argument("--json", action="store_true", help="a JSON list of objects")

    status = command("status", "show the daemon's state")
    status.add_argument("--json", action="store_true", help="one JSON object")

    command("rescan", "ask the daemon to scan now (root)")

    scan = command("scan", "scan once in this process, without the daemon")
    scan.add_argument("--backend", choices=("auto", "netlink", "proc"), default="auto")
    scan.add_argument("--json", action="store_true", help="a JSON list of objects")
    scan.add_argument("--no-owners", action="store_true", help="do not look up processes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "socket", None) is None:
        args.socket = os.environ.get(protocol.SOCKET_ENV) or protocol.DEFAULT_SOCKET
    try:
        return COMMANDS[args.command](args)
    except CtlError as exc:
        sys.stderr.write(f"portwatchctl: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "follow", False) else 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) left: not an error. Keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
