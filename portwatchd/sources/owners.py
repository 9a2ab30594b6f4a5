"""Socket inode -> the process holding it (pid, comm, exe, cmdline, uid, unit).

The kernel does not say which process holds a socket: the only way is to
read every /proc/PID/fd/N link and look for "socket:[INODE]". That costs
about 5-12 us per open fd, so a host with 100,000 open fds takes 0.5-1.2 s
per full walk. `OwnerResolver` therefore never walks
everything on every scan:

1. a cache, inode -> Owner, for sockets already resolved (`forget` drops
   the sockets that closed);
2. `resolve_new`: only the processes that appeared since the previous
   look (or within `recent_process_s`), because a new listener usually
   belongs to a new process; the ancestors of a holder are checked too, so
   a master that opened the socket before forking its new workers is found;
3. `resolve_walk`: the fallback full walk, cut after `walk_budget_s` and
   resumed where it stopped at the next call; walks take at most 5% of
   the time (`fdwalk.WALK_IDLE_RATIO`). It covers an old process that opens a new
   listener (a reload). Sockets found on the way are kept, so asking for
   them later costs nothing.

A socket several processes hold is named after the oldest one (see
`procinfo.main_process`); for a socket-activated service that is systemd itself
(pid 1), which keeps the listening socket open.

A socket nobody could be seen holding (a kernel socket, a process outside
our pid namespace, one we may not read) stays unknown, never guessed;
it is retried by later walks, backing off from `fdwalk.FIRST_UNKNOWN_RETRY_S` up
to `fdwalk.MAX_UNKNOWN_RETRY_S`.

Threads share their process's fd table, so only processes (/proc/PID) are
walked, never tasks. A pid that the kernel reused between the walk and the
moment an owner is reported is caught by comparing the process start time.

The pure /proc parsers and the readers of one process are in `procinfo.py`;
the fd-table reading and the full walk in `fdwalk.py`.
The walking code reads whatever tree `proc_root` names, so tests can point
it at a fake one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager

from portwatchd.model import UNKNOWN_OWNER, Owner
from portwatchd.sources.fdwalk import PID_MASK, FdTables, FullWalk, ResolverStats
from portwatchd.sources.procinfo import read_exe, user_name

# Found-but-not-asked sockets kept for later. A full walk starts them afresh;
# between walks, new processes add to them, until this many are dropped.
_SPARE_LIMIT = 200_000

# Whether a main holder still holds its sockets costs a read of its fd
# table: done at most every fd_check_interval_s, and at most 1% of the time.
FD_CHECK_IDLE_RATIO = 99.0


class OwnerResolver:
    """Maps socket inodes to the processes holding them, cheaply and within a budget.

    Not thread-safe by design: the methods may run in a worker thread, but
    never two at once; a concurrent call raises RuntimeError instead of
    corrupting the cache.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        walk_budget_s: float = 0.5,
        min_walk_interval_s: float = 0.0,
        recent_process_s: float = 30.0,
        fd_check_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        user_of: Callable[[int], str | None] = user_name,
    ) -> None:
        self.proc_root = proc_root.rstrip("/") or "/"
        # A new server often listens only seconds after it starts (a JVM,
        # a slow config load), when it is no longer "new since the last
        # call": processes first seen this recently are looked at again.
        self.recent_process_s = recent_process_s
        self.fd_check_interval_s = fd_check_interval_s
        self._next_fd_check_at = float("-inf")
        self.stats = ResolverStats()
        self._clock = clock
        self._busy = threading.Lock()
        self._cache: dict[int, Owner] = {}
        self._tables = FdTables(self.proc_root, self.stats, clock, user_of)
        self._walk = FullWalk(
            self._tables,
            self.stats,
            clock,
            budget_s=walk_budget_s,
            min_interval_s=min_walk_interval_s,
            on_complete=self._refresh_cached_owners,
        )
        # pid -> clock time it was first listed; -inf for those present at start.
        self._first_seen: dict[int, float] = dict.fromkeys(self._tables.list_pids(), float("-inf"))

    @property
    def walk_budget_s(self) -> float:
        return self._walk.budget_s

    @property
    def min_walk_interval_s(self) -> float:
        return self._walk.min_interval_s

    # --- public API ---

    def resolve_new(self, inodes: Collection[int]) -> dict[int, Owner]:
        """Owners from the cache and from processes new since the previous call.

        Cheap: it reads only the fd tables of processes that appeared since
        the previous look (and their ancestors holding the same sockets).
        Inodes not found are left out of the result.
        """
        with self._exclusive():
            return self._resolve_new(set(inodes))

    def resolve_walk(self, inodes: Collection[int]) -> dict[int, Owner]:
        """Owners from the cache, else from a bounded, rate-limited full walk.

        At most about `walk_budget_s` is spent; an interrupted walk resumes
        at the next call. Inodes not found are left out of the result.
        """
        with self._exclusive():
            return self._resolve_walk(set(inodes))

    def resolve(self, inodes: Collection[int]) -> dict[int, Owner]:
        """Every inode asked for; the ones not found map to UNKNOWN_OWNER."""
        with self._exclusive():
            wanted = set(inodes)
            found = self._resolve_new(wanted)
            missing = wanted - found.keys()
            if missing:
                found.update(self._resolve_walk(missing))
            return {inode: found.get(inode, UNKNOWN_OWNER) for inode in wanted}

    def forget(self, inodes: Collection[int]) -> None:
        """The sockets are gone: drop them from the cache and stop retrying them."""
        with self._exclusive():
            for inode in inodes:
                self._cache.pop(inode, None)
                self._tables.holders.pop(inode, None)
                self._walk.forget(inode)

    # --- the two strategies ---

    def _resolve_new(self, wanted: set[int]) -> dict[int, Owner]:
        result = self._known(wanted)
        missing = wanted - result.keys()
        if missing:
            self._scan_new_processes(missing)
            result.update(self._known(missing))
        return result

    def _resolve_walk(self, wanted: set[int]) -> dict[int, Owner]:
        result = self._known(wanted)
        missing = wanted - result.keys()
        if missing:
            if self._walk.due(missing):
                self._walk.piece(missing)
                result.update(self._known(missing))
            else:
                self.stats.walks_deferred += 1
        return result

    def _known(self, wanted: Iterable[int]) -> dict[int, Owner]:
        """Cached owners, plus owners built now from sockets seen in fd tables."""
        result: dict[int, Owner] = {}
        # A burst of sockets usually has few holders (one server opening
        # 50,000 listeners): each holder set is read from /proc once per call.
        built: dict[tuple[int, ...], Owner] = {}
        seen = self._tables.holders
        for inode in wanted:
            owner = self._cache.get(inode)
            if owner is None and inode in seen:
                holders = seen[inode]
                owner = built.get(holders)
                if owner is None:
                    owner = built[holders] = self._tables.build_owner(holders)
                if owner.known:
                    self._cache[inode] = owner
                    self._walk.forget(inode)
                else:  # every holder has exited since: that sighting is stale
                    del seen[inode]
                    owner = None
            if owner is not None:
                result[inode] = owner
        return result

    def _scan_new_processes(self, missing: set[int]) -> None:
        self.stats.new_process_looks += 1
        if len(self._tables.holders) > _SPARE_LIMIT and not self._walk.in_progress:
            self._tables.clear()
        now = self._clock()
        first_seen = {pid: self._first_seen.get(pid, now) for pid in self._tables.list_pids()}
        self._first_seen = first_seen
        recent_since = now - self.recent_process_s
        recent = sorted(
            (pid for pid, seen in first_seen.items() if seen >= recent_since),
            key=lambda pid: (first_seen[pid], pid),
            reverse=True,
        )
        deadline = now + self.walk_budget_s
        for pid in recent:
            if self._clock() >= deadline:
                return
            self._tables.scan_pid(pid, deadline)
        self._scan_ancestors(missing, set(recent), deadline)

    def _scan_ancestors(self, missing: set[int], scanned: set[int], deadline: float) -> None:
        """Climb from each holder found to the ancestors holding the same socket.

        A master that listened and then forked new workers (or systemd
        passing a socket-activated listener) is an old process: only its
        children are new. The climb stops at the first ancestor that does
        not hold the socket.
        """
        for inode in missing:
            climbing = list(self._tables.holders.get(inode, ()))
            while climbing:
                parent = self._tables.parent_of.get(climbing.pop(), 0)
                if parent <= 0 or parent in scanned:
                    continue
                if self._clock() >= deadline:
                    return
                scanned.add(parent)
                parent_key = self._tables.scan_pid(parent, deadline)
                if parent_key is not None and parent_key in self._tables.holders.get(inode, ()):
                    climbing.append(parent_key)

    def recheck(self, owners: Mapping[int, Owner]) -> dict[int, Owner]:
        """The sockets among `owners` whose owner is no longer right, with the right one.

        An owner goes stale while its socket stays: the main holder forks
        and exits (the child holds on), hands the socket over (SCM_RIGHTS)
        and closes its copy, or execs another program. Each main holder is
        checked: the same process (start time), the same program (exe, or
        comm where exe cannot be read) and, when an fd check is due, still
        holding the socket. The stale sockets are looked up again (new
        processes and ancestors now, a walk when one is due); a socket whose
        new holder is not seen yet maps to UNKNOWN_OWNER, never to the old
        pid. Owners a complete walk rebuilt in the cache are returned too.
        """
        with self._exclusive():
            by_pid: dict[int, list[int]] = {}
            for inode, owner in owners.items():
                if owner.pid is not None:
                    by_pid.setdefault(owner.pid, []).append(inode)
            check_fds = self._clock() >= self._next_fd_check_at
            started = self._clock()
            stale: set[int] = set()
            for pid, inodes in by_pid.items():
                stale.update(self._stale_of(pid, inodes, owners[inodes[0]], check_fds))
            if check_fds:
                spent = self._clock() - started
                self._next_fd_check_at = self._clock() + max(
                    self.fd_check_interval_s, spent * FD_CHECK_IDLE_RATIO
                )
            main_pids = by_pid.keys()
            for pid in [pid for pid in self._tables.main_started if pid not in main_pids]:
                del self._tables.main_started[pid]
            changed = {
                inode: cached
                for inode, owner in owners.items()
                if (cached := self._cache.get(inode)) is not None and cached != owner
            }
            if stale:
                self.stats.owners_stale += len(stale)
                found = self._resolve_new(stale)
                missing = stale - found.keys()
                if missing:
                    found.update(self._resolve_walk(missing))
                changed.update({inode: found.get(inode, UNKNOWN_OWNER) for inode in stale})
            return changed

    def _stale_of(self, pid: int, inodes: list[int], owner: Owner, check_fds: bool) -> list[int]:
        """The sockets of one main holder that it no longer stands for; their
        sightings of it are dropped from the cache and the fd tables."""
        stat = self._tables.read_stat(pid)
        started = self._tables.main_started.get(pid)
        if stat is None or (started is not None and stat.start_time != started):
            gone, drop_sightings = inodes, True  # exited (a child may hold on)
        elif self._program_changed(pid, owner, stat.comm):
            # Another program in the same process: the sightings stand and
            # the owner is rebuilt from them.
            gone, drop_sightings = inodes, False
        elif check_fds and (held := self._tables.socket_inodes(pid)) is not None:
            gone, drop_sightings = [inode for inode in inodes if inode not in held], True
        else:
            return []
        for inode in gone:
            self._cache.pop(inode, None)
            if not drop_sightings:
                continue
            holders = self._tables.holders.get(inode, ())
            rest = tuple(key for key in holders if key & PID_MASK != pid)
            if rest:
                self._tables.holders[inode] = rest
            else:
                self._tables.holders.pop(inode, None)
        return gone

    def _program_changed(self, pid: int, owner: Owner, comm: str) -> bool:
        """An exec of another program. A process whose exe cannot be read
        now (exiting: a zombie has none) has not exec'd; the fd check
        finds that it no longer holds its sockets."""
        if owner.exe is None:
            return comm != owner.comm
        exe = read_exe(self.proc_root, pid)
        return exe is not None and exe != owner.exe

    def walk_due_in(self, inodes: Collection[int]) -> float | None:
        """Seconds until a walk may look for these inodes (0: now); None when
        they are all cached or all backing off after walks that missed them."""
        with self._exclusive():
            missing = set(inodes) - self._cache.keys()
            if not missing:
                return None
            return self._walk.due_in(missing)

    def _refresh_cached_owners(self) -> None:
        """A complete walk saw every holder: fix cached owners whose holders
        changed (a worker found first and its master only now, a master gone)."""
        built: dict[tuple[int, ...], Owner] = {}
        for inode, owner in list(self._cache.items()):
            holders = self._tables.holders.get(inode)
            if holders is None:
                continue
            if tuple(sorted(key & PID_MASK for key in holders)) != owner.pids:
                rebuilt = built.get(holders)
                if rebuilt is None:
                    rebuilt = built[holders] = self._tables.build_owner(holders)
                if rebuilt.known:
                    self._cache[inode] = rebuilt

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "OwnerResolver called from two threads at once; "
                "its methods must be serialised by the caller"
            )
        try:
            yield
        finally:
            self._busy.release()
