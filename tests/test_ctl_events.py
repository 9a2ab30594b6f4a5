"""`portwatchctl events` against a stand-in daemon on a real Unix socket: pages, gaps, losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portwatchd import ctl, ctl_events
from tests.fake_daemon import FakeDaemon, History, event_time

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def daemon() -> Iterator[Callable[..., FakeDaemon]]:
    started: list[FakeDaemon] = []
    # Short: the 108-byte limit of Unix socket paths bites in deep temp dirs.
    directory = tempfile.mkdtemp(prefix="pwctl-", dir="/tmp")

    def start(**history: Any) -> FakeDaemon:
        fake = FakeDaemon(os.path.join(directory, "d.sock"), History(**history))
        started.append(fake.start())
        return fake

    yield start
    for fake in started:
        fake.stop()
    os.rmdir(directory)


def run(capsys: pytest.CaptureFixture[str], fake: FakeDaemon, *args: str) -> tuple[int, str, str]:
    code = ctl.main(["--socket", fake.path, "events", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def seqs_of(out: str) -> list[int]:
    return [json.loads(line)["seq"] for line in out.splitlines()]


def pages_asked(fake: FakeDaemon) -> list[tuple[int | None, int | None]]:
    return [(r.get("after_seq"), r.get("limit")) for r in fake.requests if r["req"] == "events"]


def test_whole_history_is_read_in_pages_and_printed_once(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=2500)
    code, out, err = run(capsys, fake, "--json")
    assert (code, err) == (0, "")
    assert seqs_of(out) == list(range(1, 2501))
    assert pages_asked(fake) == [(0, 1000), (1000, 1000), (2000, 1000)]


def test_filters_and_times_go_with_every_page(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=5000)
    since, until = event_time(1001), event_time(4000)
    code, out, _ = run(capsys, fake, "--json", "--since", since, "--until", until, "--proto", "udp")
    assert code == 0
    assert seqs_of(out) == [seq for seq in range(1001, 4001) if seq % 3 == 0]
    requests = [r for r in fake.requests if r["req"] == "events"]
    assert len(requests) == 2  # 1000 matches, then the last 0
    assert all(
        r["since"] == since and r["until"] == until and r["proto"] == "udp" for r in requests
    )


def test_a_relative_time_may_follow_its_option_as_in_journalctl(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=3)
    code, out, err = run(capsys, fake, "--json", "--since", "-36500d", "--until", "+1d")
    assert (code, err) == (0, "")
    assert seqs_of(out) == [1, 2, 3]
    asked = fake.requests[0]
    assert asked["since"] < "2026-11-25T14:00:01" < asked["until"]


def test_a_daemon_that_caps_its_pages_still_gives_everything(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=1000, max_limit=300)
    code, out, _ = run(capsys, fake, "--json")
    assert code == 0
    assert seqs_of(out) == list(range(1, 1001))


def test_after_seq_and_limit_page_forward(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=5000)
    code, out, _ = run(capsys, fake, "--json", "--after-seq", "5", "--limit", "2500")
    assert code == 0
    assert seqs_of(out) == list(range(6, 2506))
    assert pages_asked(fake) == [(5, 1000), (1005, 1000), (2005, 500)]


def test_newest_few_in_one_request(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=5000)
    code, out, _ = run(capsys, fake, "--json", "--limit", "3")
    assert code == 0
    assert seqs_of(out) == [4998, 4999, 5000]
    assert pages_asked(fake) == [(None, 3)]


def test_newest_many_in_two_passes_of_pages(
    daemon: Callable[..., FakeDaemon],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ctl_events, "NEWEST_IN_ONE_REQUEST", 100)
    fake = daemon(last=5000, oldest=11, losses=[(2000, 2099, "the store was full")])
    code, out, err = run(capsys, fake, "--json", "--limit", "2000", "--type", "opened")
    assert code == 0
    opened = [seq for seq in range(11, 5001) if seq % 2 and not 2000 <= seq <= 2099]
    assert seqs_of(out) == opened[-2000:]
    assert err == (
        "portwatchctl: events 2000..2099 missing: the store was full "
        "(noticed 2026-11-25 14:33:20 UTC)\n"
    )
    assert max(limit or 0 for _, limit in pages_asked(fake)) == 1000


def test_gap_is_told_only_for_an_asked_after_seq(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=300, oldest=101)
    code, out, err = run(capsys, fake, "--json", "--after-seq", "40")
    assert code == 0 and seqs_of(out)[0] == 101
    assert (
        err == "portwatchctl: events 41..100 missing: they had already left portwatchd's history\n"
    )
    code, out, err = run(capsys, fake, "--json")
    assert (code, err) == (0, "")  # from the start: old events pruned is not news
    assert seqs_of(out)[0] == 101


def test_loss_is_told_in_its_place_among_the_rows(daemon: Callable[..., FakeDaemon]) -> None:
    fake = daemon(last=12, losses=[(5, 7, "portwatchd stopped before storing them")])
    result = subprocess.run(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", fake.path, "events"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "TYPE"]
    assert [line.split()[0] for line in lines[1:5]] == ["1", "2", "3", "4"]
    assert lines[5] == (
        "portwatchctl: events 5..7 missing: portwatchd stopped before storing them "
        "(noticed 2026-11-25 14:00:05 UTC)"
    )
    assert [line.split()[0] for line in lines[6:]] == ["8", "9", "10", "11", "12"]


def test_table_has_one_legend_across_pages_and_none_with_no_legend(
    daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = daemon(last=1500)
    code, out, _ = run(capsys, fake)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1501
    assert lines[0].split() == [
        "SEQ",
        "TIME",
        "TYPE",
        "PROTO",
        "ADDRESS",
        "PORT",
        "WHERE",
        "PID",
        "PROCESS",
        "UNIT",
    ]
    assert lines[1].split()[:6] == ["1", "2026-11-25", "14:00:01", "UTC", "opened", "tcp"]
    column = lines[0].index("TYPE")
    assert all(line[column:].split()[0] in ("opened", "closed") for line in lines[1:])
    code, out, err = run(capsys, fake, "--no-legend", "--limit", "2")
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == ["1499", "1500"]
    code, out, err = run(capsys, fake, "--no-legend", "--port", "9")
    assert (code, out, err) == (0, "", "")  # nothing, and no "No events." for scripts


def test_local_times_carry_their_zone(
    daemon: Callable[..., FakeDaemon],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    fake = daemon(last=1)
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        code, out, _ = run(capsys, fake, "--local", "--no-legend")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert code == 0
    assert out.split()[1:4] == ["2026-11-25", "15:00:01", "CET"]


def _run_with_peak_memory(path: str, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """portwatchctl in a child that reports its peak RSS (KiB) on its last stderr line.

    VmHWM, not getrusage(): Linux carries ru_maxrss across exec(), so a
    child would report the larger size of the test process that forked it.
    """
    code = (
        "import sys; from portwatchd.ctl import main; rc = main(sys.argv[1:]); "
        "sys.stdout.flush(); "
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
        "sys.stderr.write(f'PEAK {peak.split()[1]}\\n'); "
        "sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--socket", path, "events", *args],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=300,
    )  # fmt: skip
    peak = int(result.stderr.splitlines()[-1].split()[1])
    return result, peak


def test_a_long_history_prints_in_bounded_memory(daemon: Callable[..., FakeDaemon]) -> None:
    # 100,000 events in one answer: 30 MB of JSON and a peak RSS over 250 MB
    # (measured). In pages of 1000 the client stays near its own 17 MB.
    fake = daemon(last=100_000, losses=[(50_000, 50_009, "the store was full")])
    result, peak_kib = _run_with_peak_memory(fake.path, "--json", "--since", "30d")
    assert result.returncode == 0, result.stderr[-500:]
    count, previous = 0, 0
    for line in result.stdout.splitlines():
        seq = json.loads(line)["seq"]
        assert seq > previous
        previous, count = seq, count + 1
    assert count == 100_000 - 10
    assert "events 50000..50009 missing: the store was full" in result.stderr
    assert peak_kib < 40 * 1024, f"peak RSS {peak_kib} KiB"


def test_follow_tells_a_loss_in_the_stream(daemon: Callable[..., FakeDaemon]) -> None:
    fake = daemon(last=3)
    fake.follow_items = [
        {"loss": {"from_seq": 4, "to_seq": 9, "time": event_time(4), "reason": "journal full"}},
        {"event": {**json.loads(json.dumps({"seq": 10, "type": "opened"}))}},
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", fake.path, "events", "-f", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stderr is not None
        assert [json.loads(process.stdout.readline())["seq"] for _ in range(4)] == [1, 2, 3, 10]
        assert process.stderr.readline() == (
            "portwatchctl: events 4..9 missing: journal full (noticed 2026-11-25 14:00:04 UTC)\n"
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
