"""Open sockets inside another network namespace, from a helper thread.

A socket belongs to the network namespace its creator was in when it was
made, for its whole life: a NETLINK_SOCK_DIAG socket made inside a
container's namespace dumps that namespace's sockets from then on, from
any thread. So a short-lived thread enters the namespace (setns(2) with
CLONE_NEWNET moves only the calling thread), makes the sockets and ends.
It never goes back and never runs anything else: a thread that could not
return could otherwise run later work in the wrong namespace.

setns needs CAP_SYS_ADMIN (in the namespace's owning user namespace);
without it the kernel answers EPERM and `NamespaceEntryRefused` tells the
caller to fall back to /proc/PID/net/* of a process inside the namespace
(sources/procnet.py). Opening /proc/PID/ns/net of another user's process
needs ptrace read access (CAP_SYS_PTRACE).

os.setns exists from Python 3.12 only; Debian 12 has 3.11: ctypes calls libc.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Final

from portwatchd.sources.base import ScanError, SourceUnavailable

CLONE_NEWNET: Final = 0x40000000
NETLINK_ROUTE: Final = 0
NETLINK_SOCK_DIAG: Final = 4
SOURCE: Final = "setns"

# (family, type, protocol) as socket.socket() takes them.
SocketSpec = tuple[int, int, int]
SOCK_DIAG: Final[SocketSpec] = (socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
ROUTE: Final[SocketSpec] = (socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


class NamespaceEntryRefused(SourceUnavailable):
    """setns was refused (no CAP_SYS_ADMIN): read /proc/PID/net/* instead."""


class NamespaceGoneError(ScanError):
    """The namespace's file is gone: its last process exited, its mount was removed."""


def open_in_namespace(path: str, specs: Sequence[SocketSpec]) -> list[socket.socket]:
    """Sockets made inside the network namespace that `path` opens, one per spec.

    `path` is a bind mount (/run/netns/NAME) or /proc/PID/ns/net. Raises
    NamespaceGoneError when the file is gone, NamespaceEntryRefused when we
    may not open it or enter it, ScanError for anything else.
    """
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NamespaceGoneError(f"{path} is gone", source=path, errno=exc.errno) from exc
    except PermissionError as exc:
        raise NamespaceEntryRefused(
            f"cannot open {path}: {exc.strerror} (another user's process needs CAP_SYS_PTRACE)",
            source=path,
            errno=exc.errno,
        ) from exc
    except OSError as exc:
        raise ScanError(
            f"cannot open {path}: {exc.strerror}", source=path, errno=exc.errno
        ) from exc
    try:
        return _open_from_helper_thread(target, path, specs)
    finally:
        os.close(target)


def _open_from_helper_thread(
    target: int, path: str, specs: Sequence[SocketSpec]
) -> list[socket.socket]:
    made: list[socket.socket] = []
    failure: list[BaseException] = []

    def enter_and_open() -> None:
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                failure.append(_setns_error(code, path))
                return
            made.extend(socket.socket(*spec) for spec in specs)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    helper = threading.Thread(target=enter_and_open, name="portwatchd-setns", daemon=True)
    helper.start()
    helper.join()
    if failure:
        for sock in made:
            sock.close()
        error = failure[0]
        if isinstance(error, OSError) and not isinstance(error, ScanError):
            raise ScanError(
                f"cannot open a socket inside {path}: {error.strerror or error}",
                source=path,
                errno=error.errno,
            ) from error
        raise error
    return made


def _setns_error(code: int, path: str) -> ScanError:
    reason = os.strerror(code)
    if code in (errno_codes.EPERM, errno_codes.EACCES):
        return NamespaceEntryRefused(
            f"cannot enter the network namespace {path}: {reason} "
            "(setns needs CAP_SYS_ADMIN, and a unit's RestrictNamespaces= must allow net;"
            " reading /proc/PID/net instead)",
            source=path,
            errno=code,
        )
    return ScanError(f"setns({path}) failed: {reason}", source=path, errno=code)


def socket_factory(path: str, spec: SocketSpec = SOCK_DIAG) -> Callable[[], socket.socket]:
    """A factory making one socket in that namespace, for NetlinkScanner's
    `socket_factory` (called again to replace a socket after an error)."""

    def make() -> socket.socket:
        return open_in_namespace(path, (spec,))[0]

    return make
