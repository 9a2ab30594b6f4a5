"""The pipeline's one pass: scan, diff, owners, classify, append to the log.

`step()` is the public tick that the daemon's loop and the tests drive. It
never waits: the owners of new sockets are looked up by an `OwnerLookup`
(a worker thread in the daemon), whose result comes back as a continuation,
`_finish_pass`; until it does, further steps do nothing, so passes are
appended to the log in scan order. The engine holds the last snapshot and an
owner per socket; the event log holds everything durable.

Only the loop thread touches an Engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from portwatchd.classify import Judge, RestartWindow, classify, owner_changes, transient_drafts
from portwatchd.cookies import CookieIndex
from portwatchd.diff import Snapshot, diff_snapshots, snapshot_of
from portwatchd.log import EventLog
from portwatchd.lookup import LookupResult, OwnerLookup, lookup_job
from portwatchd.model import (
    PRIORITY_ERR,
    PRIORITY_INFO,
    PRIORITY_WARNING,
    Detection,
    Endpoint,
    Owner,
    rfc3339,
    utc_now,
)
from portwatchd.ownerbook import OwnerBook
from portwatchd.passes import Chunk, Confirmation, EngineStats, Pass, chunks_of, destroy_pass
from portwatchd.sources.base import ScanError, Scanner
from portwatchd.transient import DEFAULT_EPHEMERAL, PortRange, TransientBudget

Say = Callable[[int, str], None]

# How often the owners of sockets that stay are checked (the main holder
# still alive, the same program, still holding the socket: see
# OwnerResolver.recheck). A check of a few dozen holders costs well under
# a millisecond.
OWNER_RECHECK_S = 2.0


def counted(count: int, noun: str) -> str:
    """ "1 port", "12 ports"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Engine:
    def __init__(
        self,
        *,
        scanner: Scanner,
        log: EventLog,
        lookup: OwnerLookup,
        judge: Judge,
        say: Say,
        owners_enabled: bool = True,
        restart_grace: float = 5.0,
        owner_recheck_s: float = OWNER_RECHECK_S,
        ephemeral: PortRange = DEFAULT_EPHEMERAL,
        defer: Callable[[Callable[[], None]], None] = lambda work: work(),
        wall_clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scanner = scanner
        self.judge = judge
        self.owners_enabled = owners_enabled
        self.stats = EngineStats()
        self._log = log
        self._lookup = lookup
        self._say = say
        # Runs work at a later turn of the loop; at once by default (tests).
        self._defer = defer
        self._now = wall_clock
        self._monotonic = monotonic
        self._snapshot: Snapshot = {}
        self._sockets: dict[int, Endpoint] = {}
        self._owners = OwnerBook()
        self._restarts = RestartWindow(restart_grace)
        self._owner_recheck_s = owner_recheck_s
        self.ephemeral = ephemeral
        # Destroy messages name sockets by cookie; those that come while a
        # pass waits for owners wait for it.
        self._cookies = CookieIndex()
        self.transients = TransientBudget()
        self._held_destroys: list[Endpoint] = []
        self._last_look: float | None = None
        # Called when held destroy messages need a full look (see destroyed()).
        self.look_wanted: Callable[[], None] | None = None
        self._next_recheck_at = float("-inf")
        # Closed sockets the resolver's cache may drop, with the next job.
        self._forget: set[int] = set()
        self._last_endpoints: list[Endpoint] | None = None
        self._waiting: Pass | None = None
        self._confirmation = Confirmation(self.stats)
        self._waiting_since: float | None = None
        # The saved snapshot stands until the first scan replaces it.
        for endpoint, owner in log.sockets():
            self._sockets[endpoint.inode] = endpoint
            self._owners.put(endpoint.inode, owner)
        self._snapshot = snapshot_of(self._sockets.values())
        self._first = True

    # -- the tick ------------------------------------------------------------

    def step(self, detected: Detection = "scan") -> bool:
        """Scan once and start a pass; False when the previous pass is still
        waiting for its owners (nothing was done). `detected` says what
        asked for this look: the poll ("scan") or an exec ("exec")."""
        if self._waiting is not None:
            return False
        started = self._monotonic()
        try:
            endpoints = self.scanner.scan()
        except ScanError as err:
            self._scan_failed(str(err))
            return True
        self._last_look = started
        if self.stats.scan_error is not None:
            self._say(PRIORITY_INFO, f"scanning works again after: {self.stats.scan_error}")
            self.stats.scan_error = None
        self.stats.scans_total += 1
        # The netlink scanner hands back the very same Endpoint objects for
        # unchanged replies: an idle host's pass ends with identity checks.
        if endpoints == self._last_endpoints and not self._owners_due(started):
            self._scanned(started)
            return True
        confirmed = self._confirm_departures(endpoints)
        if confirmed is None:
            return True
        self._begin_pass(self._scan_pass(confirmed, started, detected))
        return True

    def destroyed(self, sockets: Sequence[Endpoint]) -> bool:
        """The kernel's destroy messages: sockets whose last reference is gone.

        A listener a look saw closes now, without a second look: the kernel
        itself says it is gone. A listening-shaped socket no look saw lived
        between two looks: a `transient` event. While a pass waits for its
        owners, the messages wait for it (it may hold the very sockets).

        True when only a full look can tell what closed: a message for a key
        whose sockets a source without cookies (/proc) listed.
        """
        if self._waiting is not None or self._first:
            if not self._first:
                self._held_destroys.extend(sockets)
            return False
        found = self._cookies.split(sockets, self.ephemeral)
        gone, unseen, look = found.gone, found.transients, found.look
        if not gone and not unseen:
            return look
        started = self._monotonic()
        since_look = started - self._last_look if self._last_look is not None else 0.0
        self._begin_pass(
            destroy_pass(
                self._snapshot,
                self._sockets,
                gone,
                started=started,
                transients=unseen,
                since_look_s=since_look,
            )
        )
        return look

    def _confirm_departures(self, endpoints: list[Endpoint]) -> list[Endpoint] | None:
        """The scan with departures confirmed (see Confirmation); None when
        the second look fails: the next step tries again."""
        try:
            return self._confirmation.confirm(self.scanner, endpoints, self._sockets)
        except ScanError as err:
            self._scan_failed(str(err))
            return None

    @property
    def restart_grace(self) -> float:
        return self._restarts.grace_s

    @restart_grace.setter
    def restart_grace(self, seconds: float) -> None:
        self._restarts.grace_s = seconds

    @property
    def waiting_since(self) -> float | None:
        """Monotonic time since which a pass waits for owners, None when none does."""
        return self._waiting_since

    def ports(self) -> list[tuple[Endpoint, Owner]]:
        """Every listening socket with its own owner, sorted by key."""
        return [
            (endpoint, self._owners.get(endpoint.inode))
            for key in sorted(self._snapshot)
            for endpoint in self._snapshot[key]
        ]

    @property
    def ports_watched(self) -> int:
        return len(self._snapshot)

    # -- a pass ----------------------------------------------------------------

    def _scan_pass(self, endpoints: list[Endpoint], started: float, detected: Detection) -> Pass:
        if endpoints == self._last_endpoints:  # only the owners are checked
            snapshot, sockets = self._snapshot, self._sockets
        else:
            snapshot = snapshot_of(endpoints)
            sockets = {
                endpoint.inode: endpoint for group in snapshot.values() for endpoint in group
            }
        baseline = self._first and self._log.is_new
        return Pass(
            endpoints=endpoints,
            snapshot=snapshot,
            sockets=sockets,
            changes=[] if baseline else diff_snapshots(self._snapshot, snapshot),
            detected="startup" if self._first else detected,
            started=started,
            baseline=baseline,
            new=sockets.keys() - self._sockets.keys(),
            gone=self._sockets.keys() - sockets.keys(),
        )

    def _begin_pass(self, pass_: Pass) -> None:
        started, sockets = pass_.started, pass_.sockets
        self._waiting = pass_
        self._waiting_since = started
        if not self.owners_enabled:
            self._finish_pass(LookupResult({}))
            return
        retry: set[int] = set()
        recheck = None
        # Not with destroy messages: a close is reported without a round
        # trip through the worker; the next look does the check.
        if pass_.detected != "destroy" and self._owners_due(started):
            self._next_recheck_at = started + self._owner_recheck_s
            retry = self._owners.unknown_due(sockets.keys(), started)
            recheck = self._owners.of(sockets.keys())
        if not pass_.new and not retry and not recheck:
            # Nothing to look up (a close): no round trip through the worker.
            self._forget |= pass_.gone
            self._finish_pass(LookupResult({}))
            return
        forget, self._forget = pass_.gone | self._forget, set()
        self._lookup.submit(lookup_job(pass_.new, retry, forget, recheck), self._finish_pass)

    def _owners_due(self, now: float) -> bool:
        """Time to check the owners of the sockets that stay, and to look
        again for those nobody could be seen holding."""
        return self.owners_enabled and now >= self._next_recheck_at

    def _finish_pass(self, result: LookupResult) -> None:
        """The continuation: owners are in; classify, then append in chunks."""
        pass_ = self._waiting
        if pass_ is None:
            return
        if result.error:
            self._say(PRIORITY_ERR, result.error)
        owners = {inode: self._owners.last_holder(inode) for inode in pass_.gone}
        owners.update(result.owners)
        now = self._monotonic()
        self._restarts.expire(now)
        gone = self.scanner.gone_namespaces
        judge = self.judge
        if gone:
            judge = replace(judge, reasons=dict.fromkeys(gone, "its network namespace is gone"))
        time_text = rfc3339(self._now())
        drafts = classify(
            pass_.changes,
            owners=owners,
            time=time_text,
            detected=pass_.detected,
            judge=judge,
            restarts=self._restarts,
            now=now,
            down_since=self._log.last_alive if pass_.detected == "startup" else None,
        )
        removed = [self._sockets[inode] for inode in pass_.gone]
        self._owners.forget(pass_.gone)
        refreshed, handed = self._owners.take(result, pass_.sockets, pass_.new)
        drafts += owner_changes(handed, time=time_text, detected=pass_.detected, judge=judge)
        drafts += self.transients.admit(
            transient_drafts(
                pass_.transients, judge=judge, time=time_text, lived_at_most_s=pass_.since_look_s
            ),
            now,
        )
        self._say_transients_held_back(now)
        added = [
            (pass_.sockets[inode], self._owners.get(inode))
            for inode in sorted(pass_.new | (refreshed & pass_.sockets.keys()))
        ]
        self._snapshot = pass_.snapshot
        if pass_.detected == "destroy":  # only closes: no cookie to add
            self._cookies.closed(removed, now)
        elif self._sockets is not pass_.sockets:
            self._cookies.update(pass_.sockets, removed, now)
        self._sockets = pass_.sockets
        self._last_endpoints = pass_.endpoints
        self._append_chunks(chunks_of(drafts, added, removed), pass_, reported=len(drafts))

    def _append_chunks(self, chunks: list[Chunk], pass_: Pass, *, reported: int) -> None:
        """Append one chunk now and the rest at later turns of the loop, so
        that a 50,000-socket burst never holds the loop (and the watchdog's
        pings) for the whole of it. Each chunk is one transaction holding
        its events together with their sockets: a crash between two chunks
        leaves a store whose snapshot and events agree, and the next start
        reports the rest as startup changes."""
        if chunks:
            drafts, added, removed = chunks.pop(0)
            events = self._log.append(drafts, added=added, removed=removed)
            for event in events:
                self.stats.events_by_type[event.type] = (
                    self.stats.events_by_type.get(event.type, 0) + 1
                )
                self.stats.detections[event.detected] = (
                    self.stats.detections.get(event.detected, 0) + 1
                )
        if chunks:
            self._defer(lambda: self._append_chunks(chunks, pass_, reported=reported))
            return
        self._waiting = None
        self._waiting_since = None
        if self._first:
            self._first = False
            self._report_start(reported, baseline=pass_.baseline)
        if pass_.detected != "destroy":  # a destroy message's pass scans nothing
            self._scanned(pass_.started)
        if self._held_destroys:
            # At a later turn: the loop's own looks (the poll) come between
            # passes however many messages keep coming.
            self._defer(self._take_held_destroys)

    def _take_held_destroys(self) -> None:
        if self._waiting is None and self._held_destroys:
            held, self._held_destroys = self._held_destroys, []
            if self.destroyed(held) and self.look_wanted is not None:
                self.look_wanted()

    def _scanned(self, started: float) -> None:
        self.stats.last_scan_time = rfc3339(self._now())
        now = self._monotonic()
        self.stats.last_scan_duration_ms = (now - started) * 1000
        self._say_transients_held_back(now)  # those of a flood that ended since

    def _say_transients_held_back(self, now: float) -> None:
        if warning := self.transients.warning(now):
            self._say(PRIORITY_WARNING, warning)

    def _scan_failed(self, message: str) -> None:
        self.stats.scan_errors_total += 1
        if message != self.stats.scan_error:
            self._say(PRIORITY_ERR, f"scan failed, keeping the last snapshot: {message}")
        self.stats.scan_error = message

    def _report_start(self, changes: int, *, baseline: bool) -> None:
        if baseline:
            self._say(
                PRIORITY_INFO,
                f"baseline: watching {counted(len(self._snapshot), 'listening port')}; "
                "changes from now on are reported",
            )
        elif changes:
            self._say(
                PRIORITY_INFO,
                f"{counted(changes, 'change')} happened while portwatchd was not running "
                f"(since {self._log.last_alive})",
            )

    def replace_scanner(self, scanner: Scanner) -> None:
        """A backend switch: the next scan is compared afresh (the new source
        returns new objects), the snapshot stays."""
        self.scanner.close()
        self.scanner = scanner
        self._last_endpoints = None
        self._confirmation.reset()

    def close(self) -> None:
        self._lookup.close()
        self.scanner.close()
