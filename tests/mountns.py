"""A private mount namespace for a test: tmpfs mounts that the host never sees.

The pytest process moves into a new mount namespace (unshare(2) with
CLONE_NEWNS, every mount made private so nothing propagates back) and
returns with setns(2) afterwards; the namespace and its mounts go away
with it. Needs root, and a single-threaded process (setns refuses
otherwise).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mountns_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for unshare(CLONE_NEWNS) and mount"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare --mount refused: {probe.stderr.decode(errors='replace').strip()}"
    return None


@contextmanager
def private_mounts() -> Iterator[None]:
    """Run the block in a new mount namespace; mounts made in it vanish after."""
    original = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY)
    cwd = os.getcwd()
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        try:
            _check(
                _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /"
            )
            yield
        finally:
            _check(_libc.setns(original, CLONE_NEWNS), "setns(original)")
            os.chdir(cwd)  # setns moved the working directory to the namespace's root
    finally:
        os.close(original)


def mount_tmpfs(path: str, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True
    )


def remount(path: str, option: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{option}", path], check=True)
