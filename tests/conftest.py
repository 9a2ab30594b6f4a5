from __future__ import annotations

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
