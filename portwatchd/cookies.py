"""Destroy messages matched to the sockets the engine watches. Pure.

A destroy message names a socket by (network namespace, sock_diag cookie).
`CookieIndex` knows the cookie of every socket a look listed, the keys of
sockets listed without one (the /proc source has none), and, for a while,
the cookies of sockets a look found gone: their message may come after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from portwatchd.model import Endpoint
from portwatchd.transient import PortRange, split_destroyed

# How long the cookie of a socket a look found gone is kept: its destroy
# message comes within milliseconds (a kernel work queue), or was lost.
CLOSED_COOKIES_KEPT_S = 10.0


@dataclass(frozen=True, slots=True)
class Destroyed:
    """What a batch of destroy messages means."""

    gone: set[int]  # inodes of watched sockets that closed
    transients: list[Endpoint]  # listening-shaped sockets no look saw
    look: bool  # only a full look can tell (a key listed without cookies)


class CookieIndex:
    def __init__(self) -> None:
        self._inodes: dict[tuple[int, int], int] = {}
        self._cookieless_keys: set[str] = set()
        self._closed: dict[tuple[int, int], float] = {}

    def update(
        self, sockets: Mapping[int, Endpoint], removed: Iterable[Endpoint], now: float
    ) -> None:
        """The watched sockets changed to `sockets`; `removed` were found gone at `now`."""
        self._remember_closed(removed, now)
        self._inodes = {
            (endpoint.netns, endpoint.cookie): inode
            for inode, endpoint in sockets.items()
            if endpoint.cookie
        }
        self._cookieless_keys = {e.key for e in sockets.values() if not e.cookie}

    def closed(self, removed: Iterable[Endpoint], now: float) -> None:
        """Only `removed` left the watched sockets, at `now` (at their cost,
        not the cost of every socket as `update`)."""
        for endpoint in removed:
            self._inodes.pop((endpoint.netns, endpoint.cookie), None)
        self._remember_closed(removed, now)

    def _remember_closed(self, removed: Iterable[Endpoint], now: float) -> None:
        # Oldest first (each is moved to the end when set): expiry stops at
        # the first one young enough.
        horizon = now - CLOSED_COOKIES_KEPT_S
        closed = self._closed
        while closed and next(iter(closed.values())) < horizon:
            del closed[next(iter(closed))]
        for endpoint in removed:
            if endpoint.cookie:
                cookie = (endpoint.netns, endpoint.cookie)
                closed.pop(cookie, None)
                closed[cookie] = now

    def split(self, sockets: Sequence[Endpoint], ephemeral: PortRange) -> Destroyed:
        fresh = [s for s in sockets if (s.netns, s.cookie) not in self._closed]
        known, unseen = split_destroyed(fresh, self._inodes, ephemeral)
        look = any(endpoint.key in self._cookieless_keys for endpoint in unseen)
        if look:
            unseen = [e for e in unseen if e.key not in self._cookieless_keys]
        gone = {self._inodes[(endpoint.netns, endpoint.cookie)] for endpoint in known}
        return Destroyed(gone, unseen, look)
