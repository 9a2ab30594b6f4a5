"""One booted systemd per test module, with portwatchd installed by `make install`'s script."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.sandbox import Sandbox, sandbox_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
# Where the sources go inside the sandbox: the work tree itself may be
# anywhere (under /tmp, a tmpfs in the sandbox; under /root, hidden from
# the unit by ProtectHome), so the parts `make install` needs are copied.
SOURCE_IN_SANDBOX = "/usr/src/portwatchd"
SOURCE_PARTS = (
    "pyproject.toml",
    "README.md",
    "portwatchd",
    "packaging",
    "man",
    "completion",
    "scripts",
)

# journald's default per-service limit is lowered in the sandbox, far below
# the burst test's event count: only the unit's own LogRateLimit* settings
# can then let every event of the burst through, so the test proves them.
JOURNALD_TEST_LIMIT = "[Journal]\nRateLimitIntervalSec=30s\nRateLimitBurst=200\n"


def copy_sources(box: Sandbox) -> str:
    """Copy what `make install` needs into the sandbox; return the directory."""
    for part in SOURCE_PARTS:
        source = REPO / part
        if source.exists():
            box.copy_in(str(source), f"{SOURCE_IN_SANDBOX}/{part}")
    box.run(
        "find", SOURCE_IN_SANDBOX, "-name", "__pycache__", "-prune", "-exec", "rm", "-rf", "{}", "+"
    )
    return SOURCE_IN_SANDBOX


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    """A booted sandbox with portwatchd installed (not yet started)."""
    reason = sandbox_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Sandbox("pwtest") as sandbox:
        sandbox.write_file(
            "/etc/systemd/journald.conf.d/50-portwatchd-test.conf", JOURNALD_TEST_LIMIT
        )
        sandbox.run("systemctl", "restart", "systemd-journald")
        source = copy_sources(sandbox)
        sandbox.run(f"{source}/scripts/install.sh", timeout=120)
        yield sandbox
