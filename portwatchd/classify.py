"""Socket changes plus owners in, event drafts out. Pure: no clock, no I/O.

The engine hands over what the diff found and the owners the resolver saw;
this decides what is reported and with which owner. A closed key names the
owner its socket had when it was last seen (kept per socket while it
listened), an opened key the owner found for its new socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from portwatchd.diff import Change
from portwatchd.model import UNKNOWN_OWNER, Detection, Endpoint, EventDraft, Owner

IsIgnored = Callable[[Endpoint, Owner], bool]


def classify(
    changes: Iterable[Change],
    *,
    owners: Mapping[int, Owner],
    time: str,
    detected: Detection,
    ignored: IsIgnored,
    down_since: str | None = None,
) -> list[EventDraft]:
    """One draft per change that no ignore rule matches, in the changes' order.

    `owners` maps socket inodes to owners: the last known owner of each
    closed socket and the new owner of each opened one. A socket missing
    from it is reported with the unknown owner, never a guess.
    """
    drafts = []
    for change in changes:
        owner = owners.get(change.endpoint.inode, UNKNOWN_OWNER)
        if ignored(change.endpoint, owner):
            continue
        drafts.append(
            EventDraft(
                type=change.type,
                endpoint=change.endpoint,
                owner=owner,
                time=time,
                detected=detected,
                down_since=down_since,
            )
        )
    return drafts
