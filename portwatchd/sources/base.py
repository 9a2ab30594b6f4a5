"""What every source of listening sockets shares: the Scanner protocol and
its errors, the one translation of OS errors into "unavailable here" or
"this scan failed". The sources import this; nothing here imports them.
"""

from __future__ import annotations

import errno
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
    # Whether a second scan right after a first is an independent look: a
    # socket both miss is gone. False where a re-read tends to miss the
    # very same socket again (see ProcScanner).
    rereads_independent: bool

    @property
    def gone_namespaces(self) -> frozenset[int]:
        """Network namespaces released lately: their listeners closed because
        the namespace is gone. Empty for a source of one namespace."""
        ...

    def scan(self) -> list[Endpoint]:
        """Every listening TCP socket and bound, unconnected UDP socket; raises ScanError."""
        ...

    def close(self) -> None: ...
