"""`portwatchctl status` for people: label/value pairs, known keys first, then
whatever a newer daemon sends that this client has no label for."""

from __future__ import annotations

import json

from portwatchd.ctl_format import format_time, text_or_dash

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def duration_text(seconds: float) -> str:
    """A number of seconds for people.

    >>> duration_text(3723)
    '1h 2min 3s'
    """
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}min")
    parts.append(f"{secs}s")
    return " ".join(parts)


def reload_text(reload: dict[str, Any], local: bool = False) -> str:
    """The last reload's outcome in one line: "<time>, ok", "<time>, REFUSED: why", ..."""
    if reload.get("time") is None:
        return "never"
    when = format_time(reload.get("time"), local)
    outcome = reload.get("outcome") or ("ok" if reload.get("ok") else "failed")
    if outcome == "ok":
        return f"{when}, ok"
    not_applied = reload.get("not_applied")
    if not_applied:  # the error of a partial reload is these, joined
        return f"{when}, {str(outcome).upper()}: not applied: {'; '.join(map(str, not_applied))}"
    return f"{when}, {str(outcome).upper()}: {reload.get('error')}"


# Fields that are shown only while something fails, with the label that says so.
_FAILURES = (
    ("scan_error", "Scan FAILING"),
    ("journal_error", "Journal FAILING"),
    ("store_error", "Store FAILING"),
    ("config_error", "Config BROKEN"),
)


class _StatusPage:
    """The label/value pairs of the human `status` output, built in order."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.pairs: list[tuple[str, str]] = []
        self.shown: set[str] = set()

    def add(self, label: str, key: str, value: str | None = None) -> None:
        if key in self.status:
            self.pairs.append(
                (label, value if value is not None else text_or_dash(self.status[key]))
            )
            self.shown.add(key)

    def counts(self, label: str, key: str) -> None:
        """A {name: count} field as "3 opened, 2 closed"; nothing when empty."""
        value = self.status.get(key)
        if isinstance(value, dict) and value:
            self.add(label, key, ", ".join(f"{n} {name}" for name, n in sorted(value.items())))
        self.shown.add(key)

    def rest(self) -> None:
        """Fields this client has no label for (a newer daemon's), as they are."""
        for key in sorted(set(self.status) - self.shown):
            value = self.status[key]
            self.pairs.append(
                (key, json.dumps(value) if isinstance(value, dict | list) else text_or_dash(value))
            )


def status_lines(status: dict[str, Any], local: bool = False) -> list[tuple[str, str]]:
    """Label/value pairs for the human `status` output, known keys first."""
    page = _StatusPage(status)
    uptime = status.get("uptime_s")
    page.add("Version", "version")
    page.add("PID", "pid")
    page.add(
        "Uptime", "uptime_s", duration_text(uptime) if isinstance(uptime, int | float) else None
    )
    page.add("Protocol", "protocol")
    page.add("Scanner", "backend")
    page.add("Interval", "interval_s", f"{status.get('interval_s')} s")
    page.add("Owner lookup", "owners", "on" if status.get("owners") else "off")
    page.add("Ports watched", "ports_watched")
    page.add("Events total", "events_total")
    page.counts("By type", "events_by_type")
    page.counts("Found by", "detections")
    failed = status.get("scan_errors_total", 0)
    page.add("Scans", "scans_total", f"{status.get('scans_total')} ({failed} failed)")
    page.shown.add("scan_errors_total")
    page.add("Last hour", "events_last_hour", f"{status.get('events_last_hour')} events")
    page.add("Last seq", "last_seq")
    _namespace_lines(page)
    _history_line(page)
    _health_lines(page, local)
    page.rest()
    return page.pairs


def _namespace_lines(page: _StatusPage) -> None:
    """`namespaces` (a count, or what it counts), their fallbacks, and the triggers."""
    status = page.status
    namespaces = status.get("namespaces")
    if isinstance(namespaces, list | dict):
        page.add("Namespaces", "namespaces", str(len(namespaces)))
    else:
        page.add("Namespaces", "namespaces")
    fallbacks = status.get("namespace_fallbacks")
    if isinstance(fallbacks, list):
        page.add("Read via /proc", "namespace_fallbacks", "; ".join(map(str, fallbacks)) or "none")
    elif isinstance(fallbacks, int) and not isinstance(fallbacks, bool):
        page.add("Read via /proc", "namespace_fallbacks", f"{fallbacks} namespaces")
    triggers = status.get("triggers")
    if isinstance(triggers, dict):
        page.add("Triggers", "triggers", triggers_text(triggers))


def triggers_text(triggers: dict[str, Any]) -> str:
    """ "exec active, destroy off (why)", from {name: "active" or the reason it is off}.

    >>> triggers_text({"exec": "active", "destroy": "no CAP_NET_ADMIN"})
    'destroy off (no CAP_NET_ADMIN), exec active'
    """
    if not triggers:
        return "none"
    parts = []
    for name, state in sorted(triggers.items()):
        text = text_or_dash(state)
        parts.append(f"{name} active" if text == "active" else f"{name} off ({text})")
    return ", ".join(parts)


def _history_line(page: _StatusPage) -> None:
    status = page.status
    if "history_size" in status:
        page.add(
            "History",
            "history_size",
            f"{status['history_size']} events held of {status.get('history_capacity', '?')}"
            f", oldest seq {text_or_dash(status.get('oldest_seq'))}",
        )
        page.shown.update(("history_capacity", "oldest_seq", "ring_size", "ring_capacity"))
    elif "ring_size" in status:  # a 0.1 daemon
        page.add(
            "Ring", "ring_size", f"{status['ring_size']} of {status.get('ring_capacity', '?')}"
        )
        page.shown.add("ring_capacity")


def _health_lines(page: _StatusPage, local: bool) -> None:
    status = page.status
    page.add("Last scan", "last_scan_time", format_time(status.get("last_scan_time"), local))
    page.add("Last scan took", "last_scan_duration_ms", f"{status.get('last_scan_duration_ms')} ms")
    for key, label in _FAILURES:
        if status.get(key):
            page.add(label, key)
        page.shown.add(key)
    if status.get("journal_pending"):
        page.add("Journal pending", "journal_pending", f"{status['journal_pending']} events")
    page.shown.add("journal_pending")
    page.add("Journal errors", "journal_errors_total")
    page.add("Config", "config_path", status.get("config_path") or "built-in defaults")
    page.add("State", "state_dir")
    reload = status.get("last_reload")
    if reload is None:
        page.add("Last reload", "last_reload", "never")
    elif isinstance(reload, dict):
        page.add("Last reload", "last_reload", reload_text(reload, local))
    page.add("Clients", "clients")
    page.add("Followers", "followers")
