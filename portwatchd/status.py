"""What `status`, STATUS= and the metrics report: read from the running
parts, computed on demand. Pure: it reads the runner's parts and clock."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portwatchd import __version__
from portwatchd.engine import counted
from portwatchd.sources.allns import AllNamespaces

if TYPE_CHECKING:
    from portwatchd.runner import Runner

HOUR_S = 3600.0


class EventRate:
    """Events per minute over the last hour: 61 [minute, count] entries at
    most, however many ports churn."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._minutes: deque[list[int]] = deque()

    def count(self, events: int) -> None:
        minute = int(self._monotonic() // 60)
        if self._minutes and self._minutes[-1][0] == minute:
            self._minutes[-1][1] += events
        else:
            self._minutes.append([minute, events])

    def last_hour(self) -> int:
        horizon = int((self._monotonic() - HOUR_S) // 60)
        while self._minutes and self._minutes[0][0] <= horizon:
            self._minutes.popleft()
        return sum(count for _, count in self._minutes)


def status_report(runner: Runner) -> dict[str, Any]:
    """The `status` answer (the control protocol adds protocol, clients, followers)."""
    stats = runner.engine.stats
    config = runner.config
    log = runner.log
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(runner.uptime(), 3),
        "interval_s": runner.poll_interval,
        "backend": runner.engine.scanner.name,
        "owners": config.owners,
        "ports_watched": runner.engine.ports_watched,
        "events_total": sum(stats.events_by_type.values()),
        "events_by_type": dict(stats.events_by_type),
        "detections": dict(stats.detections),
        "events_last_hour": runner.event_rate.last_hour(),
        "last_seq": log.last_seq,
        "oldest_seq": log.oldest_seq,
        "history_size": log.count,
        "history_capacity": config.history_size,
        "ring_size": log.count,  # 0.1's names, kept for clients that read them
        "ring_capacity": config.history_size,
        "scans_total": stats.scans_total,
        "scan_errors_total": stats.scan_errors_total,
        "last_scan_time": stats.last_scan_time,
        "last_scan_duration_ms": (
            round(stats.last_scan_duration_ms, 3)
            if stats.last_scan_duration_ms is not None
            else None
        ),
        "scan_error": stats.scan_error,
        "journal_error": runner.writer.error,
        "journal_errors_total": runner.writer.errors_total,
        "journal_pending": runner.writer.pending,
        "store_error": log.store_error,
        "config_path": config.source,
        "state_dir": runner.reloader.state_dir,
        "last_reload": runner.reloader.last,
        "confirmations_total": stats.confirmations_total,
        "transients_suppressed_total": runner.engine.transients.suppressed_total,
        **_realtime_report(runner),
        **_namespaces_report(runner),
    }


def _realtime_report(runner: Runner) -> dict[str, Any]:
    realtime = runner.realtime
    if realtime is None:
        return {"triggers": {"closes": "off (realtime = false)", "new programs": "off"}}
    return {
        "triggers": realtime.status(),
        "trigger_overruns_total": realtime.overruns_total,
        "destroy_messages_total": realtime.destroy_messages_total,
        "execs_total": realtime.execs_total,
        "exec_storm": realtime.followups.storm,
    }


def _namespaces_report(runner: Runner) -> dict[str, Any]:
    scanner = runner.engine.scanner
    if not isinstance(scanner, AllNamespaces):
        return {"namespaces": 1}
    return {
        "namespaces": scanner.namespaces,
        "namespace_fallbacks": {str(k): v for k, v in scanner.fallbacks().items()},
        "namespace_errors": {str(k): v for k, v in scanner.unreadable.items()},
    }


def status_line(runner: Runner) -> str:
    """STATUS= text: "watching 12 ports every 1s; 3 events in the last hour"."""
    engine = runner.engine
    line = (
        f"watching {counted(engine.ports_watched, 'port')} every "
        f"{runner.poll_interval:g}s; "
        f"{counted(runner.event_rate.last_hour(), 'event')} in the last hour"
    )
    if engine.stats.scan_error:
        line += f"; scan failing: {engine.stats.scan_error}"
    if runner.writer.error:
        line += f"; journal failing, {runner.writer.pending} events pending"
    if runner.log.store_error:
        line += f"; store failing: {runner.log.store_error}"
    last = runner.reloader.last
    if last is not None and last["outcome"] != "ok":
        line += f"; reload {last['outcome']}: {last['error']}"
    # Last: STATUS= keeps 200 characters, and a failure matters more.
    realtime = runner.realtime
    if realtime is not None:
        off = [name for name, state in realtime.status().items() if state != "active"]
        if off:
            line += f"; polling only for {' and '.join(off)}"
    return line
