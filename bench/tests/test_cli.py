"""`python -m bench` end to end, on one small point: table, checks, JSON, exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import REPO_ROOT

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark unshares a netns: root")


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_root
@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_one_point_prints_the_table_checks_and_writes_json(tmp_path: Path, clock: str) -> None:
    out = tmp_path / "bench.json"
    run = _bench(
        *("scan", "--points", "10:0", "--budget", "0.2", "--owner-reps", "2"),
        *("--clock", clock, "--json", str(out)),
    )
    # The exit status follows the targets, which depend on the machine: 0 or 1.
    assert run.returncode in (0, 1), run.stderr
    assert ("FAIL" in run.stdout) == (run.returncode == 1)
    assert "PASS  every method saw exactly the load's listeners" in run.stdout
    assert "PASS  resolve_new found the new process as the owner" in run.stdout
    assert "netlink >= 30x cheaper than ss at N=10, M=0" in run.stdout
    assert "M=50000" not in run.stdout  # targets for points not run are not reported
    records = json.loads(out.read_text())
    methods = {r["method"] for r in records}
    assert methods == {"netlink", "floor", "proc", "ss", "netlink_cold", "owner"}
    for record in records:
        assert (record["n"], record["m"], record["clock"]) == (10, 0, clock)
        assert 0 < record["median_ms"] <= record["p90_ms"]


def test_bad_point_is_refused_with_the_expected_shape() -> None:
    run = _bench("--points", "10-0")
    assert run.returncode == 2
    assert "expected N:M" in run.stderr


def test_unknown_section_is_refused() -> None:
    run = _bench("nosuch")
    assert run.returncode == 2
    assert "unknown section nosuch" in run.stderr
