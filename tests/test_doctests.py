"""The worked examples in portwatchd's docstrings hold, in every module."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import portwatchd

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(portwatchd.__path__, "portwatchd.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    failures, _tried = doctest.testmod(importlib.import_module(name))
    assert failures == 0


def test_the_examples_are_found() -> None:
    tried = sum(doctest.testmod(importlib.import_module(name))[1] for name in MODULES)
    assert tried > 50
