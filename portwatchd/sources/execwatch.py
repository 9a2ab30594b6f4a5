"""New programs as they start: exec events from the kernel's proc connector.

A new listener almost always comes from a process that just exec'd, so an
exec is the moment to look for one. `ExecWatch` subscribes to the proc
connector (NETLINK_CONNECTOR, CN_IDX_PROC; drivers/connector/cn_proc.c)
and counts exec events. Kernel facts it relies on:
- the request is a cn_msg carrying PROC_CN_MCAST_LISTEN; the kernel
  answers it with an acknowledgement (a PROC_EVENT_NONE event whose `seq`
  is ours and whose `ack` is ours + 1, `err` 0 or an errno), sent to
  every listener of the group;
- since Linux 6.6 the request may be a `struct proc_input` naming the
  events wanted (PROC_EVENT_EXEC), filtered in the kernel; an older kernel
  ignores a request of that size without a word, so no acknowledgement
  means "try the plain request";
- Linux 6.1 (Debian 12) wants CAP_NET_ADMIN, both to join the group and
  in the request (EPERM); later kernels dropped that check;
- the connector lives only in the initial network namespace: elsewhere
  the request is refused with ECONNREFUSED;
- a request from a non-initial PID or user namespace is ignored: no
  acknowledgement ever comes. PIDs in events are the initial namespace's.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Final, Self

from portwatchd.sources.destroy import raise_receive_buffer

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2
PROC_EVENT_NONE: Final = 0
PROC_EVENT_EXEC: Final = 0x00000002
NLMSG_DONE: Final = 3
# struct nlmsghdr (host order) and struct cn_msg { struct cb_id { u32 idx, val; };
# u32 seq, ack; u16 len, flags; u8 data[]; }
NLMSGHDR: Final = struct.Struct("=IHHII")
CN_MSG: Final = struct.Struct("=IIIIHH")
# struct proc_event { u32 what, cpu; u64 timestamp_ns; union event_data; }:
# exec: { pid_t process_pid, process_tgid; }, ack: { u32 err; }
PROC_EVENT: Final = struct.Struct("=IIQ")
EVENT_DATA: Final = struct.Struct("=ii")
HEADERS: Final = NLMSGHDR.size + CN_MSG.size
RECEIVE_BUFFER_BYTES: Final = 1 << 20
ACK_TIMEOUT_S: Final = 0.5
DATAGRAM_BYTES: Final = 1 << 16
MAX_DATAGRAMS_PER_READ: Final = 4096


class TriggerUnavailable(Exception):  # noqa: N818 (a state, as SourceUnavailable)
    """A trigger cannot work here; `reason` says why, for status and the log."""

    def __init__(self, reason: str, *, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


@dataclass(frozen=True, slots=True)
class ExecBatch:
    """What one read() found: how many execs, by which PIDs (the initial namespace's)."""

    execs: int = 0
    pids: list[int] = field(default_factory=list)
    overrun: bool = False  # ENOBUFS: some events were lost


def _refusal(exc: OSError, what: str) -> TriggerUnavailable:
    code = exc.errno
    if code in (errno_codes.EPERM, errno_codes.EACCES):
        why = "it needs CAP_NET_ADMIN on this kernel (Linux before 6.6)"
    elif code == errno_codes.ECONNREFUSED:
        why = "it works only in the initial network namespace, and portwatchd runs in another"
    elif code in (errno_codes.EPROTONOSUPPORT, errno_codes.EAFNOSUPPORT, errno_codes.ENOENT):
        why = "this kernel has no proc connector (CONFIG_PROC_EVENTS), or a sandbox refuses it"
    else:
        why = exc.strerror or str(exc)
    return TriggerUnavailable(f"exec events unavailable: {what}: {why}", errno=code)


def kernel_filters_events(release: str) -> bool:
    """Whether a kernel of this `uname -r` filters proc events by type (Linux >= 6.6).

    >>> kernel_filters_events("6.1.0-28-amd64"), kernel_filters_events("6.18.44-fc")
    (False, True)
    """
    numbers = [int("".join(c for c in part if c.isdigit()) or 0) for part in release.split(".")[:2]]
    return tuple(numbers) >= (6, 6)


def listen_request(ack: int, *, event_filter: bool, op: int = PROC_CN_MCAST_LISTEN) -> bytes:
    """A PROC_CN_MCAST_LISTEN request; with `event_filter`, exec events only (Linux >= 6.6).

    `ack` comes back in the acknowledgement, plus one.
    """
    data = struct.pack("=II", op, PROC_EVENT_EXEC) if event_filter else struct.pack("=I", op)
    header = NLMSGHDR.pack(HEADERS + len(data), NLMSG_DONE, 0, 0, 0)
    return header + CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(data), 0) + data


