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
   the time (`WALK_IDLE_RATIO`). It covers an old process that opens a new
   listener (a reload). Sockets found on the way are kept, so asking for
   them later costs nothing.

A socket several processes hold is named after the oldest one (see
`main_process`); for a socket-activated service that is systemd itself
(pid 1), which keeps the listening socket open.

A socket nobody could be seen holding (a kernel socket, a process outside
our pid namespace, one we may not read) stays unknown, never guessed;
it is retried by later walks, backing off from `FIRST_UNKNOWN_RETRY_S` up to
`MAX_UNKNOWN_RETRY_S`.

Threads share their process's fd table, so only processes (/proc/PID) are
walked, never tasks. A pid that the kernel reused between the walk and the
moment an owner is reported is caught by comparing the process start time.

The parsers (`parse_stat`, `parse_cmdline`, `parse_status_uid`,
`unit_from_cgroup`, `socket_inode`) are pure; the walking code reads
whatever tree `proc_root` names, so tests can point it at a fake one.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from portwatchd.model import UNKNOWN_OWNER, Owner, printable_name

CMDLINE_MAX_CHARS = 200
# Enough bytes for CMDLINE_MAX_CHARS characters of UTF-8 (4 bytes at most each).
_CMDLINE_READ_BYTES = 4 * CMDLINE_MAX_CHARS + 4
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
# Found-but-not-asked sockets kept for later. A full walk starts them afresh;
# between walks, new processes add to them, until this many are dropped.
_SPARE_LIMIT = 200_000

_CONTROL_TO_SPACE = bytes.maketrans(bytes([*range(0x20), 0x7F]), b" " * 0x21)
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]\Z")
# Units that can contain processes; slices only group them.
_PROCESS_UNIT = re.compile(r"[^/]+\.(service|scope|socket|mount|swap)\Z")


# --- pure parsers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    """What we need from /proc/PID/stat."""

    comm: str
    ppid: int
    start_time: int  # field 22, clock ticks since boot: orders processes by age


def parse_stat(data: bytes) -> ProcStat:
    """Parse /proc/PID/stat; raises ValueError on text that is not one.

    comm (field 2) is in parentheses and may itself contain spaces and ")",
    so it runs to the *last* ")"; fields 3.. follow, space separated:

    >>> parse_stat(b"42 (my) prog) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 9876 0")
    ProcStat(comm='my) prog', ppid=1, start_time=9876)
    """
    open_paren = data.find(b"(")
    close_paren = data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"not a /proc/PID/stat line: {data[:80]!r}")
    rest = data[close_paren + 1 :].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    if len(rest) < 20:
        raise ValueError(f"/proc/PID/stat has {len(rest) + 2} fields, expected at least 22")
    comm = data[open_paren + 1 : close_paren].decode("utf-8", "backslashreplace")
    return ProcStat(comm=comm, ppid=int(rest[1]), start_time=int(rest[19]))


def parse_cmdline(data: bytes, max_chars: int = CMDLINE_MAX_CHARS) -> str:
    """/proc/PID/cmdline (NUL-separated arguments) as one short line.

    NULs and other control characters (the newlines of `sh -c` scripts)
    become spaces, so that the line prints and logs as one line:

    >>> parse_cmdline(b"python3\\x00-c\\x00import os\\nos.getpid()\\x00")
    'python3 -c import os os.getpid()'
    """
    text = data.rstrip(b"\0").translate(_CONTROL_TO_SPACE).decode("utf-8", "backslashreplace")
    return text[:max_chars].rstrip()


def parse_status_uid(text: str) -> int | None:
    """The effective uid from /proc/PID/status ("Uid: real effective saved fs")."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[2]) if len(fields) >= 3 else None
    return None


def unit_from_cgroup(text: str) -> str | None:
    """The systemd unit a process runs in, from its /proc/PID/cgroup text.

    The unit is the deepest path component naming a unit that can hold
    processes (service, scope, socket, mount, swap; slices only group):

    >>> unit_from_cgroup("0::/system.slice/nginx.service\\n")
    'nginx.service'
    >>> unit_from_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service")
    'foo.service'

    A delegated sub-cgroup ("/system.slice/foo.service/payload") still
    belongs to foo.service. The named systemd hierarchy of cgroup v1
    ("1:name=systemd:/...") is preferred, because on a hybrid host the
    unified "0::" line can be plain "/"; "/" alone means no unit (None).
    """
    systemd_v1: str | None = None
    unified: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        if controllers == "name=systemd":
            systemd_v1 = path
        elif controllers == "" and unified is None:
            unified = path
    for candidate in (systemd_v1, unified):
        if candidate is None:
            continue
        # The kernel marks a removed cgroup v2 path with " (deleted)".
        components = candidate.removesuffix(" (deleted)").split("/")
        units = [part for part in components if _PROCESS_UNIT.match(part)]
        if units:
            return units[-1]
    return None


def socket_inode(link: str) -> int | None:
    """The inode of an fd link target "socket:[12345]", None for anything else."""
    match = _SOCKET_LINK.match(link)
    return int(match.group(1)) if match else None


# --- one process, read from a proc tree ------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as far as /proc let us see it; None where it did not."""

    pid: int
    start_time: int
    comm: str | None
    exe: str | None
    cmdline: str | None
    uid: int | None
    unit: str | None


