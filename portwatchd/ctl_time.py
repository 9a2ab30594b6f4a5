"""Points in time as portwatchctl takes them (`--since`, `--until`): journalctl's forms.

Accepted, besides RFC 3339 and ISO 8601 times::

    now  today  yesterday  tomorrow          midnight is local midnight
    -1h  +5m  -1h30min  "1h 30min ago"  "5min left"  2h  30d   (no sign: ago)
    2026-11-30  2026-11-30 10:00  "2026-11-30 10:00:05 UTC"  10:00 (today)
    @1795615200                              seconds since the epoch

A time without a zone is local time, as journalctl reads it. The result is
the wire's one time format, RFC 3339 in UTC with microseconds
(2026-11-25T14:00:00.000000Z): fixed width, so that the daemon may compare
it with stored times as text.

Imported only by the commands that take times; `datetime` and `re` are
imported on first use, not at start-up.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime

# systemd.time(7)'s units; "m" is minutes and "M" months, as there.
_SECONDS_PER_UNIT: dict[str, float] = {
    **dict.fromkeys(("us", "usec", "µs"), 1e-6),
    **dict.fromkeys(("ms", "msec"), 1e-3),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400.0),
    **dict.fromkeys(("M", "month", "months"), 2_629_800.0),  # 30.44 days
    **dict.fromkeys(("y", "year", "years"), 31_557_600.0),  # 365.25 days
}
_DAY_WORDS = {"today": 0, "yesterday": -1, "tomorrow": 1}
_EXAMPLES = (
    "try 'yesterday', '-1h', '30min ago', '2d', '2026-11-30 10:00' or '2026-11-30T10:00:00Z'"
)


class BadTimeError(ValueError):
    """A time argument that could not be read; the message says what would be."""


def parse_time(text: str, now: float) -> str:
    """`text` as RFC 3339 UTC, `now` being the current time (seconds since the epoch).

    Raises BadTimeError, and nothing else, for any text that is not a time.
    """
    from datetime import UTC, datetime

    value = text.strip()
    try:
        moment = _parse(value, now)
        if moment is not None and moment.tzinfo is None:
            moment = moment.astimezone()  # a time without a zone is local time
        utc = None if moment is None else moment.astimezone(UTC)
    except (OverflowError, OSError, ValueError):
        raise BadTimeError(f"{text!r} is too far from now (years 1 to 9999)") from None
    if utc is None:
        if value.startswith(("-", "+")) or value.endswith(("ago", "left")):
            raise BadTimeError(
                f"{text!r} is not a duration: a number and a unit for each part, "
                "like -1h, +5m, -1h30min or '2 days ago' (units: us ms s min h d w M y)"
            )
        raise BadTimeError(f"{text!r} is neither a duration nor a time: {_EXAMPLES}")
    if not datetime(1, 1, 2, tzinfo=UTC) <= utc <= datetime(9999, 12, 30, tzinfo=UTC):
        raise BadTimeError(f"{text!r} is too far from now (years 1 to 9999)")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _parse(value: str, now: float, utc_suffix_allowed: bool = True) -> datetime | None:
    """The moment `value` names (naive = local time), or None."""
    from datetime import UTC, datetime, timedelta
    from datetime import time as time_of_day

    if value == "now":
        return datetime.fromtimestamp(now, UTC)
    if value in _DAY_WORDS:
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight + timedelta(days=_DAY_WORDS[value])
    if value.startswith("@"):
        return _epoch(value[1:])
    offset = relative_seconds(value)
    if offset is not None:
        return datetime.fromtimestamp(now, UTC) + timedelta(seconds=offset)
    if value.endswith(" UTC") and utc_suffix_allowed:
        moment = _parse(value[:-4].rstrip(), now, utc_suffix_allowed=False)
        if moment is None or moment.tzinfo is not None:
            return None
        return moment.replace(tzinfo=UTC)
    if ":" in value and len(value) <= 15:  # "10:00", "10:00:05.123": today at that time
        try:
            clock = time_of_day.fromisoformat(value)
        except ValueError:
            pass  # perhaps a date and time
        else:
            return datetime.combine(datetime.fromtimestamp(now).date(), clock)
    return _calendar_time(value)


def _calendar_time(value: str) -> datetime | None:
    from datetime import datetime

    if not value or not value[0].isascii() or not value[0].isdigit():
        return None  # fromisoformat takes some odd forms; a date starts with its year
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _epoch(digits: str) -> datetime | None:
    from datetime import UTC, datetime

    if not digits.replace(".", "", 1).isdigit() or not digits.isascii():
        return None
    return datetime.fromtimestamp(float(digits), UTC)


def relative_seconds(value: str) -> float | None:
    """Seconds from now that `value` names as a duration, or None.

    "-1h" and "1h ago" are in the past, "+5m" and "5m left" in the future;
    without sign or word, the past ("2h" is two hours ago, portwatchctl's
    own form since 0.1). A bare number is seconds only with a sign.

    >>> relative_seconds("-1h 30min"), relative_seconds("+5m"), relative_seconds("2 days ago")
    (-5400.0, 300.0, -172800.0)
    """
    sign = -1.0
    if value.startswith(("-", "+")):
        sign = 1.0 if value[0] == "+" else -1.0
        span, bare_number_allowed = value[1:], True
    elif value.endswith(" ago") or value.endswith(" left"):
        sign = 1.0 if value.endswith(" left") else -1.0
        span, bare_number_allowed = value.rsplit(" ", 1)[0], False
    else:
        span, bare_number_allowed = value, False
    seconds = timespan_seconds(span, bare_number_allowed)
    return None if seconds is None else sign * seconds


def timespan_seconds(span: str, bare_number_allowed: bool = False) -> float | None:
    """Seconds in "1h 30min", "2d", "1.5h"; a lone bare number is seconds if allowed.

    >>> timespan_seconds("1h30min"), timespan_seconds("1.5 h"), timespan_seconds("h")
    (5400.0, 5400.0, None)
    """
    import re

    parts = re.findall(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Zµ]*)\s*", span, re.ASCII)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != "".join(span.split()):
        return None
    if any(unit == "" for _, unit in parts) and not (bare_number_allowed and len(parts) == 1):
        return None
    if any(unit and unit not in _SECONDS_PER_UNIT for _, unit in parts):
        return None
    return sum(float(number) * _SECONDS_PER_UNIT.get(unit, 1.0) for number, unit in parts)
