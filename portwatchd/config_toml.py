"""Reading one TOML file: bounded, located, and with errors a person can act on.

`read_config_text` refuses what is not a small regular file before reading
it (a FIFO must not block the loop, /dev/zero must not fill memory);
`parse_toml` returns the document and a `KeyLines` locator, because
tomllib parses but forgets positions, and an error that says which line to
fix is worth a small scanner.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from typing import Any

from portwatchd.config_schema import ConfigError

# A configuration file is a few kilobytes. The bound keeps a wrong path
# (a log file, a disk image) from stalling the loop on every reload.
MAX_CONFIG_BYTES = 1024 * 1024

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind_of(mode: int) -> str:
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def read_config_text(path: str, *, missing_ok: bool = False) -> str | None:
    """The text of `path`, or None when it is absent and `missing_ok`.

    Refused with a ConfigError naming the file and the reason: anything
    that is not a regular file, a file over MAX_CONFIG_BYTES, a file that
    is not UTF-8. Never blocks: the file is opened with O_NONBLOCK (a FIFO
    with no writer would otherwise hang the open) and checked with fstat
    before a single byte is read; a socket, which open() refuses with
    ENXIO, is recognised by its stat.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise _unreadable(path, "no such file") from None
    except OSError as error:
        raise _unreadable(path, _open_failure(path, error)) from None
    try:
        data = _read_bounded(path, fd)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", source=path, line=line) from None


def _unreadable(path: str, reason: str) -> ConfigError:
    return ConfigError(f"cannot read the configuration file: {reason}", source=path)


def _open_failure(path: str, error: OSError) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        return f"it is {_kind_of(mode)}, not a regular file"
    return error.strerror or str(error)


def _read_bounded(path: str, fd: int) -> bytes:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _unreadable(path, f"it is {_kind_of(info.st_mode)}, not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise _too_big(path, info.st_size)
        chunks: list[bytes] = []
        size = 0
        # Read one byte past the bound: the file may have grown since fstat.
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise _unreadable(path, error.strerror or str(error)) from None
    if size > MAX_CONFIG_BYTES:
        raise _too_big(path, size)
    return b"".join(chunks)


def _too_big(path: str, size: int) -> ConfigError:
    return ConfigError(
        f"the configuration file is {size:,} bytes, over the limit of "
        f"{MAX_CONFIG_BYTES:,} bytes (1 MiB); is this the right file?",
        source=path,
    )


def parse_toml(path: str, text: str) -> tuple[dict[str, Any], KeyLines]:
    """The parsed document and where its keys are; a ConfigError with the
    line for invalid TOML."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(path, text, error) from None
    except RecursionError:
        # tomllib recurses once per nesting level: "a = [[[[...]]]]"
        # deep enough exhausts the stack instead of raising its error.
        raise ConfigError("arrays or tables nested too deeply", source=path) from None
    return document, KeyLines(text)


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
            KeyLines(text).duplicate_line if message.startswith("Cannot overwrite") else None
        )
        line = duplicate or text.count("\n") + 1
    return ConfigError(f"invalid TOML: {message}", source=source, line=line)


KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class KeyLines:
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