def _read_bytes(path: str, limit: int = -1) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read(limit)
    except OSError:
        return None


def read_stat(proc_root: str, pid: int) -> ProcStat | None:
    """/proc/PID/stat, or None when the process is gone (or stat is unreadable)."""
    data = _read_bytes(f"{proc_root}/{pid}/stat")
    if data is None:
        return None
    try:
        return parse_stat(data)
    except ValueError:
        return None


def read_process(proc_root: str, pid: int, stat: ProcStat) -> ProcessInfo:
    """Everything else about a process whose stat was just read."""
    base = f"{proc_root}/{pid}"
    try:
        exe: str | None = os.fsencode(os.readlink(f"{base}/exe")).decode(
            "utf-8", "backslashreplace"
        )
    except OSError:  # EACCES, or ENOENT for a kernel thread or an exited process
        exe = None
    cmdline_bytes = _read_bytes(f"{base}/cmdline", _CMDLINE_READ_BYTES)
    status = _read_bytes(f"{base}/status")
    cgroup = _read_bytes(f"{base}/cgroup")
    return ProcessInfo(
        pid=pid,
        start_time=stat.start_time,
        comm=stat.comm,
        exe=exe,
        cmdline=None if cmdline_bytes is None else parse_cmdline(cmdline_bytes),
        uid=None if status is None else parse_status_uid(status.decode("utf-8", "replace")),
        unit=None if cgroup is None else unit_from_cgroup(cgroup.decode("utf-8", "replace")),
    )


