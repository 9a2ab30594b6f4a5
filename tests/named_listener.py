"""A real process with a name of the test's choosing, listening on a port.

Any local user can name a process anything (prctl(PR_SET_NAME), or a write
to /proc/self/comm), so hostile names are tested on real processes, seen
through a real scan and a real /proc walk.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_NAMED_SERVER = r"""
import socket, sys
with open("/proc/self/comm", "wb") as comm:
    comm.write(bytes.fromhex(sys.argv[1]))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""


@contextmanager
def listener_named(name: bytes) -> Iterator[int]:
    """The port of a TCP listener on 127.0.0.1 whose process is named `name`
    (the kernel keeps 15 bytes of it), until the block ends."""
    server = subprocess.Popen(
        [sys.executable, "-c", _NAMED_SERVER, name.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        yield int(server.stdout.readline())
    finally:
        server.stdin.close()
        server.wait(10)
