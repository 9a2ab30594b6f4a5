"""The bench tests use the project's `netns` fixture (a private network namespace)."""

from tests.conftest import netns

__all__ = ["netns"]
