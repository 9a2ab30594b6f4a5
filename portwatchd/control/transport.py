"""The control socket's transport: the listener, one object per connection, the limits.

Everything here runs in reactor callbacks on non-blocking sockets; the loop
never waits on a client. What a request means is not decided here: every
complete request line goes to an `Answer` callable (control.handlers), and
what it returns is sent back:

- `bytes`: one whole, small reply;
- an iterator of byte chunks: a long reply produced in bounded slices;
- a `Stream`: a reply that comes over time (a deferred answer, a follow
  stream), which calls `wake()` when it has more.

A connection pulls the next chunk only while its unsent bytes are below
WRITE_BUFFER_HIGH, and at most one chunk per callback: a whole-history
answer is never built whole, a slow reader costs one slice of memory, and
other clients and the scan loop run between two slices.

Limits, per connection: a read buffer of one request line (MAX_LINE bytes;
past it the connection is refused with line_too_long, and nothing more is
read), a write timeout for a client that stays behind, an idle timeout
while waiting for a request. Per server: `max_clients` connections, of which
one uid holds at most `per_uid_limit`; root (uid 0) gets ROOT_RESERVED_SLOTS
more, so that a flood from others never locks the administrator out.
A refused client is told `busy`, with the reason only: portwatchctl adds
what to do ("try again").
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from portwatchd import protocol
from portwatchd.control.connection import Connection
from portwatchd.control.replies import Stream
from portwatchd.control.socketfile import ControlError, SocketFile, inherited_listen_socket
from portwatchd.reactor import Reactor, Timer

__all__ = [
    "ROOT_RESERVED_SLOTS",
    "UID_SHARE_DIVISOR",
    "Answer",
    "Caller",
    "ControlError",
    "ControlServer",
    "DeferredReply",
    "Reply",
    "Stream",
    "inherited_listen_socket",
]

# One uid may hold at most max_clients // UID_SHARE_DIVISOR connections.
# Why a quarter: the socket's group is typically root plus a few operators
# or monitoring agents; a quarter lets one runaway script (a loop of
# `portwatchctl events --follow`) hold a fair part but always leaves room
# for three others. A single-uid deployment still gets max(1, ...) slots.
UID_SHARE_DIVISOR = 4
# Connections root may open past max_clients: root can always get in, to
# look at and repair a daemon that others are flooding.
ROOT_RESERVED_SLOTS = 4
_ACCEPTS_PER_WAKE = 64  # then let other connections and the scan loop run
_ACCEPT_PAUSE_S = 1.0  # out of file descriptors: stop accepting this long
_DRAIN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, as the handlers see it."""

    uid: int | None  # SO_PEERCRED; None when the kernel did not say
    connections: int  # the server's open connections, this one included


Reply = bytes | Iterator[bytes] | Stream
Answer = Callable[[bytes, Caller], Reply]


