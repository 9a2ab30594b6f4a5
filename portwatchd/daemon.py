"""`portwatchd`: parse the command line, load the configuration, build every
part and wire them together, own the exit codes. The only module that
chooses implementations, and the only one that exits."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from portwatchd import __version__
from portwatchd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from portwatchd.model import PRIORITY_ERR, PRIORITY_WARNING, Endpoint, Owner, Place

Say = Callable[[int, str], None]

if TYPE_CHECKING:
    from portwatchd.control.transport import ControlServer
    from portwatchd.engine import Engine
    from portwatchd.log import EventLog
    from portwatchd.reactor import Reactor
    from portwatchd.runner import Runner
    from portwatchd.sources.base import Scanner

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# sysexits.h EX_CONFIG; systemd shows it as status=78/CONFIG, and the unit
# does not restart on it (RestartPreventExitStatus=78): a broken file stays
# broken however often we retry.
EXIT_CONFIG = 78


def positive_seconds(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds or auto: {text!r}") from None


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
        "--interval",
        type=positive_seconds,
        metavar="SECONDS",
        help="seconds between full scans, or auto (5 with the kernel's notices, else 1)",
    )
    parser.add_argument("--socket", metavar="PATH", help="control socket path")
    parser.add_argument("--state-dir", metavar="PATH", help="where the event store lives")
    parser.add_argument(
        "--log-target",
        choices=("auto", "journal", "stderr"),
        help="where events go (auto: the journal when it runs)",
    )
    parser.add_argument(
        "--namespaces",
        choices=("all", "host"),
        help="watch every network namespace (containers), or only portwatchd's own",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print every problem found and exit",
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
        "namespaces": args.namespaces,
    }
    return {key: value for key, value in given.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = overrides_from(args)

    def read_config() -> Config:
        return load_config(args.config, overrides)

    if args.check_config:
        return check_config(args.config, overrides)
    # Imported here so that --version and --check-config stay quick.
    from portwatchd.control.transport import ControlError, inherited_listen_socket

    try:
        inherited = inherited_listen_socket()
    except ControlError as err:
        # A socket passed by systemd that is not a listening Unix stream socket.
        print(f"portwatchd: {err}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        config = read_config()
    except ConfigError as err:
        print(f"portwatchd: {err}", file=sys.stderr)
        if inherited is None:
            return EXIT_CONFIG
        # Socket-activated: exiting would make every portwatchctl call start
        # us again until systemd fails the socket unit. Stay up and say why.
        return run_with_config_error(err, inherited, read_config)
    return run_daemon(config, read_config, inherited)


def check_config(path: str | None, overrides: dict[str, Any]) -> int:
    """`--check-config`: every problem of every file, and what start-up would check."""
    from portwatchd.config import check_config as find_errors
    from portwatchd.config import format_errors

    errors = find_errors(path, overrides, environment=True)
    print(format_errors(errors), file=sys.stderr if errors else sys.stdout)
    if errors:
        return EXIT_CONFIG
    for warning in load_config(path, overrides).warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def run_daemon(config: Config, read_config: Callable[[], Config], inherited: Any) -> int:
    """Build every part, wire them, run the loop until asked to stop."""
    from portwatchd.reactor import Reactor

    reactor = Reactor()
    try:
        runner = build_runner(config, read_config, inherited, reactor)
        if isinstance(runner, int):
            return runner
        install_signals(runner.request_stop, runner.request_reload)
        reactor.wake_on_signals()
        return runner.run(runner.reloader.open_control(config, inherited))
    finally:
        reactor.close()


def build_runner(
    config: Config, read_config: Callable[[], Config], inherited: Any, reactor: Reactor
) -> Runner | int:
    """Every part of the daemon, wired; an exit status when one cannot be had."""
    from portwatchd.notify import Notifier
    from portwatchd.outputs.journal import JournalSink, open_sink
    from portwatchd.outputs.journal_writer import JournalWriter
    from portwatchd.realtime import RealTime
    from portwatchd.reload import Reloader
    from portwatchd.runner import Runner
    from portwatchd.sources.base import ScanError
    from portwatchd.sources.choose import open_sources
    from portwatchd.sources.netns import host_netns

    sink = open_sink(config.log_target, json_lines=config.log_format == "json")
    log = open_log(config, reads_journal=isinstance(sink, JournalSink))
    writer = JournalWriter(sink, log, reactor)
    for warning in (*config.warnings, *log.warnings):
        writer.say(PRIORITY_WARNING, warning)

    host_inode = host_netns()

    def scanner_for(wanted: Config) -> Scanner:
        return open_sources(wanted.backend, wanted.namespaces, host_inode, writer.say)

    try:
        scanner = scanner_for(config)
    except (ScanError, OSError) as err:
        writer.say(PRIORITY_ERR, f"cannot scan listening sockets: {err}")
        writer.close(2.0)
        log.close()
        return EXIT_FAILURE
    engine = build_engine(
        config, scanner, log, say=writer.say, reactor=reactor, host_inode=host_inode
    )

    def control_for(new: Config, passed: socket.socket | None) -> ControlServer:
        return build_control(new, inherited=passed, runner=runner, log=log, reactor=reactor)

    reloader = Reloader(
        read_config=read_config,
        open_scanner=scanner_for,
        open_control=control_for,
        control_inherited=inherited is not None,
        state_dir=config.state_dir,
    )
    realtime = RealTime(engine, reactor, say=writer.say) if config.realtime else None
    runner: Runner = Runner(
        config, engine=engine, log=log, writer=writer, reloader=reloader,
        notifier=Notifier(), reactor=reactor, realtime=realtime,
    )  # fmt: skip
    return runner


def build_engine(
    config: Config, scanner: Scanner, log: EventLog, *, say: Say, reactor: Reactor, host_inode: int
) -> Engine:
    """The engine over `scanner`, judging with `config`'s rules; places told
    against the host's namespace `host_inode`."""
    from portwatchd.classify import Judge
    from portwatchd.engine import Engine
    from portwatchd.lookup import ThreadedLookup
    from portwatchd.places import Places
    from portwatchd.sources.choose import ephemeral_ports
    from portwatchd.sources.owners import OwnerResolver

    places = Places(host_inode, lambda: engine.scanner)
    engine = Engine(
        scanner=scanner,
        log=log,
        lookup=ThreadedLookup(OwnerResolver(), reactor),
        judge=Judge(ignored=config.is_ignored, place=places.place, expected=config.is_expected),
        say=say,
        owners_enabled=config.owners,
        restart_grace=config.restart_grace,
        ephemeral=ephemeral_ports(say),
        defer=reactor.call_soon_threadsafe,
    )
    return engine


