"""portwatchctl: ask a running portwatchd about listening ports and their history.

The daemon returns data; the client formats it and owns the exit codes.
This module holds the command line: options, commands, exit codes.
Talking to the daemon is in ctl_client, the history and the live stream in
ctl_events, output in ctl_format, times on the command line in ctl_time.

Start-up time matters (`portwatchctl status` runs in scripts and in
systemd's ExecReload=): this module imports only argparse, os, sys and the
client; every other module is imported by the command that needs it.
"""

from __future__ import annotations

import argparse
import os
import sys

from portwatchd import __version__, protocol
from portwatchd.ctl_client import (
    EXIT_CONFIG_ERROR,
    EXIT_DAEMON_ERROR,
    EXIT_DENIED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CtlError,
    call,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = [
    "EXIT_CONFIG_ERROR",
    "EXIT_DAEMON_ERROR",
    "EXIT_DENIED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

# The daemon answers a reload once it has applied or refused it; a backend
# switch or a re-bind may take a while. systemd gives ExecReload= 90 s.
RELOAD_TIMEOUT_S = 60.0
EXIT_STATUS_TEXT = (
    "Exit status: 0 ok, 1 daemon error, 2 usage, 3 daemon not reachable or busy, "
    "4 permission denied, 5 configuration error, 130 interrupted. See portwatchctl(1)."
)


# --- argument types ---------------------------------------------------------

_now: list[float] = []  # one "now" for every time on the command line


def parse_time_argument(text: str, now: float | None = None) -> str:
    """A --since/--until value (journalctl's forms) as RFC 3339 UTC, else ArgumentTypeError."""
    from portwatchd.ctl_time import BadTimeError, parse_time

    if now is None:
        if not _now:
            import time

            _now.append(time.time())
        now = _now[0]
    try:
        return parse_time(text, now)
    except BadTimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def cmd_events(args: argparse.Namespace) -> int:
    from portwatchd.ctl_events import EventPrinter, follow, print_history

    printer = EventPrinter(
        sys.stdout,
        sys.stderr,
        as_json=args.json,
        stream=args.follow,
        legend=not args.no_legend,
        local=args.local,
    )
    query = {
        "since": args.since,
        "until": args.until,
        "type": args.type,
        "proto": args.proto,
        "port": args.port,
    }
    if args.follow:
        follow(args.socket, {**query, "after_seq": args.after_seq, "limit": args.limit}, printer)
    else:
        print_history(args.socket, query, args.after_seq, args.limit, printer)
    return EXIT_OK


def cmd_ports(args: argparse.Namespace) -> int:
    from portwatchd.ctl_format import port_record, print_ports

    response = call(args.socket, protocol.request("ports"))
    records = [port_record(p, p.get("owner") or {}) for p in response.get("ports") or []]
    print_ports(records, args.json, sys.stdout, legend=not args.no_legend)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    status = call(args.socket, protocol.request("status")).get("status") or {}
    if args.json:
        import json

        sys.stdout.write(json.dumps(status) + "\n")
        return EXIT_OK
    from portwatchd.ctl_format import status_lines

    pairs = status_lines(status, local=args.local)
    width = max((len(label) for label, _ in pairs), default=0)
    sys.stdout.write("".join(f"{label.rjust(width)}: {value}\n" for label, value in pairs))
    return EXIT_OK


def cmd_rescan(args: argparse.Namespace) -> int:
    call(args.socket, protocol.request("rescan"))
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """Exit 0 only once the daemon runs with the new configuration (for ExecReload=)."""
    response = call(args.socket, protocol.request("reload"), timeout=RELOAD_TIMEOUT_S)
    reload = response.get("reload")
    if not isinstance(reload, dict):
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd answered the reload without its outcome")
    outcome = reload.get("outcome")
    error = reload.get("error") or "no reason given"
    if outcome == "ok":
        return EXIT_OK
    if outcome == "refused":
        raise CtlError(
            EXIT_CONFIG_ERROR,
            f"portwatchd refused the reload: {error}; it runs on with its previous configuration",
        )
    if outcome == "partial":
        not_applied = reload.get("not_applied") or []
        missing = f" (not applied: {', '.join(map(str, not_applied))})" if not_applied else ""
        raise CtlError(
            EXIT_DAEMON_ERROR, f"portwatchd applied the reload only in part: {error}{missing}"
        )
    raise CtlError(EXIT_DAEMON_ERROR, f"portwatchd answered the reload with outcome {outcome!r}")


def cmd_metrics(args: argparse.Namespace) -> int:
    text = call(args.socket, protocol.request("metrics")).get("metrics")
    if not isinstance(text, str):
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd's answer to metrics holds no metrics text")
    sys.stdout.write(text)
    return EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    """One scan in this process, no daemon needed."""
    # Lazy: the scanners and /proc walking are heavy, and only `scan` needs them.
    from portwatchd.ctl_format import port_record, print_ports
    from portwatchd.scanner import ScanError, open_scanner

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
        from portwatchd.owners import OwnerResolver

        # One complete answer, not the daemon's time-sliced walk: no budget.
        resolver = OwnerResolver(walk_budget_s=float("inf"))
        owners = resolver.resolve({e.inode for e in endpoints if e.inode})
    records = []
    for endpoint in endpoints:
        owner = owners.get(endpoint.inode)
        records.append(port_record(endpoint.to_dict(), owner.to_dict() if owner else {}))
    print_ports(records, args.json, sys.stdout, legend=not args.no_legend)
    unseen = sum(1 for r in records if r["pid"] is None)
    if unseen and not args.no_owners and os.geteuid() != 0:
        sys.stderr.write(
            f"portwatchctl: the owners of {unseen} socket(s) could not be seen; "
            "run as root to see every process\n"
        )
    return EXIT_OK


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "events": (cmd_events, "show the recorded open/close events"),
    "ports": (cmd_ports, "show the listening ports now"),
    "status": (cmd_status, "show the daemon's state"),
    "rescan": (cmd_rescan, "ask the daemon to scan now (root)"),
    "reload": (cmd_reload, "make the daemon reload its configuration and wait (root)"),
    "metrics": (cmd_metrics, "print the daemon's metrics (Prometheus text format)"),
    "scan": (cmd_scan, "scan once in this process, without the daemon"),
}


# --- the command line -------------------------------------------------------


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        sys.stdout.write(f"portwatchctl {__version__} (protocol {protocol.PROTOCOL_VERSION})\n")
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


def _events_options(events: argparse.ArgumentParser) -> None:
    when = "-1h, 30min ago, 2d, yesterday, today, 2026-11-30 10:00, RFC 3339"
    events.add_argument(
        "--since", type=parse_time_argument, metavar="WHEN", help=f"at or after WHEN: {when}"
    )
    events.add_argument(
        "--until", type=parse_time_argument, metavar="WHEN", help="at or before WHEN"
    )
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
    events.add_argument("--local", action="store_true", help="times in local time, not UTC")
    events.add_argument("--no-legend", action="store_true", help="no header line")


def _ports_options(ports: argparse.ArgumentParser) -> None:
    ports.add_argument("--json", action="store_true", help="a JSON list of objects")
    ports.add_argument("--no-legend", action="store_true", help="no header line")


def _status_options(status: argparse.ArgumentParser) -> None:
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--local", action="store_true", help="times in local time, not UTC")


def _scan_options(scan: argparse.ArgumentParser) -> None:
    scan.add_argument("--backend", choices=("auto", "netlink", "proc"), default="auto")
    scan.add_argument("--json", action="store_true", help="a JSON list of objects")
    scan.add_argument("--no-owners", action="store_true", help="do not look up processes")
    scan.add_argument("--no-legend", action="store_true", help="no header line")


_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "events": _events_options,
    "ports": _ports_options,
    "status": _status_options,
    "scan": _scan_options,
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` the one command that was given (faster)."""
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
        epilog=EXIT_STATUS_TEXT,
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        if only is None or name == only:
            sub = commands.add_parser(
                name, parents=[common], formatter_class=_HelpFormatter, help=help_text
            )
            if name in _OPTIONS:
                _OPTIONS[name](sub)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The command in `argv` when only --socket comes before it; else None."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--socket":
            index += 2
        elif word.startswith("--socket="):
            index += 1
        else:
            return word if word in COMMANDS else None
    return None


def _attach_time_values(words: Sequence[str]) -> list[str]:
    """Join "--since -1h" into "--since=-1h": argparse takes "-1h" for an option, journalctl not."""
    attached: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else ""
        if word in ("--since", "--until") and following[:1] == "-" and following[1:2] in _DIGITS:
            attached.append(f"{word}={following}")
            index += 2
        else:
            attached.append(word)
            index += 1
    return attached


_DIGITS = frozenset("0123456789.")


def _check_times(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if getattr(args, "follow", False) and args.until is not None:
        parser.error("--until cannot be used with --follow (a live stream has no end)")
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None and until is not None and since > until:  # fixed-width UTC text
        parser.error(f"--since ({since}) is after --until ({until}): nothing can match")


def main(argv: Sequence[str] | None = None) -> int:
    words = _attach_time_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_named(words))
    args = parser.parse_args(words)
    _check_times(parser, args)
    if getattr(args, "socket", None) is None:
        args.socket = os.environ.get(protocol.SOCKET_ENV) or protocol.DEFAULT_SOCKET
    try:
        return COMMANDS[args.command][0](args)
    except CtlError as exc:
        sys.stderr.write(f"portwatchctl: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "follow", False) else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) left: not an error. Keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
