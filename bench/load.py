"""A reusable socket load: listeners, bound UDP sockets and established connections.

The sockets live in helper processes (`python -m bench.load <role> ...`), not
in the benchmark process, because a process may hold at most RLIMIT_NOFILE
descriptors (20,000 here, and the hard limit cannot be raised), and because
the owner benchmark needs the sockets to belong to other, older processes.

Each helper opens its sockets, prints one JSON line saying it is ready, and
holds them until its stdin closes: closing the pipe (or the benchmark dying)
ends it. Use the loads as context managers:

    with ConnectionLoad(50_000), ListenerLoad(tcp=1000, udp=100):
        ...  # scan

Run the loads inside a private network namespace (bench.netns).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# A freshly started server: one process listening on a loopback port the
# kernel picks; it prints that port and the monotonic time it listened, and
# holds the socket until its stdin closes.
NEW_SERVER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], time.monotonic(), flush=True)
sys.stdin.read()
"""


def at_a_rate(setup: str, action: str) -> str:
    """A script (for `python -c`) that runs `action` argv[1] times a second
    for argv[2] seconds, after `setup`: it prints "ready", and at the end
    how many times it ran."""
    return f"""
import os, socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
{setup}
print("ready", flush=True)
start = time.monotonic()
made = 0
while (now := time.monotonic()) - start < seconds:
    if made > (now - start) * rate:
        time.sleep(0.001)
        continue
{textwrap.indent(action, "    ")}
    made += 1
print(made, flush=True)
"""


# Loopback connections made and closed at a rate: churn.
CONNECTION_CHURN = at_a_rate(
    setup="""server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1024)
address = server.getsockname()""",
    action="""client = socket.create_connection(address)
accepted, _ = server.accept()
client.close()
accepted.close()""",
)

# Programs started at a rate, each /bin/true: an exec storm.
EXEC_STORM = at_a_rate(
    setup="",
    action='os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], os.environ), 0)',
)

REPO_ROOT = Path(__file__).resolve().parent.parent

# Connections are made in batches no larger than the accept backlog: a
# blocking connect() to loopback completes the handshake at once, but only
# while the listener's accept queue has room; beyond it the SYN is dropped
# and connect() waits a second for the retransmission.
CONNECT_BATCH = 1000
LISTEN_BACKLOG = 4096  # net.core.somaxconn's default caps it anyway

# Descriptors a helper keeps free for Python itself, pipes and the listener.
FD_HEADROOM = 256
# One established loopback connection costs a helper two descriptors (the
# client end and the accepted end). 6,250 per helper spreads 50,000
# connections over 8 helpers, well under the 20,000-descriptor hard limit.
CONNECTIONS_PER_HELPER = 6250


class LoadError(RuntimeError):
    """A helper process could not open its sockets."""


