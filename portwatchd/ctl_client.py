"""portwatchctl's side of the control socket: connect, ask, and turn failures into exit codes.

Built on `_socket`, the C module under `socket`: `import socket` builds
enums of every constant and would add a third to portwatchctl's start-up.
"""

from __future__ import annotations

import _socket
import _struct
import json
import os

from portwatchd import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The exit codes portwatchctl(1) documents.
EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # not running, not answering, or busy: trying again later may help
EXIT_DENIED = 4
EXIT_CONFIG_ERROR = 5  # the daemon runs with a broken configuration, or refused a new one
EXIT_INTERRUPTED = 130

REQUEST_TIMEOUT_S = 10.0

# Error codes added by protocol 1's 0.2 daemons, by value: an older
# protocol.py (or a newer daemon) may not name them.
CONFIG_ERROR = "config_error"


class CtlError(Exception):
    """A failure to report on stderr, with the exit code it maps to."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class ConnectionLostError(Exception):
    """The daemon went away in the middle of a conversation."""


def _permission_message(path: str) -> str:
    import grp  # only on this error path

    try:
        gid = os.stat(path).st_gid
    except OSError as exc:
        return f"Permission denied on {path}: {exc.strerror} (ask an administrator for access)"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    if gid == 0:
        return f"Permission denied on {path}: only root may query (the socket's group is root)"
    return (
        f"Permission denied on {path}: members of group '{group}' may query; "
        f"ask an administrator to add you (usermod -aG {group} USER)"
    )


class DaemonConnection:
    """A stream connection to the daemon that reads whole lines."""

    def __init__(self, sock: _socket.socket, path: str) -> None:
        self._sock = sock
        self.path = path
        self._buffer = bytearray()
        self._scanned = 0  # the buffer holds no "\n" before this offset

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def readline(self) -> bytes:
        """The next line with its "\\n"; what is left (maybe b"") at end of stream."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            chunk = self._sock.recv(256 * 1024)
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                self._scanned = 0
                return line
            self._buffer += chunk

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def read_message(self) -> dict[str, Any]:
        """The next whole message; ConnectionLostError when the daemon went away."""
        try:
            line = self.readline()
        except TimeoutError:
            timeout = self._sock.gettimeout()
            raise CtlError(
                EXIT_UNREACHABLE, f"portwatchd did not answer on {self.path} within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise ConnectionLostError(exc.strerror or str(exc)) from None
        if not line.endswith(b"\n"):
            raise ConnectionLostError("portwatchd closed the connection")
        return parse_response(line)

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its ok answer; CtlError otherwise."""
        try:
            self.send(protocol.encode(message))
        except OSError as exc:
            # A daemon that refuses us (busy) writes why and closes before
            # reading: the send fails, and the reason is waiting to be read.
            sent_error: OSError | None = exc
        else:
            sent_error = None
        try:
            response = self.read_message()
        except ConnectionLostError as exc:
            reason = sent_error.strerror if sent_error and sent_error.strerror else str(exc)
            raise CtlError(
                EXIT_UNREACHABLE, f"lost the connection to {self.path}: {reason}"
            ) from None
        raise_for_error(response)
        return response

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DaemonConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(path: str, timeout: float | None = REQUEST_TIMEOUT_S) -> DaemonConnection:
    """A connection to the daemon, or CtlError with exit code 3 or 4."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # Connect in blocking mode, bounded by SO_SNDTIMEO: a non-blocking
    # connect() to a Unix socket whose accept queue is full fails at once
    # with EAGAIN, where waiting a moment would have got us in. The option
    # is a struct timeval. (`_struct`: `struct` is only its Python wrapper.)
    timeval = _struct.pack("ll", int(REQUEST_TIMEOUT_S), 0)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, timeval)
    try:
        sock.connect(path)
    except BlockingIOError:
        sock.close()
        raise CtlError(
            EXIT_UNREACHABLE,
            f"portwatchd accepted no connection on {path} within {REQUEST_TIMEOUT_S:g} s "
            "(too busy, or hung)",
        ) from None
    except PermissionError:
        sock.close()
        raise CtlError(EXIT_DENIED, _permission_message(path)) from None
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise CtlError(
            EXIT_UNREACHABLE,
            f"Cannot connect to {path}: {reason}. Is portwatchd running? "
            "(systemctl status portwatchd)",
        ) from None
    sock.settimeout(timeout)
    return DaemonConnection(sock, path)


def parse_response(line: bytes) -> dict[str, Any]:
    """A daemon's line as a message of our protocol version, else CtlError."""
    try:
        message = json.loads(line)
    except ValueError:
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd sent a line that is not JSON") from None
    if not isinstance(message, dict):
        raise CtlError(EXIT_DAEMON_ERROR, "portwatchd sent a line that is not a JSON object")
    try:
        protocol.check_version(message, side="portwatchd")
    except protocol.ProtocolError as exc:
        raise CtlError(EXIT_DAEMON_ERROR, exc.message) from None
    return message


def raise_for_error(message: dict[str, Any]) -> None:
    """CtlError with the exit code that fits a daemon's error answer; nothing for ok."""
    if message.get("ok") is not False:
        return
    error = message.get("error")
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code", protocol.INTERNAL))
    text = str(error.get("message", "unknown error"))
    if code == protocol.BUSY:
        raise CtlError(EXIT_UNREACHABLE, f"portwatchd is busy: {text}; try again")
    if code == CONFIG_ERROR:
        raise CtlError(EXIT_CONFIG_ERROR, f"portwatchd runs with a broken configuration: {text}")
    if code == protocol.PERMISSION_DENIED:
        raise CtlError(EXIT_DENIED, f"portwatchd: {text} ({code})")
    if code == protocol.UNKNOWN_REQUEST:
        text += "; this portwatchd is older than portwatchctl (restart it after an upgrade)"
    raise CtlError(EXIT_DAEMON_ERROR, f"portwatchd: {text} ({code})")


def call(path: str, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send one request on a new connection, return the ok answer; CtlError otherwise."""
    with connect(path, timeout) as connection:
        return connection.ask(message)
