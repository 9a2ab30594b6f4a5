"""One control client: its buffers, its deadlines, its reply in progress.

The state is settled after every callback (`_settle`): send what the
socket takes, pull one more slice of the reply in progress or answer the
next buffered request while the write buffer has room, register for
reading and writing only when that can make progress, and keep one timer
for the earliest deadline.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from portwatchd import protocol
from portwatchd.control.replies import ChunkStream, Stream
from portwatchd.reactor import Callback, Reactor, Timer

if TYPE_CHECKING:
    from portwatchd.control.transport import ControlServer

# Past this many unsent bytes a connection pulls no more of its reply and
# reads no more requests until the client reads; staying past it longer
# than write_timeout closes the connection.
WRITE_BUFFER_HIGH = 256 * 1024
_HANGUP_READ = 4096


class Outbox:
    """Bytes queued for one client, sent as the socket takes them."""

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0
        self.line_open = False  # the last byte queued is not a "\n"

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def put(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.size += len(data)
            self.line_open = not data.endswith(b"\n")

    def send(self, sock: socket.socket) -> None:
        """Send what the socket takes now; OSError when the client went away."""
        chunks = self.chunks
        while chunks:
            chunk = chunks[0]
            try:
                sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            self.size -= sent
            if sent < len(chunk):
                chunks[0] = memoryview(chunk)[sent:]
                return
            chunks.popleft()

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0


class _Registration:
    """A socket's standing with the reactor: read and write interest, one timer.

    The timer is not moved when a deadline moves later (it fires early and
    re-arms), so a busy connection does not leave a cancelled timer per request.
    """

    def __init__(self, reactor: Reactor, sock: socket.socket) -> None:
        self.reactor = reactor
        self.sock = sock
        self.reading = False
        self.writing = False
        self.timer: Timer | None = None
        self.timer_due = float("inf")

    def want(self, read: bool, on_read: Callback, write: bool, on_write: Callback) -> None:
        if read != self.reading:
            if read:
                self.reactor.add_reader(self.sock, on_read)
            else:
                self.reactor.remove_reader(self.sock)
            self.reading = read
        if write != self.writing:
            if write:
                self.reactor.add_writer(self.sock, on_write)
            else:
                self.reactor.remove_writer(self.sock)
            self.writing = write

    def arm(self, due: float, callback: Callback) -> None:
        """Have `callback` run at `due` at the latest."""
        if due >= self.timer_due:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.reactor.call_later(due - self.reactor.time(), callback)
        self.timer_due = due

    def fired(self) -> None:
        self.timer = None
        self.timer_due = float("inf")

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.reactor.remove(self.sock)


def _guarded(connection: Connection, step: Callable[[], None]) -> Callable[[], None]:
    """A callback that never raises into the reactor: a client that went
    away is closed quietly, anything else is logged, and only this
    connection is closed."""

    def callback() -> None:
        if connection.closed:
            return
        try:
            step()
        except OSError:
            connection.close()  # ECONNRESET, EPIPE...: the client went away
        except Exception as exc:
            connection.server.log(f"client connection failed: {type(exc).__name__}: {exc}")
            connection.close()

    return callback


class Connection:
    def __init__(self, server: ControlServer, sock: socket.socket, uid: int | None) -> None:
        self.server = server
        self.reactor = server.reactor
        self.sock = sock
        self.uid = uid
        self.registration = _Registration(server.reactor, sock)
        self.inbox = bytearray()  # at most MAX_LINE + 1 bytes: one line and its "\n"
        self.outbox = Outbox()
        self.reply: Stream | None = None
        self.woken = False  # the reply called wake() since its last pull
        # The next slice waits for the socket to become writable: the kernel
        # buffer is full. A client that stays so (it stopped reading) is as
        # far behind as one past WRITE_BUFFER_HIGH: write_timeout applies.
        self.slice_waiting = False
        self.closing = False  # no more requests or replies: flush, then close
        self.peer_done = False  # end of stream read: answer what was asked, then close
        self.closed = False
        self.idle_deadline = self.reactor.time() + server.idle_timeout
        self.write_deadline: float | None = None  # set while the client is behind
        # Bound once: the reactor gets the same callables on every re-registration.
        self._on_readable = _guarded(self, self._read)
        self._on_writable = _guarded(self, self._writable)
        self._on_timer = _guarded(self, self._deadline_reached)

    # --- reactor callbacks ----------------------------------------------------

    def start(self) -> None:
        self._settle()

    def _wake(self) -> None:
        """The reply has more: come back when the socket is writable (at
        once, usually). Never settles here: a stream may wake us from
        inside its own pull, or from the log's notification."""
        self.woken = True
        registration = self.registration
        if not self.closed and not registration.writing:
            registration.want(registration.reading, self._on_readable, True, self._on_writable)

    def _writable(self) -> None:
        if self.slice_waiting:
            self.slice_waiting = False  # the client took enough for the next slice
            self.write_deadline = None
        self._settle()

    def _read(self) -> None:
        try:
            if self.reply is not None and self.reply.exclusive:
                # A follow client says nothing more; EOF (or any byte) ends its stream.
                self.sock.recv(_HANGUP_READ)
                self._finish()
            else:
                data = self.sock.recv(protocol.MAX_LINE + 1 - len(self.inbox))
                if not data:
                    # A client may shut down its side and still read the
                    # answers (`... | socat - UNIX:...`): answer, then close.
                    self.peer_done = True
                else:
                    self.inbox += data
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: nothing to read yet
        self._settle()

    def _deadline_reached(self) -> None:
        self.registration.fired()
        now = self.reactor.time()
        if self.write_deadline is not None and now >= self.write_deadline:
            self.close()  # it stopped reading: drop what it did not take
            return
        if self._waits_for_request() and now >= self.idle_deadline:
            self._refuse(
                protocol.IDLE_TIMEOUT,
                f"no complete request within {self.server.idle_timeout:g} s; closing",
            )
        self._settle()

    # --- the state machine ----------------------------------------------------

    def _waits_for_request(self) -> bool:
        return not self.closing and self.reply is None and self.outbox.size <= WRITE_BUFFER_HIGH

    def _settle(self) -> None:
        self.outbox.send(self.sock)
        pulled = False
        slice_due = False  # the reply has more ready: come back for it
        while not self.closed and not self.closing and self.outbox.size <= WRITE_BUFFER_HIGH:
            if self.write_deadline is not None and not self.slice_waiting:
                # Caught up: the wait for the next request starts now.
                self.write_deadline = None
                self.idle_deadline = self.reactor.time() + self.server.idle_timeout
            if self.reply is not None:
                if pulled:
                    slice_due = True  # one slice per callback: others run in between
                    break
                pulled = True
                if not self._pull():
                    slice_due = self.woken
                    break
            elif not self._answer_buffered():
                break
            self.outbox.send(self.sock)
        if self.closed:
            return
        if self.peer_done and self.reply is None and b"\n" not in self.inbox:
            self._finish()  # all answered; a half line has nobody to answer
        if self.closing and not self.outbox:
            self.close()
            return
        self._update_interest(slice_due)
        self._update_timer()

    def _finish(self) -> None:
        """No more requests or replies: flush what is queued within write_timeout, then close."""
        if self.closing:
            return
        self.closing = True
        self.inbox.clear()
        self._end_reply()
        self.slice_waiting = False
        self.write_deadline = self.reactor.time() + self.server.write_timeout

    def _refuse(self, code: str, message: str) -> None:
        self.outbox.put(protocol.error_line(code, message))
        self._finish()

    def _answer_buffered(self) -> bool:
        """Answer the next complete request in the read buffer; whether
        anything was answered (or refused)."""
        end = self.inbox.find(b"\n")
        if end < 0:
            if len(self.inbox) > protocol.MAX_LINE:
                # Nothing more is read: the rest of that line never enters memory.
                self._refuse(
                    protocol.LINE_TOO_LONG,
                    f"request line longer than {protocol.MAX_LINE} bytes; closing",
                )
                return True
            return False
        line = bytes(self.inbox[: end + 1])
        del self.inbox[: end + 1]
        self.idle_deadline = self.reactor.time() + self.server.idle_timeout
        reply = self.server.answer(line, self.server.caller(self.uid))
        if isinstance(reply, bytes):
            self.outbox.put(reply)
            return True
        self.reply = reply if isinstance(reply, Stream) else ChunkStream(reply)
        self.reply.start(self._wake)
        if self.reply.exclusive and self.inbox:
            self._finish()  # bytes after `follow` end the stream, as a hang-up does
        return True

    def _pull(self) -> bool:
        """Queue the reply's next slice; whether anything happened."""
        reply = self.reply
        assert reply is not None
        self.woken = False
        try:
            chunk = reply.pull()
        except Exception as exc:
            self._reply_failed(exc)
            return True
        if chunk:
            self.outbox.put(chunk)
        if reply.finished:
            exclusive = reply.exclusive
            self._end_reply()
            if exclusive:
                self._finish()
            return True
        return bool(chunk)

    def _reply_failed(self, exc: Exception) -> None:
        self.server.log(f"internal error answering a request: {type(exc).__name__}: {exc}")
        exclusive = self.reply is not None and self.reply.exclusive
        self._end_reply()
        if self.outbox.line_open:
            self._finish()  # half a line is out: no clean error line is possible
            return
        self.outbox.put(
            protocol.error_line(protocol.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        )
        if exclusive:
            self._finish()

    def _end_reply(self) -> None:
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.close()

    # --- registration and deadlines -------------------------------------------

    def _update_interest(self, slice_due: bool) -> None:
        below_high = self.outbox.size <= WRITE_BUFFER_HIGH
        if self.closing or self.peer_done:
            want_read = False
        elif self.reply is not None:
            # A follow stream: to notice a hang-up. Otherwise read on while a
            # line fits, so that a client who hangs up is noticed too.
            want_read = self.reply.exclusive or len(self.inbox) <= protocol.MAX_LINE
        else:
            # Pipelined requests wait in the buffer while an answer is out.
            want_read = below_high and b"\n" not in self.inbox
        # Writable also means "pull the next slice" (at once, usually); a
        # reply with nothing ready waits for its wake() instead.
        want_write = bool(self.outbox) or slice_due
        if slice_due:
            self.slice_waiting = True
        elif self.slice_waiting:
            self.slice_waiting = False  # nothing more to send for now: not behind
            if below_high:
                self.write_deadline = None
        self.registration.want(want_read, self._on_readable, want_write, self._on_writable)
        if (slice_due or not below_high) and self.write_deadline is None:
            self.write_deadline = self.reactor.time() + self.server.write_timeout

    def _update_timer(self) -> None:
        due = float("inf")
        if self.write_deadline is not None:
            due = self.write_deadline
        if self._waits_for_request():
            due = min(due, self.idle_deadline)
        self.registration.arm(due, self._on_timer)

    def close(self) -> None:
        """Close now, dropping whatever the client did not take."""
        if self.closed:
            return
        self.closed = True
        self._end_reply()
        self.registration.drop()
        self.sock.close()
        self.outbox.clear()
        self.inbox.clear()
        self.server.forget(self)
