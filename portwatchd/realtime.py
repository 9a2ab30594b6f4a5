"""The kernel's notices that make the engine act at once, not at the next poll.

- sock_diag destroy messages (one filtered subscription per network
  namespace watched): a known listener's close is reported as soon as the
  message comes (`Engine.destroyed`), a listener no look saw as `transient`.
  An overrun (ENOBUFS: messages were dropped) asks for a full look now.
- the proc connector's exec events: a new program usually listens within
  tens of milliseconds, so looks follow each exec at growing delays
  (`followups.FollowUps`, which turns an exec storm into a short poll).

Either may be unavailable (a kernel or a sandbox that refuses, a namespace
we cannot enter); then the poll alone finds what it would have said, and
`status()` says which notices are active and why the others are not.
Only the loop thread touches this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from portwatchd.engine import Engine
from portwatchd.followups import FollowUps
from portwatchd.model import PRIORITY_INFO, PRIORITY_WARNING, Detection
from portwatchd.reactor import Reactor, Timer
from portwatchd.sources.allns import AllNamespaces
from portwatchd.sources.base import ScanError
from portwatchd.sources.destroy import DestroyWatch
from portwatchd.sources.execwatch import ExecWatch, TriggerUnavailable
from portwatchd.sources.nsaddr import InterfaceNames
from portwatchd.sources.nsopen import SOCK_DIAG, open_in_namespace

Say = Callable[[int, str], None]
ACTIVE = "active"


class Looker(Protocol):
    def request_look(self, detected: Detection) -> None: ...


class RealTime:
    def __init__(
        self,
        engine: Engine,
        reactor: Reactor,
        *,
        say: Say,
        open_exec: Callable[[], ExecWatch] = ExecWatch,
        open_destroy: Callable[[], DestroyWatch] = DestroyWatch,
        followups: FollowUps | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.reactor = reactor
        self.followups = followups or FollowUps()
        self.overruns_total = 0
        self.destroy_messages_total = 0
        self.execs_total = 0
        self._say = say
        self._open_exec = open_exec
        self._open_destroy = open_destroy
        self._monotonic = monotonic
        self._looker: Looker | None = None
        self._exec: ExecWatch | None = None
        self._exec_state = "not started"
        self._destroys: dict[int, DestroyWatch] = {}  # netns (0: the host's) -> its watch
        self._destroy_refused: dict[int, str] = {}
        self._timer: Timer | None = None
        self._exec_paused: Timer | None = None

    # -- start and stop ----------------------------------------------------------

    def start(self, looker: Looker) -> None:
        """Subscribe (before the first look, so that nothing closes unseen
        between the look and the subscription) and say what is active."""
        self._looker = looker
        self.engine.look_wanted = lambda: self._look("scan")
        self._watch_destroys(0, self._open_destroy)
        try:
            self._exec = self._open_exec()
        except TriggerUnavailable as refused:
            self._exec_state = refused.reason
        else:
            self._exec_state = ACTIVE
            self.reactor.add_reader(self._exec, self._on_exec)
        self._say(PRIORITY_INFO, "real-time notices: " + self.summary())

    def summary(self) -> str:
        """ "closes active, new programs active" or why not, for the start line."""
        return ", ".join(f"{name} {state}" for name, state in self.status().items())

    def status(self) -> dict[str, str]:
        """Each notice: "active", or why it is not."""
        closes = self._destroy_refused.get(0, ACTIVE)
        others = [inode for inode in self._destroy_refused if inode]
        if closes == ACTIVE and others:
            closes = f"active; not in {len(others)} other network namespaces"
        return {"closes": closes, "new programs": self._exec_state}

    def close(self) -> None:
        for timer in (self._timer, self._exec_paused):
            if timer is not None:
                timer.cancel()
        if self._exec is not None:
            self.reactor.remove(self._exec)
            self._exec.close()
            self._exec = None
        for inode in list(self._destroys):
            self._drop_destroys(inode)

    # -- closes --------------------------------------------------------------------

    def sync_namespaces(self) -> None:
        """One destroy subscription per namespace watched: opened for the new
        ones (from inside them), closed for those gone. Called after each look."""
        scanner = self.engine.scanner
        sources = scanner.others.sources if isinstance(scanner, AllNamespaces) else {}
        for inode in [inode for inode in self._destroys if inode and inode not in sources]:
            self._drop_destroys(inode)
        for inode in [inode for inode in self._destroy_refused if inode and inode not in sources]:
            del self._destroy_refused[inode]
        for inode, source in sources.items():
            if inode in self._destroys or inode in self._destroy_refused:
                continue
            if source.tables is None:
                self._destroy_refused[inode] = "read through /proc: its closes are polled"
                continue
            names = InterfaceNames(source.tables)
            path = source.namespace.path

            def open_inside(
                path: str = path, names: InterfaceNames = names, inode: int = inode
            ) -> DestroyWatch:
                [sock] = open_in_namespace(path, (SOCK_DIAG,))
                return DestroyWatch(sock, netns=inode, interface_name=names)

            self._watch_destroys(inode, open_inside)

    def _watch_destroys(self, netns: int, opener: Callable[[], DestroyWatch]) -> None:
        try:
            watch = opener()
        except (ScanError, OSError) as refused:
            self._destroy_refused[netns] = str(refused)
            return
        self._destroys[netns] = watch
        self.reactor.add_reader(watch, lambda: self._on_destroy(netns))

    def _drop_destroys(self, netns: int) -> None:
        watch = self._destroys.pop(netns, None)
        if watch is not None:
            self.reactor.remove(watch)
            watch.close()

    def _on_destroy(self, netns: int) -> None:
        watch = self._destroys.get(netns)
        if watch is None:
            return
        try:
            batch = watch.read()
        except ScanError as error:
            self._say(PRIORITY_WARNING, f"destroy messages: {error}; looking at everything")
            self._look("scan")
            return
        self.destroy_messages_total += len(batch.sockets)
        if batch.sockets and self.engine.destroyed(batch.sockets):
            self._look("scan")
        if batch.overrun:
            # The kernel dropped messages: only a full look knows what closed.
            self.overruns_total += 1
            self._look("scan")

    # -- new programs --------------------------------------------------------------

    def _on_exec(self) -> None:
        if self._exec is None:
            return
        batch = self._exec.read()
        now = self._monotonic()
        self.execs_total += batch.execs
        if batch.overrun:
            self.overruns_total += 1
            self._look("scan")
        self.followups.exec_seen(now, batch.execs)
        self._arm(now)
        # Read on only after a pause: in a storm each message would be a turn
        # of the loop. What comes meanwhile waits in the socket (its buffer
        # holds thousands) and asks for looks no sooner than the pause anyway.
        self.reactor.remove_reader(self._exec)
        self._exec_paused = self.reactor.call_later(self.followups.read_pause(), self._read_execs)

    def _read_execs(self) -> None:
        self._exec_paused = None
        if self._exec is not None:
            self.reactor.add_reader(self._exec, self._on_exec)

    def looked(self) -> None:
        """A full look started, for whatever reason: follow-ups due by now are done."""
        now = self._monotonic()
        self.followups.looked(now)
        self._arm(now)

    def _arm(self, now: float) -> None:
        due = self.followups.next_look_at()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self.reactor.call_later(max(0.0, due - now), self._follow_up)

    def _follow_up(self) -> None:
        self._timer = None
        self._look("exec")

    def _look(self, detected: Detection) -> None:
        if self._looker is not None:
            self._looker.request_look(detected)
