"""Run the real daemon as a subprocess, with a real NOTIFY_SOCKET bound by
the test, and read what it says: sd_notify datagrams and JSON lines on stderr."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT = 15.0


class Daemon:
    def __init__(
        self,
        *,
        config: str = "",
        interval: float | None = 0.1,
        watchdog_usec: int | None = None,
        extra_args: tuple[str, ...] = (),
        read_notify: bool = True,
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        # Short paths: sun_path holds 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="pwd", dir="/tmp")
        self.state_dir = os.path.join(self.dir, "state")
        self.socket_path = os.path.join(self.dir, "ctl.sock")
        self.config_path = os.path.join(self.dir, "portwatchd.toml")
        self.notify_path = os.path.join(self.dir, "notify")
        self.write_config(config)
        self.interval = interval
        self.watchdog_usec = watchdog_usec
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.notifications: queue.Queue[tuple[float, str]] = queue.Queue()
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_text: list[str] = []
        self._notify_sock: socket.socket | None = None
        self.read_notify = read_notify
        # Run the daemon under this command (e.g. nsenter into a mount namespace).
        self.command_prefix = command_prefix
        # Cleared: stderr is left unread, and the daemon's writes block once the pipe is full.
        self._stderr_open = threading.Event()
        self._stderr_open.set()

    def write_config(self, text: str) -> None:
        self.all_namespaces = "namespaces" in text
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write('log_format = "json"\n' + text)

    def start(self) -> Daemon:
        if self._notify_sock is None:
            self._notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify_sock.bind(self.notify_path)
            if self.read_notify:
                threading.Thread(target=self._read_notify, daemon=True).start()
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.pop("JOURNAL_STREAM", None)
        if self.watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        args = [
            *self.command_prefix,
            sys.executable,
            "-m",
            "portwatchd.daemon",
            "--config",
            self.config_path,
            "--state-dir",
            self.state_dir,
            "--socket",
            self.socket_path,
            "--log-target",
            "stderr",
        ]
        if self.interval is not None:
            args += ["--interval", str(self.interval)]
        if not self.all_namespaces:
            # The daemon runs in the test's private network namespace and
            # looks at that one only, unless a test asks for every one (the
            # machine's own included).
            args += ["--namespaces", "host"]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(
            args, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
        return self

    def _read_notify(self) -> None:
        assert self._notify_sock is not None
        while True:
            try:
                data = self._notify_sock.recv(65536)
            except OSError:
                return
            self.notifications.put((time.monotonic(), data.decode("latin-1")))

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        while True:
            self._stderr_open.wait()
            line = proc.stderr.readline()
            if not line:
                return
            self.stderr_text.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                record = {"raw": line}
            self.lines.put(record)

    # -- waiting -------------------------------------------------------------

    def _wait(
        self, source: queue.Queue[Any], predicate: Callable[[Any], bool], timeout: float, what: str
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching {what}; stderr: {self.stderr()}")
            try:
                item = source.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(item):
                return item

    def wait_notify(
        self, predicate: Callable[[str], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> tuple[float, str]:
        stamped: tuple[float, str] = self._wait(
            self.notifications, lambda item: predicate(item[1]), timeout, "sd_notify message"
        )
        return stamped

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        return self.wait_notify(lambda m: "READY=1" in m.split("\n"), timeout)[1]

    def wait_line(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        record: dict[str, Any] = self._wait(self.lines, predicate, timeout, "line")
        return record

    def wait_event(self, type_: str, key: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        record = self.wait_line(
            lambda r: r.get("event", {}).get("type") == type_ and r["event"].get("key") == key,
            timeout,
        )
        event: dict[str, Any] = record["event"]
        return event

    def wait_events(
        self, type_: str, keys: set[str], timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, dict[str, Any]]:
        """Events of this type for all these keys, in whatever order they come."""
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(keys):
            record = self.wait_line(
                lambda r: r.get("event", {}).get("type") == type_ and r["event"].get("key") in keys,
                max(0.0, deadline - time.monotonic()),
            )
            found[record["event"]["key"]] = record["event"]
        return found

    def drain_events(self, settle: float = 0.5) -> list[dict[str, Any]]:
        """Events printed so far, waiting until `settle` seconds pass with none."""
        events = []
        while True:
            try:
                record = self.lines.get(timeout=settle)
            except queue.Empty:
                return events
            if "event" in record:
                events.append(record["event"])

    def pause_stderr(self) -> None:
        """Stop reading stderr (after the line being read), as a stalled journal would."""
        self._stderr_open.clear()

    def resume_stderr(self) -> None:
        self._stderr_open.set()

    def stderr(self) -> str:
        return "".join(self.stderr_text[-40:])

    # -- stopping ------------------------------------------------------------

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(DEFAULT_TIMEOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEFAULT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self._notify_sock is not None:
            self._notify_sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def listen_tcp(address: str = "127.0.0.1", port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen()
    return sock


def tcp_key(sock: socket.socket) -> str:
    address, port = sock.getsockname()[:2]
    host = f"[{address}]" if ":" in address else address
    return f"tcp:{host}:{port}"


_LISTENER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


class ListenerProcess:
    """A new process holding one TCP listener, as a freshly started server would."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LISTENER, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        host = f"[{address}]" if ":" in address else address
        self.key = f"tcp:{host}:{port}"
        self.port = port
        self.pid = self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(DEFAULT_TIMEOUT)
