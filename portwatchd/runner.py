"""The loop: when to step the engine, ping the watchdog, keep the history
pruned, reload, report status, and stop.

Signal handlers only set flags and wake the reactor (`request_*`); the loop
acts on them at a known point. Everything slow happens elsewhere: owner
lookups in the lookup worker, the journal in its writer thread, replies in
bounded slices on the control connections. So the loop's turns are short,
and the watchdog pings come from it: if it hangs, they stop, and systemd
restarts the daemon. A pass that waits for owners longer than
`LOOKUP_STUCK_S` stops the pings too: a lookup stuck in the kernel (a
process on a dead mount) is a hang the watchdog should see.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from portwatchd import __version__
from portwatchd.config import Config
from portwatchd.engine import Engine
from portwatchd.log import EventLog
from portwatchd.model import (
    PRIORITY_ERR,
    PRIORITY_INFO,
    PRIORITY_WARNING,
    Detection,
    Event,
    Loss,
    rfc3339,
    utc_now,
)
from portwatchd.notify import Notifier, watchdog_interval
from portwatchd.outputs.journal_writer import JournalWriter
from portwatchd.outputs.metrics import MetricsError, TextfileWriter, render_metrics
from portwatchd.reactor import Reactor
from portwatchd.realtime import RealTime
from portwatchd.reload import Control, Reloader
from portwatchd.status import EventRate, status_line, status_report

# The daemon's exit statuses that the loop itself can end with.
EXIT_OK = 0
EXIT_FAILURE = 1
HEARTBEAT_S = 30.0
RELOAD_SPACING_S = 1.0
STORE_RETRY_S = 5.0
PRUNE_EVERY_S = 5.0
LOOKUP_STUCK_S = 10.0
JOURNAL_FLUSH_AT_STOP_S = 2.0
# The poll when `interval` is "auto": a safety net while the kernel's
# notices report closes and new programs, the only way to see changes when not.
SAFETY_NET_POLL_S = 5.0
DEFAULT_POLL_S = 1.0
# How often the metrics textfile is rewritten; node_exporter reads it when scraped.
METRICS_EVERY_S = 15.0


class Runner:
    def __init__(
        self,
        config: Config,
        *,
        engine: Engine,
        log: EventLog,
        writer: JournalWriter,
        reloader: Reloader,
        notifier: Notifier,
        reactor: Reactor,
        realtime: RealTime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.engine = engine
        self.log = log
        self.writer = writer
        self.reloader = reloader
        self.notifier = notifier
        self.reactor = reactor
        self.realtime = realtime
        self._monotonic = monotonic
        self._now = wall_clock
        self._started = monotonic()
        self._stop = False
        self._reload = False
        self._next_reload = 0.0  # reloads are spaced: a SIGHUP storm is a few reloads
        self._rescan = False
        # A look a kernel notice asked for (an exec's follow-up, an overrun).
        self._look: Detection | None = None
        self._delivery_due = False  # events appended since the last reactor pass
        self._reload_waiters: list[Callable[[dict[str, Any]], None]] = []
        self._next_scan = 0.0
        # A quarter of WATCHDOG_USEC rather than sd_watchdog_enabled(3)'s
        # half: a turn that runs long (a 50,000-socket pass) then still
        # leaves no gap between pings longer than half the timeout.
        half = watchdog_interval()
        self._watchdog_every = half / 2 if half is not None else None
        self._next_ping = 0.0
        self._next_heartbeat = self._started + HEARTBEAT_S
        self._next_prune = self._started
        self.event_rate = EventRate(monotonic)
        self._last_status_line = ""
        self._store_error_said: str | None = None
        self._metrics_file: TextfileWriter | None = None
        self._metrics_error_said: str | None = None
        self._next_metrics = self._started
        self.set_metrics_textfile(config.metrics_textfile)
        log.subscribe(self._appended)

    # -- the signal side: record and wake -----------------------------------

    def request_reload(self, done: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Reload at the next turn; `done` gets the outcome (portwatchctl reload)."""
        self._reload = True
        if done is not None:
            self._reload_waiters.append(done)
        self.reactor.wake()

    def request_stop(self) -> None:
        self._stop = True
        self.reactor.wake()

    def request_rescan(self) -> None:
        self._rescan = True
        self.reactor.wake()

    def request_look(self, detected: Detection) -> None:
        """Look at every socket at the next turn (from the loop thread)."""
        if self._look != "scan":  # a full look for an overrun covers an exec's
            self._look = detected

    # -- the loop ------------------------------------------------------------

    def run(self, control: Control) -> int:
        """Run until asked to stop; returns the exit status."""
        for loss in self.log.losses(self.log.journaled_seq, self.log.last_seq):
            self.writer.loss(loss)  # found at start: no subscriber heard of it
        self.writer.feed()  # what the last run did not get journaled
        if self.realtime is not None:
            # Subscribed before the first look: nothing closes unseen between.
            self.realtime.start(self)
        self.engine.step()
        while self.engine.waiting_since is not None and not self._stop:
            self._turn(0.1)  # the first pass's owners: the baseline names them
        if self.realtime is not None:
            self.realtime.sync_namespaces()  # the namespaces the first look found
        try:
            control.start()
        except OSError as err:
            self.writer.say(PRIORITY_ERR, f"cannot listen on {self.config.socket.path}: {err}")
            self._shutdown()
            return EXIT_FAILURE
        self.reloader.control = control
        self.notifier.ready(self.status_line())
        self.writer.say(
            PRIORITY_INFO,
            f"portwatchd {__version__} ready: {self.status_line()}; "
            f"control socket {self.config.socket.path}",
        )
        self._next_scan = self._monotonic() + self.poll_interval
        self._next_heartbeat = self._monotonic()  # alive from now: dates a crash's downtime
        # What start-up made (modules, classes, the first snapshot) lives as
        # long as the daemon. A full collection would walk it every time, a
        # pause of about 7 ms in the loop; frozen, it is never walked again.
        gc.freeze()
        while not self._stop:
            self._turn(self._until_due())
            if self._reload and self._monotonic() >= self._next_reload:
                self._do_reload()
            due = self._rescan or self._look is not None or self._monotonic() >= self._next_scan
            if due and self._scan():
                self._rescan = False
            self._deliver()
            self._housekeeping()
        self._shutdown()
        return EXIT_OK

    def _turn(self, timeout: float) -> None:
        self.reactor.run_once(max(0.0, timeout))
        self._deliver()
        self._ping_if_due()

    def _deliver(self) -> None:
        """What was just appended goes to follow clients first: one more
        reactor pass, in which their connections write. Then to the journal
        writer, whose thread would otherwise take the GIL from that pass,
        and only then the turn's bookkeeping (the heartbeat waits for the disk)."""
        if self._delivery_due:
            self._delivery_due = False
            self.reactor.run_once(0.0)
            self.writer.feed()

    def _until_due(self) -> float:
        # While a pass waits for its owners no scan is due: its continuation
        # comes through the reactor and wakes it. Counting the scan as due
        # would spin the loop against the lookup worker.
        scan_possible = self.engine.waiting_since is None
        if self._stop or ((self._rescan or self._look is not None) and scan_possible):
            return 0.0
        due = min(self._next_heartbeat, self._next_prune, self._next_metrics)
        if self._reload:
            due = min(due, self._next_reload)
        if scan_possible:
            due = min(due, self._next_scan)
        if self._watchdog_every is not None:
            due = min(due, self._next_ping)
        return due - self._monotonic()

    def _scan(self) -> bool:
        # A scan of tens of thousands of sockets can take most of a second:
        # ping first when half the ping interval has passed, so the turn
        # that scans cannot stretch a gap between pings past half the timeout.
        self._ping_if_due(early=0.5)
        started = self._monotonic()
        polled = self._rescan or started >= self._next_scan
        detected: Detection = "scan" if polled or self._look is None else self._look
        if not self.engine.step(detected):
            return False  # the last pass still waits for owners: its continuation comes first
        self._look = None
        if polled:
            self._next_scan = started + self.poll_interval
        if self.realtime is not None:
            self.realtime.looked()
            self.realtime.sync_namespaces()
        return True

    def uptime(self) -> float:
        return self._monotonic() - self._started

    @property
    def poll_interval(self) -> float:
        return self.interval_for(self.config.interval)

    def interval_for(self, interval: float | None) -> float:
        """The seconds between full looks that `interval` means here."""
        if interval is not None:
            return interval
        realtime = self.realtime
        if realtime is not None and all(s == "active" for s in realtime.status().values()):
            return SAFETY_NET_POLL_S
        return DEFAULT_POLL_S

    def reschedule(self, old_interval: float, new_interval: float) -> None:
        """A new interval counts from the last scan: a shorter one applies
        now, not after the old one runs out."""
        self._next_scan += new_interval - old_interval

    def _ping_if_due(self, early: float = 0.0) -> None:
        """WATCHDOG=1 when due, or when `early` (a share of the interval)
        of the wait is left, before a turn that may run long."""
        if self._watchdog_every is None:
            return
        now = self._monotonic()
        waiting = self.engine.waiting_since
        if waiting is not None and now - waiting > LOOKUP_STUCK_S:
            return
        if now >= self._next_ping - early * self._watchdog_every:
            self.notifier.watchdog()
            self._next_ping = now + self._watchdog_every

    def _housekeeping(self) -> None:
        now = self._monotonic()
        if now >= self._next_heartbeat:
            # The heartbeat is also what retries a failing store: sooner then.
            self.log.heartbeat(rfc3339(self._now()))
            failing = self.log.store_error is not None
            self._next_heartbeat = now + (STORE_RETRY_S if failing else HEARTBEAT_S)
        if now >= self._next_prune:
            more = self.log.prune_step(self._now())
            self._next_prune = now + (0.0 if more else PRUNE_EVERY_S)
        if now >= self._next_metrics:
            self._next_metrics = now + METRICS_EVERY_S
            self._write_metrics()
        self._say_store_transitions()
        line = self.status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.status(line)

    def set_metrics_textfile(self, path: str) -> None:
        self._metrics_file = TextfileWriter(path) if path else None
        self._next_metrics = self._monotonic()

    def metrics_text(self) -> str:
        """The Prometheus text exposition of what status reports."""
        return render_metrics(self.status(), self.engine.ports())

    def _write_metrics(self) -> None:
        if self._metrics_file is None:
            return
        try:
            self._metrics_file.write(self.metrics_text())
        except MetricsError as err:
            if str(err) != self._metrics_error_said:
                self.writer.say(PRIORITY_WARNING, str(err))
            self._metrics_error_said = str(err)
        else:
            self._metrics_error_said = None

    def _say_store_transitions(self) -> None:
        """One journal line when the store starts failing and one when it
        works again: an outage is one warning, not one per batch."""
        error = self.log.store_error
        if error == self._store_error_said:
            return
        if error is None:
            self.writer.say(PRIORITY_INFO, "the event store works again; held events are stored")
        elif self._store_error_said is None:
            self.writer.say(
                PRIORITY_ERR,
                f"the event store fails, events are kept in memory and still journaled: {error}",
            )
        self._store_error_said = error

    def _appended(self, items: Any) -> None:
        events = [item for item in items if isinstance(item, Event)]
        for item in items:
            if isinstance(item, Loss):
                self.writer.loss(item)
        self._delivery_due = True
        if events:
            # The heartbeat right after delivery makes them survive a power
            # loss (EventLog: appends do not wait for the disk), and after a
            # crash "down since" is no earlier than the last event.
            self._next_heartbeat = self._monotonic()
            self.event_rate.count(len(events))

    # -- reload and stop ---------------------------------------------------------

    def _do_reload(self) -> None:
        # Every SIGHUP before this point is this one reload, and those that
        # come during it or within RELOAD_SPACING_S after it are one more.
        self._reload = False
        self._next_reload = self._monotonic() + RELOAD_SPACING_S
        waiters, self._reload_waiters = self._reload_waiters, []
        self.notifier.reloading()
        outcome = self.reloader.reload(self)
        self.notifier.ready(self.status_line())
        for done in waiters:
            done(outcome)

    def _shutdown(self) -> None:
        """The written order: tell systemd, stop accepting clients, flush the
        journal as far as it takes it, close the store, release the rest."""
        self.notifier.stopping("stopping")
        self._deliver()
        self.reloader.control.close()
        self.writer.say(PRIORITY_INFO, "stopped")
        self.writer.close(JOURNAL_FLUSH_AT_STOP_S)
        if self.realtime is not None:
            self.realtime.close()
        self.engine.close()
        self.log.close()

    # -- what status reports ---------------------------------------------------

    def status(self) -> dict[str, Any]:
        return status_report(self)

    def status_line(self) -> str:
        return status_line(self)
