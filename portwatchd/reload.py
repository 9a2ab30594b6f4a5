"""Reload: read the new configuration whole, then apply it part by part and
record one truthful outcome.

- refused: the file does not load (file:line:key); nothing changed;
- partial: it loaded, and some parts could not be applied (a backend that
  will not open, a control socket that will not bind, keys that apply only
  at the next restart): those are named with the reason, the rest applies;
- ok: everything applied.

The running configuration (`runner.config`) always says what runs: a part
that did not apply keeps its old value there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from portwatchd.config import Config, ConfigError
from portwatchd.model import rfc3339
from portwatchd.outputs.journal import MESSAGE_ID_RELOAD_REFUSED, PRIORITY_ERR, PRIORITY_INFO
from portwatchd.sources.base import ScanError, Scanner

if TYPE_CHECKING:
    from portwatchd.runner import Runner

RESTART_ONLY = ("state_dir", "log_target", "log_format")


class Control(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


class Reloader:
    def __init__(
        self,
        *,
        read_config: Callable[[], Config],
        open_scanner: Callable[[str], Scanner],
        open_control: Callable[[Config], Control],
        control_inherited: bool,
        state_dir: str,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._read_config = read_config
        self._open_scanner = open_scanner
        self._open_control = open_control
        self._control_inherited = control_inherited
        # state_dir changes apply at restart only: keep the one we started with.
        self.state_dir = state_dir
        self._now = wall_clock
        self.control: Control = _NoControl()
        self.last: dict[str, Any] | None = None

    def reload(self, runner: Runner) -> dict[str, Any]:
        moment = rfc3339(self._now())
        try:
            new = self._read_config()
        except ConfigError as err:
            runner.writer.say(
                PRIORITY_ERR,
                f"configuration reload refused, still running with the previous one: {err}",
                MESSAGE_ID=MESSAGE_ID_RELOAD_REFUSED,
            )
            return self._record(moment, "refused", str(err), [])
        for warning in new.warnings:
            runner.writer.say(4, warning)
        old = runner.config
        not_applied: list[str] = []
        new = self._apply_backend(runner, old, new, not_applied)
        new = self._apply_socket(old, new, not_applied)
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                not_applied.append(f"{key}: applies at the next restart")
                new = replace(new, **{key: getattr(old, key)})
        if new.interval != old.interval:
            runner.reschedule(old.interval, new.interval)
        runner.log.set_retention(new.history_size, new.history_max_age_s)
        runner.engine.ignored = new.is_ignored
        runner.engine.owners_enabled = new.owners
        runner.config = new
        if not_applied:
            error = "; ".join(not_applied)
            runner.writer.say(PRIORITY_ERR, f"configuration reloaded in part: {error}")
            return self._record(moment, "partial", error, not_applied)
        runner.writer.say(PRIORITY_INFO, f"configuration reloaded: {runner.status_line()}")
        return self._record(moment, "ok", None, [])

    def _apply_backend(
        self, runner: Runner, old: Config, new: Config, not_applied: list[str]
    ) -> Config:
        if new.backend == old.backend:
            return new
        try:
            scanner = self._open_scanner(new.backend)
        except (ScanError, OSError) as err:
            not_applied.append(f"backend: cannot switch to {new.backend}: {err}")
            return replace(new, backend=old.backend)
        runner.engine.replace_scanner(scanner)
        return new

    def _apply_socket(self, old: Config, new: Config, not_applied: list[str]) -> Config:
        if new.socket == old.socket:
            return new
        if self._control_inherited:
            not_applied.append(
                "[socket]: systemd passes the control socket "
                "(portwatchd.socket sets its path, group and mode)"
            )
            return replace(new, socket=old.socket)
        self.control.close()
        try:
            self.control = self._open_control(new)
            self.control.start()
        except OSError as err:
            reason = f"[socket]: cannot listen on {new.socket.path}: {err}"
            try:
                self.control = self._open_control(old)
                self.control.start()
            except OSError as again:
                reason += (
                    f"; nor again on {old.socket.path} ({again}): "
                    "portwatchctl cannot reach this daemon"
                )
            else:
                reason += f"; keeping {old.socket.path}"
            not_applied.append(reason)
            return replace(new, socket=old.socket)
        return new

    def _record(
        self, moment: str, outcome: str, error: str | None, not_applied: list[str]
    ) -> dict[str, Any]:
        self.last = {
            "time": moment,
            "ok": outcome == "ok",
            "outcome": outcome,
            "error": error,
            "not_applied": not_applied,
        }
        return self.last


class _NoControl:
    def start(self) -> None:
        pass

    def close(self) -> None:
        pass
