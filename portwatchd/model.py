"""The values every part of portwatchd speaks in: endpoints, owners, events.

Pure data: nothing here touches the operating system, so the client
(`portwatchctl`) and the core can both import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from portwatchd.text import escape_text

Proto = Literal["tcp", "udp"]
Family = Literal["ipv4", "ipv6"]
# "restarted": a key opened again soon after it closed, by the same program
# or unit; "owner_changed": the same socket, other holders or programs;
# "transient": a listener that opened and closed between two looks.
EventType = Literal["opened", "closed", "restarted", "owner_changed", "transient"]
# "scan": seen change between two scans of a running daemon.
# "startup": the change happened while the daemon was not running; it was
# found by diffing the first scan against the snapshot persisted at shutdown.
# "destroy": the kernel's sock_diag destroy message for the socket.
# "exec": a look a new process's exec triggered.
Detection = Literal["scan", "startup", "destroy", "exec"]

# syslog(3) priorities, as the journal's PRIORITY= and sd-daemon(3) "<N>" take them.
PRIORITY_ERR = 3
PRIORITY_WARNING = 4
PRIORITY_NOTICE = 5
PRIORITY_INFO = 6

PROTOS: tuple[Proto, ...] = ("tcp", "udp")
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
EVENT_TYPES: tuple[EventType, ...] = ("opened", "closed", "restarted", "owner_changed", "transient")
DETECTIONS: tuple[Detection, ...] = ("scan", "startup", "destroy", "exec")


def utc_now() -> datetime:
    """The wall clock, aware and in UTC: the default of every injected clock."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """The one time format of events and logs: UTC, RFC 3339 with microseconds.

    >>> rfc3339(datetime(2026, 11, 25, 14, 20, 31, 123456, tzinfo=UTC))
    '2026-11-25T14:20:31.123456Z'

    Fixed width, so that two of them compare as text in time order (the
    store's `since` queries rely on it).
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_key(proto: str, address: str, port: int, interface: str = "", netns: int = 0) -> str:
    """The one canonical name of a listening endpoint.

    It keeps the original monitor's "proto:address:port" shape; IPv6 goes in
    brackets so the port stays unambiguous, and a socket bound to a device
    (SO_BINDTODEVICE) carries the device after a "%", as in a scoped address:

    >>> endpoint_key("tcp", "0.0.0.0", 22)
    'tcp:0.0.0.0:22'
    >>> endpoint_key("udp", "::ffff:127.0.0.1", 53)
    'udp:[::ffff:127.0.0.1]:53'
    >>> endpoint_key("udp", "127.0.0.53", 53, "lo")
    'udp:127.0.0.53%lo:53'
    >>> endpoint_key("tcp", "fe80::1", 22, "eth0")
    'tcp:[fe80::1%eth0]:22'

    A socket in another network namespace than the host's (a container)
    has the namespace's inode in front, so that the same address and port
    in two namespaces are two keys; the host's keys keep the short form:

    >>> endpoint_key("tcp", "0.0.0.0", 80, netns=4026532281)
    'net:4026532281/tcp:0.0.0.0:80'
    """
    host = f"{address}%{interface}" if interface else address
    if ":" in address:
        host = f"[{host}]"
    if netns:
        return f"net:{netns}/{proto}:{host}:{port}"
    return f"{proto}:{host}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening socket: a TCP socket in LISTEN, or a bound, unconnected UDP socket."""

    proto: Proto
    family: Family
    address: str  # inet_ntop form: "0.0.0.0", "::", "::ffff:127.0.0.1"
    port: int
    interface: str = ""  # SO_BINDTODEVICE name; "" when unbound or unknown
    v6only: bool | None = None  # None where the source cannot tell (/proc)
    inode: int = 0
    uid: int = -1
    # The network namespace's inode; 0 for the host's (portwatchd's own).
    netns: int = 0
    # sock_diag's cookie, which names the socket in destroy messages; 0
    # where the source cannot tell (/proc).
    cookie: int = 0

    @property
    def key(self) -> str:
        return endpoint_key(self.proto, self.address, self.port, self.interface, self.netns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "proto": self.proto,
            "family": self.family,
            "address": self.address,
            "port": self.port,
            "interface": self.interface,
            "v6only": self.v6only,
            "inode": self.inode,
            "uid": self.uid,
            "netns": self.netns,
            "cookie": self.cookie,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        return cls(
            proto=data["proto"],
            family=data["family"],
            address=data["address"],
            port=int(data["port"]),
            interface=data.get("interface", ""),
            v6only=data.get("v6only"),
            inode=int(data.get("inode", 0)),
            uid=int(data.get("uid", -1)),
            netns=int(data.get("netns", 0)),
            cookie=int(data.get("cookie", 0)),
        )


@dataclass(frozen=True, slots=True)
class Owner:
    """The process holding a socket, as far as /proc let us see it.

    Several processes can hold one socket (a server that forks after
    listen()); `pids` lists them all and `pid` names the main one, the
    oldest. Every field is None when it could not be seen: never a guess.
    """

    pid: int | None = None
    pids: tuple[int, ...] = ()
    comm: str | None = None
    exe: str | None = None
    cmdline: str | None = None
    uid: int | None = None
    user: str | None = None
    unit: str | None = None
    cgroup: str | None = None  # "/system.slice/docker-<id>.scope": names a container

    @property
    def known(self) -> bool:
        return self.pid is not None

    def describe(self) -> str:
        """ "nginx[1234] (nginx.service)", or "unknown process".

        Text for people: the process and unit names are escaped (escape_text).
        """
        if self.pid is None:
            return "unknown process"
        text = f"{escape_text(self.comm or '?')}[{self.pid}]"
        if self.unit:
            text += f" ({escape_text(self.unit)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pids": list(self.pids),
            "comm": self.comm,
            "exe": self.exe,
            "cmdline": self.cmdline,
            "uid": self.uid,
            "user": self.user,
            "unit": self.unit,
            "cgroup": self.cgroup,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Owner:
        return cls(
            pid=data.get("pid"),
            pids=tuple(data.get("pids") or ()),
            comm=data.get("comm"),
            exe=data.get("exe"),
            cmdline=data.get("cmdline"),
            uid=data.get("uid"),
            user=data.get("user"),
            unit=data.get("unit"),
            cgroup=data.get("cgroup"),
        )


UNKNOWN_OWNER = Owner()

Exposure = Literal["loopback", "link-local", "private", "public"]
Scope = Literal["host", "container"]
EXPOSURES: tuple[Exposure, ...] = ("loopback", "link-local", "private", "public")


@dataclass(frozen=True, slots=True)
class Place:
    """Where a listener lives and who can reach it.

    `netns_inode` is the network namespace's inode, the host's included
    (an Endpoint's `netns` is 0 for the host's, so that its keys stay
    short). `exposure` is the widest class of address the listener answers
    on; None where it was not worked out.
    """

    netns_inode: int = 0
    netns_name: str | None = None
    scope: Scope = "host"
    container: str | None = None
    container_runtime: str | None = None
    exposure: Exposure | None = None

    def container_label(self) -> str:
        """The container's name when known, else its id shortened as docker shows it."""
        return self.netns_name or (self.container or "")[:12] or "?"

    def to_dict(self) -> dict[str, Any]:
        return {
            "netns_inode": self.netns_inode,
            "netns_name": self.netns_name,
            "scope": self.scope,
            "container": self.container,
            "container_runtime": self.container_runtime,
            "exposure": self.exposure,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Place:
        return cls(
            netns_inode=int(data.get("netns_inode") or 0),
            netns_name=data.get("netns_name"),
            scope=data.get("scope") or "host",
            container=data.get("container"),
            container_runtime=data.get("container_runtime"),
            exposure=data.get("exposure"),
        )


HOST_PLACE = Place()


@dataclass(frozen=True, slots=True)
class Event:
    """A listening port that opened or closed.

    `seq` orders events on one host and is never reused, across restarts
    too. `id` is a random UUID, unique across hosts, so that consumers of
    forwarded journals (delivered at least once) can drop duplicates.
    `time` is UTC, RFC 3339 with microseconds.
    """

    seq: int
    id: str
    type: EventType
    time: str
    endpoint: Endpoint
    owner: Owner = UNKNOWN_OWNER
    detected: Detection = "scan"
    # For startup detections: the window in which the change happened.
    down_since: str | None = None
    # restarted: the owner before the close; owner_changed: the old owner.
    previous_owner: Owner | None = None
    # restarted: seconds between the close and the reopening, as seen.
    down_seconds: float | None = None
    # transient: the listener lived at most this long (seconds since the look before).
    lifetime_max_seconds: float | None = None
    place: Place = HOST_PLACE
    # Whether an [[expect]] rule accepts it; None when no rule exists.
    expected: bool | None = None
    # Why, when it is not the socket's own doing: "its network namespace is gone".
    reason: str | None = None

    @property
    def key(self) -> str:
        return self.endpoint.key

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "seq": self.seq,
            "id": self.id,
            "type": self.type,
            "time": self.time,
            "detected": self.detected,
            "down_since": self.down_since,
        }
        data.update(self.endpoint.to_dict())
        data.update(self.place.to_dict())
        data["expected"] = self.expected
        data["owner"] = self.owner.to_dict()
        if self.previous_owner is not None:
            data["previous_owner"] = self.previous_owner.to_dict()
        if self.down_seconds is not None:
            data["down_seconds"] = self.down_seconds
        if self.lifetime_max_seconds is not None:
            data["lifetime_max_seconds"] = self.lifetime_max_seconds
        if self.reason is not None:
            data["reason"] = self.reason
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            seq=int(data["seq"]),
            id=str(data["id"]),
            type=data["type"],
            time=str(data["time"]),
            endpoint=Endpoint.from_dict(data),
            owner=Owner.from_dict(data.get("owner") or {}),
            detected=data.get("detected", "scan"),
            down_since=data.get("down_since"),
            previous_owner=(
                Owner.from_dict(data["previous_owner"]) if data.get("previous_owner") else None
            ),
            down_seconds=data.get("down_seconds"),
            lifetime_max_seconds=data.get("lifetime_max_seconds"),
            place=Place.from_dict(data),
            expected=data.get("expected"),
            reason=data.get("reason"),
        )


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event before the log gives it its seq and id."""

    type: EventType
    endpoint: Endpoint
    owner: Owner
    time: str  # rfc3339()
    detected: Detection = "scan"
    down_since: str | None = None
    previous_owner: Owner | None = None
    down_seconds: float | None = None
    lifetime_max_seconds: float | None = None
    place: Place = HOST_PLACE
    expected: bool | None = None
    reason: str | None = None

    def minted(self, seq: int, event_id: str) -> Event:
        """The event this draft becomes once the log gives it its seq and id:
        every field of the draft, carried over by name."""
        return Event(seq, event_id, **{name: getattr(self, name) for name in _DRAFT_FIELDS})


_DRAFT_FIELDS = tuple(item.name for item in fields(EventDraft))


@dataclass(frozen=True, slots=True)
class Loss:
    """Seqs handed out whose events the log does not hold: announced, never hidden.

    `reason` is one line a person reads, e.g. "portwatchd stopped before
    storing them".
    """

    from_seq: int
    to_seq: int
    time: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "time": self.time,
            "reason": self.reason,
        }
