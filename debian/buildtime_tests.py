"""pytest plugin for the package build (loaded by debian/rules): skip the
tests that need root or namespaces.

Debian's build daemons build without root and often without namespaces, so
a test that needs either cannot be part of the build, even on a machine
where dpkg-buildpackage happens to run as root: it runs in CI and in the
autopkgtest instead.
"""

import pytest

# Fixtures that put a test in a private network namespace (tests/conftest.py).
NAMESPACE_FIXTURES = frozenset({"netns"})
SKIP = pytest.mark.skip(reason="needs root or namespaces: not run at package build time")


def pytest_collection_modifyitems(config, items):
    for item in items:
        needs_namespaces = NAMESPACE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if needs_namespaces or item.get_closest_marker("system") is not None:
            item.add_marker(SKIP)
