"""The owner of every socket the engine watches, kept current. Pure.

The engine hands in what each owner lookup found: owners of new sockets,
owners found at last for sockets that had none, and owners a recheck found
changed (OwnerResolver.recheck). A stale owner is dropped at once (never a
pid that no longer holds the socket) and remembered until the new holder
is seen, so that the owner_changed event names both.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from portwatchd.lookup import LookupResult
from portwatchd.model import UNKNOWN_OWNER, Endpoint, Owner

# (socket, old owner, new owner) of a socket that stayed while its owner changed.
Handover = tuple[Endpoint, Owner, Owner]

# A socket nobody could be seen holding is looked for again at the next
# owner check (OWNER_RECHECK_S), then after 4 s, 8 s, ... up to 5 minutes.
# The kernel's own sockets (nfsd, lockd) and those of processes in a PID
# namespace we cannot see never get an owner, and each retry reads the fd
# tables of every process started since the last one.
UNKNOWN_RETRY_WAIT_S = 4.0  # after the first retry; doubled after each
UNKNOWN_RETRY_MAX_S = 300.0


class OwnerBook:
    def __init__(self) -> None:
        self._owners: dict[int, Owner] = {}
        # Sockets whose owner went stale before the new holder was seen.
        self._stale: dict[int, Owner] = {}
        # Sockets without an owner: (when to look again, the wait after that).
        self._retry: dict[int, tuple[float, float]] = {}

    def __bool__(self) -> bool:
        return bool(self._owners)

    def get(self, inode: int) -> Owner:
        return self._owners.get(inode, UNKNOWN_OWNER)

    def last_holder(self, inode: int) -> Owner:
        """Who held a socket last: its owner, or the stale one whose
        successor was not seen (an exiting process lets go of its sockets
        just before the kernel says they closed)."""
        return self._owners.get(inode) or self._stale.get(inode, UNKNOWN_OWNER)

    def put(self, inode: int, owner: Owner) -> None:
        if owner.known:
            self._owners[inode] = owner

    def forget(self, inodes: Iterable[int]) -> None:
        """The sockets closed."""
        for inode in inodes:
            self._owners.pop(inode, None)
            self._stale.pop(inode, None)
            self._retry.pop(inode, None)

    def unknown_due(self, inodes: Iterable[int], now: float) -> set[int]:
        """Those of `inodes` without an owner whose retry is due at `now`;
        their next retry is set (see UNKNOWN_RETRY_WAIT_S).

        >>> book = OwnerBook()
        >>> [sorted(book.unknown_due([7], now)) for now in (0.0, 3.0, 4.0, 11.0, 12.0)]
        [[7], [], [7], [], [7]]
        """
        due = set()
        for inode in inodes:
            if inode in self._owners:
                continue
            at, wait = self._retry.get(inode, (now, UNKNOWN_RETRY_WAIT_S))
            if now >= at:
                due.add(inode)
                self._retry[inode] = (now + wait, min(2 * wait, UNKNOWN_RETRY_MAX_S))
        return due

    def of(self, inodes: Collection[int]) -> dict[int, Owner]:
        """The known owners of these sockets, for a recheck."""
        return {inode: owner for inode, owner in self._owners.items() if inode in inodes}

    def take(
        self, result: LookupResult, sockets: Mapping[int, Endpoint], new: Collection[int]
    ) -> tuple[set[int], list[Handover]]:
        """Take in a lookup's result for a pass whose sockets are `sockets`
        (`new` among them just appeared). Returns the sockets whose stored
        owner changes, and the hand-overs to report."""
        refreshed: set[int] = set()
        handed: list[Handover] = []
        for inode, owner in result.owners.items():
            if owner.known:
                refreshed.add(inode)
                self._owners[inode] = owner
                self._retry.pop(inode, None)
                before = self._stale.pop(inode, None)
                if before is not None and inode in sockets:
                    handed.append((sockets[inode], before, owner))
        for inode, owner in result.changed.items():
            endpoint = sockets.get(inode)
            if endpoint is None or inode in new:
                continue
            refreshed.add(inode)
            before = self._stale.pop(inode, None) or self._owners.get(inode)
            if owner.known:
                self._owners[inode] = owner
                if before is not None:
                    handed.append((endpoint, before, owner))
            else:
                self._owners.pop(inode, None)
                if before is not None:
                    self._stale[inode] = before
        return refreshed, handed
