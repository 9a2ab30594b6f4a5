"""A real portwatchd for the benchmarks: a subprocess we know is READY.

The daemon runs as `python -m portwatchd.daemon` with the benchmark's
interpreter, in the benchmark's network namespace, with a NOTIFY_SOCKET of
ours (so we know when it is READY), its control socket and state in a short
temp dir, and its log on stderr as JSON lines.

Nothing it writes may ever block it: a thread keeps reading the notify
socket, and stderr is either a pipe the caller reads (`wait_event`, for the
detection latency) or a file in the temp dir (`stderr_pipe=False`), whose
tail goes into the error when the daemon dies.

The notify socket asks the kernel to stamp each datagram's arrival
(SO_TIMESTAMPNS), so `ready_s` (Popen to READY=1) and `watchdog_pings`
(arrivals of WATCHDOG=1) are the daemon's timing, not that of our thread,
which may wait for the GIL while the benchmark is busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import IO, Any, Self

from bench.load import REPO_ROOT, LoadError

READY_TIMEOUT_S = 60.0
# <asm-generic/socket.h>: Python 3.11's socket module lacks them. The control
# message carries a struct timespec of CLOCK_REALTIME (two longs on 64-bit).
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")
_CPUCLOCK_SCHED = 2  # <linux/posix-timers.h>


class DaemonError(LoadError):
    """portwatchd did not start, or died: the benchmark cannot run."""


class RunningDaemon:
    """portwatchd with a NOTIFY_SOCKET of ours, so we know when it is READY."""

    def __init__(
        self,
        interval: float | None,
        *,
        ring_size: int | None = None,
        stderr_pipe: bool = True,
        state_dir: str | None = None,
        config_lines: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """`state_dir` defaults to a new one in the temp dir (removed at close;
        a given one is kept); `config_lines` are added to the TOML file and
        `env` to the daemon's environment."""
        # /tmp and a short prefix: the control socket's path must stay under
        # the 108-byte sun_path limit.
        self.dir = tempfile.mkdtemp(prefix="pwb", dir="/tmp")
        self.socket_path = os.path.join(self.dir, "ctl.sock")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        config = os.path.join(self.dir, "portwatchd.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write('log_format = "json"\n')
            # The bench's private namespace only, unless a section asks.
            if not any(line.startswith("namespaces") for line in config_lines):
                f.write('namespaces = "host"\n')
            if ring_size is not None:
                f.write(f"ring_size = {ring_size}\n")
            f.writelines(f"{line}\n" for line in config_lines)
        notify_path = os.path.join(self.dir, "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._notify.bind(notify_path)
        self._closing = False
        self.ready_s = 0.0
        # Arrival times (CLOCK_REALTIME, s) of every WATCHDOG=1 from READY on.
        self.watchdog_pings: list[float] = []
        self._stderr_file: IO[str] | None = None
        if not stderr_pipe:
            self._stderr_file = open(self.stderr_path, "w", encoding="utf-8")  # noqa: SIM115
        started = time.time()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "portwatchd.daemon",
                "--config",
                config,
                "--interval",
                "auto" if interval is None else str(interval),
                "--state-dir",
                state_dir or os.path.join(self.dir, "state"),
                "--socket",
                self.socket_path,
                "--log-target",
                "stderr",
            ],
            cwd=REPO_ROOT,
            env=dict(os.environ, **(env or {}), NOTIFY_SOCKET=notify_path),
            stderr=subprocess.PIPE if stderr_pipe else self._stderr_file,
            text=True,
        )
        try:
            self.ready_s = self._wait_ready() - started
        except BaseException:
            self.close()
            raise
        self._notify_reader = threading.Thread(target=self._drain_notify, daemon=True)
        self._notify_reader.start()

    def _receive(self) -> tuple[bytes, float]:
        """One notify datagram and its arrival (CLOCK_REALTIME, kernel-stamped)."""
        message, ancillary, _flags, _address = self._notify.recvmsg(
            4096, socket.CMSG_SPACE(_TIMESPEC.size)
        )
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack(data[: _TIMESPEC.size])
                return message, seconds + nanoseconds / 1e9
        return message, time.time()

    def _wait_ready(self) -> float:
        """When READY=1 arrived (CLOCK_REALTIME)."""
        self._notify.settimeout(0.5)
        give_up = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                message, arrived = self._receive()
                if b"READY=1" in message:
                    return arrived
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise DaemonError(
                        f"portwatchd exited before READY: {self.describe_exit()}"
                    ) from None
                if time.monotonic() > give_up:
                    raise DaemonError(
                        f"portwatchd not READY after {READY_TIMEOUT_S:g} s: {self.stderr_tail()}"
                    ) from None

    def _drain_notify(self) -> None:
        # STATUS= comes after every scan that changed something; the daemon
        # drops a message rather than block, but keep its queue empty anyway.
        while not self._closing:
            with contextlib.suppress(TimeoutError, OSError):
                message, arrived = self._receive()
                if b"WATCHDOG=1" in message.split(b"\n"):
                    self.watchdog_pings.append(arrived)

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines the daemon logged (only when stderr goes to the file)."""
        if self._stderr_file is None:
            return "(stderr is a pipe; see the section's output)"
        self._stderr_file.flush()
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            tail = f.read().strip().splitlines()[-lines:]
        return " | ".join(tail) or "(nothing on stderr)"

    def describe_exit(self) -> str:
        return f"exit status {self.proc.returncode}; stderr: {self.stderr_tail()}"

    def check_alive(self) -> None:
        """Raise DaemonError when the daemon has died."""
        if self.proc.poll() is not None:
            raise DaemonError(f"portwatchd died: {self.describe_exit()}")

    def status_kb(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.proc.pid}/status")

    def cpu_seconds(self) -> float:
        """The daemon's CPU time, every thread's (those gone too), to the nanosecond.

        /proc/PID/stat counts in clock ticks (10 ms): 120 s of a daemon idle
        at 0.05 % is 6 of them, too coarse to judge. The process's CPU-time
        clock is exact; Python has no clock_getcpuclockid(3), so the id is
        made as glibc makes it, the kernel's MAKE_PROCESS_CPUCLOCK(pid,
        CPUCLOCK_SCHED).
        """
        return time.clock_gettime(((~self.proc.pid) << 3) | _CPUCLOCK_SCHED)

    def stderr_fd(self) -> int:
        """The stderr pipe's descriptor, for a reader of its own (stderr_pipe=True)."""
        assert self.proc.stderr is not None, "stderr_fd needs stderr_pipe=True"
        return self.proc.stderr.fileno()

    def wait_event(self, type_: str, key: str) -> dict[str, Any]:
        """Read the stderr pipe up to this event (only with stderr_pipe=True)."""
        assert self.proc.stderr is not None, "wait_event needs stderr_pipe=True"
        for line in self.proc.stderr:
            event: dict[str, Any] = json.loads(line).get("event", {})
            if event.get("type") == type_ and event.get("key") == key:
                return event
        raise DaemonError("portwatchd exited")

    def close(self) -> None:
        self._closing = True
        reader = getattr(self, "_notify_reader", None)
        if reader is not None:
            reader.join(timeout=5)  # it wakes every 0.5 s to look at _closing
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
        self._notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
