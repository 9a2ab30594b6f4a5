"""The vocabulary of portwatchd.toml: ConfigError, and one check per kind of value.

Pure: nothing here reads a file or asks the system. A check takes the value
tomllib parsed and returns it typed, or raises InvalidValueError with what
is wrong; the caller (config_build) adds where (file, line, key). Checks are
strict: a boolean is not an integer and "1" is not a number, because a
config that silently means something else is worse than one that refuses
to load.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

# sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107

Check = Callable[[object], Any]


class ConfigError(Exception):
    """A configuration that cannot be used, with where to fix it.

    str() reads like a compiler message:
    "/etc/portwatchd/portwatchd.toml:12: interval: must be between 0.1 and
    3600 seconds, got 0", or "--interval: must be ..." for a command-line
    override (then `key` is the option and `source` and `line` are None).
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        return located(self.source, self.line, self.key, self.message)


def located(source: str | None, line: int | None, key: str | None, message: str) -> str:
    """ "file:line: key: message", leaving out the parts not known."""
    location = source or ""
    if line is not None:
        location = f"{location}:{line}"
    return ": ".join(part for part in (location, key, message) if part)


class InvalidValueError(ValueError):
    """A value check failed; the caller adds where."""


def describe_value(value: object) -> str:
    if isinstance(value, bool):
        return "boolean " + ("true" if value else "false")
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def seconds_or_auto(low: float, high: float) -> Check:
    """A number of seconds, or "auto" (None: the daemon chooses)."""
    number = seconds(low, high)

    def check(value: object) -> float | None:
        if value == "auto":
            return None
        if isinstance(value, str):
            raise InvalidValueError(f'must be a number of seconds or "auto", got "{value}"')
        return float(number(value))

    return check


def seconds(low: float, high: float) -> Check:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValueError(f"must be a number of seconds, got {describe_value(value)}")
        if not low <= value <= high:  # also refuses nan
            raise InvalidValueError(
                f"must be between {number_text(low)} and {number_text(high)} seconds, "
                f"got {number_text(value)}"
            )
        return float(value)

    return check


def integer(low: int, high: int) -> Check:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValueError(f"must be an integer, got {describe_value(value)}")
        if not low <= value <= high:
            raise InvalidValueError(f"must be between {low} and {high}, got {value}")
        return value

    return check


def choice(*choices: str) -> Check:
    def check(value: object) -> str:
        if value not in choices or not isinstance(value, str):
            listed = ", ".join(f'"{choice}"' for choice in choices)
            raise InvalidValueError(f"must be one of {listed}, got {describe_value(value)}")
        return value

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(f"must be true or false, got {describe_value(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValueError(f"must be a string, got {describe_value(value)}")
    if "\0" in value:
        raise InvalidValueError("must not contain a NUL character")
    return value


def non_empty_string(value: object) -> str:
    text = string(value)
    if not text:
        raise InvalidValueError("must not be empty")
    return text


def absolute_path_or_empty(value: object) -> str:
    text = string(value)
    if text and not text.startswith("/"):
        raise InvalidValueError(f'must be an absolute path (or "" for none), got {text!r}')
    return text


def socket_path(value: object) -> str:
    text = non_empty_string(value)
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > SUN_PATH_MAX:
        raise InvalidValueError(
            f"is {size} bytes long; a Unix socket path can be at most {SUN_PATH_MAX} bytes"
        )
    return text


_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


def group(value: object) -> str:
    text = string(value)
    if text and not _GROUP_NAME.fullmatch(text):
        raise InvalidValueError(
            f'must be a group name or number, or "" for root only, got "{text}"'
        )
    return text


def mode(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise InvalidValueError(
            f'must be an octal string like "0660", got integer {value} (put the mode in quotes)'
        )
    text = string(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise InvalidValueError(f'must be an octal mode like "0660", got "{text}"')
    return int(text, 8)


# -- durations -----------------------------------------------------------------

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
NO_LIMIT = "none"


def max_age(low: float, high: float) -> Check:
    """A duration in seconds: a number, a string "30d" / "12h" / "90m" /
    "3600s", or "none" (no limit, returned as None)."""

    def check(value: object) -> float | None:
        if value == NO_LIMIT:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidValueError(
                f'must be a number of seconds, a duration like "30d", or "{NO_LIMIT}", '
                f"got {describe_value(value)}"
            )
        duration = _parse_duration(value) if isinstance(value, str) else float(value)
        if math.isnan(duration) or not low <= duration <= high:
            raise InvalidValueError(
                f"must be between {number_text(low)} second and {number_text(high / 86400)} "
                f'days, or "{NO_LIMIT}", got {describe_value(value)}'
            )
        return duration

    return check


def _parse_duration(text: str) -> float:
    match = _DURATION.fullmatch(text)
    if match is None:
        hint = " (add a unit: s, m, h or d)" if re.fullmatch(r"\s*\d+(\.\d+)?\s*", text) else ""
        raise InvalidValueError(
            f'must be a duration like "30d", "12h", "90m" or "3600s", or "{NO_LIMIT}", '
            f'got "{text}"{hint}'
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]


# -- the schema: key -> (Config field, check) ------------------------------------

HISTORY_SIZE_MAX = 10_000_000
HISTORY_MAX_AGE_MAX_S = 3650 * 86400.0

TOP_LEVEL: dict[str, tuple[str, Check]] = {
    "interval": ("interval", seconds_or_auto(0.1, 3600)),
    "restart_grace": ("restart_grace", seconds(0, 3600)),
    "realtime": ("realtime", boolean),
    "backend": ("backend", choice("auto", "netlink", "proc")),
    "owners": ("owners", boolean),
    "state_dir": ("state_dir", non_empty_string),
    "log_target": ("log_target", choice("auto", "journal", "stderr")),
    "log_format": ("log_format", choice("text", "json")),
    "history_size": ("history_size", integer(1, HISTORY_SIZE_MAX)),
    "history_max_age": ("history_max_age_s", max_age(1, HISTORY_MAX_AGE_MAX_S)),
    "metrics_textfile": ("metrics_textfile", absolute_path_or_empty),
    "namespaces": ("namespaces", choice("all", "host")),
}
# Old names still read, with a warning: old name -> the key it now means.
ALIASES: dict[str, str] = {"ring_size": "history_size"}
SOCKET: dict[str, tuple[str, Check]] = {
    "path": ("path", socket_path),
    "group": ("group", group),
    "mode": ("mode", mode),
    "max_clients": ("max_clients", integer(1, 4096)),
    "idle_timeout": ("idle_timeout", seconds(1, 86400)),
}
TABLES = ("socket", "ignore", "expect")
