"""Which listeners are expected: the [[expect]] rules. Pure: no I/O.

Once any rule exists, a listener that matches none is unexpected (the
daemon reports it louder). A rule matches when every key it sets matches
(EXPECT_KEYS says how each key is checked):

- port, proto, address: as in [[ignore]];
- exposure: the listener's exposure class (exposure.py);
- process: the process name (comm), the executable's base name, or, for
  a value starting with "/", the executable's path;
- unit: the systemd unit, exact or a shell glob;
- container: the container's id (or its first 12 or more characters, as
  `docker ps` shows it) or its name, a glob allowed for the name;
- netns: the `ip netns` or container name of the network namespace,
  "host" for the daemon's own.

`suggest` prints rules accepting what listens now: a baseline to review.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass

from portwatchd.config_schema import Check, InvalidValueError, choice, non_empty_string, string
from portwatchd.model import EXPOSURES, PROTOS, Endpoint, Owner, Place
from portwatchd.policy import IPNetwork, address_in, check_networks, check_ports

SHORT_ID_MIN = 12  # `docker ps` shows 12 characters of an id


@dataclass(frozen=True, slots=True)
class ExpectRule:
    """Listeners that are expected. Matches when every field given matches;
    a key judged on something unknown (no owner, no container) does not."""

    ports: tuple[tuple[int, int], ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    proto: str | None = None
    exposure: str | None = None
    process: str | None = None
    unit: str | None = None
    container: str | None = None
    netns: str | None = None
    line: int | None = None  # where the rule starts in its file
    source: str | None = None  # the file it comes from

    def matches(self, endpoint: Endpoint, owner: Owner | None, place: Place) -> bool:
        if self.proto is not None and endpoint.proto != self.proto:
            return False
        if self.ports and not any(low <= endpoint.port <= high for low, high in self.ports):
            return False
        if self.networks and not address_in(endpoint.address, self.networks):
            return False
        if self.exposure is not None and place.exposure != self.exposure:
            return False
        if self.process is not None and not _process_matches(self.process, owner):
            return False
        if self.unit is not None and not _glob_matches(self.unit, owner.unit if owner else None):
            return False
        if self.container is not None and not _container_matches(self.container, place):
            return False
        return self.netns is None or _netns_matches(self.netns, place)

    def what(self) -> tuple[object, ...]:
        """What the rule matches, not where it was written: for comparing configs."""
        return (
            self.ports,
            self.networks,
            self.proto,
            self.exposure,
            self.process,
            self.unit,
            self.container,
            self.netns,
        )


def _process_matches(value: str, owner: Owner | None) -> bool:
    if owner is None:
        return False
    if value.startswith("/"):
        return owner.exe == value
    exe_name = os.path.basename(owner.exe) if owner.exe else None
    # The kernel keeps 15 bytes of a process name: a longer value matches its start.
    return value in (owner.comm, exe_name) or (
        owner.comm is not None and len(owner.comm) == 15 and value.startswith(owner.comm)
    )


def _glob_matches(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatch.fnmatchcase(value, pattern)


def _container_matches(value: str, place: Place) -> bool:
    if place.container is None:
        return False
    if place.container == value:
        return True
    if len(value) >= SHORT_ID_MIN and place.container.startswith(value):
        return True
    return _glob_matches(value, place.netns_name)


def _netns_matches(value: str, place: Place) -> bool:
    if value == "host":
        return place.scope == "host"
    return _glob_matches(value, place.netns_name)


def is_expected(
    rules: Iterable[ExpectRule], endpoint: Endpoint, owner: Owner | None, place: Place
) -> bool | None:
    """Whether a rule accepts the listener; None when there are no rules at all."""
    seen_any = False
    for rule in rules:
        seen_any = True
        if rule.matches(endpoint, owner, place):
            return True
    return False if seen_any else None


# -- suggest -----------------------------------------------------------------------

SUGGEST_HEADER = """\
# A baseline: one [[expect]] rule for each listener seen now.
# Review every rule before adding it to portwatchd.toml (or a drop-in in
# portwatchd.d/): a rule accepts whatever listens there today, wanted or not.
# Once any rule exists, a listener that matches none is reported as unexpected.
"""


def toml_string(text: str) -> str:
    """A TOML basic string.

    >>> print(toml_string('a "b" \\\\ c'))
    "a \\"b\\" \\\\ c"
    """
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _is_text(value: str) -> bool:
    """Not carrying bytes that were not UTF-8 (surrogateescape): TOML could not say it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _suggested_keys(endpoint: Endpoint, owner: Owner | None, place: Place) -> tuple[str, ...]:
    keys = [f"port = {endpoint.port}", f"proto = {toml_string(endpoint.proto)}"]
    if owner is not None and owner.comm and _is_text(owner.comm):
        keys.append(f"process = {toml_string(owner.comm)}")
    if owner is not None and owner.unit and _is_text(owner.unit):
        keys.append(f"unit = {toml_string(owner.unit)}")
    if place.container is not None:
        keys.append(f"container = {toml_string(place.netns_name or place.container)}")
    elif place.scope != "host" and place.netns_name and _is_text(place.netns_name):
        keys.append(f"netns = {toml_string(place.netns_name)}")
    return tuple(keys)


def suggest(rows: Iterable[tuple[Endpoint, Owner | None, Place]]) -> str:
    """TOML [[expect]] rules accepting every listener in `rows`: one per
    distinct port, proto, process, unit and container, in port order."""
    blocks = {_suggested_keys(*row) for row in rows}

    def order(keys: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
        return (int(keys[0].removeprefix("port = ")), keys[1:])

    text = [SUGGEST_HEADER]
    for keys in sorted(blocks, key=order):
        text.append("\n[[expect]]\n" + "".join(f"{key}\n" for key in keys))
    return "".join(text)


# -- the values of an [[expect]] table --------------------------------------------


def check_process(value: object) -> str:
    text = string(value)
    if not text:
        raise InvalidValueError("must not be empty")
    if "/" in text and not text.startswith("/"):
        raise InvalidValueError(
            f'"{text}" must be a process name, an executable\'s name, or its absolute path'
        )
    return text


# [[expect]] key -> (ExpectRule field, check)
EXPECT_KEYS: dict[str, tuple[str, Check]] = {
    "port": ("ports", check_ports),
    "address": ("networks", check_networks),
    "proto": ("proto", choice(*PROTOS)),
    "exposure": ("exposure", choice(*EXPOSURES)),
    "process": ("process", check_process),
    "unit": ("unit", non_empty_string),
    "container": ("container", non_empty_string),
    "netns": ("netns", non_empty_string),
}