def user_name(uid: int) -> str | None:
    """The name of a uid, None when the user database does not know it.

    Not cached: systemd's DynamicUser= gives the same uid different names
    over time, and owners are built only for new sockets.
    """
    try:
        return printable_name(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return None


def main_process(holders: Collection[tuple[int, ProcStat]]) -> int:
    """The pid naming a socket that several (pid, stat) hold: the oldest.

    Oldest = lowest start time; on a tie (same clock tick) the lowest pid.
    A server that forks after listen() is older than its workers.
    systemd (pid 1) keeps the sockets it passes to a socket-activated
    service open; the service, not systemd, is what an operator wants
    named, so pid 1 is the main holder only when it is the only one.
    """
    candidates = [holder for holder in holders if holder[0] != 1] or list(holders)
    return min(candidates, key=lambda holder: (holder[1].start_time, holder[0]))[0]


def owner_of(
    main: ProcessInfo, pids: Iterable[int], user_of: Callable[[int], str | None] = user_name
) -> Owner:
    """The Owner of a socket whose main holder is `main`, held by all of `pids`."""
    return Owner(
        pid=main.pid,
        pids=tuple(sorted({*pids, main.pid})),
        comm=main.comm,
        exe=main.exe,
        cmdline=main.cmdline,
        uid=main.uid,
        user=None if main.uid is None else user_of(main.uid),
        unit=main.unit,
    )


# --- the resolver -------------------------------------------------------------------


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


@dataclass
class _Walk:
    """A full walk in progress: processes still to read, and a cut-off process."""

    pending: list[int]  # pids, ascending, so pop() takes the newest (highest) first
    cut_process: int | None = None  # process key (see _process_key) of a cut table
    cut_fds: list[str] = field(default_factory=list)


# A process is named by (start time, pid) packed into one int, so that a pid
# the kernel reuses never inherits the sockets its previous holder had.
# pid_max is at most 2**22 (PID_MAX_LIMIT).
_PID_BITS = 22
_PID_MASK = (1 << _PID_BITS) - 1


def _process_key(pid: int, stat: ProcStat) -> int:
    return (stat.start_time << _PID_BITS) | pid


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
        clock: Callable[[], float] = time.monotonic,
        user_of: Callable[[int], str | None] = user_name,
    ) -> None:
        self.proc_root = proc_root.rstrip("/") or "/"
        self.walk_budget_s = walk_budget_s
        self.min_walk_interval_s = min_walk_interval_s
        # A new server often listens only seconds after it starts (a JVM,
        # a slow config load), when it is no longer "new since the last
        # call": processes first seen this recently are looked at again.
        self.recent_process_s = recent_process_s
        self.stats = ResolverStats()
        self._clock = clock
        self._user_of = user_of
        self._busy = threading.Lock()
        self._cache: dict[int, Owner] = {}
        # Every socket seen in an fd table, asked for or not: inode -> keys of
        # the processes holding it; and each such process's parent pid.
        self._holders: dict[int, tuple[int, ...]] = {}
        self._parent_of: dict[int, int] = {}
        # pid -> clock time it was first listed; -inf for those present at start.
        self._first_seen: dict[int, float] = dict.fromkeys(self._list_pids(), float("-inf"))
        self._walk: _Walk | None = None
        self._next_walk_at = float("-inf")
        self._misses: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}

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
                self._holders.pop(inode, None)
                self._misses.pop(inode, None)
                self._retry_at.pop(inode, None)

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
            if self._walk_due(missing):
                self._walk_piece(missing)
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
        for inode in wanted:
            owner = self._cache.get(inode)
            if owner is None and inode in self._holders:
                holders = self._holders[inode]
                owner = built.get(holders)
                if owner is None:
                    owner = built[holders] = self._build_owner(holders)
                if owner.known:
                    self._cache[inode] = owner
                    self._misses.pop(inode, None)
                    self._retry_at.pop(inode, None)
                else:  # every holder has exited since: that sighting is stale
                    del self._holders[inode]
                    owner = None
            if owner is not None:
                result[inode] = owner
        return result

    def _scan_new_processes(self, missing: set[int]) -> None:
        self.stats.new_process_looks += 1
        if len(self._holders) > _SPARE_LIMIT and self._walk is None:
            self._holders.clear()
            self._parent_of.clear()
        now = self._clock()
        first_seen = {pid: self._first_seen.get(pid, now) for pid in self._list_pids()}
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
            self._scan_pid(pid, deadline)
        self._scan_ancestors(missing, set(recent), deadline)

    def _scan_ancestors(self, missing: set[int], scanned: set[int], deadline: float) -> None:
        """Climb from each holder found to the ancestors holding the same socket.

        A master that listened and then forked new workers (or systemd
        passing a socket-activated listener) is an old process: only its
        children are new. The climb stops at the first ancestor that does
        not hold the socket.
        """
        for inode in missing:
            climbing = list(self._holders.get(inode, ()))
            while climbing:
                parent = self._parent_of.get(climbing.pop(), 0)
                if parent <= 0 or parent in scanned:
                    continue
                if self._clock() >= deadline:
                    return
                scanned.add(parent)
                parent_key = self._scan_pid(parent, deadline)
                if parent_key is not None and parent_key in self._holders.get(inode, ()):
                    climbing.append(parent_key)

    def walk_due_in(self, inodes: Collection[int]) -> float | None:
        """Seconds until a walk may look for these inodes (0: now); None when
        they are all cached or all backing off after walks that missed them."""
        with self._exclusive():
            missing = set(inodes) - self._cache.keys()
            if not missing:
                return None
            now = self._clock()
            retry = min(self._retry_at.get(inode, now) for inode in missing)
            if retry > now:
                return None
            return max(0.0, self._next_walk_at - now)

    def _walk_due(self, missing: set[int]) -> bool:
        now = self._clock()
        if now < self._next_walk_at:
            return False
        return any(self._retry_at.get(inode, now) <= now for inode in missing)

    def _walk_piece(self, missing: set[int]) -> None:
        start = self._clock()
        try:
            self._walk_piece_from(start, missing)
        finally:
            end = self._clock()
            self._next_walk_at = end + max(
                self.min_walk_interval_s, (end - start) * WALK_IDLE_RATIO
            )

    def _walk_piece_from(self, start: float, missing: set[int]) -> None:
        if self._walk is None:
            # Start afresh: the walk sees every holder anew, and what exited
            # since the last walk does not pile up.
            self._holders.clear()
            self._parent_of.clear()
            self._walk = _Walk(pending=sorted(self._list_pids()))
            self.stats.full_walks += 1
        self.stats.walk_pieces += 1
        walk = self._walk
        deadline = start + self.walk_budget_s
        # The deadline is checked after each process, so every piece makes
        # progress even when the budget is smaller than one process.
        while walk.cut_process is not None or walk.pending:
            if walk.cut_process is not None:
                key, fds = walk.cut_process, walk.cut_fds
                walk.cut_process, walk.cut_fds = None, []
                left = self._scan_fds(key, fds, deadline)
            else:
                pid = walk.pending.pop()
                stat = self._read_stat(pid)
                if stat is None:
                    continue
                key = _process_key(pid, stat)
                left = self._scan_fds(key, None, deadline)
            if left:
                walk.cut_process, walk.cut_fds = key, left
            if (left or walk.pending) and self._clock() >= deadline:
                self.stats.walks_cut_by_budget += 1
                return
        self._walk = None
        self.stats.walks_completed += 1
        self._refresh_cached_owners()
        self._back_off(missing - self._holders.keys())

    def _back_off(self, not_found: set[int]) -> None:
        """A complete walk did not find these: retry later, less and less often."""
        now = self._clock()
        longest = max(MAX_UNKNOWN_RETRY_S, self.min_walk_interval_s)
        for inode in not_found:
            misses = self._misses.get(inode, 0) + 1
            self._misses[inode] = misses
            delay = max(FIRST_UNKNOWN_RETRY_S, self.min_walk_interval_s) * 2 ** min(misses - 1, 30)
            self._retry_at[inode] = now + min(delay, longest)

    def _refresh_cached_owners(self) -> None:
        """A complete walk saw every holder: fix cached owners whose holders
        changed (a worker found first and its master only now, a master gone)."""
        built: dict[tuple[int, ...], Owner] = {}
        for inode, owner in list(self._cache.items()):
            holders = self._holders.get(inode)
            if holders is None:
                continue
            if tuple(sorted(key & _PID_MASK for key in holders)) != owner.pids:
                rebuilt = built.get(holders)
                if rebuilt is None:
                    rebuilt = built[holders] = self._build_owner(holders)
                if rebuilt.known:
                    self._cache[inode] = rebuilt

    # --- reading /proc ---

    def _list_pids(self) -> list[int]:
        try:
            names = os.listdir(self.proc_root)
        except OSError:
            return []
        return [int(name) for name in names if name.isdigit()]

    def _read_stat(self, pid: int) -> ProcStat | None:
        stat = read_stat(self.proc_root, pid)
        if stat is not None:
            self._parent_of[_process_key(pid, stat)] = stat.ppid
        return stat

    def _scan_pid(self, pid: int, deadline: float) -> int | None:
        """Record the sockets of one fd table; the process key, None if gone."""
        # The stat is read before the fds: if the pid is reused in between,
        # the start time will not match when the owner is built.
        stat = self._read_stat(pid)
        if stat is None:
            return None
        key = _process_key(pid, stat)
        # Past the deadline the rest of the table is left to the full walk.
        self._scan_fds(key, None, deadline)
        return key

    def _scan_fds(self, key: int, fds: list[str] | None, deadline: float) -> list[str]:
        """Record the sockets in one process's fd table.

        Reads `fds` (the rest of a table cut by the budget) or the whole
        table; returns the fd names still unread when the deadline passed.
        """
        fd_dir = f"{self.proc_root}/{key & _PID_MASK}/fd"
        try:
            dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            if error.errno == errno.EACCES:
                self.stats.processes_denied += 1
            return []
        try:
            names = os.listdir(dir_fd) if fds is None else fds
            self.stats.processes_scanned += 1
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
                self.stats.fds_read += min(_FD_CHUNK, len(names) - start)
        except OSError as error:  # listdir of an exiting process
            if error.errno not in _GONE_ERRNOS and error.errno != errno.EACCES:
                raise
        finally:
            os.close(dir_fd)
        return []

    def _add_holder(self, inode: int, key: int) -> None:
        holders = self._holders.get(inode)
        if holders is None:
            self._holders[inode] = (key,)
        elif key not in holders:
            self._holders[inode] = (*holders, key)

    def _build_owner(self, holders: Iterable[int]) -> Owner:
        alive: list[tuple[int, ProcStat]] = []
        for key in holders:
            pid = key & _PID_MASK
            stat = read_stat(self.proc_root, pid)
            if stat is not None and _process_key(pid, stat) == key:
                alive.append((pid, stat))
            # else: exited, or the pid now names another process
        if not alive:
            return UNKNOWN_OWNER
        # Only the main process is read in full: a preforking server can
        # share one socket among hundreds of workers.
        main = main_process(alive)
        main_info = read_process(self.proc_root, main, dict(alive)[main])
        return owner_of(main_info, (pid for pid, _ in alive), self._user_of)

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
