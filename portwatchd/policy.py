"""Which endpoints not to report: the [[ignore]] rules. Pure: no I/O.

A rule is built from the values of one [[ignore]] table (IGNORE_KEYS says
how each key is checked); `is_ignored` judges an endpoint and its owner
against a list of rules.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from portwatchd.config_schema import (
    Check,
    InvalidValueError,
    choice,
    describe_value,
    non_empty_string,
    string,
)
from portwatchd.model import EVENT_TYPES, EXPOSURES, PROTOS, Endpoint, EventType, Owner, Place

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The kernel keeps at most 15 characters of a process name (TASK_COMM_LEN 16
# with the NUL): a longer `process` rule could never match.
COMM_MAX = 15


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
    events: tuple[str, ...] = ()  # event types it silences; () = every type
    exposure: str | None = None  # loopback | link-local | private | public
    line: int | None = None  # where the rule starts in its file, for messages
    source: str | None = None  # the file it comes from (main file or drop-in)

    def matches(
        self,
        endpoint: Endpoint,
        owner: Owner | None = None,
        event: EventType | None = None,
        place: Place | None = None,
    ) -> bool:
        """Whether the rule silences this endpoint (with its owner and place),
        for the given event type; `event` None asks about every type at once."""
        if self.events and (event is None or event not in self.events):
            return False
        if self.exposure is not None and (place is None or place.exposure != self.exposure):
            return False
        if self.proto is not None and endpoint.proto != self.proto:
            return False
        if self.ports and not any(low <= endpoint.port <= high for low, high in self.ports):
            return False
        if self.networks and not address_in(endpoint.address, self.networks):
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
        for name in ("proto", "process", "unit", "exposure"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        if self.events:
            parts.append("event=" + ",".join(self.events))
        return " ".join(parts)


def is_ignored(
    rules: Iterable[IgnoreRule],
    endpoint: Endpoint,
    owner: Owner | None = None,
    event: EventType | None = None,
    place: Place | None = None,
) -> bool:
    """Whether any rule matches this endpoint (owner, place) for this event type."""
    return any(rule.matches(endpoint, owner, event, place) for rule in rules)


def address_in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
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


# -- the values of an [[ignore]] table -------------------------------------------


def _one_port(value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise InvalidValueError(f"must be between 1 and 65535, got {value}")
        return (value, value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
        if not match:
            raise InvalidValueError(
                f'must be a port number or a range like "8000-8099", got "{value}"'
            )
        low, high = int(match[1]), int(match[2])
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise InvalidValueError(f'ports must be between 1 and 65535, got "{value}"')
        if low > high:
            raise InvalidValueError(f'range "{value}" is backwards; did you mean "{high}-{low}"?')
        return (low, high)
    raise InvalidValueError(
        f'must be a port number, a range like "8000-8099" or an array, got {describe_value(value)}'
    )


def check_ports(value: object) -> tuple[tuple[int, int], ...]:
    if isinstance(value, list):
        if not value:
            raise InvalidValueError("must not be an empty array")
        return tuple(_one_port(item) for item in value)
    return (_one_port(value),)


def _one_network(value: object) -> IPNetwork:
    text = string(value)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidValueError(
                f'must be an IP address or a CIDR network like "127.0.0.0/8", got "{text}"'
            ) from error
        raise InvalidValueError(f'"{text}" has host bits set; did you mean "{loose}"?') from error


def check_networks(value: object) -> tuple[IPNetwork, ...]:
    if isinstance(value, list):
        if not value:
            raise InvalidValueError("must not be an empty array")
        return tuple(_one_network(item) for item in value)
    return (_one_network(value),)


def _process(value: object) -> str:
    text = string(value)
    if not text:
        raise InvalidValueError("must not be empty")
    if len(text.encode("utf-8", "surrogateescape")) > COMM_MAX:
        raise InvalidValueError(
            f'"{text}" is longer than {COMM_MAX} bytes: the kernel truncates process '
            f'names, so write "{text.encode()[:COMM_MAX].decode(errors="ignore")}"'
        )
    return text


def _events(value: object) -> tuple[str, ...]:
    check = choice(*EVENT_TYPES)
    if isinstance(value, list):
        if not value:
            raise InvalidValueError("must not be an empty array")
        return tuple(check(item) for item in value)
    return (check(value),)


# [[ignore]] key -> (IgnoreRule field, check)
IGNORE_KEYS: dict[str, tuple[str, Check]] = {
    "port": ("ports", check_ports),
    "address": ("networks", check_networks),
    "proto": ("proto", choice(*PROTOS)),
    "process": ("process", _process),
    "unit": ("unit", non_empty_string),
    "event": ("events", _events),
    "exposure": ("exposure", choice(*EXPOSURES)),
}
