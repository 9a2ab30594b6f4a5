"""--since/--until as journalctl takes them: every form, every error, and no crash on any text."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd.ctl_time import BadTimeError, parse_time, relative_seconds

REPO = Path(__file__).resolve().parent.parent
NOW = 1_795_615_200.0  # 2026-11-25T14:00:00Z, a Wednesday
WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Europe/Berlin (UTC+1 in November)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "2026-11-25T14:00:00.000000Z"),
        ("today", "2026-11-24T23:00:00.000000Z"),  # local midnight
        ("yesterday", "2026-11-23T23:00:00.000000Z"),
        ("tomorrow", "2026-11-25T23:00:00.000000Z"),
        ("-1h", "2026-11-25T13:00:00.000000Z"),
        ("-30min", "2026-11-25T13:30:00.000000Z"),
        ("+5m", "2026-11-25T14:05:00.000000Z"),
        ("-1h30min", "2026-11-25T12:30:00.000000Z"),
        ("-1h 30min", "2026-11-25T12:30:00.000000Z"),
        ("-1.5h", "2026-11-25T12:30:00.000000Z"),
        ("-45", "2026-11-25T13:59:15.000000Z"),  # a signed bare number is seconds
        ("2 days ago", "2026-11-23T14:00:00.000000Z"),
        ("5min left", "2026-11-25T14:05:00.000000Z"),
        ("30d", "2026-10-26T14:00:00.000000Z"),  # portwatchctl 0.1's form: ago
        ("2h", "2026-11-25T12:00:00.000000Z"),
        ("1w", "2026-11-18T14:00:00.000000Z"),
        ("-1M", "2026-10-26T03:30:00.000000Z"),  # systemd's month: 30.44 days
        ("2026-11-30", "2026-11-29T23:00:00.000000Z"),
        ("2026-11-30 10:00", "2026-11-30T09:00:00.000000Z"),
        ("2026-11-30 10:00:05", "2026-11-30T09:00:05.000000Z"),
        ("2026-11-30 10:00 UTC", "2026-11-30T10:00:00.000000Z"),
        ("2026-11-30T10:00:00Z", "2026-11-30T10:00:00.000000Z"),
        ("2026-11-30T10:00:00.25+02:00", "2026-11-30T08:00:00.250000Z"),
        ("10:00", "2026-11-25T09:00:00.000000Z"),  # today, local
        ("@1795615200", "2026-11-25T14:00:00.000000Z"),
        ("  -1h  ", "2026-11-25T13:00:00.000000Z"),
    ],
)
def test_forms_journalctl_takes(berlin: None, text: str, expected: str) -> None:
    assert parse_time(text, NOW) == expected


def test_summer_time_midnight_has_its_own_offset(berlin: None) -> None:
    summer_noon = 1_782_381_600.0  # 2026-06-25T10:00:00Z, CEST (UTC+2)
    assert parse_time("today", summer_noon) == "2026-06-24T22:00:00.000000Z"
    assert parse_time("yesterday", NOW) == "2026-11-23T23:00:00.000000Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("soon", "'soon' is neither a duration nor a time: try 'yesterday', '-1h'"),
        ("", "'' is neither a duration nor a time"),
        ("2026", "neither a duration nor a time"),  # a year alone is no time
        ("30", "neither a duration nor a time"),  # unsigned: which unit?
        ("2026-13-01", "neither a duration nor a time"),
        ("-1x", "'-1x' is not a duration: a number and a unit for each part"),
        ("-h", "is not a duration"),
        ("1h ago ago", "is not a duration"),
        ("99999y ago", "'99999y ago' is too far from now (years 1 to 9999)"),
        ("0001-01-01", "too far from now"),
        ("@99999999999999999999", "too far from now"),
        ("now UTC", "neither a duration nor a time"),
    ],
)
def test_bad_times_say_what_would_do(text: str, message: str) -> None:
    with pytest.raises(BadTimeError) as caught:
        parse_time(text, NOW)
    assert message in str(caught.value)


@given(st.text(), st.floats(min_value=0, max_value=4_000_000_000))
def test_any_text_is_a_time_or_a_clean_error(text: str, now: float) -> None:
    try:
        result = parse_time(text, now)
    except BadTimeError as exc:
        assert repr(text) in str(exc)
    else:
        assert WIRE_TIME.fullmatch(result), result


_ALPHABET = "0123456789 .:-+@TZUCsmhdwMyinoagoleftusecµ"


@given(st.text(alphabet=_ALPHABET, max_size=30), st.floats(min_value=0, max_value=4e9))
def test_time_like_text_is_a_time_or_a_clean_error(text: str, now: float) -> None:
    # Plain st.text() rarely hits the grammar; these are near misses of it.
    try:
        result = parse_time(text, now)
    except BadTimeError:
        return
    assert WIRE_TIME.fullmatch(result), result


_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 604800}


@given(
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(sorted(_UNITS)),
    st.sampled_from(["-", "+"]),
)
def test_signed_durations_are_exact(amount: int, unit: str, sign: str) -> None:
    seconds = relative_seconds(f"{sign}{amount}{unit}")
    assert seconds == (1 if sign == "+" else -1) * amount * _UNITS[unit]


def run_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", "/nonexistent", *args],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "soon"], "argument --since: 'soon' is neither a duration nor a time"),
        (["--until", "-1x"], "argument --until: '-1x' is not a duration"),
        (["--since", "today", "--until", "yesterday"], "--since (2"),
        (["--until", "now", "-f"], "--until cannot be used with --follow"),
    ],
)
def test_bad_time_options_exit_2_before_asking_the_daemon(args: list[str], message: str) -> None:
    result = run_ctl("events", *args)
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: portwatchctl")
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "Cannot connect" not in result.stderr
