"""What an event says: its journal entry and its one line of text.

`event_fields` is the one place that knows the journal field names, and
`event_message` the one text a person reads for an event (the journal's
MESSAGE, the stderr line). Pure, so both are tested as functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portwatchd.model import (
    PRIORITY_ERR,
    PRIORITY_INFO,
    PRIORITY_NOTICE,
    PRIORITY_WARNING,
    Event,
    Loss,
    Owner,
)
from portwatchd.text import escape_text

# Fixed forever: journalctl MESSAGE_ID= filters and the message catalog
# (packaging/portwatchd.catalog) key on them.
MESSAGE_ID_OPENED = "bc5aa3412226442ea87addfff74cb425"
MESSAGE_ID_CLOSED = "6a63009634414d579ea098597164285c"
MESSAGE_ID_RESTARTED = "a27f04edaaa645d6a42fdc4d56486db0"
MESSAGE_ID_OWNER_CHANGED = "ba9762022ed443da8ca8690a6ff2fed4"
MESSAGE_ID_TRANSIENT = "afa6570485784b298a306bc234b8058f"
# An opened or restarted listener that no [[expect]] rule accepts.
MESSAGE_ID_UNEXPECTED = "b57b91eed7d34acebf1d275784ebe20c"
MESSAGE_ID_RELOAD_REFUSED = "e8fa0f95b4d54ab0a5fd1fcda24f1e0f"
MESSAGE_ID_LOSS = "35875db9cb63408f874ac504e126d16d"

MESSAGE_IDS = {
    "opened": MESSAGE_ID_OPENED,
    "closed": MESSAGE_ID_CLOSED,
    "restarted": MESSAGE_ID_RESTARTED,
    "owner_changed": MESSAGE_ID_OWNER_CHANGED,
    "transient": MESSAGE_ID_TRANSIENT,
}
# A restart is not a new listener: info, not notice.
PRIORITIES = {
    "opened": PRIORITY_NOTICE,
    "closed": PRIORITY_NOTICE,
    "restarted": PRIORITY_INFO,
    "owner_changed": PRIORITY_NOTICE,
    "transient": PRIORITY_NOTICE,
}

SYSLOG_IDENTIFIER = "portwatchd"

PRIORITY_NAMES = {
    PRIORITY_ERR: "error",
    PRIORITY_WARNING: "warning",
    PRIORITY_NOTICE: "notice",
    PRIORITY_INFO: "info",
}


def seconds_text(seconds: float) -> str:
    """ "0.25 s", "3 s": the one short form of a duration in messages."""
    return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"


def event_message(event: Event) -> str:
    """The MESSAGE a person reads, the endpoint named by its key (the PORT field):

    "Port opened: tcp:0.0.0.0:8080 by nginx[1234] (nginx.service)"
    "Port closed: tcp:[fe80::1%eth0]:22 by sshd[612] (ssh.service)"
    "Port restarted: tcp:0.0.0.0:80 by nginx[1301] (nginx.service), down 1.2 s, was nginx[1234]"
    "Port owner changed: tcp:0.0.0.0:80 now held by nginx[1301], was nginx[1234]"
    "Port transient: tcp:0.0.0.0:4444 by nc[880], opened and closed within 0.8 s"

    One line always: names a process or another user controls (interface,
    comm, unit, container) are escaped (model.escape_text). The fields
    beside it keep the raw values.
    """
    when = " while portwatchd was not running" if event.detected == "startup" else ""
    unexpected = "Unexpected port" if event.expected is False else "Port"
    kind = event.type.replace("_", " ")
    where = escape_text(event.key) + _place_text(event)
    holder = "now held by" if event.type == "owner_changed" else "by"
    text = f"{unexpected} {kind}{when}: {where} {holder} {event.owner.describe()}"
    if event.down_seconds is not None:
        text += f", down {seconds_text(event.down_seconds)}"
    if event.lifetime_max_seconds is not None:
        text += f", opened and closed within {seconds_text(event.lifetime_max_seconds)}"
    if event.previous_owner is not None:
        text += f", was {event.previous_owner.describe()}"
    if event.reason is not None:
        text += f" ({event.reason})"
    return text


def _place_text(event: Event) -> str:
    place = event.place
    if place.container is not None:
        name = place.container_label()
        runtime = f" ({escape_text(place.container_runtime)})" if place.container_runtime else ""
        # A container on the host's network (docker run --network host)
        # listens on the host's addresses.
        shared = ", on the host's network" if place.scope == "host" else ""
        return f" in container {escape_text(name)}{runtime}{shared}"
    if event.endpoint.netns:
        return f" in netns {escape_text(place.netns_name or str(event.endpoint.netns))}"
    return ""


def event_fields(event: Event) -> dict[str, str]:
    """Journal fields for one event. Owner fields appear only when known:
    an absent PORT_PID means "could not be seen", never a guess.

    Only MESSAGE is text for people; every other field carries the value as
    it was seen (journald fields are binary-safe; encode_entry writes a
    name that was not UTF-8 as its bytes)."""
    ep = event.endpoint
    unexpected = event.expected is False
    fields = {
        "MESSAGE": event_message(event),
        "MESSAGE_ID": MESSAGE_ID_UNEXPECTED if unexpected else MESSAGE_IDS[event.type],
        "PRIORITY": str(PRIORITY_WARNING if unexpected else PRIORITIES[event.type]),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "PORT_EVENT": event.type,
        "PORT": ep.key,
        "PORT_PROTO": ep.proto,
        "PORT_FAMILY": ep.family,
        "PORT_ADDRESS": ep.address,
        "PORT_NUMBER": str(ep.port),
        "PORT_INTERFACE": ep.interface,
        "PORT_INODE": str(ep.inode),
        "PORT_EVENT_SEQ": str(event.seq),
        "PORT_EVENT_ID": event.id,
        "PORT_EVENT_TIME": event.time,
        "PORT_DETECTED": event.detected,
    }
    place = event.place
    optional: Mapping[str, Any] = {
        "PORT_V6ONLY": None if ep.v6only is None else int(ep.v6only),
        "PORT_DOWN_SINCE": event.down_since,
        "PORT_DOWN_SECONDS": event.down_seconds,
        "PORT_LIFETIME_MAX_SECONDS": event.lifetime_max_seconds,
        "PORT_NETNS": place.netns_inode or None,
        "PORT_NETNS_NAME": place.netns_name,
        "PORT_SCOPE": place.scope if place.netns_inode else None,
        "PORT_CONTAINER": place.container,
        "PORT_CONTAINER_RUNTIME": place.container_runtime,
        "PORT_EXPOSURE": place.exposure,
        "PORT_EXPECTED": None if event.expected is None else int(event.expected),
        "PORT_REASON": event.reason,
        "PORT_UID": ep.uid if event.owner.uid is None and ep.uid >= 0 else None,
    }
    fields.update({name: str(value) for name, value in optional.items() if value is not None})
    fields.update(owner_fields(event.owner, "PORT_"))
    if event.previous_owner is not None:
        fields.update(owner_fields(event.previous_owner, "PORT_PREVIOUS_"))
    return fields


def owner_fields(owner: Owner, prefix: str) -> dict[str, str]:
    """PORT_PID, PORT_COMM... (or PORT_PREVIOUS_PID...): only what was seen."""
    values: Mapping[str, Any] = {
        "PID": owner.pid,
        "PIDS": " ".join(map(str, owner.pids)) if len(owner.pids) > 1 else None,
        "COMM": owner.comm,
        "EXE": owner.exe,
        "CMDLINE": owner.cmdline,
        "UID": owner.uid,
        "USER": owner.user,
        "UNIT": owner.unit,
        "CGROUP": owner.cgroup,
    }
    return {prefix + name: str(value) for name, value in values.items() if value is not None}


def loss_message(loss: Loss) -> str:
    """ "Events lost: seq 21-320: portwatchd stopped before storing them"."""
    seqs = (
        f"seq {loss.from_seq}"
        if loss.from_seq == loss.to_seq
        else f"seq {loss.from_seq}-{loss.to_seq}"
    )
    return f"Events lost: {seqs}: {loss.reason}"


def loss_fields(loss: Loss) -> dict[str, str]:
    """Journal fields for a loss: the seqs a consumer will never see."""
    return {
        "MESSAGE": loss_message(loss),
        "MESSAGE_ID": MESSAGE_ID_LOSS,
        "PRIORITY": str(PRIORITY_WARNING),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "PORT_EVENT": "loss",
        "PORT_LOSS_FROM_SEQ": str(loss.from_seq),
        "PORT_LOSS_TO_SEQ": str(loss.to_seq),
        "PORT_LOSS_REASON": loss.reason,
        "PORT_EVENT_TIME": loss.time,
    }


def event_line(event: Event) -> str:
    """One stderr line for an event, for hosts without journald."""
    return f"{event.time} {event_message(event)} [seq={event.seq} id={event.id}]"
