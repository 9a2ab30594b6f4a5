"""Closes as they happen: the sock_diag destroy multicast groups of one network namespace.

`DestroyWatch` owns a NETLINK_SOCK_DIAG socket that joined the four
SKNLGRP_INET*_DESTROY groups (include/uapi/linux/sock_diag.h, Linux 4.2).
No capability is needed to join (net/core/sock_diag.c creates the kernel
socket with NL_CFG_F_NONROOT_RECV). The kernel announces a socket of the
namespace the netlink socket was created in, and only that one; a watch
for a container's namespace is handed a socket opened inside it, and
stamps `netns` on what it reports.

Every TCP and UDP socket is announced, connections included; the BPF
filter of destroy_parse drops those in the kernel, so connection churn
costs nothing here. The messages are decoded by destroy_parse.parse_destroyed.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Self

from portwatchd.model import Endpoint
from portwatchd.sources.base import UNAVAILABLE_ERRNOS, ScanError, SourceUnavailable
from portwatchd.sources.destroy_parse import filter_program, parse_destroyed
from portwatchd.sources.netlink_parse import interface_name
from portwatchd.transient import PortRange, parse_port_range

SOURCE: Final = "sock_diag destroy"
NETLINK_SOCK_DIAG: Final = 4
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
SO_ATTACH_FILTER: Final = 26
SO_RCVBUFFORCE: Final = 33
# SKNLGRP_INET_TCP_DESTROY, _UDP_, INET6_TCP_, INET6_UDP_DESTROY.
DESTROY_GROUPS: Final = (1, 2, 3, 4)
# Android's netd raises the same subscription's buffer to 512 KiB: a burst
# of closes (a server stopping with thousands of sockets) must fit.
RECEIVE_BUFFER_BYTES: Final = 1 << 19
DATAGRAM_BYTES: Final = 1 << 16
# A read returns after this many datagrams even if more are queued; the
# descriptor stays readable, so the caller's loop comes back for the rest.
MAX_DATAGRAMS_PER_READ: Final = 4096
_SOCK_FPROG: Final = struct.Struct("@HP")  # struct sock_fprog { u16 len; sock_filter *filter; }


@dataclass(frozen=True, slots=True)
class DestroyBatch:
    """What one read() found: the listening-shaped sockets closed, and whether some were lost.

    `overrun` (the kernel said ENOBUFS: messages were dropped for lack of
    buffer) means a close may have gone unseen: look at everything anew.
    """

    sockets: list[Endpoint] = field(default_factory=list)
    overrun: bool = False


def _open_error(exc: OSError, what: str) -> ScanError:
    reason = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (errno_codes.EAFNOSUPPORT, errno_codes.EPERM, errno_codes.EACCES):
        hint = " (a sandbox refuses AF_NETLINK: allow it, e.g. RestrictAddressFamilies=AF_NETLINK)"
    elif exc.errno == errno_codes.EPROTONOSUPPORT:
        hint = " (the kernel has no sock_diag: CONFIG_INET_DIAG, module inet_diag)"
    elif exc.errno in (errno_codes.EINVAL, errno_codes.ENOENT):
        hint = " (the kernel has no destroy groups: they came with Linux 4.2)"
    message = f"{what}: {reason}{hint}"
    if exc.errno in UNAVAILABLE_ERRNOS or exc.errno == errno_codes.EINVAL:
        return SourceUnavailable(message, source=SOURCE, errno=exc.errno)
    return ScanError(message, source=SOURCE, errno=exc.errno)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER: `program` is an array of struct sock_filter (8 bytes each)."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SOCK_FPROG.pack(len(program) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def raise_receive_buffer(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE where permitted (CAP_NET_ADMIN), else SO_RCVBUF (capped by rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class DestroyWatch:
    """The closes of TCP and UDP sockets bound to a port and without a peer, in one namespace.

    `sock`, if given, is an unbound NETLINK_SOCK_DIAG socket created in the
    namespace to watch (the watch owns it from then on); otherwise one is
    created in the caller's. `netns` is the namespace's inode, 0 for the
    host's, stamped on every endpoint. Non-blocking: poll `fileno()` for
    reading, then read(). Raises SourceUnavailable when the kernel or a
    sandbox refuses the subscription.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        netns: int = 0,
        receive_buffer: int = RECEIVE_BUFFER_BYTES,
        interface_name: Callable[[int], str] = interface_name,
    ) -> None:
        self.netns = netns
        self._interface_name = interface_name
        self._buffer = bytearray(DATAGRAM_BYTES)
        self._view = memoryview(self._buffer)
        if sock is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            except OSError as exc:
                raise _open_error(exc, "cannot open a NETLINK_SOCK_DIAG socket") from exc
        try:
            self._subscribe(sock, receive_buffer)
        except OSError as exc:
            sock.close()
            raise _open_error(exc, "cannot subscribe to sock_diag destroy messages") from exc
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    @staticmethod
    def _subscribe(sock: socket.socket, receive_buffer: int) -> None:
        raise_receive_buffer(sock, receive_buffer)
        sock.bind((0, 0))
        # Before joining: a message queued between the join and the attach
        # would pass unfiltered.
        attach_filter(sock, filter_program())
        for group in DESTROY_GROUPS:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        sock.setblocking(False)

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("DestroyWatch is closed")
        return self._sock.fileno()

    def read(self) -> DestroyBatch:
        """Every message queued now (up to MAX_DATAGRAMS_PER_READ); never blocks.

        Raises ScanError for an OS error other than "nothing more" and
        "overrun", and ParseError (a ScanError) for bytes the kernel would
        not send: either way, look at everything anew.
        """
        if self._sock is None:
            raise ValueError("DestroyWatch is closed")
        batch = DestroyBatch()
        for _ in range(MAX_DATAGRAMS_PER_READ):
            try:
                size = self._sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno_codes.ENOBUFS:
                    # The kernel dropped messages; the queue goes on after them.
                    batch = DestroyBatch(batch.sockets, overrun=True)
                    continue
                raise ScanError(
                    f"reading sock_diag destroy messages: {exc.strerror or exc}",
                    source=SOURCE,
                    errno=exc.errno,
                ) from exc
            batch.sockets.extend(
                parse_destroyed(
                    self._view[: min(size, DATAGRAM_BYTES)],
                    netns=self.netns,
                    interface_name=self._interface_name,
                )
            )
        return batch

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


EPHEMERAL_RANGE_PATH: Final = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_range(path: str = EPHEMERAL_RANGE_PATH) -> PortRange:
    """The ephemeral port range of the caller's network namespace (the sysctl is per namespace).

    Raises ScanError, naming the file, when it cannot be read or parsed.
    """
    try:
        with open(path, encoding="ascii") as f:
            return parse_port_range(f.read(), source=path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ScanError(f"cannot read the ephemeral port range: {exc}", source=path) from exc
