"""The one-time import of a 0.1 state.json into events.db.

0.1 kept everything in `state.json` (portwatchd/state.py reads it): the
snapshot becomes the saved sockets, last_seq the seq watermark, the ring
the first events. Then the file is renamed state.json.migrated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime

from portwatchd.logstore import Batch
from portwatchd.model import rfc3339
from portwatchd.state import STATE_FILE, State, load_state

MIGRATED_SUFFIX = ".migrated"


def import_state_json(
    state_dir: str, *, empty: bool, done: bool, write: Callable[[Batch], None]
) -> list[str]:
    """Import a 0.1 state.json into an empty store with `write`, then rename it.

    The snapshot becomes the saved sockets, last_seq the seq watermark, the
    ring the first events. `done` (the store says it imported one before,
    and the rename was lost to a crash) and a store that already holds a
    history only rename it. The warnings to log.
    """
    state, alive, warnings = read_state_json(state_dir)
    if state is None:
        return warnings
    if done:
        note = "already imported"
    elif not empty:
        note = "not imported: events.db already holds a history"
    else:
        write(
            Batch(
                events=state.ring,
                sockets={(e.key, e.inode): (e, o) for e, o in state.snapshot},
                replace_sockets=True,
                last_seq=state.last_seq,
                reserved_seq=state.last_seq,
                journaled_seq=state.journaled_seq,
                last_alive=alive,
            )
        )
        note = f"imported {len(state.ring)} events and {len(state.snapshot)} sockets"
    target = retire_state_json(state_dir)
    return [*warnings, f"0.1 state {STATE_FILE}: {note}; renamed it {target}"]


def read_state_json(state_dir: str) -> tuple[State | None, str | None, list[str]]:
    """A 0.1 state.json waiting to be imported: (state, last alive, warnings).

    A corrupt one is moved aside by state.load_state (with a warning); none
    at all is (None, None, []).
    """
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        return None, None, []
    try:
        # 0.1's heartbeat touched the file: its mtime is when that run was last alive.
        alive: str | None = rfc3339(datetime.fromtimestamp(os.stat(path).st_mtime, UTC))
    except OSError:
        alive = None
    state, warning = load_state(state_dir)
    warnings = [warning] if warning else []
    if state is not None and alive is None:
        alive = state.saved_at
    return state, alive, warnings


def retire_state_json(state_dir: str) -> str:
    """Rename state.json once its content is in events.db; the new name."""
    path = os.path.join(state_dir, STATE_FILE)
    target = path + MIGRATED_SUFFIX
    os.replace(path, target)
    return target
