"""The worked examples in the bench modules' docstrings hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["bench.ss", "bench.load", "bench.timing", "bench.section", "bench.scan", "bench.daemon_store"],
)
def test_docstring_examples(module: str) -> None:
    failures, tried = doctest.testmod(importlib.import_module(module))
    assert tried > 0
    assert failures == 0
