"""One configuration file -> what it sets, every key checked on its own.

A file is walked once; each key is checked independently, so that one file
yields every one of its errors (`portwatchd --check-config` shows them all)
and the keys that are valid. config.py merges the files in order and builds
the Config. A TOML syntax error stops its own file only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from portwatchd.config_schema import (
    ALIASES,
    SOCKET,
    TABLES,
    TOP_LEVEL,
    Check,
    ConfigError,
    InvalidValueError,
    describe_value,
    located,
    suggest,
)
from portwatchd.config_toml import KeyLines, KeyPath, parse_toml
from portwatchd.expect import EXPECT_KEYS, ExpectRule
from portwatchd.policy import IGNORE_KEYS, IgnoreRule

# [[table]] name -> (its keys, the rule it builds, what an empty rule would do)
RULE_TABLES: dict[str, tuple[dict[str, tuple[str, Check]], type[Any], str]] = {
    "ignore": (IGNORE_KEYS, IgnoreRule, "ignore everything"),
    "expect": (EXPECT_KEYS, ExpectRule, "expect everything"),
}


class KeyOrigin(NamedTuple):
    """Where a setting was made: a file and line, or a command-line option."""

    source: str | None  # the file; None for a command-line option
    line: int | None
    key: str  # "socket.group" as written in a file, or the option "--socket"


@dataclass(frozen=True, slots=True)
class Setting:
    value: Any
    origin: KeyOrigin


@dataclass(slots=True)
class FileSettings:
    """What one file sets. `top` and `socket` are keyed by Config /
    SocketConfig field; a key whose value is wrong is in `errors` only."""

    source: str
    top: dict[str, Setting] = field(default_factory=dict)
    socket: dict[str, Setting] = field(default_factory=dict)
    rules: list[IgnoreRule] = field(default_factory=list)
    expect: list[ExpectRule] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def file_settings(source: str, text: str) -> FileSettings:
    """Parse and check one file's text; never raises ConfigError."""
    try:
        document, lines = parse_toml(source, text)
    except ConfigError as error:
        return FileSettings(source, errors=[error])
    return _FileWalker(source, lines).walk(document)


def key_name(path: KeyPath) -> str:
    """("ignore", 1, "port") -> "ignore[2].port": rules counted from 1, as people do."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part + 1}]"
        else:
            name += f".{part}" if name else part
    return name


class _FileWalker:
    """Walks one parsed document, checking each key and knowing its line."""

    def __init__(self, source: str, lines: KeyLines) -> None:
        self.lines = lines
        self.settings = FileSettings(source)

    def origin(self, path: KeyPath) -> KeyOrigin:
        return KeyOrigin(self.settings.source, self.lines.line_of(path), key_name(path))

    def fail(self, path: KeyPath, message: str) -> None:
        where = self.origin(path)
        self.settings.errors.append(
            ConfigError(message, source=where.source, line=where.line, key=where.key)
        )

    def check(self, path: KeyPath, check: Check, value: object) -> tuple[bool, Any]:
        try:
            return True, check(value)
        except InvalidValueError as invalid:
            self.fail(path, str(invalid))
            return False, None

    def walk(self, document: Mapping[str, Any]) -> FileSettings:
        for key, value in document.items():
            if key in TOP_LEVEL or key in ALIASES:
                self.top_key(key, value, document)
            elif key == "socket":
                self.socket_table(value)
            elif key in RULE_TABLES:
                self.rule_tables(key, value)
            elif key in SOCKET:
                self.fail((key,), f"unknown key; write socket.{key}, or put it under [socket]")
            else:
                kind = "table" if isinstance(value, dict | list) else "key"
                known = [*TOP_LEVEL, *TABLES]
                self.fail((key,), f"unknown {kind}{suggest(key, known)}")
        return self.settings

    def top_key(self, key: str, value: object, document: Mapping[str, Any]) -> None:
        new_key = ALIASES.get(key)
        if new_key is not None:
            if new_key in document:
                self.fail(
                    (key,),
                    f"is the old name of {new_key}, which this file also sets; remove {key}",
                )
                return
            where = self.origin((key,))
            self.settings.warnings.append(
                located(
                    where.source,
                    where.line,
                    key,
                    f"is deprecated: write {new_key} = {value!r} instead (the same "
                    f"setting; {key} will be removed in a later version)",
                )
            )
        field_name, check = TOP_LEVEL[new_key or key]
        valid, checked = self.check((key,), check, value)
        if valid:
            self.settings.top[field_name] = Setting(checked, self.origin((key,)))

    def socket_table(self, table: object) -> None:
        if not isinstance(table, dict):
            self.fail(("socket",), f"must be a table ([socket]), got {describe_value(table)}")
            return
        for key, value in table.items():
            path: KeyPath = ("socket", key)
            if key not in SOCKET:
                self.fail(path, f"unknown key{suggest(key, SOCKET)}")
                continue
            field_name, check = SOCKET[key]
            valid, checked = self.check(path, check, value)
            if valid:
                self.settings.socket[field_name] = Setting(checked, self.origin(path))

    def rule_tables(self, table: str, rules: object) -> None:
        """[[ignore]] or [[expect]]: every valid rule into settings.rules or .expect."""
        if not isinstance(rules, list):
            self.fail(
                (table,),
                f"must be an array of tables ([[{table}]]), got {describe_value(rules)}",
            )
            return
        built_rules = self.settings.rules if table == "ignore" else self.settings.expect
        for index, rule in enumerate(rules):
            built = self.rule(table, index, rule)
            if built is not None:
                built_rules.append(built)

    def rule(self, table: str, index: int, rule: object) -> Any:
        """The rule, or None when any of its keys is wrong: half a rule
        would match more than was meant."""
        keys, rule_type, empty_means = RULE_TABLES[table]
        path: KeyPath = (table, index)
        if not isinstance(rule, dict):
            self.fail(path, f"must be a table ([[{table}]]), got {describe_value(rule)}")
            return None
        if not rule:
            listed = ", ".join(keys)
            self.fail(path, f"an empty rule would {empty_means}; give any of {listed}")
            return None
        fields: dict[str, Any] = {}
        complete = True
        for key, value in rule.items():
            if key not in keys:
                self.fail((*path, key), f"unknown key{suggest(key, keys)}")
                complete = False
                continue
            name, check = keys[key]
            valid, fields[name] = self.check((*path, key), check, value)
            complete = complete and valid
        if not complete:
            return None
        return rule_type(**fields, line=self.lines.line_of(path), source=self.settings.source)
