"""Real network namespaces for tests: `ip netns add` ones and `unshare --net` processes.

Names carry the test process's pid, so that tests running side by side on
one machine never share a namespace; every fixture deletes what it made.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

_numbers = itertools.count(1)

# Binds every (proto, address, port, device) given as JSON in argv[1], prints
# "ready", and holds the sockets until stdin closes.
_LISTENER = """
import json, socket, sys
held = []
for proto, address, port, device in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if device:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    sock.bind((address, port))
    if proto == "tcp":
        sock.listen()
    held.append(sock)
print("ready", flush=True)
sys.stdin.read()
"""

Listen = tuple[str, str, int, str]  # proto, address, port, device ("" for none)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def ip_netns() -> Iterator[str]:
    """A namespace made by `ip netns add` (a bind mount, no process), lo up."""
    name = f"pwt{os.getpid()}-{next(_numbers)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


@dataclass
class Holder:
    """A process holding listeners in a namespace."""

    process: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        """The python process itself (`ip netns exec` and `unshare` exec it)."""
        return self.process.pid

    @property
    def netns(self) -> int:
        return os.stat(f"/proc/{self.pid}/ns/net").st_ino


@contextmanager
def holding(listens: Sequence[Listen], prefix: Sequence[str] = ()) -> Iterator[Holder]:
    """A process holding `listens`, started under `prefix` (e.g. `ip netns exec NAME`)."""
    command = [*prefix, sys.executable, "-c", _LISTENER, json.dumps(list(listens))]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", f"the listener did not start: {line!r}"
        yield Holder(process)
    finally:
        process.kill()
        process.wait()


def in_ip_netns(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]


# unshare(1) execs the command inside a new namespace; lo is brought up first.
UNSHARE_NET = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
