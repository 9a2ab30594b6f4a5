"""What a daemon costs under load, for the latency section: an exec storm
and connection churn, each from a helper process for a window of seconds.

- exec storm: /bin/true started EXEC_STORM_RATE times a second (every exec
  is a proc connector message, and asks for follow-up looks);
- churn: CHURN_RATE loopback connections a second made and closed (every
  close is a socket destroy, which the daemon's BPF filter should drop in
  the kernel).

The CPU is the daemon's own (all its threads) over the window, as a share
of one core; the rate is what the helper reached, not what it was asked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from bench.daemon_process import RunningDaemon
from bench.load import CONNECTION_CHURN, EXEC_STORM, LoadError
from bench.section import Check

EXEC_STORM_RATE = 200.0  # execs per second
CHURN_RATE = 5000.0  # connections per second


@dataclass(frozen=True)
class LoadCost:
    rate: float  # reached, per second
    cpu_percent: float  # the daemon's, of one core


def cost_under(daemon: RunningDaemon, script: str, rate: float, seconds: float) -> LoadCost:
    """The daemon's CPU while a helper runs `script` at `rate` for `seconds`."""
    helper = subprocess.Popen(
        [sys.executable, "-c", script, str(rate), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert helper.stdout is not None
    try:
        if helper.stdout.readline().strip() != "ready":
            raise LoadError("the load helper did not start")
        cpu_before, wall_before = daemon.cpu_seconds(), time.monotonic()
        made = int(helper.stdout.readline() or 0)
        wall = time.monotonic() - wall_before
        cpu = daemon.cpu_seconds() - cpu_before
    finally:
        helper.kill()
        helper.wait()
    daemon.check_alive()
    return LoadCost(rate=made / wall, cpu_percent=100 * cpu / wall)


def exec_storm(daemon: RunningDaemon, seconds: float) -> LoadCost:
    return cost_under(daemon, EXEC_STORM, EXEC_STORM_RATE, seconds)


def connection_churn(daemon: RunningDaemon, seconds: float) -> LoadCost:
    return cost_under(daemon, CONNECTION_CHURN, CHURN_RATE, seconds)


LOAD_HEADERS = ["method", "execs", "CPU", "connections", "CPU"]


def _cells(cost: LoadCost | None) -> list[str]:
    if cost is None:
        return ["-", "-"]
    return [f"{cost.rate:,.0f}/s", f"{cost.cpu_percent:.2f} %"]


def load_row(name: str, storm: LoadCost | None, churn: LoadCost | None) -> list[str]:
    """A row of the load table (LOAD_HEADERS)."""
    return [name, *_cells(storm), *_cells(churn)]


def load_check(name: str, cost: LoadCost | None, limit: float) -> Check:
    """CPU at most `limit` % of a core; no measurement is a failure."""
    if cost is None:
        return Check(name, False, "not measured")
    return Check(name, cost.cpu_percent <= limit, f"{cost.cpu_percent:.2f} % at {cost.rate:,.0f}/s")
