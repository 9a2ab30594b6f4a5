"""Socket changes plus owners in, event drafts out. Pure: no clock, no I/O.

The engine hands over what the diff found and the owners the resolver saw;
this decides what is reported and with which owner. A closed key names the
owner its socket had when it was last seen (kept current while it
listened), an opened key the owner found for its new socket.

Two judgements turn plain opens into what happened:
- a key opened again within the restart grace after it closed, by the same
  program (exe) or the same systemd unit, is `restarted`: a service
  restart, not a new listener. The close before it was reported at once,
  as always; only the reopening is named differently.
- the same socket whose owner changed (the main holder exited and a child
  holds on, a hand-over, an exec of another program) is `owner_changed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from portwatchd.diff import Change
from portwatchd.model import (
    HOST_PLACE,
    UNKNOWN_OWNER,
    Detection,
    Endpoint,
    EventDraft,
    EventType,
    Owner,
    Place,
)

PlaceOf = Callable[[Endpoint, Owner], Place]
IsIgnored = Callable[[Endpoint, Owner, EventType, Place], bool]
IsExpected = Callable[[Endpoint, Owner, Place], bool | None]
# The events an [[expect]] rule judges: a listener that starts listening.
JUDGED_BY_EXPECT = frozenset({"opened", "restarted"})


def _host_place(_endpoint: Endpoint, _owner: Owner) -> Place:
    return HOST_PLACE


def _no_expect_rules(_endpoint: Endpoint, _owner: Owner, _place: Place) -> bool | None:
    return None


@dataclass(frozen=True, slots=True)
class Judge:
    """What the configuration and the host say about one listener: where it
    lives (`place`), whether to report it (`ignored`), whether an [[expect]]
    rule accepts it (`expected`). The engine holds one; a reload swaps it."""

    ignored: IsIgnored
    place: PlaceOf = _host_place
    expected: IsExpected = _no_expect_rules
    # netns inode -> why its sockets closed ("its network namespace is gone").
    reasons: Mapping[int, str] = field(default_factory=dict)

    def draft(
        self, kind: EventType, endpoint: Endpoint, owner: Owner, **details: Any
    ) -> EventDraft | None:
        """The draft of one event, None when an ignore rule silences it."""
        place = self.place(endpoint, owner)
        if self.ignored(endpoint, owner, kind, place):
            return None
        expected = self.expected(endpoint, owner, place) if kind in JUDGED_BY_EXPECT else None
        reason = self.reasons.get(endpoint.netns) if kind == "closed" and endpoint.netns else None
        return EventDraft(
            type=kind,
            endpoint=endpoint,
            owner=owner,
            place=place,
            expected=expected,
            reason=reason,
            **details,
        )


@dataclass(frozen=True, slots=True)
class RecentClose:
    at: float  # monotonic seconds, when the close was seen
    owner: Owner


class RestartWindow:
    """The keys closed within the grace, to tell a restart from a new listener.

    Times are the engine's monotonic seconds, passed in: no clock here.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._closes: dict[str, RecentClose] = {}

    def __len__(self) -> int:
        return len(self._closes)

    def closed(self, key: str, owner: Owner, at: float) -> None:
        if self.grace_s > 0:
            self._closes[key] = RecentClose(at, owner)

    def reopened(self, key: str, owner: Owner, at: float) -> RecentClose | None:
        """The close this opening restarts, None when it is a new listener."""
        before = self._closes.pop(key, None)
        if before is None or at - before.at > self.grace_s:
            return None
        return before if same_service(before.owner, owner) else None

    def expire(self, now: float) -> None:
        """Forget the closes older than the grace (a closed key that never reopens)."""
        if self._closes:
            horizon = now - self.grace_s
            self._closes = {key: c for key, c in self._closes.items() if c.at >= horizon}


def same_service(before: Owner, after: Owner) -> bool:
    """The same program (exe) or the same systemd unit, both seen."""
    if before.exe is not None and before.exe == after.exe:
        return True
    return before.unit is not None and before.unit == after.unit


def owner_differs(before: Owner, after: Owner) -> bool:
    """Worth an owner_changed event: another main process, program or unit.

    A preforking server's workers coming and going changes `pids` only,
    and is not an event: the owner is refreshed silently.
    """
    return (before.pid, before.exe, before.unit) != (after.pid, after.exe, after.unit)


def classify(
    changes: Iterable[Change],
    *,
    owners: Mapping[int, Owner],
    time: str,
    detected: Detection,
    judge: Judge,
    restarts: RestartWindow,
    now: float,
    down_since: str | None = None,
) -> list[EventDraft]:
    """One draft per change that no ignore rule matches, in the changes' order.

    `owners` maps socket inodes to owners: the last known owner of each
    closed socket and the new owner of each opened one. A socket missing
    from it is reported with the unknown owner, never a guess. `restarts`
    learns every close (ignored or not) and is asked about every opening.
    """
    drafts = []
    for change in changes:
        owner = owners.get(change.endpoint.inode, UNKNOWN_OWNER)
        kind: EventType = change.type
        before = None
        if kind == "closed":
            restarts.closed(change.key, owner, now)
        else:
            before = restarts.reopened(change.key, owner, now)
            if before is not None:
                kind = "restarted"
        draft = judge.draft(
            kind,
            change.endpoint,
            owner,
            time=time,
            detected=detected,
            down_since=down_since,
            previous_owner=None if before is None else before.owner,
            down_seconds=None if before is None else round(now - before.at, 6),
        )
        if draft is not None:
            drafts.append(draft)
    return drafts


def owner_changes(
    changes: Iterable[tuple[Endpoint, Owner, Owner]],
    *,
    time: str,
    detected: Detection,
    judge: Judge,
) -> list[EventDraft]:
    """`owner_changed` drafts for (socket, old owner, new owner) that differ."""
    drafts = []
    for endpoint, before, after in changes:
        if not owner_differs(before, after):
            continue
        draft = judge.draft(
            "owner_changed",
            endpoint,
            after,
            time=time,
            detected=detected,
            previous_owner=before,
        )
        if draft is not None:
            drafts.append(draft)
    return drafts


def transient_drafts(
    endpoints: Iterable[Endpoint], *, judge: Judge, time: str, lived_at_most_s: float
) -> list[EventDraft]:
    """Listeners that opened and closed between two looks: the destroy
    message says where, and that they lived at most since the last look.
    Their owner is gone with them."""
    drafts = []
    for endpoint in endpoints:
        draft = judge.draft(
            "transient",
            endpoint,
            UNKNOWN_OWNER,
            time=time,
            detected="destroy",
            lifetime_max_seconds=round(lived_at_most_s, 3),
        )
        if draft is not None:
            drafts.append(draft)
    return drafts
