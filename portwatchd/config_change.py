"""What a reload changes: a pure diff of the running and the new Config.

The daemon applies a ConfigChange part by part (PARTS, in that order) and
records one outcome that names what did and did not apply; the keys that
apply only at restart (RESTART_ONLY) are named so it can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from portwatchd.config import Config, SocketConfig
from portwatchd.config_schema import number_text

# The parts a reload applies, in the order to apply them.
PARTS = (
    "interval",
    "restarts",
    "owners",
    "history",
    "ignore",
    "expect",
    "metrics",
    "backend",
    "namespaces",
    "socket",
)
# Keys read at start only: a reload names them and leaves them be.
RESTART_ONLY = ("state_dir", "log_target", "log_format", "realtime")
_PART_KEYS = {
    "interval": ("interval",),
    "restarts": ("restart_grace",),
    "owners": ("owners",),
    "history": ("history_size", "history_max_age"),
    "ignore": ("ignore",),
    "expect": ("expect",),
    "namespaces": ("namespaces",),
    "metrics": ("metrics_textfile",),
    "backend": ("backend",),
    "socket": tuple(f"socket.{item.name}" for item in fields(SocketConfig)),
}


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """The difference between the running configuration `old` and `new`.

    `keys` names every changed key as written in the file ("interval",
    "socket.path", "history_max_age", "ignore" for the rules as a whole).
    """

    old: Config
    new: Config
    keys: tuple[str, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts to apply now, in PARTS order: "interval", "socket"..."""
        return tuple(part for part in PARTS if self.changes(part))

    @property
    def restart_only(self) -> tuple[str, ...]:
        """Changed keys that apply at the next restart."""
        return tuple(key for key in RESTART_ONLY if key in self.keys)

    @property
    def is_empty(self) -> bool:
        return not self.keys

    def changes(self, part: str) -> bool:
        """Whether `part` (one of PARTS) differs."""
        return any(key in self.keys for key in _PART_KEYS[part])

    def describe(self) -> str:
        """One line for the log: 'interval 1s -> 2s, socket.path /a.sock ->
        /b.sock; state_dir applies at the next restart'."""
        if not self.keys:
            return "no change"
        now = [self._describe_key(key) for key in self.keys if key not in RESTART_ONLY]
        text = ", ".join(now)
        if self.restart_only:
            later = ", ".join(self.restart_only)
            verb = "apply" if len(self.restart_only) > 1 else "applies"
            restart = f"{later} {verb} at the next restart"
            text = f"{text}; {restart}" if text else restart
        return text

    def _describe_key(self, key: str) -> str:
        if key == "ignore":
            return f"ignore rules {len(self.old.ignore)} -> {len(self.new.ignore)} (changed)"
        if key == "expect":
            return f"expect rules {len(self.old.expect)} -> {len(self.new.expect)} (changed)"
        return f"{key} {_value_text(key, self.old)} -> {_value_text(key, self.new)}"


def diff_config(old: Config, new: Config) -> ConfigChange:
    """What changes from `old` to `new`. Pure; `source`, `sources` and
    `warnings` are not settings and are not compared."""
    keys = [
        key
        for key in (
            "interval",
            "restart_grace",
            "backend",
            "owners",
            "history_size",
            "history_max_age",
            "metrics_textfile",
            "namespaces",
            "state_dir",
            "log_target",
            "log_format",
            "realtime",
        )
        if _value(key, old) != _value(key, new)
    ]
    keys += [
        f"socket.{item.name}"
        for item in fields(SocketConfig)
        if getattr(old.socket, item.name) != getattr(new.socket, item.name)
    ]
    if _rules(old) != _rules(new):
        keys.append("ignore")
    if [rule.what() for rule in old.expect] != [rule.what() for rule in new.expect]:
        keys.append("expect")
    return ConfigChange(old, new, tuple(keys))


def _rules(config: Config) -> list[tuple[object, ...]]:
    # Compared by what they match, not by where they were written: moving
    # a rule to a drop-in changes nothing.
    return [
        (rule.ports, rule.networks, rule.proto, rule.process, rule.unit) for rule in config.ignore
    ]


def _value(key: str, config: Config) -> object:
    if key.startswith("socket."):
        return getattr(config.socket, key.removeprefix("socket."))
    if key == "history_max_age":
        return config.history_max_age_s
    return getattr(config, key)


def _value_text(key: str, config: Config) -> str:
    value = _value(key, config)
    if value is None:
        return "auto" if key == "interval" else "none"
    in_seconds = ("interval", "restart_grace", "socket.idle_timeout", "history_max_age")
    if key in in_seconds and isinstance(value, int | float):
        return f"{number_text(value)}s"
    if key == "socket.mode":
        return f"{value:04o}"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
