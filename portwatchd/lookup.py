"""Owner lookups off the loop: a job runs in a worker, its result comes back
as a continuation on the loop thread.

A /proc walk can take a second on a busy host, and a process stuck on a dead
mount can make one read hang: neither may stop the loop that pings the
watchdog and serves clients. So the engine never waits for owners. It hands
the inodes to `submit` with a `done` callback and goes on; `ThreadedLookup`
runs the job in its one worker thread (the resolver is not thread-safe, and
one thread serialises it) and hands the result back through the reactor.
`InlineLookup` runs the same job at once, for tests and `portwatchctl scan`.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from portwatchd.model import Owner
from portwatchd.reactor import Reactor
from portwatchd.sources.owners import OwnerResolver

# An opened port whose owner needs a /proc walk that the resolver's rate
# limit defers by at most this long waits for it (in the worker): "by
# nginx[1234]" a second late beats "by unknown process" on time.
OWNER_WAIT_MAX_S = 2.0

Done = Callable[["LookupResult"], None]


@dataclass(frozen=True, slots=True)
class LookupResult:
    owners: dict[int, Owner]  # the inodes found; the others stay unknown
    error: str | None = None  # the job failed: the owners found before it
    # Rechecked sockets whose owner is no longer right -> the right one
    # (UNKNOWN_OWNER while the new holder is not seen).
    changed: dict[int, Owner] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LookupJob:
    wanted: frozenset[int]  # new sockets: looked for now, waiting for a due walk
    retry: frozenset[int]  # still unknown from earlier: a walk only when one is due now
    forget: frozenset[int]  # sockets gone: drop them from the resolver's cache
    # Sockets that stay, with the owners the engine holds: are they still right?
    recheck: Mapping[int, Owner] = field(default_factory=dict)


class OwnerLookup(Protocol):
    def submit(self, job: LookupJob, done: Done) -> None: ...

    def close(self) -> None: ...


def run_job(
    resolver: OwnerResolver,
    job: LookupJob,
    *,
    wait_max_s: float = OWNER_WAIT_MAX_S,
    sleep: Callable[[float], None] = time.sleep,
) -> LookupResult:
    """The lookup itself, in whichever thread runs it."""
    found: dict[int, Owner] = {}
    changed: dict[int, Owner] = {}
    try:
        if job.forget:
            resolver.forget(job.forget)
        found.update(resolver.resolve_new(job.wanted | job.retry))
        missing = job.wanted - found.keys()
        if missing:
            due = resolver.walk_due_in(missing)
            if due is not None and due <= wait_max_s:
                sleep(due)
                found.update(resolver.resolve_walk(missing))
        retry = job.retry - found.keys()
        if retry and resolver.walk_due_in(retry) == 0:
            found.update(resolver.resolve_walk(retry))
        if job.recheck:
            changed = resolver.recheck(job.recheck)
    except Exception as err:  # handed to the loop thread, which logs it
        return LookupResult(found, f"owner lookup failed: {type(err).__name__}: {err}", changed)
    return LookupResult(found, changed=changed)


class InlineLookup:
    """Runs each job at once, in the caller's thread."""

    def __init__(self, resolver: OwnerResolver, *, wait_max_s: float = 0.0) -> None:
        self._resolver = resolver
        self._wait_max_s = wait_max_s

    def submit(self, job: LookupJob, done: Done) -> None:
        done(run_job(self._resolver, job, wait_max_s=self._wait_max_s))

    def close(self) -> None:
        pass


class ThreadedLookup:
    """One worker thread; results come back through `reactor.call_soon_threadsafe`."""

    def __init__(
        self, resolver: OwnerResolver, reactor: Reactor, *, wait_max_s: float = OWNER_WAIT_MAX_S
    ) -> None:
        self._resolver = resolver
        self._reactor = reactor
        self._wait_max_s = wait_max_s
        self._jobs: queue.SimpleQueue[tuple[LookupJob, Done] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="owners", daemon=True)
        self._thread.start()

    def submit(self, job: LookupJob, done: Done) -> None:
        self._jobs.put((job, done))

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, done = item
            result = run_job(self._resolver, job, wait_max_s=self._wait_max_s)
            self._reactor.call_soon_threadsafe(functools.partial(done, result))

    def close(self) -> None:
        """Stop the worker after the job it is on (a stuck one is abandoned:
        the thread is a daemon thread)."""
        self._jobs.put(None)
        self._thread.join(timeout=1.0)


def lookup_job(
    wanted: Collection[int] = (),
    retry: Collection[int] = (),
    forget: Collection[int] = (),
    recheck: Mapping[int, Owner] | None = None,
) -> LookupJob:
    return LookupJob(frozenset(wanted), frozenset(retry), frozenset(forget), recheck or {})
