"""portwatchctl's command line as argparse reads it: options, their types, help, usage errors.

The commands, their help and their on/off flags are ctl.py's tables, handed
in: ctl.py reads the simplest command lines itself, without argparse (see
ctl.fast_parse), and both readings come from the same tables.
"""

from __future__ import annotations

import argparse
import os
import sys

from portwatchd import __version__, protocol
from portwatchd.model import EVENT_TYPES, PROTOS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

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


def _name_argument(what: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if not text or len(text) > MAX_NAME:
            raise argparse.ArgumentTypeError(f"must be {what}, 1 to {MAX_NAME} characters")
        return text

    return convert


MAX_NAME = 255  # as the daemon checks it (protocol_requests.MAX_NAME)


def _place_options(parser: argparse.ArgumentParser, host_only: bool) -> None:
    """--netns and --container (and for `events` --host-only: elsewhere an on/off flag)."""
    parser.add_argument(
        "--netns",
        type=_name_argument("a namespace's name or inode"),
        metavar="NAME_OR_INODE",
        help="only this network namespace: its `ip netns` or container name, or its inode",
    )
    parser.add_argument(
        "--container",
        type=_name_argument("a container's name or id"),
        metavar="NAME_OR_ID",
        help="only this container: its name, its id, or the start of its id",
    )
    if host_only:
        parser.add_argument(
            "--host-only", action="store_true", help="only the host's network namespace"
        )


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
    events.add_argument("--type", choices=EVENT_TYPES)
    events.add_argument("--proto", choices=PROTOS)
    events.add_argument("--port", type=_bounded_int(1, 65535), metavar="N")
    _place_options(events, host_only=True)
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--local", action="store_true", help="times in local time, not UTC")
    events.add_argument("--no-legend", action="store_true", help="no header line")


def _scan_options(scan: argparse.ArgumentParser) -> None:
    scan.add_argument("--backend", choices=("auto", "netlink", "proc"), default="auto")
    scan.add_argument("--json", action="store_true", help="a JSON list of objects")
    scan.add_argument("--no-owners", action="store_true", help="do not look up processes")
    scan.add_argument("--no-legend", action="store_true", help="no header line")


# Commands with options that take values; the others have only on/off flags.
_VALUED_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "events": _events_options,
    "scan": _scan_options,
    "ports": lambda parser: _place_options(parser, host_only=False),
    "expect": lambda parser: _place_options(parser, host_only=False),
}


def build_parser(
    commands: Mapping[str, str],
    flags: Mapping[str, Mapping[str, str]],
    exit_status_text: str,
    only: str | None = None,
) -> argparse.ArgumentParser:
    """The command line: `commands` (name -> help), `flags` (command -> option -> help).

    With `only`, the one command that was given (faster: no other sub-parser).
    """
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
        epilog=exit_status_text,
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in commands.items():
        if only is not None and name != only:
            continue
        sub = subparsers.add_parser(
            name, parents=[common], formatter_class=_HelpFormatter, help=help_text
        )
        if name in _VALUED_OPTIONS:
            _VALUED_OPTIONS[name](sub)
        for flag, flag_help in flags.get(name, {}).items():
            sub.add_argument(flag, action="store_true", help=flag_help)
    return parser


def _command_named(argv: Sequence[str], commands: Mapping[str, str]) -> str | None:
    """The command in `argv` when only --socket comes before it; else None."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--socket":
            index += 2
        elif word.startswith("--socket="):
            index += 1
        else:
            return word if word in commands else None
    return None


def attach_time_values(words: Sequence[str]) -> list[str]:
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


def _check_places(parser: argparse.ArgumentParser, args: Any) -> None:
    if getattr(args, "host_only", False):
        for option in ("netns", "container"):
            if getattr(args, option, None) is not None:
                parser.error(f"--host-only cannot be used with --{option}: nothing could match")


def _check_times(parser: argparse.ArgumentParser, args: Any) -> None:
    if getattr(args, "follow", False) and getattr(args, "until", None) is not None:
        parser.error("--until cannot be used with --follow (a live stream has no end)")
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None and until is not None and since > until:  # fixed-width UTC text
        parser.error(f"--since ({since}) is after --until ({until}): nothing can match")


def parse(
    argv: Sequence[str],
    commands: Mapping[str, str],
    flags: Mapping[str, Mapping[str, str]],
    exit_status_text: str,
    namespace: Any,
) -> Any:
    """Fill `namespace` from `argv`; a usage error exits 2 with argparse's message."""
    words = attach_time_values(argv)
    only = _command_named(words, commands)
    parser = build_parser(commands, flags, exit_status_text, only)
    args = parser.parse_args(words, namespace=namespace)
    _check_times(parser, args)
    _check_places(parser, args)
    return args