class DeferredReply(Stream):
    """A reply that is ready later (a reload's outcome): `resolve()` sends it.

    Until then the connection answers nothing else, so replies keep the
    order of the requests. Resolving after the client left does nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self._data: bytes | None = None

    def resolve(self, data: bytes) -> None:
        if self._data is not None or self.finished:
            return
        self._data = data
        self.wake()

    def pull(self) -> bytes | None:
        data, self._data = self._data, None
        if data is not None:
            self.finished = True
        return data


def _log_to_stderr(message: str) -> None:
    print(f"portwatchd: control: {message}", file=sys.stderr, flush=True)


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves request lines on a Unix socket to one `Answer` callable."""

    def __init__(
        self,
        answer: Answer,
        reactor: Reactor,
        *,
        path: str = protocol.DEFAULT_SOCKET,
        group: str = "",
        mode: int = 0o660,
        max_clients: int = 64,
        idle_timeout: float = 60.0,
        write_timeout: float = 10.0,
        inherited: socket.socket | None = None,
        log: Callable[[str], None] = _log_to_stderr,
    ) -> None:
        self.answer = answer
        self.reactor = reactor
        self.path = path
        self.max_clients = max_clients
        self.per_uid_limit = max(1, max_clients // UID_SHARE_DIVISOR)
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.log = log
        self._inherited = inherited
        self._file = SocketFile(path, group=group, mode=mode, log=log)
        self._listener: socket.socket | None = None
        self._accept_pause: Timer | None = None
        self._connections: set[Connection] = set()
        self._per_uid: Counter[int | None] = Counter()

    def start(self) -> None:
        """Listen: adopt the socket systemd passed, or create `path` (mode, root:group)."""
        sock = self._inherited if self._inherited is not None else self._file.bind()
        sock.setblocking(False)
        self._listener = sock
        self.reactor.add_reader(sock, self._accept)

    def close(self) -> None:
        """Stop accepting, close every client, remove the socket file if we created it."""
        if self._accept_pause is not None:
            self._accept_pause.cancel()
            self._accept_pause = None
        if self._listener is not None:
            self.reactor.remove(self._listener)
            self._listener.close()
            self._listener = None
        for connection in list(self._connections):
            connection.close()
        self._file.remove()

    @property
    def client_count(self) -> int:
        return len(self._connections)

    def caller(self, uid: int | None) -> Caller:
        return Caller(uid=uid, connections=len(self._connections))

    # --- accepting ------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        for _ in range(_ACCEPTS_PER_WAKE):
            if listener is None or self._listener is not listener:
                return
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            try:
                self._adopt(sock)
            except Exception as exc:
                self.log(f"cannot set up a client connection: {type(exc).__name__}: {exc}")
                sock.close()

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.log(f"accept failed: {exc}")
            return
        # The connection stays queued and the listener stays readable: pause,
        # or the loop would spin on it.
        self.log(f"cannot accept clients: {exc.strerror}; pausing {_ACCEPT_PAUSE_S:g} s")
        listener = self._listener
        if listener is None:
            return
        self.reactor.remove_reader(listener)

        def resume() -> None:
            self._accept_pause = None
            if self._listener is listener:
                self.reactor.add_reader(listener, self._accept)

        self._accept_pause = self.reactor.call_later(_ACCEPT_PAUSE_S, resume)

    def refusal(self, uid: int | None) -> str | None:
        """Why a new connection from `uid` is refused now, or None to admit it."""
        total = len(self._connections)
        if uid == 0:
            if total < self.max_clients + ROOT_RESERVED_SLOTS:
                return None
            return (
                f"too many clients ({total}, root's {ROOT_RESERVED_SLOTS} reserved slots included)"
            )
        if total >= self.max_clients:
            return f"too many clients ({self.max_clients})"
        held = self._per_uid[uid]
        if held >= self.per_uid_limit:
            return (
                f"too many connections from your user (uid {uid} holds {held}; "
                f"at most {self.per_uid_limit} of the daemon's {self.max_clients} per user); "
                "close some"
            )
        return None

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        uid = _peer_uid(sock)
        reason = self.refusal(uid)
        if reason is not None:
            self._turn_away(sock, reason)
            return
        connection = Connection(self, sock, uid)
        self._connections.add(connection)
        self._per_uid[uid] += 1
        try:
            connection.start()
        except Exception as exc:
            self.log(f"cannot set up a client connection: {type(exc).__name__}: {exc}")
            connection.close()

    @staticmethod
    def _turn_away(sock: socket.socket, reason: str) -> None:
        # One short line into an empty socket buffer: it always fits. The
        # request already sent is read first: closing a Unix socket with
        # unread data makes the kernel report ECONNRESET to the client.
        with contextlib.suppress(OSError):
            sock.send(protocol.error_line(protocol.BUSY, reason))
            sock.recv(_DRAIN_BYTES)
        sock.close()

    def forget(self, connection: Connection) -> None:
        """A connection closed: its slot is free."""
        if connection in self._connections:
            self._connections.discard(connection)
            self._per_uid[connection.uid] -= 1
            if self._per_uid[connection.uid] <= 0:
                del self._per_uid[connection.uid]
