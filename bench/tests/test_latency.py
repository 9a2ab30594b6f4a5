"""The latency section's parts: the way back to the starting namespace, the targets, the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.latency import MethodResult, report_rows, target_checks
from bench.latency_load import LoadCost, load_row
from tests.netns import netns_unavailable_reason

REPO = Path(__file__).resolve().parent.parent.parent

# enter_private_netns() never goes back: run it in a child process.
_ROUND_TRIP = """
import os
from bench.netns import enter_private_netns, started_netns
def here():
    return os.stat("/proc/thread-self/ns/net").st_ino
start = here()
enter_private_netns()
private = here()
with started_netns():
    inside = here()
print(start, private, inside, here())
"""


def test_started_netns_steps_back_to_where_the_bench_began() -> None:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    start, private, inside, after = (int(n) for n in result.stdout.split())
    assert start != private
    assert inside == start
    assert after == private
    assert start == os.stat("/proc/thread-self/ns/net").st_ino


def _result(**fields: object) -> MethodResult:
    result = MethodResult("portwatchd (default)")
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def test_targets_pass_on_numbers_within_the_issue() -> None:
    good = _result(
        close_ms=[0.2] * 99 + [1.9],
        open_ms=[15.0] * 99 + [55.0],
        short={"transient": 10},
        short_trials=10,
        cpu_percent=0.03,
        storm=LoadCost(rate=199.0, cpu_percent=2.9),
        churn=LoadCost(rate=5000.0, cpu_percent=0.4),
        old_open_ms=[2500.0, 5050.0],
    )
    assert [check.passed for check in target_checks(good)] == [True] * 9


def test_each_target_fails_on_its_own_number() -> None:
    bad = _result(
        close_ms=[0.2] * 90 + [3.0] * 10,
        open_ms=[25.0] * 90 + [70.0] * 10,
        short={"transient": 9, "missed": 1},
        short_trials=10,
        cpu_percent=0.2,
        missed=1,
        storm=LoadCost(rate=200.0, cpu_percent=3.1),
        churn=LoadCost(rate=5000.0, cpu_percent=0.6),
        old_open_ms=[2500.0, 5200.0],
    )
    failed = [check.target for check in target_checks(bad) if not check.passed]
    assert failed == [
        "close p99 <= 2 ms",
        "new process p50 <= 20 ms",
        "new process p99 <= 60 ms",
        "100 ms listener reported every time",
        "idle CPU <= 0.05% of a core",
        "no close or new-process event missed",
        "old process's new listener <= the 5 s poll (+100 ms for the look)",
        "exec storm: CPU <= 3% of a core",
        "connection churn: CPU <= 0.5% of a core",
    ]


def test_no_measurement_is_a_failure_not_a_pass() -> None:
    checks = target_checks(_result())
    assert not any(check.passed for check in checks[:4] + checks[6:])


def test_the_table_row_says_how_short_listeners_were_reported() -> None:
    row = report_rows(
        [_result(close_ms=[1.0], short={"missed": 2, "transient": 3}, short_trials=5)]
    )
    assert row[0][0] == "portwatchd (default)"
    assert row[0][6] == "2 missed, 3 transient (of 5)"
    assert row[0][3] == "-"  # no new-process trial


def test_the_load_table_gives_rates_reached_and_cpu() -> None:
    row = load_row("portwatchd (default)", LoadCost(rate=198.4, cpu_percent=1.234), None)
    assert row == ["portwatchd (default)", "198/s", "1.23 %", "-", "-"]
