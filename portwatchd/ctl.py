"""portwatchctl: ask a running portwatchd about listening ports and their history.

The daemon returns data; the client formats it and owns the exit codes.
This module holds the commands, their tables and the exit codes. argparse's
reading of the command line is in ctl_parser, talking to the daemon in
ctl_client, the history and the live stream in ctl_events, output in
ctl_format, times on the command line in ctl_time.

Start-up time matters (`portwatchctl status` runs in scripts and in
systemd's ExecReload=, and should start in at most twice the time of
`python3 -c pass`): this module imports only os, sys and the client. The
simplest command lines (a command with on/off flags, like `status --json`)
are read here; every other one by argparse (ctl_parser), from the same
tables. Other modules are imported by the command that needs them.
"""

from __future__ import annotations

import os
import sys

from portwatchd import protocol
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
    import argparse
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
    "Args",
    "build_parser",
    "fast_parse",
    "main",
]

# The daemon answers a reload once it has applied or refused it; a backend
# switch or a re-bind may take a while. systemd gives ExecReload= 90 s.
RELOAD_TIMEOUT_S = 60.0
EXIT_STATUS_TEXT = (
    "Exit status: 0 ok, 1 daemon error, 2 usage, 3 daemon not reachable or busy, "
    "4 permission denied, 5 configuration error, 130 interrupted. See portwatchctl(1)."
)


# --- commands ---------------------------------------------------------------


def cmd_events(args: Args) -> int:
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
        "netns": args.netns,
        "container": args.container,
        "host_only": args.host_only or None,
    }
    if args.follow:
        follow(args.socket, {**query, "after_seq": args.after_seq, "limit": args.limit}, printer)
    else:
        print_history(args.socket, query, args.after_seq, args.limit, printer)
    return EXIT_OK


def _place_query(args: Args) -> protocol.EventQuery:
    """The --netns/--container/--host-only filters (fast_parse sets only the flags)."""
    return protocol.EventQuery(
        netns=getattr(args, "netns", None),
        container=getattr(args, "container", None),
        host_only=getattr(args, "host_only", False),
    )


def _listeners(args: Args) -> list[dict[str, Any]]:
    """The daemon's `ports` rows that pass the place filters and --unexpected."""
    query = _place_query(args)
    rows = []
    for row in call(args.socket, protocol.request("ports")).get("ports") or []:
        if not isinstance(row, dict):
            continue
        if getattr(args, "unexpected", False) and row.get("expected") is not False:
            continue
        if query.filters_place and not query.matches_place(
            row.get("netns") or 0,
            row.get("netns_inode") or 0,
            row.get("netns_name"),
            row.get("container"),
        ):
            continue
        rows.append(row)
    return rows


def cmd_ports(args: Args) -> int:
    from portwatchd.ctl_format import port_record, print_ports

    records = [port_record(p, p.get("owner") or {}) for p in _listeners(args)]
    print_ports(records, args.json, sys.stdout, legend=not args.no_legend, with_place=True)
    return EXIT_OK


def cmd_expect(args: Args) -> int:
    """`expect --suggest`: [[expect]] rules accepting what listens now, printed, never applied."""
    if not args.suggest:
        raise CtlError(EXIT_USAGE, "expect: say what to do: --suggest (print rules to review)")
    from portwatchd.expect import suggest
    from portwatchd.model import Endpoint, Owner, Place

    rows = [
        (Endpoint.from_dict(row), Owner.from_dict(row.get("owner") or {}), Place.from_dict(row))
        for row in _listeners(args)
    ]
    sys.stdout.write(suggest(rows))
    return EXIT_OK


def cmd_status(args: Args) -> int:
    status = call(args.socket, protocol.request("status")).get("status") or {}
    if args.json:
        import json

        sys.stdout.write(json.dumps(status) + "\n")
    else:
        from portwatchd.ctl_status import status_lines

        pairs = status_lines(status, local=args.local)
        width = max((len(label) for label, _ in pairs), default=0)
        sys.stdout.write("".join(f"{label.rjust(width)}: {value}\n" for label, value in pairs))
    if status.get("config_error"):
        # Up, but watching nothing until the file is fixed: not a success.
        sys.stderr.write(
            f"portwatchctl: portwatchd runs with a broken configuration: {status['config_error']}\n"
        )
        return EXIT_CONFIG_ERROR
    return EXIT_OK


