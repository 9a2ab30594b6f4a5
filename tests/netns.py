"""Run a test inside a private network namespace of its own.

The pytest process itself moves into a fresh namespace (unshare(2) with
CLONE_NEWNET) and back afterwards (setns(2) on the saved original), so the
sockets a test opens, and every subprocess it starts, see only that
namespace: no host listener leaks into an assertion.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_unavailable_reason() -> str | None:
    """Why private network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root for unshare(CLONE_NEWNET)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare --net refused: {probe.stderr.decode(errors='replace').strip()}"
    return None


@contextmanager
def private_netns() -> Iterator[None]:
    """Enter a new network namespace with loopback up; return on exit."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            _check(_libc.setns(original, CLONE_NEWNET), "setns(original)")
    finally:
        os.close(original)