def open_log(config: Config, *, reads_journal: bool) -> EventLog:
    """The event log over its store; where events go to the journal, the
    journal is the fallback for the last seq ever sent."""
    from portwatchd.log import EventLog
    from portwatchd.outputs.journal import journal_last_seq
    from portwatchd.store import Store

    return EventLog(
        Store.open(config.state_dir),
        history_size=config.history_size,
        history_max_age_s=config.history_max_age_s,
        journal_last_seq=journal_last_seq if reads_journal else lambda: None,
    )


def build_control(
    config: Config,
    *,
    inherited: socket.socket | None,
    runner: Runner,
    log: EventLog,
    reactor: Reactor,
) -> ControlServer:
    """The control socket server, its handlers reading the event log."""
    from portwatchd.control.handlers import RequestHandlers
    from portwatchd.control.transport import ControlServer

    def describe(endpoint: Endpoint, owner: Owner) -> tuple[Place, bool | None]:
        # The engine's judge at call time: a reload's new rules apply.
        judge = runner.engine.judge
        place = judge.place(endpoint, owner)
        return place, judge.expected(endpoint, owner, place)

    handlers = RequestHandlers(
        log,
        status=runner.status,
        ports=runner.engine.ports,
        describe=describe,
        request_rescan=runner.request_rescan,
        reload=runner.request_reload,
        metrics=runner.metrics_text,
        log=lambda message: runner.writer.say(PRIORITY_WARNING, f"control: {message}"),
    )
    return ControlServer(
        handlers.answer,
        reactor,
        path=config.socket.path,
        group=config.socket.group,
        mode=config.socket.mode,
        max_clients=config.socket.max_clients,
        idle_timeout=config.socket.idle_timeout,
        inherited=inherited,
        log=lambda message: runner.writer.say(PRIORITY_WARNING, f"control: {message}"),
    )


