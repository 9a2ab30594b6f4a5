"""Which closed sockets may have been listeners: the shape rule for `transient` events.

A destroy message whose cookie no look ever saw is a socket that lived
between two looks. Whether it was a listener the message cannot say (its
state is already TCP_CLOSE), only its shape: a local port and no peer
(the destroy filter keeps no other). For TCP that is a listener or a
socket bound for one; for UDP a client's unconnected socket has the same
shape, but its port comes from the ephemeral range, so a UDP socket
counts only outside that range (net.ipv4.ip_local_port_range).

Known limit: a TCP socket bound and closed without listen() (a program
probing for a free port) has the shape of a listener at its close; the
kernel's message cannot tell them apart (measured on 6.18: the same
fields, tcp_info included). A refused connect() is not mistaken: the
kernel resets its dport to 0 but keeps the peer's address.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Final

from portwatchd.budget import TokenBucket
from portwatchd.model import Endpoint, EventDraft

PortRange = tuple[int, int]

# At most this many `transient` events a second, TRANSIENT_BURST at once. A
# program that opens and closes listeners as fast as it can (40,000 a second
# measured) would otherwise fill the journal and the store with them and
# slow every look; the rest are counted (status) and said in one warning
# every SUPPRESSED_SAID_EVERY_S while it lasts.
TRANSIENT_RATE: Final = 100.0
TRANSIENT_BURST: Final = 1000.0
SUPPRESSED_SAID_EVERY_S: Final = 10.0
# The kernel's default, should the sysctl be unreadable.
DEFAULT_EPHEMERAL: PortRange = (32768, 60999)


def parse_port_range(text: str, *, source: str = "ip_local_port_range") -> PortRange:
    """The (low, high) of the sysctl's text, both inclusive.

    >>> parse_port_range("32768\\t60999\\n")
    (32768, 60999)
    >>> parse_port_range("60999 32768")
    Traceback (most recent call last):
    ...
    ValueError: ip_local_port_range: expected two ports, low <= high, got '60999 32768'
    """
    fields = text.split()
    if len(fields) == 2 and all(f.isascii() and f.isdigit() for f in fields):
        low, high = int(fields[0]), int(fields[1])
        if 0 < low <= high <= 65535:
            return low, high
    raise ValueError(f"{source}: expected two ports, low <= high, got {text.strip()!r}")


def is_listening_shaped(endpoint: Endpoint, ephemeral: PortRange) -> bool:
    """Whether a closed socket of this shape counts as a listener that lived unseen.

    >>> tcp = Endpoint("tcp", "ipv4", "127.0.0.1", 45000)
    >>> udp = Endpoint("udp", "ipv4", "0.0.0.0", 45000)
    >>> is_listening_shaped(tcp, (32768, 60999)), is_listening_shaped(udp, (32768, 60999))
    (True, False)
    >>> is_listening_shaped(Endpoint("udp", "ipv4", "0.0.0.0", 5353), (32768, 60999))
    True
    """
    if endpoint.port == 0:
        return False
    if endpoint.proto == "tcp":
        return True
    low, high = ephemeral
    return not low <= endpoint.port <= high


def split_destroyed(
    closed: Iterable[Endpoint], seen: Container[tuple[int, int]], ephemeral: PortRange
) -> tuple[list[Endpoint], list[Endpoint]]:
    """(closes of sockets a look saw, listeners that lived unseen) among destroyed sockets.

    `seen` holds the (netns, cookie) of every socket a look listed; a
    socket with cookie 0 (a source that cannot tell) is never matched. The
    rest counts as a listener that lived between two looks only when it is
    listening-shaped; other closes (a UDP client's socket) are dropped.

    >>> udp_client = Endpoint("udp", "ipv4", "0.0.0.0", 40000, cookie=7)
    >>> listener = Endpoint("tcp", "ipv4", "0.0.0.0", 80, cookie=8)
    >>> short = Endpoint("tcp", "ipv4", "127.0.0.1", 9000, cookie=9)
    >>> known, unseen = split_destroyed([udp_client, listener, short], {(0, 8)}, (32768, 60999))
    >>> [e.port for e in known], [e.port for e in unseen]
    ([80], [9000])
    """
    known: list[Endpoint] = []
    unseen: list[Endpoint] = []
    for endpoint in closed:
        if endpoint.cookie and (endpoint.netns, endpoint.cookie) in seen:
            known.append(endpoint)
        elif is_listening_shaped(endpoint, ephemeral):
            unseen.append(endpoint)
    return known, unseen


class TransientBudget:
    """Which `transient` drafts are reported (see TRANSIENT_RATE), and the
    warning about the others.

    >>> from portwatchd.model import UNKNOWN_OWNER
    >>> budget = TransientBudget(rate=1.0, burst=2.0)
    >>> drafts = [EventDraft("transient", Endpoint("tcp", "ipv6", "::", p), UNKNOWN_OWNER, "")
    ...           for p in (7001, 7002, 7003)]
    >>> [d.endpoint.port for d in budget.admit(drafts, now=0.0)]
    [7001, 7002]
    >>> print(budget.warning(now=0.0))  # doctest: +ELLIPSIS
    1 transient listener not reported one by one (more than 1 a second, ...), the last tcp:[::]:7003
    >>> budget.warning(now=1.0) is None
    True
    """

    def __init__(self, rate: float = TRANSIENT_RATE, burst: float = TRANSIENT_BURST) -> None:
        self._bucket = TokenBucket(rate, burst)
        self.suppressed_total = 0
        self._unsaid = 0
        self._last: Endpoint | None = None
        self._said_at: float | None = None

    def admit(self, drafts: list[EventDraft], now: float) -> list[EventDraft]:
        """The drafts to report; the others are counted."""
        if not drafts:
            return drafts
        kept = self._bucket.take(len(drafts), now)
        if kept < len(drafts):
            self.suppressed_total += len(drafts) - kept
            self._unsaid += len(drafts) - kept
            self._last = drafts[-1].endpoint
        return drafts[:kept]

    def warning(self, now: float) -> str | None:
        """What to say now about transients not reported, if anything:
        at once when it starts, then at most every SUPPRESSED_SAID_EVERY_S."""
        if not self._unsaid:
            return None
        if self._said_at is not None and now - self._said_at < SUPPRESSED_SAID_EVERY_S:
            return None
        bucket = self._bucket
        count, self._unsaid, self._said_at = self._unsaid, 0, now
        noun = "listener" if count == 1 else "listeners"
        return (
            f"{count} transient {noun} not reported one by one (more than"
            f" {bucket.rate:g} a second, {bucket.burst:g} at once), the last"
            f" {self._last.key if self._last else '?'}"
        )
