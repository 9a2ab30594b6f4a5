"""One process as /proc shows it: the pure parsers and the per-process readers.

The parsers (`parse_stat`, `parse_cmdline`, `parse_status_uid`,
`unit_from_cgroup`, `socket_inode`) are pure; the readers read whatever
tree `proc_root` names, so tests can point them at a fake one. `owners.py`
decides which processes to read; this module only reads and names them.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from portwatchd.model import Owner
from portwatchd.text import printable_name

CMDLINE_MAX_CHARS = 200
# Enough bytes for CMDLINE_MAX_CHARS characters of UTF-8 (4 bytes at most each).
_CMDLINE_READ_BYTES = 4 * CMDLINE_MAX_CHARS + 4

_CONTROL_TO_SPACE = bytes.maketrans(bytes([*range(0x20), 0x7F]), b" " * 0x21)
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
    for candidate in _cgroup_paths(text):
        units = [part for part in candidate.split("/") if _PROCESS_UNIT.match(part)]
        if units:
            return units[-1]
    return None


def cgroup_path(text: str) -> str | None:
    """The cgroup a process is in, from its /proc/PID/cgroup text (the
    named systemd hierarchy of cgroup v1 first, as unit_from_cgroup).

    >>> cgroup_path("0::/system.slice/docker-4f0c.scope (deleted)\\n")
    '/system.slice/docker-4f0c.scope'
    """
    return next(iter(_cgroup_paths(text)), None)


def _cgroup_paths(text: str) -> list[str]:
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
    # The kernel marks a removed cgroup v2 path with " (deleted)". "/" says
    # nothing (on a hybrid host the v1 systemd line can be it while the
    # unified line names the scope, or the other way round).
    paths = [path.removesuffix(" (deleted)") for path in (systemd_v1, unified) if path is not None]
    return [path for path in paths if path != "/"]


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
    cgroup: str | None = None  # the cgroup path: containers are told by it


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


def read_exe(proc_root: str, pid: int) -> str | None:
    """The program a process runs, None when it cannot be seen."""
    try:
        return os.fsencode(os.readlink(f"{proc_root}/{pid}/exe")).decode(
            "utf-8", "backslashreplace"
        )
    except OSError:  # EACCES, or ENOENT for a kernel thread or an exited process
        return None


def read_process(proc_root: str, pid: int, stat: ProcStat) -> ProcessInfo:
    """Everything else about a process whose stat was just read."""
    base = f"{proc_root}/{pid}"
    exe = read_exe(proc_root, pid)
    cmdline_bytes = _read_bytes(f"{base}/cmdline", _CMDLINE_READ_BYTES)
    status = _read_bytes(f"{base}/status")
    cgroup = _read_bytes(f"{base}/cgroup")
    cgroup_text = None if cgroup is None else cgroup.decode("utf-8", "replace")
    return ProcessInfo(
        pid=pid,
        start_time=stat.start_time,
        comm=stat.comm,
        exe=exe,
        cmdline=None if cmdline_bytes is None else parse_cmdline(cmdline_bytes),
        uid=None if status is None else parse_status_uid(status.decode("utf-8", "replace")),
        unit=None if cgroup_text is None else unit_from_cgroup(cgroup_text),
        cgroup=None if cgroup_text is None else cgroup_path(cgroup_text),
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
        cgroup=main.cgroup,
    )
