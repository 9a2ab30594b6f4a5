"""Which container a process is in, from the text of /proc/PID/cgroup. Pure: no I/O.

Container runtimes put each container's processes in a cgroup named after
it; the names differ by runtime and by cgroup driver:

    docker     /system.slice/docker-<64 hex>.scope        (systemd driver)
               /docker/<64 hex>                           (cgroupfs driver)
    podman     /machine.slice/libpod-<64 hex>.scope       (also rootless, under user@.service)
               /machine.slice/libpod-conmon-<64 hex>.scope  (its monitor, conmon)
               /libpod_parent/libpod-<64 hex>             (cgroupfs driver)
    containerd .../cri-containerd-<64 hex>.scope          (Kubernetes with the systemd driver)
    crio       .../crio-<64 hex>.scope
    kubernetes /kubepods/<qos>/pod<uid>/<64 hex>          (cgroupfs driver: runtime not told)
    nspawn     /machine.slice/machine-<name>.scope        (systemd escapes "-" as \\x2d)
    lxc        /lxc.payload.<name>/...  (LXC 4+), /lxc/<name>/... (older)

A line of the file is "hierarchy-ID:controllers:path"; the unified
hierarchy (cgroup v2) is the line "0::path". The first line whose path
names a container decides.

>>> container_of("0::/system.slice/docker-" + "ab" * 32 + ".scope\\n").runtime
'docker'
>>> container_of("0::/machine.slice/machine-web\\\\x2d1.scope/payload\\n").name
'web-1'
>>> container_of("0::/user.slice/user-1000.slice/session-2.scope\\n") is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Container:
    """A container: its id, the runtime that made it, its name when the cgroup tells it."""

    id: str
    runtime: str  # docker | podman | containerd | crio | kubernetes | nspawn | lxc
    name: str | None = None


_ID: Final = r"([0-9a-f]{64})"
# (runtime, pattern on one cgroup path, whether group 1 is a name rather than an id)
_PATTERNS: Final[tuple[tuple[str, re.Pattern[str], bool], ...]] = (
    ("docker", re.compile(rf"/docker-{_ID}\.scope(?:/|$)"), False),
    ("docker", re.compile(rf"/docker/{_ID}(?:/|$)"), False),
    ("podman", re.compile(r"/libpod-(?:conmon-)?([0-9a-f]{12,64})(?:\.scope)?(?:/|$)"), False),
    ("containerd", re.compile(rf"/cri-containerd-{_ID}\.scope(?:/|$)"), False),
    ("crio", re.compile(rf"/crio-(?:conmon-)?{_ID}\.scope(?:/|$)"), False),
    ("kubernetes", re.compile(rf"/kubepods[^/]*(?:/[^/]+)*?/pod[0-9a-f_-]+/{_ID}(?:/|$)"), False),
    ("nspawn", re.compile(r"/machine-([^/]+)\.scope(?:/|$)"), True),
    ("lxc", re.compile(r"/lxc\.payload\.([^/]+)(?:/|$)"), True),
    ("lxc", re.compile(r"^/lxc/([^/]+)(?:/|$)"), True),
)
_ESCAPE: Final = re.compile(r"\\x([0-9a-fA-F]{2})")


def unescape_unit_name(text: str) -> str:
    r"""Undo systemd's escaping of a unit name part: "web\x2d1" -> "web-1"."""
    return _ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)


def container_of_path(path: str) -> Container | None:
    """The container one cgroup path names, or None.

    >>> container_of_path("/lxc.payload.db/system.slice/sshd.service")
    Container(id='db', runtime='lxc', name='db')
    """
    for runtime, pattern, is_name in _PATTERNS:
        match = pattern.search(path)
        if match is None:
            continue
        if is_name:
            name = unescape_unit_name(match[1])
            return Container(id=name, runtime=runtime, name=name)
        return Container(id=match[1], runtime=runtime)
    return None


def container_of(cgroup_text: str) -> Container | None:
    """The container the process whose /proc/PID/cgroup this is runs in, or None."""
    for line in cgroup_text.splitlines():
        fields = line.split(":", 2)  # hierarchy-ID:controllers:path
        if len(fields) != 3 or not fields[2]:
            continue
        found = container_of_path(fields[2])
        if found is not None:
            return found
    return None
