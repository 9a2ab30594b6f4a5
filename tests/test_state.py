from __future__ import annotations

import contextlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd.model import Endpoint, Event, Owner
from portwatchd.state import (
    FORMAT_VERSION,
    STATE_FILE,
    State,
    StateError,
    decode_state,
    encode_state,
    load_state,
    save_state,
)

SSH = Endpoint(proto="tcp", family="ipv4", address="0.0.0.0", port=22, inode=101, uid=0)
DNS = Endpoint(
    proto="udp", family="ipv6", address="::1", port=53, interface="lo", v6only=True, inode=102
)
SSHD = Owner(
    pid=700,
    pids=(700, 701),
    comm="sshd",
    exe="/usr/sbin/sshd",
    cmdline="sshd: /usr/sbin/sshd -D",
    uid=0,
    user="root",
    unit="ssh.service",
)


def sample_state() -> State:
    return State(
        last_seq=42,
        journaled_seq=41,
        snapshot=((SSH, SSHD), (DNS, Owner())),
        ring=(
            Event(41, "id-41", "opened", "2026-11-25T14:00:00.000000+00:00", SSH, SSHD),
            Event(
                42,
                "id-42",
                "closed",
                "2026-11-25T14:01:00.000000+00:00",
                DNS,
                detected="startup",
                down_since="2026-11-25T13:00:00.000000+00:00",
            ),
        ),
        saved_at="2026-11-25T14:02:00.000000+00:00",
        boot_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    )


def test_encode_decode_round_trip() -> None:
    state = sample_state()
    assert decode_state(encode_state(state)) == state


def test_round_trip_of_an_empty_first_state() -> None:
    state = State(
        last_seq=0, journaled_seq=0, snapshot=[], ring=[], saved_at="2026-11-25T14:00:00Z"
    )
    decoded = decode_state(encode_state(state))
    assert decoded == State(0, 0, (), (), "2026-11-25T14:00:00Z", None)


def test_encoded_state_names_its_format_and_version() -> None:
    document = json.loads(encode_state(sample_state()))
    assert document["format"] == "portwatchd-state"
    assert document["version"] == FORMAT_VERSION == 1


def test_unknown_version_is_refused() -> None:
    document = json.loads(encode_state(sample_state()))
    document["version"] = 2
    with pytest.raises(StateError, match="format version 2 is not the supported 1"):
        decode_state(json.dumps(document).encode())


def test_another_json_file_is_refused() -> None:
    with pytest.raises(StateError, match="not a portwatchd-state file"):
        decode_state(b'{"version": 1}')


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(last_seq=-1), "last_seq must be a non-negative integer"),
        (lambda d: d.update(last_seq=True), "last_seq must be a non-negative integer"),
        (lambda d: d.update(journaled_seq=43), "journaled_seq is beyond last_seq"),
        (lambda d: d.update(last_seq=41, journaled_seq=1), "ring holds a seq beyond last_seq"),
        (lambda d: d["ring"].reverse(), "ring seqs not rising"),
        (lambda d: d["ring"][0].update(type="moved"), "unknown event type"),
        (lambda d: d["ring"][0].update(time="yesterday"), "is not RFC 3339"),
        (lambda d: d["ring"][0].pop("seq"), "malformed entry"),
        (lambda d: d["snapshot"][0]["endpoint"].update(proto="sctp"), "unknown proto"),
        (lambda d: d["snapshot"][0]["endpoint"].update(port="x"), "malformed entry"),
        (lambda d: d["snapshot"][0]["endpoint"].update(port=70000), "out of range"),
        (lambda d: d["snapshot"][0]["owner"].update(comm=5), "owner comm not a string"),
        (lambda d: d.update(snapshot={}), "snapshot must be a list"),
        (lambda d: d.update(saved_at=None), "saved_at must be a string"),
    ],
)
def test_malformed_content_is_a_state_error(change: object, message: str) -> None:
    document = json.loads(encode_state(sample_state()))
    change(document)  # type: ignore[operator]
    with pytest.raises(StateError, match=message):
        decode_state(json.dumps(document).encode())


