"""The client section end to end, on two rounds: a real status server, real starts."""

from __future__ import annotations

import argparse
import io
import os

from bench.client import SECTION, pairs


def test_two_rounds_time_every_start_and_judge_the_best() -> None:
    args = argparse.Namespace(client_rounds=2, client_max_ratio=2.0)
    out = io.StringIO()
    result = SECTION.run(args, out)
    names = [pair.name for pair in pairs("/x") if os.access(pair.baseline[0], os.X_OK)]
    methods = {record["method"] for record in result.records}
    assert methods == {f"{name}_{role}" for name in names for role in ("baseline", "client")}
    for record in result.records:
        assert record["reps"] == 2
        assert 0 < record["best_ms"] <= record["median_ms"]
    assert len(result.checks) == len(names)
    for check in result.checks:
        assert check.target.startswith("portwatchctl status <= 2x python3 -c pass")
        assert "x" in check.detail and " ms vs " in check.detail
    assert out.getvalue().splitlines()[0].split()[:4] == ["start", "pass", "best", "status"]
