"""`python -m bench control` end to end on a small load: the real daemon answers,
the table, the three target lines and the JSON records come out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import REPO_ROOT

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark unshares a netns: root")


@needs_root
def test_control_section_measures_the_running_daemon(tmp_path: Path) -> None:
    out = tmp_path / "control.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "control", "--json", str(out)),
            *("--control-ports", "50", "--control-ring", "20", "--control-clients", "2"),
            *("--control-duration", "0.5", "--control-events-reps", "3"),
            *("--control-ctl-reps", "2"),
        ],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The exit status follows the targets, which depend on the machine: 0 or 1.
    assert run.returncode in (0, 1), run.stderr
    assert ("FAIL" in run.stdout) == (run.returncode == 1)
    # The daemon really watched the load and filled its 20-event ring.
    assert "50 ports watched, last_seq 20, ring 20/20" in run.stdout
    for target in (
        "control status >= 2,000 requests/s from 2 clients, every answer ok",
        "control events, whole 20-event ring",
        "portwatchctl status <= 80 ms wall",
    ):
        assert target in run.stdout
    assert ", 0 bad answers of" in run.stdout

    records = {
        (record["method"], record.get("command")): record for record in json.loads(out.read_text())
    }
    assert set(records) == {
        ("status_rps", None),
        ("events_whole_ring_first", None),
        ("events_whole_ring", None),
        ("ctl_status", "python3 -m portwatchd.ctl"),
        ("ctl_status", ".venv/bin/portwatchctl"),
    }
    assert records[("status_rps", None)]["answers"] > 0
    assert records[("status_rps", None)]["errors"] == 0
    assert records[("events_whole_ring", None)]["reps"] == 3
    assert records[("ctl_status", "python3 -m portwatchd.ctl")]["reps"] == 2
    for record in records.values():
        assert record["section"] == "control"
        assert (record["ports"], record["ring"]) == (50, 20)
