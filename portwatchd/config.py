"""portwatchd.toml and its drop-ins -> a frozen Config, or ConfigErrors naming file, line and key.

Reads the main file, then `portwatchd.d/*.toml` beside it in name order (a
later file's key wins; [[ignore]] rules append), then applies the
command-line overrides (OVERRIDE_OPTIONS). Never exits. The daemon runs on
the defaults when the default file is absent. `load_config` raises the
first error; `check_config` returns every error of every file.

The modules behind it: config_schema (errors and value checks),
config_toml (bounded reading, TOML and line numbers), config_build (one
file's keys), policy (the [[ignore]] rules), config_change (what a reload
changes), config_env (what the system must provide: group, socket path).

The keys are documented in portwatchd.toml(5) and in the commented default
file packaging/portwatchd.toml; keep the three in step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from portwatchd.config_build import FileSettings, KeyOrigin, Setting, file_settings
from portwatchd.config_schema import SOCKET, TOP_LEVEL, ConfigError, InvalidValueError, suggest
from portwatchd.config_toml import MAX_CONFIG_BYTES, read_config_text
from portwatchd.expect import ExpectRule, is_expected
from portwatchd.model import Endpoint, EventType, Owner, Place
from portwatchd.policy import IgnoreRule, is_ignored

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DROP_IN_DIR_NAME",
    "MAX_CONFIG_BYTES",
    "OVERRIDE_OPTIONS",
    "Config",
    "ConfigError",
    "ExpectRule",
    "IgnoreRule",
    "KeyOrigin",
    "SocketConfig",
    "check_config",
    "drop_in_dir",
    "format_errors",
    "load_config",
]

DEFAULT_CONFIG_PATH = "/etc/portwatchd/portwatchd.toml"
DROP_IN_DIR_NAME = "portwatchd.d"

# Command-line overrides: flat name -> (key path, the option named in errors).
# Only the options `portwatchd` has (daemon.build_parser).
OVERRIDE_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "interval": (("interval",), "--interval"),
    "state_dir": (("state_dir",), "--state-dir"),
    "log_target": (("log_target",), "--log-target"),
    "namespaces": (("namespaces",), "--namespaces"),
    "socket_path": (("socket", "path"), "--socket"),
}


@dataclass(frozen=True, slots=True)
class SocketConfig:
    """The control socket portwatchctl talks to."""

    path: str = "/run/portwatchd/control.sock"
    group: str = ""  # "" = root only
    mode: int = 0o660
    max_clients: int = 64
    idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon can be told. The defaults run without a file."""

    # Seconds between full looks; None ("auto"): SAFETY_NET_POLL_S while the
    # kernel's notices report closes and new programs, DEFAULT_POLL_S if not.
    interval: float | None = None
    # A key reopened this soon after it closed, by the same program or unit,
    # is reported as restarted; 0 = never.
    restart_grace: float = 5.0
    # Kernel notices (sock_diag destroy messages, exec events) on top of the poll.
    realtime: bool = True
    backend: str = "auto"  # auto | netlink | proc
    owners: bool = True
    state_dir: str = "/var/lib/portwatchd"
    log_target: str = "auto"  # auto | journal | stderr
    log_format: str = "text"  # text | json, for stderr lines
    history_size: int = 10_000  # events kept
    history_max_age_s: float | None = None  # events older are pruned; None = no age limit
    # A node_exporter textfile-collector file kept current; "" = none.
    metrics_textfile: str = ""
    socket: SocketConfig = field(default_factory=SocketConfig)
    ignore: tuple[IgnoreRule, ...] = ()
    # Which network namespaces to watch: "all", or "host" (the daemon's own only).
    namespaces: str = "all"
    expect: tuple[ExpectRule, ...] = ()
    source: str | None = None  # the main file read, None when running without one
    sources: tuple[str, ...] = ()  # every file read: the main file, then the drop-ins
    # For the log at start and reload: "file:line: key: message" (a deprecated key).
    warnings: tuple[str, ...] = ()
    # Where each setting was made, by field ("interval", "socket.group"):
    # lets later checks (config_env, a failed re-bind) name the file and line.
    origins: Mapping[str, KeyOrigin] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    @property
    def ring_size(self) -> int:
        """The 0.1 name of history_size, for callers not yet moved to it."""
        return self.history_size

    def is_ignored(
        self,
        endpoint: Endpoint,
        owner: Owner | None = None,
        event: EventType | None = None,
        place: Place | None = None,
    ) -> bool:
        """Whether an [[ignore]] rule matches this endpoint (owner, place) for this event type."""
        return is_ignored(self.ignore, endpoint, owner, event, place)

    def is_expected(self, endpoint: Endpoint, owner: Owner | None, place: Place) -> bool | None:
        """Whether an [[expect]] rule accepts this listener; None without rules."""
        return is_expected(self.expect, endpoint, owner, place)

    def origin(self, field_path: str) -> KeyOrigin:
        """Where `field_path` ("socket.group") was set; the main file when
        it was left at its default."""
        return self.origins.get(field_path) or KeyOrigin(self.source, None, field_path)


