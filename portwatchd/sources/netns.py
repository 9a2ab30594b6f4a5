"""Which network namespaces exist: discovery by /proc and by bind mounts.

A namespace is named by the inode of its ns file (the number in
`net:[4026531840]`), the same through /proc/PID/ns/net and through a bind
mount. Two ways to see one:
- every process's /proc/PID/ns/net (a readlink each: about 1 us, no open);
- the bind mounts under /run/netns (`ip netns add`) and /run/docker/netns:
  a namespace made by `ip netns add` has no process in it at all.

A file left under /run/netns by an `ip netns add` that was never mounted
(or was unmounted without the file being removed) is a plain tmpfs file:
only files on nsfs (the device of our own ns file) are namespaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MOUNT_DIRS: Final = ("/run/netns", "/run/docker/netns")
# The directory `ip netns add` mounts in: a mount there has an `ip netns` name.
IP_NETNS_DIR: Final = "/run/netns"
_LINK_PREFIX: Final = "net:["


@dataclass(slots=True)
class Namespace:
    """One network namespace as discovery saw it.

    `path` opens it: a bind mount when there is one (it lasts as long as
    the mount), else /proc/PID/ns/net of its first process seen. `name` is
    the `ip netns` name for a mount under /run/netns; `mounts` every bind
    mount seen; `pids` every process seen in it, in /proc order.
    """

    inode: int
    path: str
    name: str | None = None
    mounts: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """A process inside it (for /proc/PID/net and its cgroup), or None."""
        return self.pids[0] if self.pids else None


class Discovered(dict[int, Namespace]):
    """inode -> Namespace, and how many processes could not be looked at.

    `unreadable` counts processes whose ns link we may not read (another
    user's process without CAP_SYS_PTRACE): their namespaces may be missing.
    """

    unreadable: int = 0


def host_netns(proc_root: str = "/proc") -> int:
    """The inode of the daemon's own network namespace: its "host".

    /proc/self is the thread group leader, whose namespace is the daemon's
    even while a helper thread is inside another one (nsopen). Not PID 1's:
    a daemon started in a namespace of its own calls that one the host.
    """
    return os.stat(f"{proc_root}/self/ns/net").st_ino


def discover(
    proc_root: str = "/proc",
    mount_dirs: Iterable[str] = DEFAULT_MOUNT_DIRS,
    known: dict[str, int] | None = None,
) -> Discovered:
    """Every network namespace a process is in or a bind mount holds.

    `known` (pid -> namespace inode, kept by the caller between calls)
    spares the readlink of every process seen before: a process moves to
    another namespace only by setns(2) or unshare(2), which the tools that
    make namespaces (ip netns exec, unshare, container runtimes) do before
    they exec, in a new process. It is updated in place.
    """
    found = Discovered()
    nsfs_device = os.stat(f"{proc_root}/self/ns/net").st_dev
    for directory in mount_dirs:
        _add_mounts(found, directory, nsfs_device)
    _add_processes(found, proc_root, {} if known is None else known)
    return found


def _add_mounts(found: Discovered, directory: str, nsfs_device: int) -> None:
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return  # no such runtime here, or not ours to read
    for name in names:
        path = os.path.join(directory, name)
        try:
            status = os.stat(path)
        except OSError:
            continue  # removed while we looked, or a mount we may not stat
        if status.st_dev != nsfs_device:
            continue  # a left-over file with nothing mounted on it
        namespace = found.get(status.st_ino)
        if namespace is None:
            namespace = found[status.st_ino] = Namespace(status.st_ino, path)
        namespace.mounts.append(path)
        if directory.rstrip("/") == IP_NETNS_DIR and namespace.name is None:
            namespace.name = name


def _add_processes(found: Discovered, proc_root: str, known: dict[str, int]) -> None:
    directory = os.open(proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        entries = [entry for entry in os.listdir(directory) if entry.isdigit()]
        for gone in known.keys() - set(entries):
            del known[gone]
        for entry in entries:
            inode = known.get(entry)
            if inode is None:
                inode = _namespace_of(found, directory, entry)
                if inode is None:
                    continue
                known[entry] = inode
            pid = int(entry)
            namespace = found.get(inode)
            if namespace is None:
                path = f"{proc_root}/{entry}/ns/net"
                namespace = found[inode] = Namespace(inode, path)
            namespace.pids.append(pid)
    finally:
        os.close(directory)


def _namespace_of(found: Discovered, directory: int, entry: str) -> int | None:
    try:
        # Relative to the open /proc: the kernel walks 3 names, not 4.
        link = os.readlink(f"{entry}/ns/net", dir_fd=directory)
    except PermissionError:
        found.unreadable += 1
        return None
    except OSError:
        return None  # the process exited (ENOENT) or is a zombie (no ns)
    if not link.startswith(_LINK_PREFIX):
        return None  # not a network namespace link: nothing to name it by
    return int(link[len(_LINK_PREFIX) : -1])


def read_cgroup(pid: int, proc_root: str = "/proc") -> str | None:
    """The text of /proc/PID/cgroup (for containers.container_of); None when
    the process is gone or we may not read it."""
    try:
        with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as file:
            return file.read()
    except OSError:
        return None