def cmd_rescan(args: Args) -> int:
    call(args.socket, protocol.request("rescan"))
    return EXIT_OK


def cmd_reload(args: Args) -> int:
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


def cmd_metrics(args: Args) -> int:
    text = call(args.socket, protocol.request("metrics")).get("metrics")
    if not isinstance(text, str):
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd's answer to metrics holds no metrics text")
    sys.stdout.write(text)
    return EXIT_OK


def cmd_scan(args: Args) -> int:
    """One scan in this process, no daemon needed."""
    # Lazy: the scanners and /proc walking are heavy, and only `scan` needs them.
    from portwatchd.ctl_format import port_record, print_ports
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
    print_ports(records, args.json, sys.stdout, legend=not args.no_legend)
    unseen = sum(1 for r in records if r["pid"] is None)
    if unseen and not args.no_owners and os.geteuid() != 0:
        sys.stderr.write(
            f"portwatchctl: the owners of {unseen} socket(s) could not be seen; "
            "run as root to see every process\n"
        )
    return EXIT_OK


class Args:
    """The command line, read: argparse fills it in, or fast_parse."""

    command: str
    socket: str  # after main() has filled in the default

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)  # only for attributes never set: getattr(args, x, default)


COMMANDS: dict[str, tuple[Callable[[Args], int], str]] = {
    "events": (cmd_events, "show the recorded open/close events"),
    "ports": (cmd_ports, "show the listening ports now"),
    "status": (cmd_status, "show the daemon's state"),
    "rescan": (cmd_rescan, "ask the daemon to scan now (root)"),
    "reload": (cmd_reload, "make the daemon reload its configuration and wait (root)"),
    "metrics": (cmd_metrics, "print the daemon's metrics (Prometheus text format)"),
    "scan": (cmd_scan, "scan once in this process, without the daemon"),
    "expect": (cmd_expect, "print [[expect]] rules accepting what listens now (--suggest)"),
}


# On/off flags (option -> help) of the commands that fast_parse reads.
FLAGS: dict[str, dict[str, str]] = {
    "ports": {
        "--json": "a JSON list of objects",
        "--no-legend": "no header line",
        "--host-only": "only the host's network namespace",
        "--unexpected": "only listeners that no [[expect]] rule accepts",
    },
    "status": {"--json": "one JSON object", "--local": "times in local time, not UTC"},
    "rescan": {},
    "reload": {},
    "metrics": {},
    "expect": {
        "--suggest": "print rules accepting every listener now: a baseline to review",
        "--host-only": "only the host's network namespace",
        "--unexpected": "only listeners that no [[expect]] rule accepts yet",
    },
}


# Options with values of those commands, which fast_parse leaves as argparse
# does when they are not given: None. A line that gives one goes to argparse.
UNSET_VALUES: dict[str, tuple[str, ...]] = {
    "ports": ("netns", "container"),
    "expect": ("netns", "container"),
}


def _help_texts() -> dict[str, str]:
    return {name: help_text for name, (_, help_text) in COMMANDS.items()}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole argparse command line, or with `only` just that command's part."""
    from portwatchd.ctl_parser import build_parser as build

    return build(_help_texts(), FLAGS, EXIT_STATUS_TEXT, only)


def fast_parse(argv: Sequence[str]) -> Args | None:
    """A command line of only --socket and a command with on/off flags, read without argparse.

    None for anything else (help, errors and abbreviations included): argparse
    then reads it. Where this reads a line, it reads it as argparse would.
    """
    args = Args()
    command: str | None = None
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--socket" and index + 1 < len(argv) and argv[index + 1][:1] != "-":
            args.socket = argv[index + 1]
            index += 2
            continue
        if word.startswith("--socket="):
            args.socket = word.removeprefix("--socket=")
        elif command is None and word in FLAGS:
            command = word
            for flag in FLAGS[word]:
                setattr(args, flag[2:].replace("-", "_"), False)
            for name in UNSET_VALUES.get(word, ()):
                setattr(args, name, None)
        elif command is not None and word in FLAGS[command]:
            setattr(args, word[2:].replace("-", "_"), True)
        else:
            return None
        index += 1
    if command is None:
        return None
    args.command = command
    return args


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = fast_parse(words)
    if args is None:
        from portwatchd.ctl_parser import parse

        args = parse(words, _help_texts(), FLAGS, EXIT_STATUS_TEXT, Args())
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
