"""0.1's control socket server, kept until service.py uses transport + handlers.

The scan loop never waits on a client. Everything here runs in reactor
callbacks on non-blocking sockets, and `publish()` only appends to each
follower's bounded queue and sends what the socket takes at once. Every
connection has limits: a read buffer of one request line (MAX_LINE bytes;
past it the connection is refused with line_too_long, and nothing more is
read, so a 10 MB line costs no 10 MB), a write buffer that stops the reading
of further requests (or, for a follower, fills its bounded event queue)
when the client does not read, a write timeout for a client that stays
that far behind, an idle timeout while waiting for a request, and at most
`max_clients` connections at once.

Who may connect is decided by the socket file's mode and group (0660,
root:<group>); the one mutating request, `rescan`, additionally needs the
peer to be uid 0 (SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from portwatchd import protocol
from portwatchd.model import Endpoint, Event, Owner
from portwatchd.protocol import EventQuery, ProtocolError
from portwatchd.reactor import Reactor, Timer

LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed fd
# Past this many unsent bytes a connection stops taking requests (a
# follower stops taking events into its socket buffer) until the client
# reads; staying past it longer than write_timeout closes the connection.
_WRITE_BUFFER_HIGH = 256 * 1024
_ACCEPT_BACKLOG = 256
_ACCEPTS_PER_WAKE = 64  # then let other connections and the scan loop run
_ACCEPT_PAUSE_S = 1.0  # out of file descriptors: stop accepting this long
_HANGUP_READ = 4096


class ControlError(OSError):
    """The control socket could not be set up; the message says why and what to do.

    An OSError, so that a caller handling "cannot listen" failures (the
    service does) handles these too.
    """


class ControlBackend(Protocol):
    """What the control server asks of the daemon. Called on the loop thread."""

    def query_events(self, query: EventQuery) -> list[Event]:
        """Events matching `query`, oldest first (EventRing.query semantics)."""
        ...

    def oldest_seq(self) -> int | None:
        """The seq of the oldest event still held, None when none is."""
        ...

    def last_seq(self) -> int:
        """The seq of the newest event ever recorded, 0 when none was."""
        ...

    def current_ports(self) -> list[tuple[Endpoint, Owner]]: ...

    def status(self) -> dict[str, Any]: ...

    def request_rescan(self) -> None:
        """Ask the loop to scan now; must not block."""
        ...


def _log_to_stderr(message: str) -> None:
    print(f"portwatchd: control: {message}", file=sys.stderr, flush=True)


def inherited_listen_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), or None.

    Follows sd_listen_fds(3): only when LISTEN_PID is our pid; the variables
    are removed afterwards so that child processes do not take the fd for
    theirs. Raises ControlError when fd 3 is not a listening AF_UNIX stream
    socket (a wrong ListenStream= in the .socket unit).
    """
    listen_pid = os.environ.get("LISTEN_PID", "")
    listen_fds = os.environ.get("LISTEN_FDS", "")
    if not listen_pid or not listen_fds:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    try:
        if int(listen_pid) != os.getpid() or int(listen_fds) < 1:
            return None
    except ValueError:
        return None
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as exc:
        raise ControlError(
            f"systemd passed fd {LISTEN_FDS_START}, but it is unusable: {exc}"
        ) from exc
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ControlError(
            f"systemd passed fd {LISTEN_FDS_START}, but it is not a Unix stream socket: "
            "the .socket unit needs ListenStream=/run/portwatchd/control.sock"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ControlError(f"systemd passed fd {LISTEN_FDS_START}, but it is not listening")
    sock.setblocking(False)
    return sock


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ControlError(
            f"control socket group {group!r} does not exist; create it (groupadd --system {group}) "
            "or configure another group"
        ) from None


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a crashed daemon; refuse if someone listens on it."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(
            f"{path} exists and is not a socket; remove it or choose another --socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nothing listens: left behind by a daemon that died
            return
        except TimeoutError:
            pass  # a full accept queue: someone is listening, just busy
        except OSError as exc:
            raise ControlError(f"cannot check the existing socket {path}: {exc.strerror}") from exc
    raise ControlError(
        f"another portwatchd is already listening on {path}; "
        "stop it first (systemctl stop portwatchd) or choose another --socket"
    )


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _error_line(code: str, message: str) -> bytes:
    return protocol.encode(protocol.error(code, message))


class _Follower:
    """One `follow` client's bounded queue of encoded event lines.

    Filled by publish() (never blocks); its connection moves the queue into
    its write buffer while that buffer is below _WRITE_BUFFER_HIGH.
    """

    def __init__(self, query: EventQuery, capacity: int, connection: _Connection) -> None:
        self.query = query
        self.capacity = capacity
        self.connection = connection
        self.pending: deque[tuple[int, bytes]] = deque()
        self.overrun = False
        self.offered = False  # something new for the connection since it last looked
        self.last_seq = 0  # the highest seq queued or sent: live dedupe
        self.sent_seq = 0  # the highest seq handed to the connection's write buffer

    def offer(self, event: Event, line: bytes) -> None:
        seq = event.seq
        if self.overrun or seq <= self.last_seq:
            return
        if not self.query.matches_live(event.type, event.endpoint.proto, event.endpoint.port):
            return
        if len(self.pending) >= self.capacity:
            # Cut off rather than grow: free the queue now, tell the client next.
            self.overrun = True
            self.pending.clear()
        else:
            self.pending.append((seq, line))
            self.last_seq = seq
        self.offered = True


class _Connection:
    """One client: its buffers, its deadlines, its reactor callbacks.

    The state is settled after every callback (`_settle`): send what the
    socket takes, answer buffered requests while the write buffer has room,
    register for reading and writing only when that can make progress, and
    keep one timer for the earliest deadline.
    """

    def __init__(self, server: ControlServer, sock: socket.socket, uid: int | None) -> None:
        self.server = server
        self.reactor = server.reactor
        self.sock = sock
        self.uid = uid
        self.inbox = bytearray()  # at most MAX_LINE + 1 bytes: one line and its "\n"
        self.outbox: deque[bytes | memoryview] = deque()
        self.out_bytes = 0
        self.follower: _Follower | None = None
        self.closing = False  # no more requests or events: flush, then close
        self.closed = False
        self.reading = False
        self.writing = False
        now = self.reactor.time()
        self.idle_deadline = now + server.idle_timeout
        self.write_deadline: float | None = None  # set while the client is behind
        self.timer: Timer | None = None
        self.timer_due = float("inf")
        # Bound once: the reactor gets the same callables on every re-registration.
        self._on_readable = self._guarded(self._read)
        self._on_writable = self._guarded(self._settle)
        self._on_timer = self._guarded(self._deadline_reached)

    # --- reactor callbacks ----------------------------------------------------

    def _guarded(self, step: Callable[[], None]) -> Callable[[], None]:
        """A callback that never raises into the reactor: a client that went
        away is closed quietly, anything else is logged, and only this
        connection is closed."""

        def callback() -> None:
            if self.closed:
                return
            try:
                step()
            except OSError:
                self.close()  # ECONNRESET, EPIPE...: the client went away
            except Exception as exc:
                self.server._log(f"client connection failed: {type(exc).__name__}: {exc}")
                self.close()

        return callback

    def start(self) -> None:
        self._settle()

    def published(self) -> None:
        """The server offered events to this connection's follower."""
        self._on_writable()

    def _read(self) -> None:
        try:
            if self.follower is not None:
                # A follow client says nothing more; EOF (or any byte) ends its stream.
                self.sock.recv(_HANGUP_READ)
                self._finish()
            else:
                data = self.sock.recv(protocol.MAX_LINE + 1 - len(self.inbox))
                if not data:
                    self._finish()  # end of stream, perhaps mid-line: nobody to answer
                else:
                    self.inbox += data
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: nothing to read yet
        self._settle()

    def _deadline_reached(self) -> None:
        self.timer = None
        self.timer_due = float("inf")
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
        return not self.closing and self.follower is None and self.out_bytes <= _WRITE_BUFFER_HIGH

    def _settle(self) -> None:
        while True:
            self._flush()
            if self.closed:
                return
            if self.closing:
                if not self.outbox:
                    self.close()
                    return
                break
            if self.out_bytes > _WRITE_BUFFER_HIGH:
                break
            if self.write_deadline is not None:
                # Caught up: the wait for the next request starts now.
                self.write_deadline = None
                self.idle_deadline = self.reactor.time() + self.server.idle_timeout
            if self.follower is not None:
                if not (self.follower.pending or self.follower.overrun):
                    break
                self._take_published()
            elif not self._answer_buffered():
                break
        self._update_interest()
        self._update_timer()

    def _flush(self) -> None:
        while self.outbox:
            chunk = self.outbox[0]
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            self.out_bytes -= sent
            if sent < len(chunk):
                self.outbox[0] = memoryview(chunk)[sent:]
                return
            self.outbox.popleft()

    def _queue(self, data: bytes) -> None:
        if data:
            self.outbox.append(data)
            self.out_bytes += len(data)

    def _finish(self) -> None:
        """No more requests or events: flush what is queued within write_timeout, then close."""
        if self.closing:
            return
        self.closing = True
        self.inbox.clear()
        if self.follower is not None:
            self.server._followers.discard(self.follower)
            self.follower.pending.clear()
        self.write_deadline = self.reactor.time() + self.server.write_timeout

    def _refuse(self, code: str, message: str) -> None:
        self._queue(_error_line(code, message))
        self._finish()

    def _answer_buffered(self) -> bool:
        """Answer the complete requests in the read buffer while the write
        buffer has room; whether anything was answered (or refused)."""
        answered = False
        while self.out_bytes <= _WRITE_BUFFER_HIGH and not self.closing and self.follower is None:
            end = self.inbox.find(b"\n")
            if end < 0:
                if len(self.inbox) > protocol.MAX_LINE:
                    # Nothing more is read: the rest of that line never enters memory.
                    self._refuse(
                        protocol.LINE_TOO_LONG,
                        f"request line longer than {protocol.MAX_LINE} bytes; closing",
                    )
                    answered = True
                break
            line = bytes(self.inbox[: end + 1])
            del self.inbox[: end + 1]
            self.idle_deadline = self.reactor.time() + self.server.idle_timeout
            self._answer(line)
            answered = True
        return answered

    def _answer(self, line: bytes) -> None:
        server = self.server
        parsed = server._parse(line)
        if isinstance(parsed, bytes):
            self._queue(parsed)
            return
        name, query = parsed
        if name == "follow" and query is not None:
            self._follow(query)
            return
        self._queue(server._dispatch(name, query, self.uid))

    # --- follow ---------------------------------------------------------------

    def _follow(self, query: EventQuery) -> None:
        server = self.server
        follower = _Follower(query, server.follow_queue, self)
        server._followers.add(follower)  # subscribe first: nothing published from now on is missed
        try:
            head, last_sent = server._follow_head(query)
        except Exception as exc:
            server._followers.discard(follower)
            self._queue(server._internal_error(exc))
            self._finish()
            return
        # Live events queued meanwhile that the backlog already covered are dropped here.
        follower.last_seq = max(follower.last_seq, last_sent)
        follower.sent_seq = last_sent
        while follower.pending and follower.pending[0][0] <= last_sent:
            follower.pending.popleft()
        self._queue(head)
        self.follower = follower
        if self.inbox:
            self._finish()  # bytes after `follow` end the stream, as a hang-up does

    def _take_published(self) -> None:
        """Move the follower's queue into the write buffer; an overrun ends the stream."""
        follower = self.follower
        assert follower is not None
        follower.offered = False
        if follower.overrun:
            self._refuse(
                protocol.FOLLOW_OVERRUN,
                f"client fell more than {follower.capacity} events behind; "
                f"reconnect with after_seq={follower.sent_seq} to resume",
            )
            return
        if follower.pending:
            self._queue(b"".join(line for _seq, line in follower.pending))
            follower.sent_seq = follower.pending[-1][0]
            follower.pending.clear()

    # --- registration and deadlines -------------------------------------------

    def _update_interest(self) -> None:
        want_read = not self.closing and (
            self.follower is not None or self.out_bytes <= _WRITE_BUFFER_HIGH
        )
        if want_read != self.reading:
            if want_read:
                self.reactor.add_reader(self.sock, self._on_readable)
            else:
                self.reactor.remove_reader(self.sock)
            self.reading = want_read
        want_write = bool(self.outbox)
        if want_write != self.writing:
            if want_write:
                self.reactor.add_writer(self.sock, self._on_writable)
            else:
                self.reactor.remove_writer(self.sock)
            self.writing = want_write
        if self.out_bytes > _WRITE_BUFFER_HIGH and self.write_deadline is None:
            self.write_deadline = self.reactor.time() + self.server.write_timeout

    def _update_timer(self) -> None:
        """One timer per connection, at its earliest deadline. It is not
        moved when a deadline moves later (it fires early and re-arms), so
        a busy connection does not leave a cancelled timer per request."""
        due = float("inf")
        if self.write_deadline is not None:
            due = self.write_deadline
        if self._waits_for_request():
            due = min(due, self.idle_deadline)
        if due >= self.timer_due:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.reactor.call_later(due - self.reactor.time(), self._on_timer)
        self.timer_due = due

    def close(self) -> None:
        """Close now, dropping whatever the client did not take."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.reactor.remove(self.sock)
        self.sock.close()
        self.outbox.clear()
        self.out_bytes = 0
        self.inbox.clear()
        self.server._forget(self)


class ControlServer:
    """Serves the control protocol on a Unix socket for one ControlBackend."""

    def __init__(
        self,
        backend: ControlBackend,
        reactor: Reactor,
        *,
        path: str = protocol.DEFAULT_SOCKET,
        group: str = "",
        mode: int = 0o660,
        max_clients: int = 64,
        idle_timeout: float = 60.0,
        follow_queue: int = 1024,
        write_timeout: float = 10.0,
        inherited: socket.socket | None = None,
        log: Callable[[str], None] = _log_to_stderr,
    ) -> None:
        self.backend = backend
        self.reactor = reactor
        self.path = path
        self.group = group
        self.mode = mode
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.follow_queue = follow_queue
        self._inherited = inherited
        self._log = log
        self._listener: socket.socket | None = None
        self._accept_pause: Timer | None = None
        self._bound_identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our file
        self._connections: set[_Connection] = set()
        self._followers: set[_Follower] = set()
        # seq -> (event id, its JSON text): each event is encoded once, when
        # published or first asked for; entries older than the ring are dropped.
        self._encoded: dict[int, tuple[str, bytes]] = {}
        self._handlers: dict[str, Callable[[EventQuery | None, int | None], bytes]] = {
            "events": self._answer_events,
            "ports": self._answer_ports,
            "status": self._answer_status,
            "rescan": self._answer_rescan,
        }

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Listen: adopt the socket systemd passed, or create `path` (0660, root:group)."""
        sock = self._inherited if self._inherited is not None else self._bind()
        sock.setblocking(False)
        self._listener = sock
        self.reactor.add_reader(sock, self._accept)

    def _bind(self) -> socket.socket:
        gid = _group_id(self.group) if self.group else -1
        parent = os.path.dirname(self.path) or "."
        try:
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                os.chmod(parent, 0o755)  # explicit: the unit's UMask=0077 would make it 0700
        except OSError as exc:
            raise ControlError(f"cannot create {parent} for the control socket: {exc}") from exc
        _remove_stale_socket(self.path)
        # Bind under a temporary name, set mode and group, then rename into
        # place: the socket never appears at `path` with the umask's mode.
        staging = f"{self.path}.{os.getpid()}.new"
        if len(os.fsencode(staging)) >= 108:  # sockaddr_un.sun_path
            staging = self.path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            with contextlib.suppress(FileNotFoundError):
                if staging != self.path:
                    os.unlink(staging)  # left by an earlier crash of this very pid
            sock.bind(staging)
            bound = True
            os.chmod(staging, self.mode)
            if gid != -1:
                self._chown_group(staging, gid)
            sock.listen(_ACCEPT_BACKLOG)
            if staging != self.path:
                os.rename(staging, self.path)
            info = os.lstat(self.path)
            self._bound_identity = (info.st_dev, info.st_ino)
        except OSError as exc:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(staging)
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        return sock

    def _chown_group(self, path: str, gid: int) -> None:
        try:
            os.chown(path, -1, gid)
        except PermissionError as exc:
            # Without CAP_CHOWN (the unit drops it; its .socket unit sets the
            # group instead) the daemon still serves root.
            self._log(
                f"cannot give {self.path} to group {self.group!r} ({exc.strerror}); "
                "only root may query"
            )

    def _remove_socket_file(self) -> None:
        """Unlink the socket file only if it is still the one we bound."""
        if self._bound_identity is None:
            return
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._bound_identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._log(f"could not remove {self.path}: {exc.strerror}")
        self._bound_identity = None

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
        self._followers.clear()
        self._remove_socket_file()

    @property
    def client_count(self) -> int:
        return len(self._connections)

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
                self._log(f"cannot set up a client connection: {type(exc).__name__}: {exc}")
                sock.close()

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self._log(f"accept failed: {exc}")
            return
        # The connection stays queued and the listener stays readable: pause,
        # or the loop would spin on it.
        self._log(f"cannot accept clients: {exc.strerror}; pausing {_ACCEPT_PAUSE_S:g} s")
        listener = self._listener
        if listener is None:
            return
        self.reactor.remove_reader(listener)

        def resume() -> None:
            self._accept_pause = None
            if self._listener is listener:
                self.reactor.add_reader(listener, self._accept)

        self._accept_pause = self.reactor.call_later(_ACCEPT_PAUSE_S, resume)

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if len(self._connections) >= self.max_clients:
            # One short line into an empty socket buffer: it always fits.
            with contextlib.suppress(OSError):
                sock.send(
                    _error_line(
                        protocol.BUSY, f"too many clients ({self.max_clients}); try again later"
                    )
                )
            sock.close()
            return
        connection = _Connection(self, sock, _peer_uid(sock))
        self._connections.add(connection)
        try:
            connection.start()
        except Exception as exc:
            self._log(f"cannot set up a client connection: {type(exc).__name__}: {exc}")
            connection.close()

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if connection.follower is not None:
            self._followers.discard(connection.follower)

    # --- the scan loop's side -----------------------------------------------

    def publish(self, events: Sequence[Event]) -> None:
        """Hand new events to every follower. Never blocks, never raises.

        Call it after the events are in the backend's ring, in the same
        synchronous step: a follower subscribing in between is then covered
        by its backlog, and seq dedupe drops what would come twice.
        """
        if not self._followers or not events:
            return
        for event in events:
            try:
                line = self._event_line(event)
            except Exception as exc:
                self._log(f"cannot encode event seq {event.seq}: {exc}")
                continue
            for follower in self._followers:
                follower.offer(event, line)
        for follower in list(self._followers):
            if follower.offered:
                follower.connection.published()  # guarded: a failing client is closed

    # --- event encoding cache -------------------------------------------------

    def _encode_event(self, event: Event) -> bytes:
        cached = self._encoded.get(event.seq)
        if cached is not None and cached[0] == event.id:
            return cached[1]
        text = protocol.encode(event.to_dict())[:-1]
        if len(self._encoded) >= self._encoded_limit():
            self._prune_encoded()
        self._encoded[event.seq] = (event.id, text)
        return text

    def _encoded_limit(self) -> int:
        return 2 * max(1024, self.follow_queue) + 1024

    def _prune_encoded(self) -> None:
        oldest = self.backend.oldest_seq()
        if oldest is None:
            self._encoded.clear()
            return
        self._encoded = {seq: v for seq, v in self._encoded.items() if seq >= oldest}
        if len(self._encoded) >= self._encoded_limit():
            self._encoded.clear()  # a ring larger than the cache: start over, stay bounded

    def _event_line(self, event: Event) -> bytes:
        return b'{"v":%d,"event":%s}\n' % (protocol.PROTOCOL_VERSION, self._encode_event(event))

    # --- request handling ---------------------------------------------------

    @staticmethod
    def _parse(line: bytes) -> tuple[str, EventQuery | None] | bytes:
        """The request in a line, or the encoded error response to send instead."""
        try:
            return protocol.parse_request(protocol.decode(line))
        except ProtocolError as exc:
            return _error_line(exc.code, exc.message)

    def _dispatch(self, name: str, query: EventQuery | None, peer_uid: int | None) -> bytes:
        try:
            return self._handlers[name](query, peer_uid)
        except ProtocolError as exc:
            return _error_line(exc.code, exc.message)
        except Exception as exc:
            return self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> bytes:
        self._log(f"internal error answering a request: {type(exc).__name__}: {exc}")
        return _error_line(protocol.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    def _gap(self, after_seq: int | None) -> dict[str, int] | None:
        if after_seq is None:
            return None
        oldest = self.backend.oldest_seq()
        if oldest is not None and after_seq + 1 < oldest:
            return {"from": after_seq + 1, "to": oldest - 1}
        return None

    def _reset_line(self, after_seq: int | None) -> bytes:
        reset = {"after_seq": after_seq, "last_seq": self.backend.last_seq()}
        return protocol.encode({"v": protocol.PROTOCOL_VERSION, "reset": reset})

    def _answer_events(self, query: EventQuery | None, _uid: int | None) -> bytes:
        assert query is not None
        reset = self._restarted_history(query.after_seq)
        if reset:
            query = EventQuery(**{**query.as_args(), "after_seq": 0})
        events = self.backend.query_events(query)
        response = protocol.ok(
            oldest_seq=self.backend.oldest_seq(), last_seq=self.backend.last_seq()
        )
        if reset:
            response["reset"] = True
        gap = self._gap(query.after_seq)
        if gap is not None:
            response["gap"] = gap
        encoded = [self._encode_event(event) for event in events]
        return protocol.encode_with_list(response, "events", encoded)

    def _answer_ports(self, _query: EventQuery | None, _uid: int | None) -> bytes:
        ports = []
        for endpoint, owner in self.backend.current_ports():
            record = endpoint.to_dict()
            record["owner"] = owner.to_dict()
            ports.append(record)
        return protocol.encode(protocol.ok(ports=ports))

    def _answer_status(self, _query: EventQuery | None, _uid: int | None) -> bytes:
        status = dict(self.backend.status())
        status["protocol"] = protocol.PROTOCOL_VERSION
        status["clients"] = len(self._connections)
        status["followers"] = len(self._followers)
        return protocol.encode(protocol.ok(status=status))

    def _answer_rescan(self, _query: EventQuery | None, uid: int | None) -> bytes:
        if uid != 0:
            raise ProtocolError(
                protocol.PERMISSION_DENIED, "rescan changes the daemon's state: only root may ask"
            )
        self.backend.request_rescan()
        return protocol.encode(protocol.ok())

    def _restarted_history(self, after_seq: int | None) -> bool:
        """A seq past the newest one belongs to a history this daemon does
        not have (its state file was lost): start the client over at 0."""
        return after_seq is not None and after_seq > self.backend.last_seq()

    def _follow_head(self, query: EventQuery) -> tuple[bytes, int]:
        """A follow stream's first lines (ok header, gap notice, backlog) and
        the seq they end at."""
        head = []
        if self._restarted_history(query.after_seq):
            head.append(self._reset_line(query.after_seq))
            query = EventQuery(**{**query.as_args(), "after_seq": 0})
        if query.after_seq is not None and query.limit is not None:
            # The oldest `limit` after after_seq, then live from the newest
            # seq, would drop what lies between: with after_seq, the whole
            # rest is the backlog (the follow queue bounds it).
            query = EventQuery(**{**query.as_args(), "limit": None})
        wants_backlog = (
            query.after_seq is not None or query.since is not None or query.limit is not None
        )
        backlog = self.backend.query_events(query) if wants_backlog else []
        if query.after_seq is not None:
            start = query.after_seq
        elif backlog:
            start = backlog[0].seq - 1
        else:
            start = self.backend.last_seq()
        head.insert(0, protocol.encode(protocol.ok(follow={"after_seq": start})))
        gap = self._gap(query.after_seq)
        if gap is not None:
            head.append(protocol.encode({"v": protocol.PROTOCOL_VERSION, "gap": gap}))
        last_sent = start
        for event in backlog:
            if event.seq > last_sent:
                head.append(self._event_line(event))
                last_sent = event.seq
        return b"".join(head), last_sent