def _fd_budget() -> int:
    """Descriptors one helper may use for sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    return max(1, hard - FD_HEADROOM)


def _split(total: int, per_part: int) -> list[int]:
    """`total` split into the fewest parts of at most `per_part`, as even as possible.

    >>> _split(50_000, 6250)
    [6250, 6250, 6250, 6250, 6250, 6250, 6250, 6250]
    >>> _split(10, 4)
    [4, 3, 3]
    >>> _split(0, 4)
    []
    """
    if total <= 0:
        return []
    parts = math.ceil(total / per_part)
    base, extra = divmod(total, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


class Helper:
    """One helper process holding sockets until it is closed."""

    def __init__(self, args: Sequence[str]) -> None:
        self.argv = [sys.executable, "-m", "bench.load", *args]
        self.process = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> dict[str, Any]:
        """Block until the helper says it holds its sockets; its ready message."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            assert self.process.stderr is not None
            detail = self.process.stderr.read().strip().splitlines()
            last = detail[-1] if detail else f"exit status {self.process.returncode}"
            raise LoadError(f"load helper {' '.join(self.argv[2:])} failed: {last}")
        self.ready = json.loads(line)
        return self.ready

    def close(self) -> None:
        """Close the helper's stdin (its signal to exit) and reap it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class _HelperGroup:
    """Helpers started together, all ready or all closed."""

    def __init__(self) -> None:
        self.helpers: list[Helper] = []

    def _start(self, argvs: list[list[str]]) -> None:
        # Start every helper first, then wait: they fill their tables in
        # parallel on the machine's cores.
        try:
            self.helpers = [Helper(argv) for argv in argvs]
            for helper in self.helpers:
                helper.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [helper.pid for helper in self.helpers]

    def close(self) -> None:
        for helper in self.helpers:
            helper.close()
        self.helpers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ListenerLoad(_HelperGroup):
    """`tcp` listening TCP sockets and `udp` bound UDP sockets, on loopback.

    Half of each kind is IPv4 (127.0.0.1), half IPv6 (::1), so every
    scanner reads all four tables. Ports are chosen by the kernel.
    """

    def __init__(self, tcp: int, udp: int) -> None:
        super().__init__()
        self.tcp = tcp
        self.udp = udp
        budget = _fd_budget()
        argvs = []
        # Split the sockets over as many helpers as the descriptor limit asks.
        tcp_left = tcp
        for part in _split(tcp + udp, budget):
            part_tcp = min(part, tcp_left)
            tcp_left -= part_tcp
            argvs.append(["listen", "--tcp", str(part_tcp), "--udp", str(part - part_tcp)])
        self._start(argvs)

    @property
    def expected(self) -> int:
        return self.tcp + self.udp


class ConnectionLoad(_HelperGroup):
    """`count` established TCP connections over loopback, both ends held.

    Each helper listens on its own port (its own loopback address, too, from
    127.1.0.1 up), connects to itself, accepts, then closes its listener: the
    load adds established sockets only, never a listening one. Distinct
    destinations keep every helper's connections inside the ephemeral port
    range, which the kernel shares between connections to different
    destinations.
    """

    def __init__(self, count: int, per_helper: int = CONNECTIONS_PER_HELPER) -> None:
        super().__init__()
        self.count = count
        per_helper = min(per_helper, _fd_budget() // 2)
        argvs = [
            [
                "connect",
                "--count",
                str(part),
                "--address",
                f"127.1.{index // 250}.{index % 250 + 1}",
            ]
            for index, part in enumerate(_split(count, per_helper))
        ]
        self._start(argvs)


class NewListener(_HelperGroup):
    """A fresh process with one TCP listener: `pid` and the socket's `inode`."""

    def __init__(self) -> None:
        super().__init__()
        self._start([["listen", "--tcp", "1", "--udp", "0", "--report-inodes"]])
        helper = self.helpers[0]
        self.pid = helper.pid
        self.inode = int(helper.ready["inodes"][0])


# --- the helper side -----------------------------------------------------


def _listen(tcp: int, udp: int) -> list[socket.socket]:
    held = []
    for index in range(tcp + udp):
        family = socket.AF_INET6 if index % 2 else socket.AF_INET
        address = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        kind = socket.SOCK_STREAM if index < tcp else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.bind((address, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        held.append(sock)
    return held


def _connect(count: int, address: str) -> list[socket.socket]:
    held = []
    with socket.socket() as listener:
        listener.bind((address, 0))
        listener.listen(LISTEN_BACKLOG)
        target = listener.getsockname()
        remaining = count
        while remaining:
            batch = min(CONNECT_BATCH, remaining)
            for _ in range(batch):
                client = socket.socket()
                client.connect(target)
                held.append(client)
            for _ in range(batch):
                accepted, _ = listener.accept()
                held.append(accepted)
            remaining -= batch
    return held


def helper_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    listen = roles.add_parser("listen", help="hold TCP listeners and bound UDP sockets")
    listen.add_argument("--tcp", type=int, required=True)
    listen.add_argument("--udp", type=int, required=True)
    listen.add_argument("--report-inodes", action="store_true")
    connect = roles.add_parser("connect", help="hold both ends of loopback connections")
    connect.add_argument("--count", type=int, required=True)
    connect.add_argument("--address", required=True)
    args = parser.parse_args(argv)

    if args.role == "listen":
        held = _listen(args.tcp, args.udp)
    else:
        held = _connect(args.count, args.address)
    ready: dict[str, Any] = {"pid": os.getpid(), "sockets": len(held)}
    if getattr(args, "report_inodes", False):
        ready["inodes"] = [os.fstat(sock.fileno()).st_ino for sock in held]
    print(json.dumps(ready), flush=True)
    sys.stdin.buffer.read()  # hold the sockets until the benchmark closes our stdin
    # Abort rather than close: a normal close leaves one end of every
    # connection in TIME_WAIT for a minute, and those would show up in the
    # next load's /proc/net/tcp and in the kernel's table walks.
    abort = struct.pack("ii", 1, 0)
    for sock in held:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, abort)
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())
