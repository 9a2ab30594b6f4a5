"""A burst of new listeners, and the daemons' event lines as they arrive.

`Burst(total)` starts helper processes (`python -m bench.burst --count N`)
that wait, interpreter loaded, until `go()`; then each opens its share of
`total` TCP listeners on 127.0.0.1 (its own range of ports from 10,000 up)
as fast as it can and reports their ports. One process would be the issue's burst, but
a process may hold at most RLIMIT_NOFILE descriptors, whose hard limit
(20,000 here) cannot be raised without CAP_SYS_RESOURCE: each helper raises
its soft limit to the hard one, and as few helpers as that allows share the
total (3 for 50,000), released together.

`EventLines` reads the daemons' stderr pipes (JSON lines) and stamps each
event line with the moment it was read (CLOCK_MONOTONIC, as the servers'
listen() stamps). It reads whole chunks and picks the type and key out of a
line with one regular expression, so that 50,000 lines cost it well under a
second and it never falls behind the daemon (whose journal writer would
then block on a full pipe).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from bench.load import FD_HEADROOM, REPO_ROOT, LoadError

# The first "type" and "key" of an event line: both come before the owner
# (whose command line may hold anything, but JSON-escaped).
_EVENT = re.compile(rb'^\{"event":\{.*?"type":"(\w+)".*?"key":"([^"]+)"')

# The helpers' listeners take the ports from here up, one range each.
FIRST_PORT = 10_000
LAST_PORT = 65_535
Wanted = tuple[str, str, str]  # (daemon name, event type, key)


class EventLines:
    """Event lines from several daemons' stderr pipes, stamped as read."""

    def __init__(self, pipes: dict[str, int]) -> None:
        self._selector = selectors.DefaultSelector()
        self._partial: dict[str, bytes] = {}
        for name, fd in pipes.items():
            self._selector.register(fd, selectors.EVENT_READ, name)
            self._partial[name] = b""
        self.lines_read = 0

    def wait(self, wanted: Iterable[Wanted], timeout: float) -> dict[Wanted, float]:
        """When each wanted event line was read, for those read within
        `timeout`; raises LoadError when a daemon's pipe closes."""
        missing = set(wanted)
        seen: dict[Wanted, float] = {}
        give_up = time.monotonic() + timeout
        while missing:
            left = give_up - time.monotonic()
            if left <= 0:
                break
            for key, _ in self._selector.select(min(left, 1.0)):
                name = str(key.data)
                chunk = os.read(int(key.fd), 1 << 20)
                if not chunk:
                    raise LoadError(f"portwatchd ({name}) closed its stderr: it exited")
                now = time.monotonic()
                for found in self._events(name, chunk):
                    if found in missing:
                        missing.discard(found)
                        seen[found] = now
        return seen

    def _events(self, name: str, chunk: bytes) -> list[Wanted]:
        lines = (self._partial[name] + chunk).split(b"\n")
        self._partial[name] = lines.pop()
        self.lines_read += len(lines)
        found = []
        for line in lines:
            match = _EVENT.match(line)
            if match:
                found.append((name, match[1].decode(), match[2].decode()))
        return found

    def drain(self) -> None:
        """Read whatever is waiting, without waiting."""
        for key, _ in self._selector.select(0):
            self._events(str(key.data), os.read(int(key.fd), 1 << 20))

    def close(self) -> None:
        self._selector.close()


class Burst:
    """Helpers ready to open `total` listeners on 127.0.0.1 together."""

    def __init__(self, total: int) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        per_helper = (1 << 20 if hard == resource.RLIM_INFINITY else hard) - FD_HEADROOM
        helpers = math.ceil(total / per_helper)
        base, extra = divmod(total, helpers)
        self.helpers: list[subprocess.Popen[str]] = []
        try:
            first_port = FIRST_PORT
            for index in range(helpers):
                count = base + (1 if index < extra else 0)
                argv = ["--count", str(count), "--first-port", str(first_port)]
                first_port += count
                self.helpers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.burst", *argv],
                        cwd=REPO_ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            for helper in self.helpers:
                self._read(helper)  # the interpreter is up, waiting for go
        except BaseException:
            self.close()
            raise
        self.ports: list[int] = []
        self.first_listen = self.last_listen = 0.0

    @staticmethod
    def _read(helper: subprocess.Popen[str]) -> dict[str, object]:
        assert helper.stdout is not None
        line = helper.stdout.readline()
        if not line:
            helper.wait()
            raise LoadError(f"burst helper failed: exit status {helper.returncode}")
        report: dict[str, object] = json.loads(line)
        return report

    def go(self) -> None:
        """Release every helper at once; return when all have listened."""
        for helper in self.helpers:
            assert helper.stdin is not None
            helper.stdin.write("go\n")
            helper.stdin.flush()
        reports = [self._read(helper) for helper in self.helpers]
        self.ports = [int(port) for report in reports for port in report["ports"]]  # type: ignore[attr-defined]
        self.first_listen = min(float(report["first"]) for report in reports)  # type: ignore[arg-type]
        self.last_listen = max(float(report["last"]) for report in reports)  # type: ignore[arg-type]

    @property
    def pids(self) -> list[int]:
        return [helper.pid for helper in self.helpers]

    def close(self) -> None:
        for helper in self.helpers:
            if helper.stdin is not None and not helper.stdin.closed:
                helper.stdin.close()
        for helper in self.helpers:
            try:
                helper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
            if helper.stdout is not None:
                helper.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_listeners(first_port: int, count: int) -> list[socket.socket]:
    """`count` listeners on the free ports from `first_port` up. Ports are
    named, not left to the kernel: bind() to port 0 searches the bound ports
    for a free one, which with tens of thousands bound took 330 s for 50,000."""
    held: list[socket.socket] = []
    port = first_port
    while len(held) < count:
        if port > LAST_PORT:
            raise LoadError(f"no free port left above {first_port} for {count} listeners")
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()  # in use (one of another helper's, past its share)
        else:
            sock.listen(1)
            held.append(sock)
        port += 1
    return held


def helper_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first-port", type=int, required=True)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.readline()  # go
    first = time.monotonic()
    held = _open_listeners(args.first_port, args.count)
    last = time.monotonic()
    ports = [sock.getsockname()[1] for sock in held]
    print(json.dumps({"ports": ports, "first": first, "last": last}), flush=True)
    sys.stdin.read()  # hold them until the benchmark closes our stdin
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())
