"""The loop: scan, diff, resolve owners, emit, persist, ping.

Signal handlers only record a request and wake the loop (`request_reload`,
`request_stop`); the loop does the work, so reload and shutdown run at a
known point and tests can call the handlers directly.

Delivery order for a batch of events, chosen so that a crash at any point
loses nothing: the state file is written first with the new events marked
"not yet journaled", then the events go to the journal, then the state is
written again marking them journaled. A restart re-sends whatever is still
marked pending (same PORT_EVENT_ID, so consumers can drop the duplicate),
and a journal that refuses events leaves them pending too: each scan
retries them, oldest first.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from portwatchd import __version__
from portwatchd.config import Config, ConfigError
from portwatchd.control import ControlServer
from portwatchd.diff import Change, Snapshot, diff_snapshots, snapshot_of
from portwatchd.model import UNKNOWN_OWNER, Detection, Endpoint, Event, Owner
from portwatchd.notify import Notifier, watchdog_interval
from portwatchd.outputs.journal import (
    MESSAGE_ID_RELOAD_REFUSED,
    PRIORITY_ERR,
    PRIORITY_INFO,
    PRIORITY_WARNING,
    Sink,
)
from portwatchd.protocol import EventQuery
from portwatchd.reactor import Reactor
from portwatchd.ring import EventRing
from portwatchd.sources.base import ScanError, Scanner
from portwatchd.sources.choose import open_scanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.state import STATE_FILE, State, StateError, load_state, save_state

# The state file's mtime is touched this often, so that after a crash the
# "down since" of startup events is at most this far off.
HEARTBEAT_S = 30.0
HOUR_S = 3600.0
# An opened port whose owner needs a /proc walk that the resolver's rate
# limit defers by at most this long waits for it: "by nginx[1234]" a second
# late beats "by unknown process" on time.
OWNER_WAIT_MAX_S = 2.0
# A /proc walk is cut after its budget (0.5 s); one still running after this
# long is stuck in the kernel, and the watchdog should see it.
WALK_STUCK_S = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def counted(count: int, noun: str) -> str:
    """ "1 port", "12 ports"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def rfc3339(moment: datetime) -> str:
    """UTC, RFC 3339 with microseconds: 2026-11-25T14:20:31.123456Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    time: str
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "ok": self.ok, "error": self.error}


class Service:
    """One portwatchd: owns the scanner, the snapshot, the ring and the sinks."""

    def __init__(
        self,
        config: Config,
        *,
        sink: Sink,
        notifier: Notifier,
        reload_config: Callable[[], Config],
        reactor: Reactor,
        scanner_factory: Callable[[str], Scanner] | None = None,
        resolver: OwnerResolver | None = None,
        inherited_socket: Any = None,
        wall_clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._sink = sink
        self._notifier = notifier
        self._reload_config = reload_config
        self._reactor = reactor
        self._scanner_factory = scanner_factory or self._open_scanner
        self._resolver = resolver or OwnerResolver()
        self._inherited_socket = inherited_socket
        self._now = wall_clock
        self._monotonic = monotonic

        self._ring = EventRing(config.ring_size)
        self._snapshot: Snapshot = {}
        self._last_endpoints: list[Endpoint] = []
        self._owners: dict[str, Owner] = {}
        self._seq = 0
        self._journaled_seq = 0
        # Events per minute over the last hour, as [minute, count]: bounded
        # at 61 entries however many ports churn.
        self._recent: deque[list[int]] = deque()
        self._events_total = 0

        self._scanner: Scanner | None = None
        self._control: ControlServer | None = None
        self._stop_requested = False
        self._reload_requested = False
        self._rescan_requested = False

        self._started_mono = monotonic()
        self._next_scan = 0.0
        self._watchdog_every = watchdog_interval()
        self._next_ping = 0.0
        self._next_heartbeat = self._started_mono + HEARTBEAT_S
        self._last_scan_time: str | None = None
        self._last_scan_ms: float | None = None
        self._scan_error: str | None = None
        self._last_reload: ReloadResult | None = None
        self._journal_error: str | None = None
        # state_dir changes apply at restart only: keep the one we started with.
        self._state_dir = config.state_dir
        self._state_file = os.path.join(config.state_dir, STATE_FILE)
        self._state_touched_at: str | None = None

    # -- signal side: record and wake, nothing more -------------------------

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wakeup()

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wakeup()

    def request_rescan(self) -> None:
        self._rescan_requested = True
        self._wakeup()

    def _wakeup(self) -> None:
        self._reactor.wake()

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        """Run until asked to stop; returns the process exit status."""
        startup_state = self._restore_state()
        try:
            self._scanner = self._scanner_factory(self.config.backend)
            endpoints = self._scanner.scan()
        except (ScanError, OSError) as err:
            self._log(PRIORITY_ERR, f"cannot scan listening sockets: {err}")
            return 1
        self._first_batch(endpoints, startup_state)

        self._control = self._control_server(self.config, inherited=self._inherited_socket)
        try:
            self._control.start()
        except OSError as err:
            self._log(PRIORITY_ERR, f"cannot listen on {self.config.socket.path}: {err}")
            self._close_scanner()
            return 1

        self._notifier.ready(self.status_line())
        self._log(
            PRIORITY_INFO,
            f"portwatchd {__version__} ready: {self.status_line()}; "
            f"control socket {self.config.socket.path}",
        )
        self._next_ping = self._monotonic()
        self._ping_if_due()

        while not self._stop_requested:
            self._sleep_until_due()
            if self._stop_requested:
                break
            if self._reload_requested:
                self._reload()
            if self._rescan_requested or self._monotonic() >= self._next_scan:
                self._scan_once()
            self._ping_if_due()
            self._heartbeat_if_due()

        self._shutdown()
        return 0

    def _sleep_until_due(self) -> None:
        """Serve the control socket until a scan or a ping is due, or a
        signal or a client asks for something."""
        deadline = self._next_scan
        if self._watchdog_every is not None:
            deadline = min(deadline, self._next_ping)
        while not (self._stop_requested or self._reload_requested or self._rescan_requested):
            timeout = deadline - self._monotonic()
            if timeout <= 0:
                return
            self._reactor.run_once(timeout)

    def _control_server(self, config: Config, inherited: Any = None) -> ControlServer:
        return ControlServer(
            self,
            self._reactor,
            path=config.socket.path,
            group=config.socket.group,
            mode=config.socket.mode,
            max_clients=config.socket.max_clients,
            idle_timeout=config.socket.idle_timeout,
            inherited=inherited,
            log=lambda message: self._log(PRIORITY_WARNING, message),
        )

    def _ping_if_due(self) -> None:
        """WATCHDOG=1 only from this loop: if the loop hangs, pings stop and
        systemd restarts us. A side thread would keep pinging a stuck loop."""
        if self._watchdog_every is None:
            return
        now = self._monotonic()
        if now >= self._next_ping:
            self._notifier.watchdog()
            self._next_ping = now + self._watchdog_every

    def _heartbeat_if_due(self) -> None:
        now = self._monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_S
        with contextlib.suppress(OSError):  # no state yet: the next batch writes it
            os.utime(self._state_file)

    # -- scanning ------------------------------------------------------------

    def _open_scanner(self, backend: str) -> Scanner:
        return open_scanner(backend, log=lambda message: self._log(PRIORITY_WARNING, message))

    def _scan_once(self) -> None:
        assert self._scanner is not None
        self._rescan_requested = False
        started = self._monotonic()
        self._next_scan = started + self.config.interval
        try:
            endpoints = self._scanner.scan()
        except ScanError as err:
            self._scan_failed(err)
            return
        if self._scan_error is not None:
            self._log(PRIORITY_INFO, f"scanning works again after: {self._scan_error}")
            self._scan_error = None
        # Most scans find what the last one did. The netlink scanner hands
        # back the very same Endpoint objects for unchanged replies, so this
        # is a pass of identity checks, and the idle daemon skips the diff.
        if endpoints != self._last_endpoints:
            current = snapshot_of(endpoints)
            changes = diff_snapshots(self._snapshot, current)
            events = self._events_for(changes, current, detected="scan") if changes else []
            self._forget_departed(current)
            # Always take the new snapshot: a socket joining a SO_REUSEPORT
            # group is no event, but the next diff must know it.
            self._snapshot = current
            self._last_endpoints = endpoints
            if changes:
                self._deliver(events)  # persists the snapshot even if all were ignored
        self._retry_unknown_owners()
        if self._journaled_seq < self._seq:
            self._journal_pending()
        self._last_scan_time = rfc3339(self._now())
        self._last_scan_ms = (self._monotonic() - started) * 1000
        self._notifier.status(self.status_line())

    def _forget_departed(self, current: Snapshot) -> None:
        """Sockets that left without their key closing (a SO_REUSEPORT
        hand-over, as in a hot restart of haproxy): the resolver forgets
        them, and a key whose first socket changed is looked up again, so
        `ports` and the eventual "closed" name the process holding it now."""
        departed = []
        for key, sockets in self._snapshot.items():
            still = current.get(key)
            if still is None:
                continue  # closed: _events_for took care of it
            inodes = {endpoint.inode for endpoint in still}
            departed += [endpoint.inode for endpoint in sockets if endpoint.inode not in inodes]
            if still[0].inode != sockets[0].inode:
                self._owners.pop(key, None)
        if departed:
            self._resolver.forget(departed)

    def _scan_failed(self, err: ScanError) -> None:
        message = str(err)
        if message != self._scan_error:
            self._log(PRIORITY_ERR, f"scan failed, keeping the last snapshot: {message}")
        self._scan_error = message
        self._notifier.status(self.status_line())

    def _first_batch(self, endpoints: list[Endpoint], state: State | None) -> None:
        self._last_endpoints = endpoints
        current = snapshot_of(endpoints)
        if state is None:
            # A fresh install: the first scan is the baseline, not news.
            self._snapshot = current
            self._resolve_keys(current.keys())
            self._persist()
            self._log(
                PRIORITY_INFO,
                f"baseline: watching {counted(len(current), 'listening port')}; "
                "changes from now on are reported",
            )
            return
        changes = diff_snapshots(self._snapshot, current)
        down_since = max(state.saved_at, self._state_touched_at or state.saved_at)
        events = self._events_for(changes, current, detected="startup", down_since=down_since)
        self._forget_departed(current)
        self._snapshot = current
        self._resolve_keys(key for key in current if key not in self._owners)
        if events:
            self._log(
                PRIORITY_INFO,
                f"{counted(len(events), 'change')} happened while portwatchd was not running "
                f"(since {down_since})",
            )
        self._deliver(events)

    # -- owners --------------------------------------------------------------

    def _events_for(
        self,
        changes: Sequence[Change],
        current: Snapshot,
        *,
        detected: Detection,
        down_since: str | None = None,
    ) -> list[Event]:
        opened_keys = [c.endpoint.key for c in changes if c.type == "opened"]
        closed = [c for c in changes if c.type == "closed"]
        closed_owners = {
            c.endpoint.key: self._owners.pop(c.endpoint.key, UNKNOWN_OWNER) for c in closed
        }
        self._resolver.forget(
            [ep.inode for c in closed for ep in self._snapshot.get(c.endpoint.key, (c.endpoint,))]
        )
        new_owners = self._resolve_keys(opened_keys, current)
        moment = rfc3339(self._now())
        events: list[Event] = []
        for change in changes:
            key = change.endpoint.key
            owner = (
                closed_owners[key]
                if change.type == "closed"
                else new_owners.get(key, UNKNOWN_OWNER)
            )
            if self.config.is_ignored(change.endpoint, owner):
                continue
            self._seq += 1
            events.append(
                Event(
                    seq=self._seq,
                    id=str(uuid.uuid4()),
                    type=change.type,
                    time=moment,
                    endpoint=change.endpoint,
                    owner=owner,
                    detected=detected,
                    down_since=down_since,
                )
            )
        return events

    def _resolve_keys(
        self, keys: Iterable[str], snapshot: Snapshot | None = None
    ) -> dict[str, Owner]:
        """Owners for these keys, found by the sockets' inodes. The cheap
        lookup runs here; a full /proc walk, if needed, runs in a worker
        thread while this loop keeps pinging the watchdog."""
        snapshot = self._snapshot if snapshot is None else snapshot
        keys = list(keys)
        if not self.config.owners or not keys:
            return {}
        inode_of = {key: snapshot[key][0].inode for key in keys if key in snapshot}
        try:
            found = self._resolver.resolve_new(inode_of.values())
            missing = [inode for inode in inode_of.values() if inode not in found]
            if missing:
                due_in = self._resolver.walk_due_in(missing)
                if due_in is not None and due_in <= OWNER_WAIT_MAX_S:
                    self._pause(due_in)
                    found.update(self._off_loop(self._resolver.resolve_walk, missing))
        except Exception as err:
            # EMFILE, EIO or a bug in the walk: the owners stay unknown
            # (never guessed), the events still go out.
            self._log(PRIORITY_ERR, f"owner lookup failed, reporting owners unknown: {err!r}")
            found = {}
        owners = {key: found.get(inode, UNKNOWN_OWNER) for key, inode in inode_of.items()}
        self._owners.update({key: owner for key, owner in owners.items() if owner.known})
        return owners

    def _retry_unknown_owners(self) -> None:
        """Ports whose owner was not found yet get another look whenever the
        resolver's rate limit and back-off allow a walk for them."""
        if not self.config.owners:
            return
        unknown = {
            key: sockets[0].inode
            for key, sockets in self._snapshot.items()
            if key not in self._owners
        }
        if unknown and self._resolver.walk_due_in(unknown.values()) == 0:
            self._resolve_keys(unknown)

    def _pause(self, seconds: float) -> None:
        """Wait, serving clients and pinging the watchdog meanwhile."""
        self._serve_until(lambda: False, deadline=self._monotonic() + seconds)

    def _serve_until(
        self,
        done: Callable[[], bool],
        *,
        deadline: float = math.inf,
        ping_until: float = math.inf,
    ) -> None:
        """Serve clients until `done()` or `deadline`, pinging the watchdog
        on time until `ping_until`."""
        while not done() and (left := deadline - self._monotonic()) > 0:
            self._reactor.run_once(self._ping_step(min(left, 1.0)))
            if self._monotonic() < ping_until:
                self._ping_if_due()

    def _ping_step(self, limit: float) -> float:
        if self._watchdog_every is None:
            return limit
        return max(0.0, min(limit, self._next_ping - self._monotonic()))

    def _off_loop(
        self, work: Callable[[Collection[int]], dict[int, Owner]], inodes: Collection[int]
    ) -> dict[int, Owner]:
        """Run a /proc walk in a worker thread; this loop keeps serving
        clients and pinging the watchdog until it is done."""
        result: dict[int, Owner] = {}
        failure: list[BaseException] = []
        done = threading.Event()

        def walk() -> None:
            try:
                result.update(work(inodes))
            except BaseException as err:  # handed to the loop thread
                failure.append(err)
            finally:
                done.set()  # before the wake-up, so the loop sees it when it wakes
                self._reactor.wake()

        threading.Thread(target=walk, name="owners", daemon=True).start()
        # A walk is cut by its budget; one that runs far past it is stuck
        # (reading /proc/PID/cmdline of a process stuck on a dead mount
        # blocks): stop pinging, and let systemd's watchdog restart us.
        self._serve_until(done.is_set, ping_until=self._monotonic() + WALK_STUCK_S)
        if failure:
            raise failure[0]
        return result

    # -- delivery ------------------------------------------------------------

    def _deliver(self, events: list[Event]) -> None:
        if not events:
            self._persist()
            return
        self._ring.extend(events)
        self._persist()  # write-ahead: the events exist before anyone hears of them
        self._journal_pending(events)
        minute = int(self._monotonic() // 60)
        if self._recent and self._recent[-1][0] == minute:
            self._recent[-1][1] += len(events)
        else:
            self._recent.append([minute, len(events)])
        self._events_total += len(events)
        if self._control is not None:
            self._control.publish(events)

    def _restore_state(self) -> State | None:
        try:
            # The heartbeat keeps the mtime fresh: after a crash it says when
            # we were last alive, later than the last save.
            mtime = os.stat(self._state_file).st_mtime
            self._state_touched_at = rfc3339(datetime.fromtimestamp(mtime, UTC))
        except OSError:
            self._state_touched_at = None
        state, warning = load_state(self._state_dir)
        if warning:
            self._log(PRIORITY_WARNING, warning)
        if state is None:
            return None
        self._seq = state.last_seq
        self._journaled_seq = state.journaled_seq
        self._ring.extend(state.ring)
        # The saved snapshot stands until the first scan replaces it: a
        # state write before then (re-sending pending events) must keep it.
        self._snapshot = snapshot_of(endpoint for endpoint, _ in state.snapshot)
        self._owners = {endpoint.key: owner for endpoint, owner in state.snapshot if owner.known}
        if self._seq > self._journaled_seq:
            # The last run stopped between writing these and journaling them.
            self._log(
                PRIORITY_WARNING,
                f"re-sending {counted(self._seq - self._journaled_seq, 'event')} that may not "
                "have reached the journal before portwatchd stopped",
            )
            self._journal_pending()
        return state

    def _journal_pending(self, fresh: Sequence[Event] = ()) -> None:
        """Send every event not yet known to be in the journal, oldest first:
        those still pending from earlier (kept in the ring), then `fresh`,
        the batch just made, which may be larger than the ring.

        A send that fails (journald restarting, say) leaves the rest
        pending: the next scan tries again, and the state file remembers
        them across a restart."""
        first_fresh = fresh[0].seq if fresh else self._seq + 1
        older = []
        if self._journaled_seq < first_fresh - 1:
            older = [
                event
                for event in self._ring.query(after_seq=self._journaled_seq)
                if event.seq < first_fresh
            ]
        pending = [*older, *fresh]
        sent_before = self._journaled_seq
        for event in pending:
            try:
                self._sink.event(event)
            except OSError as err:
                if self._journal_error is None:
                    _emergency(f"cannot journal events, keeping them pending: {err}")
                self._journal_error = str(err)
                break
            except ValueError as err:
                # This event cannot be encoded, now or ever: retrying would
                # block every event behind it. It stays in the ring.
                self._log(PRIORITY_ERR, f"cannot journal event {event.seq}, skipping it: {err}")
            self._journaled_seq = event.seq
        else:
            if self._journal_error is not None:
                self._journal_error = None
                self._log(PRIORITY_INFO, "journaling works again; pending events sent")
            lost_to = pending[0].seq - 1 if pending else self._seq
            if lost_to > sent_before:
                # Still pending when the ring (and so the state file) let
                # them go: only a long journald outage gets here.
                self._log(
                    PRIORITY_ERR,
                    f"events {sent_before + 1} to {lost_to} left the ring before they "
                    "could be journaled",
                )
            self._journaled_seq = self._seq
        if self._journaled_seq != sent_before:
            self._persist()

    def _persist(self) -> None:
        state = State(
            last_seq=self._seq,
            journaled_seq=self._journaled_seq,
            snapshot=[
                (endpoint, self._owners.get(key, UNKNOWN_OWNER))
                for key, sockets in self._snapshot.items()
                for endpoint in sockets
            ],
            ring=self._ring.events(),
            saved_at=rfc3339(self._now()),
        )
        try:
            save_state(self._state_dir, state)
        except StateError as err:
            self._log(PRIORITY_ERR, str(err))

    # -- reload and shutdown -------------------------------------------------

    def _reload(self) -> None:
        # Several SIGHUPs before we get here are one reload.
        self._reload_requested = False
        self._notifier.reloading()
        moment = rfc3339(self._now())
        try:
            new = self._reload_config()
        except ConfigError as err:
            self._last_reload = ReloadResult(moment, False, str(err))
            self._log(
                PRIORITY_ERR,
                f"configuration reload refused, still running with the previous one: {err}",
                MESSAGE_ID=MESSAGE_ID_RELOAD_REFUSED,
            )
            self._notifier.ready(self.status_line())
            return
        old = self.config
        self.config = new
        if new.interval != old.interval:
            # Reschedule from the last scan: a shorter interval applies now,
            # not after the old one runs out.
            self._next_scan = self._next_scan - old.interval + new.interval
        if new.ring_size != old.ring_size:
            self._ring.resize(new.ring_size)
        if new.backend != old.backend and not self._replace_scanner(new.backend):
            self.config = replace(self.config, backend=old.backend)
        if new.socket != old.socket and self._inherited_socket is not None:
            self.config = replace(new, socket=old.socket)
            self._log(
                PRIORITY_WARNING,
                "[socket] changes do not apply: systemd passes the control socket "
                "(portwatchd.socket sets its path, group and mode)",
            )
        elif new.socket != old.socket and self._control is not None:
            error = self._rebind_control(old, new)
            if error is not None:
                self.config = replace(new, socket=old.socket)
                self._last_reload = ReloadResult(moment, False, error)
                self._log(PRIORITY_ERR, f"configuration reload: {error}")
                self._notifier.ready(self.status_line())
                return
        ignored = [
            key
            for key in ("state_dir", "log_target", "log_format")
            if getattr(new, key) != getattr(old, key)
        ]
        if ignored:
            self._log(PRIORITY_WARNING, f"{', '.join(ignored)}: changes apply at the next restart")
        self._last_reload = ReloadResult(moment, True)
        self._log(PRIORITY_INFO, f"configuration reloaded: {self.status_line()}")
        self._notifier.ready(self.status_line())

    def _rebind_control(self, old: Config, new: Config) -> str | None:
        """Move the control socket to the new [socket] settings; if that
        fails, go back to the old ones and say why."""
        assert self._control is not None
        self._control.close()
        self._control = self._control_server(new)
        try:
            self._control.start()
        except OSError as err:
            self._control = self._control_server(old)
            try:
                self._control.start()
            except OSError as again:
                return (
                    f"cannot listen on {new.socket.path} ({err}) nor again on "
                    f"{old.socket.path} ({again}); portwatchctl cannot reach this daemon"
                )
            return f"cannot listen on {new.socket.path}: {err}; keeping {old.socket.path}"
        return None

    def _replace_scanner(self, backend: str) -> bool:
        try:
            scanner = self._scanner_factory(backend)
        except (ScanError, OSError) as err:
            self._log(PRIORITY_ERR, f"cannot switch to backend {backend}: {err}")
            return False
        if self._scanner is not None:
            self._scanner.close()
        self._scanner = scanner
        return True

    def _shutdown(self) -> None:
        """The written order: tell systemd, stop accepting clients, persist
        what we know, release the rest."""
        self._notifier.stopping("stopping")
        if self._control is not None:
            self._control.close()
        self._persist()
        self._close_scanner()
        self._log(PRIORITY_INFO, "stopped")

    def _close_scanner(self) -> None:
        if self._scanner is not None:
            self._scanner.close()

    # -- what the control socket asks ---------------------------------------

    def query_events(self, query: EventQuery) -> list[Event]:
        return self._ring.query(
            after_seq=query.after_seq,
            since=query.since,
            limit=query.limit,
            type=query.type,
            proto=query.proto,
            port=query.port,
        )

    def oldest_seq(self) -> int | None:
        return self._ring.oldest_seq

    def last_seq(self) -> int:
        return self._seq

    def current_ports(self) -> list[tuple[Endpoint, Owner]]:
        return [
            (endpoint, self._owners.get(key, UNKNOWN_OWNER))
            for key, sockets in sorted(self._snapshot.items())
            for endpoint in sockets
        ]

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(self._monotonic() - self._started_mono, 3),
            "interval_s": self.config.interval,
            "backend": self._scanner.name if self._scanner is not None else None,
            "owners": self.config.owners,
            "ports_watched": len(self._snapshot),
            "events_total": self._events_total,
            "events_last_hour": self._events_last_hour(),
            "last_seq": self._seq,
            "ring_size": len(self._ring),
            "ring_capacity": self._ring.capacity,
            "last_scan_time": self._last_scan_time,
            "last_scan_duration_ms": (
                round(self._last_scan_ms, 3) if self._last_scan_ms is not None else None
            ),
            "scan_error": self._scan_error,
            "journal_error": self._journal_error,
            "config_path": self.config.source,
            "state_dir": self._state_dir,
            "last_reload": self._last_reload.to_dict() if self._last_reload else None,
        }

    def status_line(self) -> str:
        """STATUS= text: "watching 12 ports every 1s; 3 events in the last hour"."""
        line = (
            f"watching {counted(len(self._snapshot), 'port')} every {self.config.interval:g}s; "
            f"{counted(self._events_last_hour(), 'event')} in the last hour"
        )
        if self._scan_error:
            line += f"; scan failing: {self._scan_error}"
        if self._journal_error:
            line += f"; journal failing, {self._seq - self._journaled_seq} events pending"
        if self._last_reload is not None and not self._last_reload.ok:
            line += f"; reload refused: {self._last_reload.error}"
        return line

    def _events_last_hour(self) -> int:
        """Events in the last hour, to the minute."""
        horizon = int((self._monotonic() - HOUR_S) // 60)
        while self._recent and self._recent[0][0] <= horizon:
            self._recent.popleft()
        return sum(count for _, count in self._recent)

    def _log(self, priority: int, message: str, **fields: str) -> None:
        try:
            self._sink.log(priority, message, **fields)
        except OSError as err:
            _emergency(f"{message} (and the log failed: {err})")


def _emergency(message: str) -> None:
    """Last resort when the sink itself fails: stderr, which systemd keeps
    even when journald is being restarted."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"<{PRIORITY_ERR}>portwatchd: {message}\n")
        sys.stderr.flush()
