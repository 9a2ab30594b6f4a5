"""The control socket's file: adopt systemd's socket, or create ours safely.

Who may connect is decided by the file's mode and group (0660,
root:<group>). A socket file left by a crashed daemon is replaced; one
that someone still listens on, or a path that is not a socket, is refused
with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
from collections.abc import Callable

LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed fd
_ACCEPT_BACKLOG = 256
_SUN_PATH_MAX = 108  # sockaddr_un.sun_path, terminating NUL included


class ControlError(OSError):
    """The control socket could not be set up; the message says why and what to do.

    An OSError, so that a caller handling "cannot listen" failures handles
    these too.
    """


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


def group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ControlError(
            f"control socket group {group!r} does not exist; create it (groupadd --system {group}) "
            "or configure another group"
        ) from None


def remove_stale_socket(path: str) -> None:
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


class SocketFile:
    """The socket file we create at `path`, and removing it only while it is ours."""

    def __init__(self, path: str, *, group: str, mode: int, log: Callable[[str], None]) -> None:
        self.path = path
        self.group = group
        self.mode = mode
        self._log = log
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our file

    def bind(self) -> socket.socket:
        """A listening socket at `path`, mode `mode`, group `group`."""
        gid = group_id(self.group) if self.group else -1
        parent = os.path.dirname(self.path) or "."
        try:
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                os.chmod(parent, 0o755)  # explicit: the unit's UMask=0077 would make it 0700
        except OSError as exc:
            raise ControlError(f"cannot create {parent} for the control socket: {exc}") from exc
        remove_stale_socket(self.path)
        # Bind under a temporary name, set mode and group, then rename into
        # place: the socket never appears at `path` with the umask's mode.
        staging = f"{self.path}.{os.getpid()}.new"
        if len(os.fsencode(staging)) >= _SUN_PATH_MAX:
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
            self._identity = (info.st_dev, info.st_ino)
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

    def remove(self) -> None:
        """Unlink the socket file only if it is still the one we bound."""
        if self._identity is None:
            return
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._log(f"could not remove {self.path}: {exc.strerror}")
        self._identity = None
