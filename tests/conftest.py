from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.netns import netns_unavailable_reason, private_netns


@pytest.fixture
def netns() -> Iterator[None]:
    """Run the test in a private network namespace (skips where impossible)."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with private_netns():
        yield


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for Unix sockets (sun_path holds 108 bytes), open
    to all, so that a test may knock as another user."""
    path = tempfile.mkdtemp(dir="/tmp", prefix="pw")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