def run_with_config_error(
    error: ConfigError, inherited: Any, read_config: Callable[[], Config]
) -> int:
    """Socket-activated with a broken file: stay up watching nothing,
    answer `status` with the error (file:line:key), refuse the rest with
    config_error, ping the watchdog. Exiting would make every portwatchctl
    call start us again until systemd fails the socket unit. A reload
    (SIGHUP, or systemctl reload) that finds the file fixed starts the
    daemon over in this process (exec), on the same socket."""
    import os
    import time

    from portwatchd.control.handlers import ConfigErrorHandlers
    from portwatchd.control.transport import ControlServer
    from portwatchd.notify import Notifier, watchdog_interval
    from portwatchd.reactor import Reactor

    started, reactor, notifier = time.monotonic(), Reactor(), Notifier()
    flags = {"stop": False, "reload": False, "fixed": False}

    def status() -> dict[str, Any]:
        uptime = round(time.monotonic() - started, 3)
        return {"version": __version__, "pid": os.getpid(), "uptime_s": uptime, "ports_watched": 0}

    def reload() -> dict[str, Any]:
        notifier.reloading()
        try:
            read_config()
        except ConfigError as again:
            handlers.error = str(again)
            notifier.ready(f"configuration error, watching nothing: {again}")
            return _reload_outcome(str(again))
        flags["fixed"] = True
        return _reload_outcome(None)

    handlers = ConfigErrorHandlers(status, str(error), reload=reload)
    server = ControlServer(handlers.answer, reactor, inherited=inherited)
    install_signals(lambda: flags.update(stop=True), lambda: flags.update(reload=True))
    reactor.wake_on_signals()
    server.start()
    notifier.ready(f"configuration error, watching nothing: {error}")
    # A quarter of WATCHDOG_USEC, as the running daemon pings.
    ping_every = (watchdog_interval() or 0) / 2 or None
    try:
        while not flags["stop"] and not flags["fixed"]:
            reactor.run_once(ping_every)
            if ping_every is not None:
                notifier.watchdog()
            if flags["reload"]:
                flags["reload"] = False
                reload()
        if flags["fixed"]:
            _start_over(inherited, reactor)
    finally:
        notifier.stopping("stopping")
        server.close()
        reactor.close()
    return EXIT_OK


def _reload_outcome(error: str | None) -> dict[str, Any]:
    """A reload's outcome, in the form the running daemon records it."""
    from portwatchd.model import rfc3339, utc_now

    return {
        "time": rfc3339(utc_now()),
        "ok": error is None,
        "outcome": "ok" if error is None else "refused",
        "error": error,
        "not_applied": [],
    }


def _start_over(inherited: Any, reactor: Reactor) -> None:
    """exec ourselves with the socket systemd passed, as systemd passed it,
    once the reload's answer has had a moment to reach its client."""
    import os

    for _ in range(10):
        reactor.run_once(0.05)

    fd = inherited.fileno()
    os.set_inheritable(fd, True)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    os.execv(sys.executable, [sys.executable, "-m", "portwatchd.daemon", *sys.argv[1:]])


def install_signals(stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """The handlers only record the request; the reactor's wake-up fd makes
    the loop notice at once. A second SIGINT or SIGTERM while stopping
    forces the exit (as uvicorn does), for a stop stuck on a dead journal."""
    stopping: list[bool] = []

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        if stopping:
            raise SystemExit(EXIT_FAILURE)
        stopping.append(True)
        stop()

    def on_reload(_signum: int, _frame: FrameType | None) -> None:
        reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)


if __name__ == "__main__":
    sys.exit(main())
