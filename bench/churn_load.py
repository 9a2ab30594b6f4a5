"""The churn of issue 10: stable listeners, and a process that never rests.

`StableListeners(tcp, udp)` is one helper process (bench.load's `listen`
role) holding sockets that never change; `stable_keys` maps their inodes to
the keys a scan gives them, so a daemon's events on them can be counted.

`Churn()` is another process (`python -m bench.churn_load`) that keeps a
pool of TCP listeners and bound UDP sockets on loopback (v4 and v6) and, as
fast as it can, replaces one of each and makes and aborts a TCP connection
to a listener of the pool. Replacing sockets in the kernel's hash buckets is
what moves a stable socket past the point where a dump or a /proc read
resumes: the churn must keep removing sockets while the stable ones stay.
Connections are aborted (SO_LINGER 0) so none lingers in TIME_WAIT and the
ephemeral ports never run out over minutes.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence

from bench.load import REPO_ROOT, Helper, LoadError
from portwatchd.sources.netlink import NetlinkScanner

CHURN_POOL = 64
_ABORT = struct.pack("ii", 1, 0)


class StableListeners:
    """`tcp` listeners and `udp` bound sockets held by one process, untouched."""

    def __init__(self, tcp: int, udp: int) -> None:
        self.helper = Helper(["listen", "--tcp", str(tcp), "--udp", str(udp), "--report-inodes"])
        try:
            ready = self.helper.wait_ready()
            self.inodes = {int(inode) for inode in ready["inodes"]}
            self.keys = stable_keys(self.inodes)
        except BaseException:
            self.helper.close()
            raise

    def close(self) -> None:
        self.helper.close()


def stable_keys(inodes: set[int]) -> dict[int, str]:
    """The key of each of these sockets, from one netlink scan."""
    scanner = NetlinkScanner()
    try:
        found = {e.inode: e.key for e in scanner.scan() if e.inode in inodes}
    finally:
        scanner.close()
    if len(found) != len(inodes):
        raise LoadError(f"a scan found {len(found)} of the {len(inodes)} stable sockets")
    return found


class Churn:
    """The churning process; `close()` stops it and returns its iterations."""

    def __init__(self, pool: int = CHURN_POOL) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.churn_load", str(pool)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.process.wait()
            raise LoadError(f"the churn helper failed (exit status {self.process.returncode})")

    def close(self) -> int:
        """Stop the churn; how many replacement rounds it made."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        line = self.process.stdout.readline()
        self.process.wait(timeout=30)
        self.process.stdout.close()
        return int(line) if line.strip() else 0


def _new_socket(kind: int, index: int) -> socket.socket:
    family = socket.AF_INET6 if index % 2 else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    return sock


def _connect_and_abort(listener: socket.socket) -> None:
    with socket.socket(listener.family, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        client.connect(listener.getsockname()[:2])


def _drain_accepts(listener: socket.socket) -> None:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
    listener.close()  # queued connections are reset with it


def churn_main(argv: Sequence[str]) -> int:
    """Replace sockets until stdin closes, then print the rounds made."""
    pool = int(argv[0]) if argv else CHURN_POOL
    tcp = [_new_socket(socket.SOCK_STREAM, i) for i in range(pool)]
    udp = [_new_socket(socket.SOCK_DGRAM, i) for i in range(pool // 4 or 1)]
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print("ready", flush=True)
    rounds = 0
    while not stop.is_set():
        slot = random.randrange(pool)
        _connect_and_abort(tcp[slot])
        _drain_accepts(tcp[slot])
        tcp[slot] = _new_socket(socket.SOCK_STREAM, rounds)
        slot = random.randrange(len(udp))
        udp[slot].close()
        udp[slot] = _new_socket(socket.SOCK_DGRAM, rounds)
        rounds += 1
    print(json.dumps(rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(churn_main(sys.argv[1:]))
