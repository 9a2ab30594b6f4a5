"""portwatchd.toml -> a frozen Config, or a ConfigError naming file, line and key.

Reads one file and nothing else; never exits. The daemon runs on the
defaults when the default file is absent, and the command line overrides
the file (see OVERRIDE_OPTIONS). Every value is type-checked strictly: a
boolean is not an integer and "1" is not a number, because a config that
silently means something else is worse than one that refuses to load.

The keys are documented in portwatchd.toml(5) and in the commented default
file packaging/portwatchd.toml; keep the three in step.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from portwatchd.model import PROTOS, Endpoint, Owner

DEFAULT_CONFIG_PATH = "/etc/portwatchd/portwatchd.toml"

# The kernel keeps at most 15 characters of a process name (TASK_COMM_LEN 16
# with the NUL): a longer `process` rule could never match.
_COMM_MAX = 15
# sun_path is 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        location = self.source or ""
        if self.line is not None:
            location = f"{location}:{self.line}"
        parts = [part for part in (location, self.key, self.message) if part]
        return ": ".join(parts)


# -- the Config --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketConfig:
    """The control socket portwatchctl talks to."""

    path: str = "/run/portwatchd/control.sock"
    group: str = ""  # "" = root only
    mode: int = 0o660
    max_clients: int = 64
    idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """Endpoints not to report. Matches when every field given matches.

    `process` and `unit` are judged on the owner: an event whose owner
    could not be resolved is never ignored by such a rule.
    """

    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; () = any port
    networks: tuple[IPNetwork, ...] = ()  # () = any address
    proto: str | None = None
    process: str | None = None
    unit: str | None = None  # exact, or a shell glob ("docker-*.scope")
    line: int | None = None  # where the rule starts in the file, for messages

    def matches(self, endpoint: Endpoint, owner: Owner | None = None) -> bool:
        if self.proto is not None and endpoint.proto != self.proto:
            return False
        if self.ports and not any(low <= endpoint.port <= high for low, high in self.ports):
            return False
        if self.networks and not _address_in(endpoint.address, self.networks):
            return False
        if self.process is not None and (owner is None or owner.comm != self.process):
            return False
        if self.unit is not None:
            if owner is None or owner.unit is None:
                return False
            if not fnmatch.fnmatchcase(owner.unit, self.unit):
                return False
        return True

    def describe(self) -> str:
        """The rule as a person wrote it, for log lines: 'port=5353 proto=udp'."""
        parts = []
        if self.ports:
            ports = [str(low) if low == high else f"{low}-{high}" for low, high in self.ports]
            parts.append("port=" + ",".join(ports))
        if self.networks:
            parts.append("address=" + ",".join(map(str, self.networks)))
        for name in ("proto", "process", "unit"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)


def _address_in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [parsed]
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; an IPv4 rule
    # should still catch it.
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        candidates.append(parsed.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon can be told. The defaults run without a file."""

    interval: float = 1.0
    backend: str = "auto"  # auto | netlink | proc
    owners: bool = True
    state_dir: str = "/var/lib/portwatchd"
    log_target: str = "auto"  # auto | journal | stderr
    log_format: str = "text"  # text | json, for stderr lines
    ring_size: int = 1000
    socket: SocketConfig = field(default_factory=SocketConfig)
    ignore: tuple[IgnoreRule, ...] = ()
    source: str | None = None  # the file read, None when running on defaults

    def is_ignored(self, endpoint: Endpoint, owner: Owner | None = None) -> bool:
        """Whether an [[ignore]] rule matches this endpoint (and its owner)."""
        return any(rule.matches(endpoint, owner) for rule in self.ignore)


# -- value checks ------------------------------------------------------------


class _InvalidValueError(ValueError):
    """A value check failed; the caller adds where."""


