"""`portwatchd`: parse the command line, load the configuration, wire the
adapters to the loop, and own the exit codes. The only module that exits."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from portwatchd import __version__
from portwatchd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# sysexits.h EX_CONFIG; systemd shows it as status=78/CONFIG, and the unit
# does not restart on it (RestartPreventExitStatus=78): a broken file stays
# broken however often we retry.
EXIT_CONFIG = 78


def positive_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portwatchd",
        description="Watch listening TCP/UDP ports; log every open and close to the journal.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default {DEFAULT_CONFIG_PATH}; optional)",
    )
    parser.add_argument(
        "--interval", type=positive_seconds, metavar="SECONDS", help="seconds between scans"
    )
    parser.add_argument("--socket", metavar="PATH", help="control socket path")
    parser.add_argument("--state-dir", metavar="PATH", help="where state persists")
    parser.add_argument(
        "--log-target",
        choices=("auto", "journal", "stderr"),
        help="where events go (auto: the journal when it runs)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print the result and exit",
    )
    parser.add_argument("--version", action="version", version=f"portwatchd {__version__}")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options override the file, under the config's flat names."""
    given = {
        "interval": args.interval,
        "socket_path": args.socket,
        "state_dir": args.state_dir,
        "log_target": args.log_target,
    }
    return {key: value for key, value in given.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = overrides_from(args)

    def read_config() -> Config:
        return load_config(args.config, overrides)

    try:
        config = read_config()
    except ConfigError as err:
        print(f"portwatchd: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"portwatchd: configuration OK ({config.source or 'built-in defaults'})")
        return EXIT_OK

    # Imported here so that --version and --check-config stay quick.
    from portwatchd.control import inherited_listen_socket
    from portwatchd.notify import Notifier
    from portwatchd.outputs.journal import open_sink
    from portwatchd.reactor import Reactor
    from portwatchd.service import Service

    try:
        sink = open_sink(config.log_target, json_lines=config.log_format == "json")
        inherited = inherited_listen_socket()
    except (ImportError, OSError) as err:
        # systemd-python missing for log_target = "journal", or a socket
        # passed by systemd that is not a listening Unix stream socket.
        print(f"portwatchd: {err}", file=sys.stderr)
        return EXIT_FAILURE
    reactor = Reactor()
    service = Service(
        config,
        sink=sink,
        notifier=Notifier(),
        reload_config=read_config,
        reactor=reactor,
        inherited_socket=inherited,
    )
    # The handlers only record the request (Service.request_*); the wakeup
    # fd makes the loop notice at once.
    handlers = {
        signal.SIGHUP: service.request_reload,
        signal.SIGTERM: service.request_stop,
        signal.SIGINT: service.request_stop,
    }
    for signum, request in handlers.items():
        signal.signal(signum, _recorder(request))
    reactor.wake_on_signals()
    try:
        return service.run()
    finally:
        reactor.close()


def _recorder(request: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        request()

    return handler


if __name__ == "__main__":
    sys.exit(main())