@given(st.binary())
def test_any_bytes_decode_or_raise_state_error(data: bytes) -> None:
    with contextlib.suppress(StateError):
        decode_state(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_any_json_in_a_state_shaped_file_decodes_or_raises_state_error(junk: object) -> None:
    document = json.loads(encode_state(sample_state()))
    for key in ("snapshot", "ring", "last_seq", "saved_at"):
        broken = dict(document, **{key: junk})
        with contextlib.suppress(StateError):
            decode_state(json.dumps(broken).encode())


# -- the file ----------------------------------------------------------------------


def test_save_then_load(tmp_path: Path) -> None:
    save_state(str(tmp_path), sample_state())
    assert load_state(str(tmp_path)) == (sample_state(), None)


def test_save_creates_a_private_directory_and_file(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lib" / "portwatchd"
    save_state(str(directory), sample_state())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / STATE_FILE).stat().st_mode) == 0o600


def test_save_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    first = sample_state()
    second = State(99, 99, (), (), "2026-11-25T15:00:00Z")
    save_state(str(tmp_path), first)
    save_state(str(tmp_path), second)
    assert os.listdir(tmp_path) == [STATE_FILE]
    assert load_state(str(tmp_path)) == (second, None)


def test_failed_save_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    save_state(str(tmp_path), sample_state())
    # A directory where the file should go makes the rename fail after the
    # temporary file was written.
    blocked = tmp_path / "blocked"
    (blocked / STATE_FILE).mkdir(parents=True)
    with pytest.raises(StateError, match=f"cannot save state to {blocked}/{STATE_FILE}"):
        save_state(str(blocked), sample_state())
    assert os.listdir(blocked) == [STATE_FILE]
    assert load_state(str(tmp_path)) == (sample_state(), None)


def test_save_into_a_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(
        StateError, match=r"cannot save state to .*/file/state\.json: .*/file is not a directory"
    ):
        save_state(str(tmp_path / "file"), sample_state())


def test_missing_state_is_a_first_start(tmp_path: Path) -> None:
    assert load_state(str(tmp_path)) == (None, None)
    assert load_state(str(tmp_path / "never-created")) == (None, None)


def test_corrupt_file_is_moved_aside_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b'{"format": "portwatchd-state", "vers')
    moment = datetime(2026, 11, 25, 14, 30, 5, tzinfo=UTC)
    state, warning = load_state(str(tmp_path), now=lambda: moment)
    assert state is None
    moved = tmp_path / "state.json.corrupt-20261125T143005Z"
    assert moved.read_bytes() == b'{"format": "portwatchd-state", "vers'
    assert not (tmp_path / STATE_FILE).exists()
    assert warning is not None
    assert f"{tmp_path}/state.json is corrupt (not JSON" in warning
    assert f"moved it to {moved}" in warning
    # The next start is a clean first start; the bad file is still there to look at.
    assert load_state(str(tmp_path)) == (None, None)
    assert moved.exists()


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    moment = datetime(2026, 11, 25, 14, 30, 5, tzinfo=UTC)
    for content in (b"one", b"two"):
        (tmp_path / STATE_FILE).write_bytes(content)
        state, warning = load_state(str(tmp_path), now=lambda: moment)
        assert state is None and warning
    assert (tmp_path / "state.json.corrupt-20261125T143005Z").read_bytes() == b"one"
    assert (tmp_path / "state.json.corrupt-20261125T143005Z.2").read_bytes() == b"two"


def test_state_of_an_unknown_version_is_moved_aside(tmp_path: Path) -> None:
    document = json.loads(encode_state(sample_state()))
    document["version"] = 7
    (tmp_path / STATE_FILE).write_text(json.dumps(document))
    state, warning = load_state(str(tmp_path))
    assert state is None
    assert warning is not None and "format version 7" in warning
    assert [name for name in os.listdir(tmp_path) if name.startswith("state.json.corrupt-")]


def test_unreadable_state_is_a_warning_not_an_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()  # reading a directory fails with EISDIR
    state, warning = load_state(str(tmp_path))
    assert state is None
    assert warning is not None and f"cannot read {tmp_path}/{STATE_FILE}" in warning


def test_load_removes_temporary_files_left_by_a_crash(tmp_path: Path) -> None:
    save_state(str(tmp_path), sample_state())
    (tmp_path / ".state.json.abc123.tmp").write_bytes(b"half writ")
    (tmp_path / "unrelated.tmp").write_bytes(b"not ours")
    assert load_state(str(tmp_path)) == (sample_state(), None)
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE, "unrelated.tmp"]


def test_a_ring_seq_below_one_is_corrupt_not_a_crash_later() -> None:
    document = json.loads(encode_state(sample_state()))
    assert document["ring"], "the sample needs a ring"
    document["ring"][0]["seq"] = 0  # one flipped bit: the ring would refuse it at start
    with pytest.raises(StateError, match="below 1"):
        decode_state(json.dumps(document).encode())
