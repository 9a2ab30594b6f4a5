"""Where listening sockets come from: the errors, the Scanner protocol, the choice of source.

Two sources exist: netlink sock_diag (`netlink.NetlinkScanner`, fast, knows
interfaces and IPV6_V6ONLY) and the /proc/net text tables
(`procnet.ProcScanner`, slower, readable everywhere). `open_scanner("auto")`
prefers netlink and falls back to /proc, saying so once, when the kernel or a
sandbox (seccomp, RestrictAddressFamilies=) refuses sock_diag.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable
from typing import Protocol

from portwatchd.model import Endpoint

BACKENDS = ("auto", "netlink", "proc")

# errno values meaning "this source is not available here", as opposed to
# "this scan failed": the netlink family is missing, or a sandbox refuses it.
UNAVAILABLE_ERRNOS = frozenset(
    {
        errno.EPERM,
        errno.EACCES,
        errno.EPROTONOSUPPORT,
        errno.EAFNOSUPPORT,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.ENOSYS,
        errno.ENOENT,
    }
)


class ScanError(Exception):
    """A source failed to list the listening sockets.

    `source` names what was read ("netlink" or a file path); `errno` is the
    kernel's error number when there is one.
    """

    def __init__(self, message: str, *, source: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.errno = errno


class SourceUnavailable(ScanError):  # noqa: N818 (the name docs/ARCHITECTURE.md gives it)
    """The kernel or a sandbox refuses this source altogether: try the other one."""


class ParseError(ScanError):
    """The source answered with something we cannot decode.

    `line` (1-based, for /proc text) or `offset` (byte offset in one
    received netlink datagram) says where.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = source
        if line is not None:
            where += f", line {line}"
        if offset is not None:
            where += f", byte offset {offset}"
        super().__init__(f"{where}: {message}", source=source)
        self.line = line
        self.offset = offset


class Scanner(Protocol):
    """A source of the current listening sockets."""

    name: str  # "netlink" | "proc"

    def scan(self) -> list[Endpoint]:
        """Every listening TCP socket and bound, unconnected UDP socket; raises ScanError."""
        ...

    def close(self) -> None: ...


def _log_to_stderr(message: str) -> None:
    print(f"portwatchd: {message}", file=sys.stderr, flush=True)


def open_scanner(
    backend: str = "auto",
    log: Callable[[str], None] = _log_to_stderr,
    proc_root: str = "/proc/self",
    netlink_socket_factory: Callable[[], socket.socket] | None = None,
) -> Scanner:
    """Open the named source: "netlink", "proc", or "auto" (netlink, else /proc).

    "auto" opens netlink and runs one scan to prove the kernel answers; if
    sock_diag is refused it logs once why and returns a /proc scanner. Any
    other failure (a bug, a malformed reply) is raised, not papered over.
    `netlink_socket_factory` replaces socket creation (tests inject refusal).
    """
    # Imported here: netlink and procnet import the errors defined above.
    from portwatchd.netlink import NetlinkScanner
    from portwatchd.procnet import ProcScanner

    if backend not in BACKENDS:
        raise ValueError(
            f"unknown scanner backend {backend!r}: choose one of {', '.join(BACKENDS)}"
        )
    if backend == "proc":
        return ProcScanner(root=proc_root)
    if backend == "netlink":
        return NetlinkScanner(socket_factory=netlink_socket_factory)

    def fall_back(reason: SourceUnavailable) -> Scanner:
        log(
            f"netlink sock_diag is not available ({reason}); falling back to {proc_root}/net,"
            " which is slower and cannot see bound devices (SO_BINDTODEVICE) or IPV6_V6ONLY"
        )
        return ProcScanner(root=proc_root)

    try:
        scanner = NetlinkScanner(socket_factory=netlink_socket_factory)
    except SourceUnavailable as exc:
        return fall_back(exc)
    try:
        scanner.scan()
    except SourceUnavailable as exc:
        scanner.close()
        return fall_back(exc)
    except BaseException:
        scanner.close()
        raise
    return scanner