def _describe(value: object) -> str:
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


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _seconds(low: float, high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _InvalidValueError(f"must be a number of seconds, got {_describe(value)}")
        if not low <= value <= high:  # also refuses nan
            raise _InvalidValueError(
                f"must be between {_number_text(low)} and {_number_text(high)} seconds, "
                f"got {_number_text(value)}"
            )
        return float(value)

    return check


def _integer(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _InvalidValueError(f"must be an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise _InvalidValueError(f"must be between {low} and {high}, got {value}")
        return value

    return check


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices or not isinstance(value, str):
            listed = ", ".join(f'"{choice}"' for choice in choices)
            raise _InvalidValueError(f"must be one of {listed}, got {_describe(value)}")
        return value

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _InvalidValueError(f"must be true or false, got {_describe(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _InvalidValueError(f"must be a string, got {_describe(value)}")
    if "\0" in value:
        raise _InvalidValueError("must not contain a NUL character")
    return value


def _directory(value: object) -> str:
    text = _string(value)
    if not text:
        raise _InvalidValueError("must not be empty")
    return text


def _socket_path(value: object) -> str:
    text = _directory(value)
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > _SUN_PATH_MAX:
        raise _InvalidValueError(
            f"is {size} bytes long; a Unix socket path can be at most {_SUN_PATH_MAX} bytes"
        )
    return text


_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


def _group(value: object) -> str:
    text = _string(value)
    if text and not _GROUP_NAME.fullmatch(text):
        raise _InvalidValueError(
            f'must be a group name or number, or "" for root only, got "{text}"'
        )
    return text


def _mode(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _InvalidValueError(
            f'must be an octal string like "0660", got integer {value} (put the mode in quotes)'
        )
    text = _string(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise _InvalidValueError(f'must be an octal mode like "0660", got "{text}"')
    return int(text, 8)


def _proto(value: object) -> str:
    return _choice(*PROTOS)(value)


def _one_port(value: object) -> tuple[int, int]:
    if isinstance(value, bool):
        raise _InvalidValueError(
            f'must be a port number, a range like "8000-8099" or an array, got {_describe(value)}'
        )
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise _InvalidValueError(f"must be between 1 and 65535, got {value}")
        return (value, value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
        if not match:
            raise _InvalidValueError(
                f'must be a port number or a range like "8000-8099", got "{value}"'
            )
        low, high = int(match[1]), int(match[2])
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise _InvalidValueError(f'ports must be between 1 and 65535, got "{value}"')
        if low > high:
            raise _InvalidValueError(f'range "{value}" is backwards; did you mean "{high}-{low}"?')
        return (low, high)
    raise _InvalidValueError(
        f'must be a port number, a range like "8000-8099" or an array, got {_describe(value)}'
    )


def _ports(value: object) -> tuple[tuple[int, int], ...]:
    if isinstance(value, list):
        if not value:
            raise _InvalidValueError("must not be an empty array")
        return tuple(_one_port(item) for item in value)
    return (_one_port(value),)


def _one_network(value: object) -> IPNetwork:
    text = _string(value)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _InvalidValueError(
                f'must be an IP address or a CIDR network like "127.0.0.0/8", got "{text}"'
            ) from error
        raise _InvalidValueError(f'"{text}" has host bits set; did you mean "{loose}"?') from error


def _networks(value: object) -> tuple[IPNetwork, ...]:
    if isinstance(value, list):
        if not value:
            raise _InvalidValueError("must not be an empty array")
        return tuple(_one_network(item) for item in value)
    return (_one_network(value),)


def _process(value: object) -> str:
    text = _string(value)
    if not text:
        raise _InvalidValueError("must not be empty")
    if len(text.encode("utf-8", "surrogateescape")) > _COMM_MAX:
        raise _InvalidValueError(
            f'"{text}" is longer than {_COMM_MAX} bytes: the kernel truncates process '
            f'names, so write "{text.encode()[:_COMM_MAX].decode(errors="ignore")}"'
        )
    return text


def _unit(value: object) -> str:
    text = _string(value)
    if not text:
        raise _InvalidValueError("must not be empty")
    return text


# -- the schema: key -> check (the key is also the Config field) --------------

_TOP_LEVEL: dict[str, Callable[[object], Any]] = {
    "interval": _seconds(0.1, 3600),
    "backend": _choice("auto", "netlink", "proc"),
    "owners": _boolean,
    "state_dir": _directory,
    "log_target": _choice("auto", "journal", "stderr"),
    "log_format": _choice("text", "json"),
    "ring_size": _integer(1, 1_000_000),
}
_SOCKET: dict[str, Callable[[object], Any]] = {
    "path": _socket_path,
    "group": _group,
    "mode": _mode,
    "max_clients": _integer(1, 4096),
    "idle_timeout": _seconds(1, 86400),
}
# [[ignore]] key -> (IgnoreRule field, check)
_IGNORE: dict[str, tuple[str, Callable[[object], Any]]] = {
    "port": ("ports", _ports),
    "address": ("networks", _networks),
    "proto": ("proto", _proto),
    "process": ("process", _process),
    "unit": ("unit", _unit),
}
_TABLES = ("socket", "ignore")

# Command-line overrides: flat name -> (TOML key path, the option named in errors).
OVERRIDE_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "interval": (("interval",), "--interval"),
    "backend": (("backend",), "--backend"),
    "owners": (("owners",), "--owners"),
    "state_dir": (("state_dir",), "--state-dir"),
    "log_target": (("log_target",), "--log-target"),
    "log_format": (("log_format",), "--log-format"),
    "ring_size": (("ring_size",), "--ring-size"),
    "socket_path": (("socket", "path"), "--socket"),
    "socket_group": (("socket", "group"), "--socket-group"),
    "socket_mode": (("socket", "mode"), "--socket-mode"),
    "socket_max_clients": (("socket", "max_clients"), "--socket-max-clients"),
    "socket_idle_timeout": (("socket", "idle_timeout"), "--socket-idle-timeout"),
}


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


# -- where each key is: (key path) -> line --------------------------------------

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _KeyLines:
    """The line of every key and table header in one TOML text.

    tomllib parses but forgets positions; an error that says which line to
    fix is worth this small scanner. It is tolerant (it never raises) and
    records, for every table header and every `key = value` line, the path
    and the 1-based line:

        [socket]          -> ("socket",)                 line 1
        path = "/run/x"   -> ("socket", "path")          line 2
        [[ignore]]        -> ("ignore", 0)               line 3  (the first rule)
        port = 22         -> ("ignore", 0, "port")       line 4

    Keys inside inline tables and arrays are not recorded; `line_of` falls
    back to the nearest recorded parent, which is the line to look at anyway.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        # The line of the first key assigned twice, for tomllib's
        # "Cannot overwrite a value (at end of document)".
        self.duplicate_line: int | None = None
        self._text = text
        self._pos = 0
        self._line = 1
        self._array_tables: dict[KeyPath, int] = {}
        self._scan()

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, else of its nearest recorded parent, else None."""
        for length in range(len(path), 0, -1):
            line = self.lines.get(path[:length])
            if line is not None:
                return line
        return None

    # -- scanning ---------------------------------------------------------

    def _peek(self, offset: int = 0) -> str:
        index = self._pos + offset
        return self._text[index] if index < len(self._text) else ""

    def _advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self._pos >= len(self._text):
                return
            if self._text[self._pos] == "\n":
                self._line += 1
            self._pos += 1

    def _skip_blanks(self) -> None:
        while self._peek() in (" ", "\t"):
            self._advance()

    def _skip_to_next_line(self) -> None:
        while self._peek() not in ("", "\n"):
            self._advance()
        self._advance()

    def _scan(self) -> None:
        table: KeyPath = ()
        while self._pos < len(self._text):
            self._skip_blanks()
            char = self._peek()
            if char in ("", "\n", "\r", "#"):
                self._skip_to_next_line()
            elif char == "[":
                table = self._header()
                self._skip_to_next_line()
            else:
                self._key_value(table)

    def _resolve(self, parts: list[str]) -> KeyPath:
        """Dotted header parts as a path, entering the current element of arrays of tables."""
        path: KeyPath = ()
        for part in parts:
            path = (*path, part)
            if path in self._array_tables:
                path = (*path, self._array_tables[path] - 1)
        return path

    def _header(self) -> KeyPath:
        line = self._line
        is_array = self._peek(1) == "["
        self._advance(2 if is_array else 1)
        parts = self._dotted_key(stop="]")
        if not parts:
            return ()
        if is_array:
            array: KeyPath = (*self._resolve(parts[:-1]), parts[-1])
            index = self._array_tables.get(array, 0)
            self._array_tables[array] = index + 1
            self.lines.setdefault(array, line)
            path: KeyPath = (*array, index)
        else:
            path = self._resolve(parts)
        self.lines.setdefault(path, line)
        return path

    def _key_value(self, table: KeyPath) -> None:
        line = self._line
        parts = self._dotted_key(stop="=")
        if self._peek() != "=" or not parts:
            self._skip_to_next_line()
            return
        path: KeyPath = (*table, *parts)
        if path in self.lines and self.duplicate_line is None:
            self.duplicate_line = line
        self.lines.setdefault(path, line)
        self._advance()
        self._skip_value()

    def _dotted_key(self, stop: str) -> list[str]:
        """Read `a."b c".d` up to `stop` (not consumed); [] when it is not a key."""
        parts: list[str] = []
        while True:
            self._skip_blanks()
            char = self._peek()
            if char in ('"', "'"):
                start = self._pos
                self._skip_string()
                parts.append(_unquote(self._text[start : self._pos]))
            elif char in _BARE_KEY_CHARS:
                start = self._pos
                while self._peek() in _BARE_KEY_CHARS and self._peek():
                    self._advance()
                parts.append(self._text[start : self._pos])
            else:
                return []
            self._skip_blanks()
            char = self._peek()
            if char == stop:
                return parts
            if char != ".":
                return []
            self._advance()

    def _skip_string(self) -> None:
        quote = self._peek()
        if self._peek(1) == quote and self._peek(2) == quote:
            self._advance(3)
            while self._pos < len(self._text):
                if quote == '"' and self._peek() == "\\":
                    self._advance(2)
                elif self._text.startswith(quote * 3, self._pos):
                    self._advance(3)
                    # A multi-line string may end with up to two extra quotes.
                    while self._peek() == quote:
                        self._advance()
                    return
                else:
                    self._advance()
            return
        self._advance()
        while self._peek() not in ("", "\n"):
            char = self._peek()
            if quote == '"' and char == "\\":
                self._advance(2)
                continue
            self._advance()
            if char == quote:
                return

    def _skip_value(self) -> None:
        """Skip to the end of the value: nested brackets, strings and comments."""
        depth = 0
        while self._pos < len(self._text):
            char = self._peek()
            if char in ('"', "'"):
                self._skip_string()
            elif char == "#":
                while self._peek() not in ("", "\n"):
                    self._advance()
            elif char in "[{":
                depth += 1
                self._advance()
            elif char in "]}":
                depth = max(0, depth - 1)
                self._advance()
            elif char == "\n":
                self._advance()
                if depth == 0:
                    return
            else:
                self._advance()


def _unquote(quoted: str) -> str:
    try:
        value = tomllib.loads(f"k = {quoted}")["k"]
    except tomllib.TOMLDecodeError:
        return quoted.strip("\"'")
    return value if isinstance(value, str) else quoted


# -- loading -----------------------------------------------------------------


class _Builder:
    """Walks the parsed document, checking each key and knowing its line."""

    def __init__(self, source: str | None, lines: _KeyLines | None) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: KeyPath, message: str) -> ConfigError:
        line = self.lines.line_of(path) if self.lines else None
        return ConfigError(message, source=self.source, line=line, key=_key_name(path))

    def check(self, path: KeyPath, check: Callable[[object], Any], value: object) -> Any:
        try:
            return check(value)
        except _InvalidValueError as invalid:
            raise self.error(path, str(invalid)) from None

    def build(self, document: Mapping[str, Any]) -> Config:
        values: dict[str, Any] = {}
        socket_values: dict[str, Any] = {}
        rules: tuple[IgnoreRule, ...] = ()
        for key, value in document.items():
            if key in _TOP_LEVEL:
                values[key] = self.check((key,), _TOP_LEVEL[key], value)
            elif key == "socket":
                socket_values = self.socket_table(value)
            elif key == "ignore":
                rules = self.ignore_rules(value)
            else:
                kind = "table" if isinstance(value, dict | list) else "key"
                known = [*_TOP_LEVEL, *_TABLES]
                raise self.error((key,), f"unknown {kind}{_suggest(key, known)}")
        return Config(**values, socket=SocketConfig(**socket_values), ignore=rules)

    def socket_table(self, table: object) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.error(("socket",), f"must be a table ([socket]), got {_describe(table)}")
        values = {}
        for key, value in table.items():
            if key not in _SOCKET:
                raise self.error(("socket", key), f"unknown key{_suggest(key, _SOCKET)}")
            values[key] = self.check(("socket", key), _SOCKET[key], value)
        return values

    def ignore_rules(self, rules: object) -> tuple[IgnoreRule, ...]:
        if not isinstance(rules, list):
            raise self.error(
                ("ignore",), f"must be an array of tables ([[ignore]]), got {_describe(rules)}"
            )
        return tuple(self.ignore_rule(index, rule) for index, rule in enumerate(rules))

    def ignore_rule(self, index: int, rule: object) -> IgnoreRule:
        path: KeyPath = ("ignore", index)
        if not isinstance(rule, dict):
            raise self.error(path, f"must be a table ([[ignore]]), got {_describe(rule)}")
        if not rule:
            listed = ", ".join(_IGNORE)
            raise self.error(path, f"an empty rule would ignore everything; give any of {listed}")
        fields: dict[str, Any] = {}
        for key, value in rule.items():
            if key not in _IGNORE:
                raise self.error((*path, key), f"unknown key{_suggest(key, _IGNORE)}")
            name, check = _IGNORE[key]
            fields[name] = self.check((*path, key), check, value)
        line = self.lines.line_of(path) if self.lines else None
        return IgnoreRule(**fields, line=line)


def _key_name(path: KeyPath) -> str:
    """("ignore", 1, "port") -> "ignore[2].port": rules counted from 1, as people do."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part + 1}]"
        else:
            name += f".{part}" if name else part
    return name


def _syntax_error(source: str, text: str, error: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(error)
    line: int | None = None
    position = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if position:
        line = int(position[1])
        message = f"{message[: position.start()]} (column {position[2]})"
        bad_line = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
        if re.search(r"=\s*[+-]?0\d", bad_line):
            message += '; TOML numbers cannot start with 0 (write a mode in quotes: "0660")'
    elif message.endswith(" (at end of document)"):
        message = message.removesuffix(" (at end of document)")
        # tomllib reports a key assigned twice at the end of the document;
        # point at the second assignment instead.
        duplicate = (
            _KeyLines(text).duplicate_line if message.startswith("Cannot overwrite") else None
        )
        line = duplicate or text.count("\n") + 1
    return ConfigError(f"invalid TOML: {message}", source=source, line=line)


def _read(path: str, missing_ok: bool) -> str | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError("cannot read the configuration file: no such file", source=path) from None
    except OSError as error:
        raise ConfigError(
            f"cannot read the configuration file: {error.strerror or error}", source=path
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", source=path, line=line) from None


def _apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    socket = config.socket
    for name, value in overrides.items():
        if value is None:  # argparse's "not given"
            continue
        if name not in OVERRIDE_OPTIONS:
            raise ConfigError(f"unknown override {name!r}{_suggest(name, OVERRIDE_OPTIONS)}")
        path, option = OVERRIDE_OPTIONS[name]
        check = _SOCKET[path[1]] if path[0] == "socket" else _TOP_LEVEL[path[0]]
        try:
            checked = check(value)
        except _InvalidValueError as invalid:
            raise ConfigError(str(invalid), key=option) from None
        if path[0] == "socket":
            socket = replace(socket, **{path[1]: checked})
        else:
            config = replace(config, **{path[0]: checked})
    return replace(config, socket=socket)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read the configuration, then apply the command-line overrides.

    `path` None means DEFAULT_CONFIG_PATH. The default file may be absent
    (the daemon then runs on the built-in defaults, with `source` None); a
    file named explicitly must exist. `overrides` maps the flat names of
    OVERRIDE_OPTIONS to typed values (an int for ring_size, a float or int
    for interval, "0660" for socket_mode); None values are skipped, so
    argparse's namespace can be passed as it is. Raises ConfigError.
    """
    default_path = DEFAULT_CONFIG_PATH
    source = path if path is not None else default_path
    text = _read(source, missing_ok=source == default_path)
    if text is None:
        config = Config()
    else:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise _syntax_error(source, text, error) from None
        except RecursionError:
            # tomllib recurses once per nesting level: "a = [[[[...]]]]"
            # deep enough exhausts the stack instead of raising its error.
            raise ConfigError("arrays or tables nested too deeply", source=source) from None
        config = replace(_Builder(source, _KeyLines(text)).build(document), source=source)
    return _apply_overrides(config, overrides or {})
