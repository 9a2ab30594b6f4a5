"""The one rule for names shown as text, and for names that are not UTF-8. Pure.

Names a process or another user controls (comm, cmdline, exe, unit, user,
interface) go through `escape_text` wherever they become text for people;
`printable_name` makes a name the kernel gave as bytes valid UTF-8.
"""

from __future__ import annotations

import re


def printable_name(name: str) -> str:
    """A name the kernel or /etc gave as bytes, made valid UTF-8.

    Python decodes such names with surrogateescape; the journal, JSON on
    the wire and the state file all need real UTF-8. An interface or user
    name that is not UTF-8 keeps its odd bytes as backslash escapes.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# What a name shown as text must not carry as it is: C0 controls, DEL, C1
# controls, surrogates (bytes that were not UTF-8, decoded with
# surrogateescape), the line and paragraph separators some readers split
# on, and the backslash itself, so that an escape cannot be forged.
_UNSAFE_IN_TEXT = re.compile("[\\\\\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape_text(text: str) -> str:
    r"""A name a process or another user controls, made safe to show as text.

    The one rule of every text output (log lines, the journal's MESSAGE,
    portwatchctl's tables, STATUS=): a control character or a byte that was
    not UTF-8 becomes a visible escape, so that a name can never start a new
    line or pass for another one. A backslash is doubled, so that an escape
    in the name cannot pass for one of ours. JSON and journal fields keep
    the real value; only text built for people goes through here.

    >>> escape_text("x\nPort closed: ")
    'x\\nPort closed: '
    >>> print(escape_text("tab\there, bell\a, C1\x85, DEL\x7f"))
    tab\there, bell\x07, C1\x85, DEL\x7f
    >>> print(escape_text("eth\udcff") + " " + escape_text("a\\xff"))
    eth\xff a\\xff
    >>> escape_text("nginx.service")
    'nginx.service'
    """
    if text.isprintable() and "\\" not in text:
        return text
    return _UNSAFE_IN_TEXT.sub(_escape_char, text)
