"""Reading the fd tables of /proc for `owners.OwnerResolver`: what was seen, and the full walk.

`FdTables` records every socket seen in the fd tables read so far (inode
-> the processes holding it) and builds an Owner from such a sighting.
`FullWalk` is the fallback walk of every process: cut after a time budget
and resumed where it stopped, taking at most 5% of the time
(`WALK_IDLE_RATIO`), and backing off per inode that a complete walk did
not find. Neither is thread-safe: the resolver serialises its callers.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from portwatchd.model import UNKNOWN_OWNER, Owner
from portwatchd.sources.procinfo import (
    ProcStat,
    main_process,
    owner_of,
    read_process,
    read_stat,
    socket_inode,
)

# Upper bound of the back-off between walks retrying an inode nobody holds,
# and where that back-off starts.
MAX_UNKNOWN_RETRY_S = 300.0
FIRST_UNKNOWN_RETRY_S = 5.0
# Walks take at most 1/(1+19) = 5% of the time: after a walk piece of d
# seconds, the next starts no sooner than 19*d later. A walk of a small host
# (a few ms) may so run every scan; a 1.2 s walk of a 100,000-fd host waits
# about 23 s.
WALK_IDLE_RATIO = 19.0
# How many fds are read between two looks at the clock, so that one process
# with 100,000 fds cannot blow the walk budget.
_FD_CHUNK = 512

_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})


@dataclass
class ResolverStats:
    """Counters a test or `portwatchctl status` can read."""

    new_process_looks: int = 0  # resolve_new calls that listed /proc
    processes_scanned: int = 0  # fd directories read
    processes_denied: int = 0  # fd directories we may not read (EACCES): owners unseen
    fds_read: int = 0
    full_walks: int = 0  # full walks started
    walk_pieces: int = 0  # budget-bounded parts of full walks
    walks_completed: int = 0
    walks_cut_by_budget: int = 0
    walks_deferred: int = 0  # a walk was wanted but the rate limit or back-off said no
    owners_stale: int = 0  # owners found no longer right (holder exited, handed over, exec'd)


# A process is named by (start time, pid) packed into one int, so that a pid
# the kernel reuses never inherits the sockets its previous holder had.
# pid_max is at most 2**22 (PID_MAX_LIMIT).
_PID_BITS = 22
PID_MASK = (1 << _PID_BITS) - 1


def process_key(pid: int, stat: ProcStat) -> int:
    """The key naming process `pid` as long as it lives (see PID_MASK)."""
    return (stat.start_time << _PID_BITS) | pid


class FdTables:
    """The sockets seen in the fd tables read so far, and who holds them."""

    def __init__(
        self,
        proc_root: str,
        stats: ResolverStats,
        clock: Callable[[], float],
        user_of: Callable[[int], str | None],
    ) -> None:
        self.proc_root = proc_root
        self._stats = stats
        self._clock = clock
        self._user_of = user_of
        # Every socket seen in an fd table, asked for or not: inode -> keys of
        # the processes holding it; and each such process's parent pid.
        self.holders: dict[int, tuple[int, ...]] = {}
        self.parent_of: dict[int, int] = {}
        # pid -> start time of each process named as an owner's main holder,
        # so that a later check knows it is still that very process.
        self.main_started: dict[int, int] = {}

    def clear(self) -> None:
        self.holders.clear()
        self.parent_of.clear()

    def list_pids(self) -> list[int]:
        try:
            names = os.listdir(self.proc_root)
        except OSError:
            return []
        return [int(name) for name in names if name.isdigit()]

    def read_stat(self, pid: int) -> ProcStat | None:
        stat = read_stat(self.proc_root, pid)
        if stat is not None:
            self.parent_of[process_key(pid, stat)] = stat.ppid
        return stat

    def scan_pid(self, pid: int, deadline: float) -> int | None:
        """Record the sockets of one fd table; the process key, None if gone."""
        # The stat is read before the fds: if the pid is reused in between,
        # the start time will not match when the owner is built.
        stat = self.read_stat(pid)
        if stat is None:
            return None
        key = process_key(pid, stat)
        # Past the deadline the rest of the table is left to the full walk.
        self.scan_fds(key, None, deadline)
        return key

    def scan_fds(self, key: int, fds: list[str] | None, deadline: float) -> list[str]:
        """Record the sockets in one process's fd table.

        Reads `fds` (the rest of a table cut by the budget) or the whole
        table; returns the fd names still unread when the deadline passed.
        """
        fd_dir = f"{self.proc_root}/{key & PID_MASK}/fd"
        try:
            dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            if error.errno == errno.EACCES:
                self._stats.processes_denied += 1
            return []
        try:
            names = os.listdir(dir_fd) if fds is None else fds
            self._stats.processes_scanned += 1
            for start in range(0, len(names), _FD_CHUNK):
                if start and self._clock() >= deadline:
                    return names[start:]
                for name in names[start : start + _FD_CHUNK]:
                    try:
                        link = os.readlink(name, dir_fd=dir_fd)
                    except OSError:  # the fd closed, or the process exited
                        continue
                    inode = socket_inode(link)
                    if inode is not None:
                        self._add_holder(inode, key)
                self._stats.fds_read += min(_FD_CHUNK, len(names) - start)
        except OSError as error:  # listdir of an exiting process
            if error.errno not in _GONE_ERRNOS and error.errno != errno.EACCES:
                raise
        finally:
            os.close(dir_fd)
        return []

    def socket_inodes(self, pid: int) -> set[int] | None:
        """Every socket in one fd table, None when it cannot be read (gone, denied)."""
        fd_dir = f"{self.proc_root}/{pid}/fd"
        inodes = set()
        try:
            dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            names = os.listdir(dir_fd)
            for name in names:
                try:
                    inode = socket_inode(os.readlink(name, dir_fd=dir_fd))
                except OSError:  # the fd closed meanwhile
                    continue
                if inode is not None:
                    inodes.add(inode)
        except OSError:  # the process exited while listed
            return None
        finally:
            os.close(dir_fd)
        self._stats.fds_read += len(names)
        return inodes

    def _add_holder(self, inode: int, key: int) -> None:
        holders = self.holders.get(inode)
        if holders is None:
            self.holders[inode] = (key,)
        elif key not in holders:
            self.holders[inode] = (*holders, key)

    def build_owner(self, holders: Iterable[int]) -> Owner:
        """The Owner of a socket held by these process keys; UNKNOWN_OWNER if all exited."""
        alive: list[tuple[int, ProcStat]] = []
        for key in holders:
            pid = key & PID_MASK
            stat = read_stat(self.proc_root, pid)
            if stat is not None and process_key(pid, stat) == key:
                alive.append((pid, stat))
            # else: exited, or the pid now names another process
        if not alive:
            return UNKNOWN_OWNER
        # Only the main process is read in full: a preforking server can
        # share one socket among hundreds of workers.
        main = main_process(alive)
        main_stat = dict(alive)[main]
        self.main_started[main] = main_stat.start_time
        main_info = read_process(self.proc_root, main, main_stat)
        return owner_of(main_info, (pid for pid, _ in alive), self._user_of)


@dataclass
class _WalkPosition:
    """A full walk in progress: processes still to read, and a cut-off process."""

    pending: list[int]  # pids, ascending, so pop() takes the newest (highest) first
    cut_process: int | None = None  # process key (see process_key) of a cut table
    cut_fds: list[str] = field(default_factory=list)


class FullWalk:
    """The time-sliced, rate-limited walk of every fd table, and its back-off per inode.

    `on_complete` runs when a walk has read every table, before the inodes
    it did not find are backed off.
    """

    def __init__(
        self,
        tables: FdTables,
        stats: ResolverStats,
        clock: Callable[[], float],
        *,
        budget_s: float,
        min_interval_s: float,
        on_complete: Callable[[], None],
    ) -> None:
        self.budget_s = budget_s
        self.min_interval_s = min_interval_s
        self._tables = tables
        self._stats = stats
        self._clock = clock
        self._on_complete = on_complete
        self._position: _WalkPosition | None = None
        self._next_walk_at = float("-inf")
        self._misses: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}

    @property
    def in_progress(self) -> bool:
        return self._position is not None

    def forget(self, inode: int) -> None:
        """Stop retrying `inode`: it was found, or it is gone."""
        self._misses.pop(inode, None)
        self._retry_at.pop(inode, None)

    def due_in(self, missing: set[int]) -> float | None:
        """Seconds until a walk may look for `missing` (0: now); None when
        they are all backing off after walks that missed them."""
        now = self._clock()
        retry = min(self._retry_at.get(inode, now) for inode in missing)
        if retry > now:
            return None
        return max(0.0, self._next_walk_at - now)

    def due(self, missing: set[int]) -> bool:
        now = self._clock()
        if now < self._next_walk_at:
            return False
        return any(self._retry_at.get(inode, now) <= now for inode in missing)

    def piece(self, missing: set[int]) -> None:
        """Walk on for about `budget_s`, then hold the next piece off (WALK_IDLE_RATIO)."""
        start = self._clock()
        try:
            self._piece_from(start, missing)
        finally:
            end = self._clock()
            self._next_walk_at = end + max(self.min_interval_s, (end - start) * WALK_IDLE_RATIO)

    def _piece_from(self, start: float, missing: set[int]) -> None:
        if self._position is None:
            # Start afresh: the walk sees every holder anew, and what exited
            # since the last walk does not pile up.
            self._tables.clear()
            self._position = _WalkPosition(pending=sorted(self._tables.list_pids()))
            self._stats.full_walks += 1
        self._stats.walk_pieces += 1
        walk = self._position
        deadline = start + self.budget_s
        # The deadline is checked after each process, so every piece makes
        # progress even when the budget is smaller than one process.
        while walk.cut_process is not None or walk.pending:
            if walk.cut_process is not None:
                key, fds = walk.cut_process, walk.cut_fds
                walk.cut_process, walk.cut_fds = None, []
                left = self._tables.scan_fds(key, fds, deadline)
            else:
                pid = walk.pending.pop()
                stat = self._tables.read_stat(pid)
                if stat is None:
                    continue
                key = process_key(pid, stat)
                left = self._tables.scan_fds(key, None, deadline)
            if left:
                walk.cut_process, walk.cut_fds = key, left
            if (left or walk.pending) and self._clock() >= deadline:
                self._stats.walks_cut_by_budget += 1
                return
        self._position = None
        self._stats.walks_completed += 1
        self._on_complete()
        self._back_off(missing - self._tables.holders.keys())

    def _back_off(self, not_found: set[int]) -> None:
        """A complete walk did not find these: retry later, less and less often."""
        now = self._clock()
        longest = max(MAX_UNKNOWN_RETRY_S, self.min_interval_s)
        for inode in not_found:
            misses = self._misses.get(inode, 0) + 1
            self._misses[inode] = misses
            delay = max(FIRST_UNKNOWN_RETRY_S, self.min_interval_s) * 2 ** min(misses - 1, 30)
            self._retry_at[inode] = now + min(delay, longest)
