"""The state kept across restarts, so that nothing is lost or repeated.

What is saved: the last seq handed out (seqs are never reused), how far the
journal is known to have the events, the last snapshot of listening sockets
with their owners (diffing the first scan after a start against it finds
what opened or closed while the daemon was down), and the event ring.

One JSON file, `state.json`, in the state directory. It is written the way
a crash cannot tear: a temporary file in the same directory, fsync, rename
over the old file, fsync the directory. A file that cannot be decoded is
moved aside, never deleted, and the daemon starts without it: a warning,
never a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from portwatchd.model import (
    EVENT_TYPES,
    FAMILIES,
    PROTOS,
    Endpoint,
    Event,
    Owner,
)

STATE_FILE = "state.json"
FORMAT_NAME = "portwatchd-state"
FORMAT_VERSION = 1
# mkstemp names: ".state.json.<random>.tmp"; left behind only by a crash
# between create and rename, and removed by the next load.
_TEMP_PREFIX = f".{STATE_FILE}."
_TEMP_SUFFIX = ".tmp"


class StateError(Exception):
    """State that cannot be decoded or saved; the message says which and why."""


@dataclass(frozen=True, slots=True)
class State:
    """Everything persisted. Sequences may be lists or tuples; decode gives tuples."""

    last_seq: int
    journaled_seq: int  # events up to this seq are known to be in the journal
    snapshot: Sequence[tuple[Endpoint, Owner]]
    ring: Sequence[Event]
    saved_at: str  # RFC 3339, UTC
    boot_id: str | None = None  # /proc/sys/kernel/random/boot_id at save time


def encode_state(state: State) -> bytes:
    """The state as UTF-8 JSON, with the format name and version first."""
    document: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "saved_at": state.saved_at,
        "boot_id": state.boot_id,
        "last_seq": state.last_seq,
        "journaled_seq": state.journaled_seq,
        "snapshot": [
            {"endpoint": endpoint.to_dict(), "owner": owner.to_dict()}
            for endpoint, owner in state.snapshot
        ],
        "ring": [event.to_dict() for event in state.ring],
    }
    return (json.dumps(document, separators=(",", ":")) + "\n").encode("utf-8")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StateError(message)


def _int_field(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        f"{name} must be a non-negative integer, got {value!r}",
    )
    assert isinstance(value, int)
    return value


def _checked_endpoint(data: Any, where: str) -> Endpoint:
    _require(isinstance(data, dict), f"{where}: not an object")
    endpoint = Endpoint.from_dict(data)
    _require(endpoint.proto in PROTOS, f"{where}: unknown proto {endpoint.proto!r}")
    _require(endpoint.family in FAMILIES, f"{where}: unknown family {endpoint.family!r}")
    _require(
        isinstance(endpoint.address, str) and isinstance(endpoint.interface, str),
        f"{where}: address and interface must be strings",
    )
    _require(0 <= endpoint.port <= 65535, f"{where}: port {endpoint.port} out of range")
    _require(
        endpoint.v6only is None or isinstance(endpoint.v6only, bool),
        f"{where}: v6only not a boolean",
    )
    return endpoint


def _checked_owner(data: Any, where: str) -> Owner:
    _require(isinstance(data, dict), f"{where}: owner is not an object")
    owner = Owner.from_dict(data)
    for name in ("comm", "exe", "cmdline", "user", "unit"):
        value = getattr(owner, name)
        _require(value is None or isinstance(value, str), f"{where}: owner {name} not a string")
    for name in ("pid", "uid"):
        value = getattr(owner, name)
        _require(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"{where}: owner {name} not an integer",
        )
    _require(
        all(isinstance(pid, int) and not isinstance(pid, bool) for pid in owner.pids),
        f"{where}: owner pids not integers",
    )
    return owner


def _checked_snapshot_entry(data: Any, where: str) -> tuple[Endpoint, Owner]:
    _require(isinstance(data, dict), f"{where}: not an object")
    return _checked_endpoint(data.get("endpoint"), where), _checked_owner(
        data.get("owner") or {}, where
    )


def _checked_event(data: Any, where: str) -> Event:
    _require(isinstance(data, dict), f"{where}: not an object")
    event = Event.from_dict(data)
    _checked_endpoint(data, where)
    _checked_owner(data.get("owner") or {}, where)
    _require(event.type in EVENT_TYPES, f"{where}: unknown event type {event.type!r}")
    _require(event.detected in ("scan", "startup"), f"{where}: unknown detection")
    _require(
        event.down_since is None or isinstance(event.down_since, str),
        f"{where}: down_since not a string",
    )
    try:
        datetime.fromisoformat(event.time)
    except ValueError:
        raise StateError(f"{where}: time {event.time!r} is not RFC 3339") from None
    return event


def decode_state(data: bytes) -> State:
    """Bytes written by encode_state -> State; StateError saying what is wrong otherwise."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise StateError(f"not JSON: {error}") from None
    _require(isinstance(document, dict), "not a JSON object")
    _require(document.get("format") == FORMAT_NAME, f"not a {FORMAT_NAME} file")
    version = document.get("version")
    _require(
        version == FORMAT_VERSION,
        f"format version {version!r} is not the supported {FORMAT_VERSION}"
        " (written by another portwatchd version?)",
    )
    last_seq = _int_field(document, "last_seq")
    journaled_seq = _int_field(document, "journaled_seq")
    _require(journaled_seq <= last_seq, "journaled_seq is beyond last_seq")
    saved_at = document.get("saved_at")
    _require(isinstance(saved_at, str), "saved_at must be a string")
    boot_id = document.get("boot_id")
    _require(boot_id is None or isinstance(boot_id, str), "boot_id must be a string or null")
    snapshot_data = document.get("snapshot")
    ring_data = document.get("ring")
    _require(isinstance(snapshot_data, list), "snapshot must be a list")
    _require(isinstance(ring_data, list), "ring must be a list")
    try:
        snapshot = tuple(
            _checked_snapshot_entry(item, f"snapshot[{index}]")
            for index, item in enumerate(snapshot_data)
        )
        ring = tuple(_checked_event(item, f"ring[{index}]") for index, item in enumerate(ring_data))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StateError(f"malformed entry: {error!r}") from None
    seqs = [event.seq for event in ring]
    _require(all(a < b for a, b in itertools.pairwise(seqs)), "ring seqs not rising")
    _require(not seqs or seqs[0] >= 1, "ring holds a seq below 1")
    _require(not seqs or seqs[-1] <= last_seq, "ring holds a seq beyond last_seq")
    assert isinstance(saved_at, str)
    return State(
        last_seq=last_seq,
        journaled_seq=journaled_seq,
        snapshot=snapshot,
        ring=ring,
        saved_at=saved_at,
        boot_id=boot_id if isinstance(boot_id, str) else None,
    )


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_state(directory: str, state: State) -> None:
    """Write state.json atomically (mode 0600), creating `directory` (0700) if needed.

    Raises StateError naming the path and the reason when it cannot.
    """
    path = os.path.join(directory, STATE_FILE)
    data = encode_state(state)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # mkstemp creates the file 0600, so the state is never readable by others.
        descriptor, temp_path = tempfile.mkstemp(
            prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=directory
        )
    except FileExistsError:
        # makedirs(exist_ok=True) still fails when the name is taken by a file.
        raise StateError(f"cannot save state to {path}: {directory} is not a directory") from None
    except OSError as error:
        raise StateError(f"cannot save state to {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
        _fsync_directory(directory)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise StateError(f"cannot save state to {path}: {error.strerror or error}") from None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _remove_stale_temp_files(directory: str) -> None:
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def _move_aside(path: str, now: datetime) -> str:
    """Rename a bad state file out of the way; returns the new name."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = f"{path}.corrupt-{stamp}"
    counter = 1
    while os.path.lexists(target):
        counter += 1
        target = f"{path}.corrupt-{stamp}.{counter}"
    os.rename(path, target)
    return target


def load_state(
    directory: str, now: Callable[[], datetime] = _utc_now
) -> tuple[State | None, str | None]:
    """The saved state and a warning for the log; never raises for a bad file.

    - no state file: (None, None), a first start;
    - a good file: (state, None);
    - a file that cannot be decoded: it is renamed to
      state.json.corrupt-<UTC time> for a person to look at, and
      (None, warning) is returned;
    - a file that cannot be read (permissions, I/O error): (None, warning).
    """
    path = os.path.join(directory, STATE_FILE)
    _remove_stale_temp_files(directory)
    consequence = (
        "starting without saved state: changes made while portwatchd was down will not be reported"
    )
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, f"cannot read {path}: {error.strerror or error}; {consequence}"
    try:
        return decode_state(data), None
    except StateError as error:
        reason = str(error)
    try:
        moved_to = _move_aside(path, now())
    except OSError as error:
        return None, (
            f"{path} is corrupt ({reason}) and could not be moved aside"
            f" ({error.strerror or error}); {consequence}"
        )
    return None, f"{path} is corrupt ({reason}); moved it to {moved_to}; {consequence}"
