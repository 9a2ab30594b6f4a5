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
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from portwatchd.config import Config, ConfigError
from portwatchd.config_change import diff_config
from portwatchd.model import PRIORITY_ERR, PRIORITY_INFO, PRIORITY_WARNING, rfc3339, utc_now
from portwatchd.outputs.entries import MESSAGE_ID_RELOAD_REFUSED
from portwatchd.sources.base import ScanError, Scanner

if TYPE_CHECKING:
    from portwatchd.runner import Runner


class Control(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


class Reloader:
    def __init__(
        self,
        *,
        read_config: Callable[[], Config],
        open_scanner: Callable[[Config], Scanner],
        open_control: Callable[[Config, Any], Control],
        control_inherited: bool,
        state_dir: str,
        wall_clock: Callable[[], datetime] = utc_now,
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

    def open_control(self, config: Config, inherited: Any = None) -> Control:
        """A control server for `config` (on the socket systemd passed, if any)."""
        return self._open_control(config, inherited)

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
            runner.writer.say(PRIORITY_WARNING, warning)
        change = diff_config(runner.config, new)
        applied = runner.config
        not_applied: list[str] = []
        for part in change.parts:
            applied, failure = self._apply(part, runner, applied, new)
            if failure is not None:
                not_applied.append(failure)
        not_applied += [f"{key}: applies at the next restart" for key in change.restart_only]
        runner.config = applied
        if not_applied:
            error = "; ".join(not_applied)
            runner.writer.say(PRIORITY_ERR, f"configuration reloaded in part: {error}")
            return self._record(moment, "partial", error, not_applied)
        outcome = self._record(moment, "ok", None, [])
        runner.writer.say(
            PRIORITY_INFO,
            f"configuration reloaded ({change.describe() or 'no change'}): {runner.status_line()}",
        )
        return outcome

    def _apply(
        self, part: str, runner: Runner, running: Config, new: Config
    ) -> tuple[Config, str | None]:
        """Apply one part of the new configuration; the running configuration
        with that part changed, or unchanged and the reason it did not apply."""
        if part == "interval":
            runner.reschedule(
                runner.interval_for(running.interval), runner.interval_for(new.interval)
            )
            return replace(running, interval=new.interval), None
        if part == "restarts":
            runner.engine.restart_grace = new.restart_grace
            return replace(running, restart_grace=new.restart_grace), None
        if part == "owners":
            runner.engine.owners_enabled = new.owners
            return replace(running, owners=new.owners), None
        if part == "history":
            runner.log.history_size = new.history_size
            runner.log.history_max_age_s = new.history_max_age_s
            return replace(
                running, history_size=new.history_size, history_max_age_s=new.history_max_age_s
            ), None
        if part == "ignore":
            runner.engine.judge = replace(runner.engine.judge, ignored=new.is_ignored)
            return replace(running, ignore=new.ignore), None
        if part == "metrics":
            runner.set_metrics_textfile(new.metrics_textfile)
            return replace(running, metrics_textfile=new.metrics_textfile), None
        if part == "backend":
            return self._switch_scanner(runner, running, replace(running, backend=new.backend))
        if part == "socket":
            return self._apply_socket(running, new)
        if part == "expect":
            runner.engine.judge = replace(runner.engine.judge, expected=new.is_expected)
            return replace(running, expect=new.expect), None
        if part == "namespaces":
            return self._switch_scanner(
                runner, running, replace(running, namespaces=new.namespaces)
            )
        raise ValueError(f"unknown configuration part {part!r}")

    def _switch_scanner(
        self, runner: Runner, running: Config, wanted: Config
    ) -> tuple[Config, str | None]:
        """A new source for another backend or namespaces setting; the old
        one stays when the new one will not open."""
        try:
            scanner = self._open_scanner(wanted)
        except (ScanError, OSError) as err:
            if wanted.backend != running.backend:
                return running, f"backend: cannot switch to {wanted.backend}: {err}"
            return running, f"namespaces: cannot switch to {wanted.namespaces}: {err}"
        runner.engine.replace_scanner(scanner)
        return wanted, None

    def _apply_socket(self, running: Config, new: Config) -> tuple[Config, str | None]:
        if self._control_inherited:
            return running, (
                "[socket]: systemd passes the control socket "
                "(portwatchd.socket sets its path, group and mode)"
            )
        self.control.close()
        try:
            self.control = self.open_control(new)
            self.control.start()
        except OSError as err:
            reason = f"[socket]: cannot listen on {new.socket.path}: {err}"
            try:
                self.control = self.open_control(running)
                self.control.start()
            except OSError as again:
                reason += (
                    f"; nor again on {running.socket.path} ({again}): "
                    "portwatchctl cannot reach this daemon"
                )
            else:
                reason += f"; keeping {running.socket.path}"
            return running, reason
        return replace(running, socket=new.socket), None

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
