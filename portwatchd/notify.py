"""Telling systemd how we are: READY, WATCHDOG, STATUS, RELOADING, STOPPING.

A thin adapter over sdnotify (sd_notify(3)); without $NOTIFY_SOCKET every
call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from portwatchd.text import escape_text

Send = Callable[[str], None]


def ascii_status(text: str) -> str:
    """A STATUS= value systemd will keep, in the one escaping rule of text.

    sdnotify encodes latin-1, and systemd drops a status that is not clean
    UTF-8; plain ASCII is the subset both agree on. Control characters and
    bytes that were not UTF-8 are escaped as in every text output
    (model.escape_text): a newline would end the assignment early. Other
    characters outside ASCII become \\uXXXX escapes.
    """
    clean = escape_text(text).encode("ascii", "backslashreplace").decode("ascii")
    return clean[:200]


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, as
    sd_watchdog_enabled(3) advises; None when the watchdog is off or meant
    for another process ($WATCHDOG_PID)."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid.isdigit() and int(watchdog_pid) != pid:
        return None
    return usec / 1_000_000 / 2


class Notifier:
    """sd_notify messages; `send` is injectable for tests."""

    def __init__(self, send: Send | None = None) -> None:
        if send is None:
            if os.environ.get("NOTIFY_SOCKET"):
                import sdnotify

                notifier = sdnotify.SystemdNotifier()
                if notifier.socket is not None:
                    # A notify socket whose reader stalls must not stall the
                    # loop: a full queue drops this one message (sdnotify
                    # swallows the EAGAIN) instead of blocking in sendall.
                    notifier.socket.setblocking(False)
                send = notifier.notify
            else:
                send = _discard
        self._send = send
        self._last_status: str | None = None

    def ready(self, status: str | None = None) -> None:
        self._send(self._with_status("READY=1", status))

    def reloading(self, monotonic_usec: int | None = None) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 to order the
        # reload; older versions ignore it.
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self, status: str | None = None) -> None:
        self._send(self._with_status("STOPPING=1", status))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Send STATUS= only when it changed: systemd keeps the last one."""
        clean = ascii_status(text)
        if clean != self._last_status:
            self._last_status = clean
            self._send(f"STATUS={clean}")

    def _with_status(self, message: str, status: str | None) -> str:
        if status is None:
            return message
        self._last_status = ascii_status(status)
        return f"{message}\nSTATUS={self._last_status}"


def _discard(_message: str) -> None:
    pass
