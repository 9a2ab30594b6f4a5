"""What every benchmark section provides, and what it hands back.

A section (the scan benchmark today; the daemon's idle cost, detection
latency and control socket rate later) is a module-level object with a name,
its command-line options and a `run`. `python -m bench` runs every section;
`python -m bench scan` only that one. Each returns records (one JSON object
per measurement, written by `--json`) and target checks (PASS/FAIL).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO


@dataclass(frozen=True)
class Check:
    """One target: did the run meet it, and with what numbers."""

    target: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.target}: {self.detail}"


@dataclass
class SectionResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


class Section(Protocol):
    name: str
    help: str

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Add this section's options (shared with the other sections' in one parser)."""
        ...

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        """Measure, print a human-readable report to `out`, return records and checks."""
        ...


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain right-aligned text table.

    >>> print(format_table(["a", "bb"], [["1", "22"], ["333", "4"]]))
      a  bb
    ---  --
      1  22
    333   4
    """
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        for cells in [headers, ["-" * width for width in widths], *rows]
    ]
    return "\n".join(lines)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` of the sorted values (nearest rank).

    >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5), percentile([1.0, 2.0], 0.99)
    (3.0, 2.0)
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def format_ms(value: float | None) -> str:
    """Milliseconds with three significant digits, "-" when not measured.

    >>> [format_ms(v) for v in (0.04567, 1.234, 45.67, 1234.5, None)]
    ['0.0457', '1.23', '45.7', '1234', '-']
    """
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    """A ratio as "12.3x", "-" when not available."""
    if value is None:
        return "-"
    return f"{value:.3g}x" if value < 1000 else f"{value:.0f}x"