def parse_events(data: bytes | memoryview) -> list[tuple[int, int, int, int, int]]:
    """(what, seq, ack, first, second) of each proc event in one datagram.

    `first` and `second` are the event data's first two ints: for an exec
    the PID and the thread group's ID, for an acknowledgement the error.
    Messages too short to hold an event are skipped.
    """
    events = []
    offset = 0
    while len(data) - offset >= NLMSGHDR.size:
        msg_len = NLMSGHDR.unpack_from(data, offset)[0]
        if msg_len < NLMSGHDR.size or msg_len > len(data) - offset:
            break
        end = offset + msg_len
        body = offset + NLMSGHDR.size
        if end - body >= CN_MSG.size + PROC_EVENT.size + EVENT_DATA.size:
            _idx, _val, seq, ack, _len, _flags = CN_MSG.unpack_from(data, body)
            what = PROC_EVENT.unpack_from(data, body + CN_MSG.size)[0]
            first, second = EVENT_DATA.unpack_from(data, body + CN_MSG.size + PROC_EVENT.size)
            events.append((what, seq, ack, first, second))
        offset = (end + 3) & ~3
    return events


class ExecWatch:
    """Exec events of every process, as counts and PIDs. Non-blocking once open.

    Raises TriggerUnavailable, naming the cause, where the kernel refuses
    or ignores the subscription. `kernel_filtered` says whether the kernel
    sends exec events only (Linux >= 6.6) or every process event.
    """

    def __init__(
        self, *, ack_timeout: float = ACK_TIMEOUT_S, receive_buffer: int = RECEIVE_BUFFER_BYTES
    ) -> None:
        self.kernel_filtered = False
        self._listening = False
        self._buffer = bytearray(DATAGRAM_BYTES)
        # Every listener of the group receives every acknowledgement: ours
        # is told apart by an `ack` number no other process is likely to use.
        self._ack = secrets.randbits(31)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise _refusal(exc, "cannot open a NETLINK_CONNECTOR socket") from exc
        self._sock: socket.socket | None = sock
        try:
            self._subscribe(sock, ack_timeout, receive_buffer)
        except BaseException:
            self.close()
            raise

    def _subscribe(self, sock: socket.socket, ack_timeout: float, receive_buffer: int) -> None:
        try:
            raise_receive_buffer(sock, receive_buffer)
            sock.bind((0, CN_IDX_PROC))  # port ID chosen by the kernel
        except OSError as exc:
            raise _refusal(exc, "cannot join the proc connector's group") from exc
        sock.setblocking(False)
        # The plain request first: its acknowledgement tells whether we are
        # heard at all. The filtered one's would be dropped by the filter it
        # sets (an acknowledgement is a PROC_EVENT_NONE, not an exec).
        error = self._request(sock, event_filter=False, timeout=ack_timeout)
        if error is None:
            raise TriggerUnavailable(
                "exec events unavailable: the kernel ignored PROC_CN_MCAST_LISTEN (no answer "
                f"within {ack_timeout:g} s), as it does for a process in a non-initial PID or"
                " user namespace (a container)"
            )
        if error != 0:
            raise _refusal(OSError(error, os.strerror(error)), "PROC_CN_MCAST_LISTEN refused")
        self._listening = True
        # Exec events only, from Linux 6.6 on; an older kernel ignores a
        # request of this size and goes on sending every event.
        self._request(sock, event_filter=True, timeout=0)
        self.kernel_filtered = kernel_filters_events(os.uname().release)

    def _request(self, sock: socket.socket, *, event_filter: bool, timeout: float) -> int | None:
        """Send a listen request; the error its acknowledgement carries, None if none came.

        The acknowledgement is told apart from others' by `ack` (ours + 1):
        its `seq` is not ours, as send_msg() in cn_proc.c numbers every
        message it sends, acknowledgements too.
        """
        self._ack = ack = (self._ack + 2) & 0x7FFFFFFF
        try:
            sock.send(listen_request(ack, event_filter=event_filter))
        except OSError as exc:
            raise _refusal(exc, "PROC_CN_MCAST_LISTEN refused") from exc
        give_up = time.monotonic() + timeout
        while (left := give_up - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            try:
                size = sock.recv_into(self._buffer)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno_codes.ENOBUFS:
                    continue
                raise _refusal(exc, "reading the acknowledgement") from exc
            for what, _seq, acked, error, _ in parse_events(memoryview(self._buffer)[:size]):
                if what == PROC_EVENT_NONE and acked == ack + 1:
                    return error
        return None

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("ExecWatch is closed")
        return self._sock.fileno()

    def read(self) -> ExecBatch:
        """Every event queued now (up to MAX_DATAGRAMS_PER_READ); never blocks."""
        if self._sock is None:
            raise ValueError("ExecWatch is closed")
        pids: list[int] = []
        overrun = False
        for _ in range(MAX_DATAGRAMS_PER_READ):
            try:
                size = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno_codes.ENOBUFS:
                    raise TriggerUnavailable(
                        f"exec events: reading failed: {exc.strerror or exc}", errno=exc.errno
                    ) from exc
                overrun = True
                continue
            for what, _seq, _ack, _pid, tgid in parse_events(memoryview(self._buffer)[:size]):
                if what == PROC_EVENT_EXEC:
                    pids.append(tgid)
        return ExecBatch(len(pids), pids, overrun)

    def close(self) -> None:
        if self._sock is not None:
            if self._listening:
                # The kernel counts listeners and builds events while any is
                # left; a socket closed without IGNORE stays counted before
                # Linux 6.6 (no release hook there).
                with contextlib.suppress(OSError):
                    self._sock.send(listen_request(0, event_filter=False, op=PROC_CN_MCAST_IGNORE))
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
