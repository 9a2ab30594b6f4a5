"""Move the benchmark into a private network namespace, for good.

The load (tens of thousands of sockets) must not touch the host's tables, and
the scans must see only our load. The benchmark process unshares its network
namespace once at start-up (it never goes back), so every helper process it
starts afterwards inherits the namespace too, and `ss` sees the same sockets.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# A fresh namespace starts with the default 32768-60999 ephemeral range; the
# load binds thousands of listeners to port 0 and makes tens of thousands of
# connections, so give both the whole unprivileged range. The sysctl is per
# network namespace: the host's setting is untouched.
WIDE_PORT_RANGE = (1024, 65535)


class NetnsError(RuntimeError):
    """The private network namespace could not be set up."""


def netns_unavailable_reason() -> str | None:
    """Why a private network namespace cannot be entered here, or None."""
    if os.geteuid() != 0:
        return "the benchmark needs root to unshare(CLONE_NEWNET); run it as root (sudo make bench)"
    return None


# The namespace the benchmark started in, kept open by the first
# enter_private_netns(), for a section that must run there (started_netns).
_started_in: int | None = None


def enter_private_netns() -> None:
    """unshare(CLONE_NEWNET) this process, bring lo up and widen the ephemeral ports."""
    global _started_in
    reason = netns_unavailable_reason()
    if reason:
        raise NetnsError(reason)
    if _started_in is None:
        _started_in = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
    up = subprocess.run(
        ["ip", "link", "set", "lo", "up"], capture_output=True, text=True, check=False
    )
    if up.returncode != 0:
        raise NetnsError(f"cannot bring lo up in the new namespace: {up.stderr.strip()}")
    low, high = WIDE_PORT_RANGE
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as ports:
        ports.write(f"{low} {high}\n")


@contextmanager
def sibling_netns() -> Iterator[None]:
    """Step into another fresh namespace for the block, then back.

    Sockets opened and processes started inside the block stay in the
    sibling namespace after it ends (a netlink socket too: sock_diag
    answers about the namespace its socket was created in), so a caller can
    set up a second, different load there and time it interleaved with the
    first. The namespace goes away when its last socket and process do.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter_private_netns()
        try:
            yield
        finally:
            if _libc.setns(original, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(f"setns(back to the benchmark's namespace): {os.strerror(err)}")
    finally:
        os.close(original)


@contextmanager
def started_netns() -> Iterator[None]:
    """Step back into the namespace the benchmark started in for the block.

    For what works only there (the proc connector wants the initial
    namespace). Without an earlier enter_private_netns(), the block runs
    where it is.
    """
    if _started_in is None:
        yield
        return
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(_started_in, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns(the namespace the benchmark started in): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(here, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(f"setns(back to the benchmark's namespace): {os.strerror(err)}")
    finally:
        os.close(here)