def drop_in_dir(main_path: str) -> str:
    """The drop-in directory of a main file: portwatchd.d/ beside it."""
    return os.path.join(os.path.dirname(main_path), DROP_IN_DIR_NAME)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read the configuration, then apply the command-line overrides.

    `path` None means DEFAULT_CONFIG_PATH. The default file may be absent
    (the daemon then runs on the built-in defaults and the drop-ins, with
    `source` None); a file named explicitly must exist. `overrides` maps the
    flat names of OVERRIDE_OPTIONS to typed values (a float or int for
    interval); None values are skipped, so argparse's namespace can be
    passed as it is. Raises the first ConfigError.
    """
    config, errors = _collect(path, overrides or {})
    if errors:
        raise errors[0]
    return config


def check_config(
    path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environment: bool = False,
) -> list[ConfigError]:
    """Every error of every file and override, in file and line order; []
    when the configuration loads. With `environment`, also what the system
    must provide (config_env.environment_errors), judged on the keys that
    are valid."""
    config, errors = _collect(path, overrides or {})
    if environment:
        from portwatchd.config_env import environment_errors

        errors.extend(environment_errors(config))
    return errors


def format_errors(errors: Iterable[ConfigError]) -> str:
    """One error a line, then how many: for `portwatchd --check-config`."""
    lines = [str(error) for error in errors]
    if not lines:
        return "configuration OK"
    count = f"{len(lines)} error" + ("s" if len(lines) != 1 else "")
    return "\n".join([*lines, count])


# -- reading and merging ---------------------------------------------------------


def _collect(path: str | None, overrides: Mapping[str, Any]) -> tuple[Config, list[ConfigError]]:
    """The Config made of every valid setting, and every error."""
    main = path if path is not None else DEFAULT_CONFIG_PATH
    files: list[FileSettings] = []
    main_file = _read_file(main, missing_ok=main == DEFAULT_CONFIG_PATH)
    if main_file is not None:
        files.append(main_file)
    files.extend(_drop_in_files(main))
    errors = [error for file in files for error in _in_line_order(file.errors)]
    top: dict[str, Setting] = {}
    socket: dict[str, Setting] = {}
    for file in files:
        top.update(file.top)
        socket.update(file.socket)
    errors.extend(_apply_overrides(overrides, top, socket))
    origins = {name: setting.origin for name, setting in top.items()}
    origins.update({f"socket.{name}": setting.origin for name, setting in socket.items()})
    config = Config(
        **{name: setting.value for name, setting in top.items()},
        socket=SocketConfig(**{name: setting.value for name, setting in socket.items()}),
        ignore=tuple(rule for file in files for rule in file.rules),
        expect=tuple(rule for file in files for rule in file.expect),
        source=main if main_file is not None else None,
        sources=tuple(file.source for file in files),
        warnings=tuple(warning for file in files for warning in file.warnings),
        origins=MappingProxyType(origins),
    )
    return config, errors


def _in_line_order(errors: Sequence[ConfigError]) -> list[ConfigError]:
    return sorted(errors, key=lambda error: error.line or 0)


def _read_file(path: str, *, missing_ok: bool = False) -> FileSettings | None:
    try:
        text = read_config_text(path, missing_ok=missing_ok)
    except ConfigError as error:
        return FileSettings(path, errors=[error])
    return None if text is None else file_settings(path, text)


def _drop_in_files(main: str) -> list[FileSettings]:
    """The drop-ins in name order. Only `*.toml` is read; hidden files
    (".x.toml", an editor's or dpkg's leftovers) are skipped."""
    directory = drop_in_dir(main)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as error:
        reason = error.strerror or str(error)
        message = f"cannot read the drop-in directory: {reason}"
        return [FileSettings(directory, errors=[ConfigError(message, source=directory)])]
    chosen = sorted(name for name in names if name.endswith(".toml") and not name.startswith("."))
    files = [_read_file(os.path.join(directory, name)) for name in chosen]
    return [file for file in files if file is not None]


def _apply_overrides(
    overrides: Mapping[str, Any], top: dict[str, Setting], socket: dict[str, Setting]
) -> list[ConfigError]:
    errors: list[ConfigError] = []
    for name, value in overrides.items():
        if value is None:  # argparse's "not given"
            continue
        if name not in OVERRIDE_OPTIONS:
            errors.append(
                ConfigError(f"unknown override {name!r}{suggest(name, OVERRIDE_OPTIONS)}")
            )
            continue
        path, option = OVERRIDE_OPTIONS[name]
        table, key = (socket, path[1]) if path[0] == "socket" else (top, path[0])
        field_name, check = SOCKET[key] if table is socket else TOP_LEVEL[key]
        try:
            checked = check(value)
        except InvalidValueError as invalid:
            errors.append(ConfigError(str(invalid), key=option))
            continue
        table[field_name] = Setting(checked, KeyOrigin(None, None, option))
    return errors
