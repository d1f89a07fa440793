"""Observation times as integer microseconds since 1970-01-01T00:00:00 UTC.

FITS headers spell dates many ways: ``2014-02-03T02:08:47.34``, ``2010-12-06T18:56:41.10Z``,
``2005/01/11`` plus a separate ``TIME-OBS``, ``2023/12/01 00:06:07.373``. ``parse`` accepts all
of these and rejects anything else with a message that quotes the value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE_RE = re.compile(r"^\s*(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\s*$")
_DATETIME_RE = re.compile(
    r"^\s*(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})[T _]"
    r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?\s*Z?\s*$"
)
_TIME_RE = re.compile(r"^\s*(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?\s*Z?\s*$")


def _fraction_us(frac: str | None) -> int:
    if not frac:
        return 0
    # Round to the microsecond rather than truncate: '.3456789' → 345679 µs.
    return round(int(frac) * 10 ** (6 - len(frac))) if len(frac) > 6 else int(frac.ljust(6, "0"))


def from_parts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> int:
    # Leap seconds (ss = 60) occur in real headers; count them as the next second.
    extra = 0
    if s == 60:
        s, extra = 59, 1
    dt = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds + extra) * 1_000_000 + us


def parse(value: str) -> int:
    """A full date and time (ISO-like, '-' or '/' separated, optional Z) → microseconds."""
    m = _DATETIME_RE.match(value)
    if not m:
        raise ValueError(f"not a date and time: {value!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        return from_parts(y, mo, d, h, mi, s, 0) + _fraction_us(m.group(7))
    except ValueError as e:
        raise ValueError(f"invalid date and time {value!r}: {e}") from None


def parse_date_and_time(date: str, time: str) -> int:
    """A date-only value plus a separate time-of-day value → microseconds."""
    dm = _DATE_RE.match(date)
    tm = _TIME_RE.match(time)
    if not dm:
        raise ValueError(f"not a date: {date!r}")
    if not tm:
        raise ValueError(f"not a time of day: {time!r}")
    y, mo, d = (int(g) for g in dm.groups())
    h, mi, s = (int(g) for g in tm.groups()[:3])
    try:
        return from_parts(y, mo, d, h, mi, s, 0) + _fraction_us(tm.group(4))
    except ValueError as e:
        raise ValueError(f"invalid date {date!r} {time!r}: {e}") from None


def is_date_only(value: str) -> bool:
    return _DATE_RE.match(value) is not None


def to_datetime(time_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_us)


def from_datetime(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(time_us: int) -> str:
    """``2014-02-03T02:08:47.340000Z``."""
    return to_datetime(time_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
