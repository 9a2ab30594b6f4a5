"""The burst opens what it says when released, and event lines are found and stamped."""

from __future__ import annotations

import os
import subprocess
import time

from bench.burst import Burst, EventLines

_LINE = (
    '{"event":{"seq":%d,"id":"x","type":"%s","time":"t","detected":"scan",'
    '"down_since":null,"key":"%s","owner":{"cmdline":"sh -c \\"type\\":\\"closed\\""}}}\n'
)


def _listening() -> list[str]:
    out = subprocess.run(["ss", "-Hnlt"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_burst_opens_nothing_until_released_then_every_listener(netns: None) -> None:
    with Burst(300) as burst:
        assert _listening() == []
        burst.go()
        assert len(burst.ports) == len(set(burst.ports)) == 300
        assert len(_listening()) == 300
        assert burst.first_listen <= burst.last_listen <= time.monotonic()
    assert _listening() == []


def test_event_lines_find_wanted_events_across_chunks_and_stamp_them() -> None:
    read_end, write_end = os.pipe()
    lines = EventLines({"large": read_end})
    try:
        first = (_LINE % (1, "opened", "tcp:127.0.0.1:1")).encode()
        os.write(write_end, b'{"priority":"info","message":"ready"}\n' + first[:30])
        os.write(write_end, first[30:] + (_LINE % (2, "closed", "tcp:127.0.0.1:2")).encode())
        before = time.monotonic()
        wanted = {("large", "opened", "tcp:127.0.0.1:1"), ("large", "closed", "tcp:127.0.0.1:2")}
        seen = lines.wait(wanted, timeout=5)
        assert seen.keys() == wanted
        assert all(before <= stamp <= time.monotonic() for stamp in seen.values())
        # The owner's escaped "type":"closed" is not the event's type.
        os.write(write_end, (_LINE % (3, "opened", "tcp:127.0.0.1:3")).encode())
        either = {("large", kind, "tcp:127.0.0.1:3") for kind in ("opened", "closed")}
        assert lines.wait(either, timeout=0.5).keys() == {("large", "opened", "tcp:127.0.0.1:3")}
    finally:
        lines.close()
        os.close(read_end)
        os.close(write_end)
