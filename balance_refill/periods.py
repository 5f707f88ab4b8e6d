"""Pure date maths for refill periods: no I/O, no clock, table- and property-tested.

Two kinds of period exist:

* `Interval`: rolling, measured from the last refill. Fixed lengths (seconds to weeks)
  or calendar months, clamped at month end (Jan 31 + 1 month = Feb 28 or 29, same time
  of day, in UTC).
* `Calendar`: one refill per calendar day, ISO week (starting Monday) or month in an
  IANA time zone. A refill is due once `lastRefill` falls before the start of the
  current period.

Every datetime here is timezone-aware UTC with millisecond precision (what MongoDB stores).
"""

from __future__ import annotations

import calendar as _calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bson.tz_util import utc as _BSON_UTC

CalendarUnit = Literal["day", "week", "month"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_INTERVAL_RE = re.compile(r"^\s*(\d{1,13})\s*(mo|ms|s|m|h|d|w)\s*$")
_MS = timedelta(milliseconds=1)
MAX_MONTHS = 1200
MAX_DELTA = timedelta(days=366 * 100)


def as_utc(value: datetime) -> datetime:
    """Aware UTC with millisecond precision; naive values (from a non tz-aware client) are UTC."""
    tz = value.tzinfo
    if (tz is UTC or tz is _BSON_UTC) and not value.microsecond % 1000:
        return value  # what the driver returns (the common case): skip the conversions
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Interval:
    """A rolling period: either whole calendar `months` or a fixed `delta`."""

    months: int = 0
    delta: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if (self.months > 0) == (self.delta > timedelta(0)):
            raise ValueError(
                "an interval is either a positive number of months or a positive duration"
            )
        if self.months > MAX_MONTHS or self.delta > MAX_DELTA:
            raise ValueError("an interval must be at most 100 years")
        if self.delta and self.delta % _MS:
            raise ValueError("an interval must be a whole number of milliseconds")

    def __str__(self) -> str:
        if self.months:
            return f"{self.months}mo"
        seconds = int(self.delta.total_seconds())
        if self.delta != timedelta(seconds=seconds):  # whole milliseconds (validated)
            return f"{self.delta // _MS}ms"
        for unit in ("w", "d", "h", "m"):
            if seconds % _UNIT_SECONDS[unit] == 0:
                return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
        return f"{seconds}s"

    def librechat_fields(self) -> tuple[int, str]:
        """(refillIntervalValue, refillIntervalUnit) as LibreChat's documents spell them."""
        if self.months:
            return self.months, "months"
        seconds = int(self.delta.total_seconds())
        if seconds < 1:  # a sub-second interval: LibreChat's smallest unit is one second
            return 1, "seconds"
        for unit, name in (("w", "weeks"), ("d", "days"), ("h", "hours"), ("m", "minutes")):
            if seconds % _UNIT_SECONDS[unit] == 0:
                return seconds // _UNIT_SECONDS[unit], name
        return seconds, "seconds"


@dataclass(frozen=True, slots=True)
class Calendar:
    """One refill per calendar `unit` in the IANA zone `timezone`."""

    unit: CalendarUnit
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.unit not in ("day", "week", "month"):
            raise ValueError(f"calendar must be 'day', 'week' or 'month', got {self.unit!r}")
        zone(self.timezone)

    def __str__(self) -> str:
        return f"every calendar {self.unit} ({self.timezone})"

    def librechat_fields(self) -> tuple[int, str]:
        return 1, {"day": "days", "week": "weeks", "month": "months"}[self.unit]


Period = Interval | Calendar


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name, with a clear error for unknown names."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')"
        ) from exc


def parse_interval(value: object) -> Interval:
    """Parse "1500ms", "90s", "15m", "12h", "30d", "2w", "1mo" or a timedelta (what
    `str(Interval)` prints parses back to the same interval)."""
    if isinstance(value, Interval):
        return value
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"interval must be positive, got {value}")
        return Interval(delta=value)
    if not isinstance(value, str):
        raise ValueError(f"interval must be a string like '30d' or a timedelta, got {value!r}")
    match = _INTERVAL_RE.match(value)
    if not match:
        raise ValueError(
            f"cannot read interval {value!r}: use a number and one of ms, s, m, h, d, w, mo (e.g. '30d', '1mo')"
        )
    count, unit = int(match[1]), match[2]
    if count <= 0:
        raise ValueError(f"interval must be positive, got {value!r}")
    if unit == "mo":
        return Interval(months=count)
    if unit == "ms":
        return Interval(delta=timedelta(milliseconds=count))
    if count * _UNIT_SECONDS[unit] > MAX_DELTA.total_seconds():
        raise ValueError("an interval must be at most 100 years")
    return Interval(delta=timedelta(seconds=count * _UNIT_SECONDS[unit]))


def add_months(value: datetime, months: int) -> datetime:
    """`value` plus whole months, clamping the day to the target month's length."""
    years, month0 = divmod(value.month - 1 + months, 12)
    year, month = value.year + years, month0 + 1
    day = min(value.day, _calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


def _local_anchor(unit: CalendarUnit, day: date) -> date:
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _step(unit: CalendarUnit, anchor: date, count: int = 1) -> date:
    if unit == "day":
        return anchor + timedelta(days=count)
    if unit == "week":
        return anchor + timedelta(days=7 * count)
    years, month0 = divmod(anchor.month - 1 + count, 12)
    return date(anchor.year + years, month0 + 1, 1)


def _instant(anchor: date, tz: ZoneInfo) -> datetime:
    # fold=0: an ambiguous midnight means its first occurrence; a skipped midnight
    # resolves to the first instant after the gap. Both keep period starts increasing.
    return datetime.combine(anchor, time(), tzinfo=tz).astimezone(UTC)


def _period_of(cal: Calendar, at: datetime) -> tuple[date, datetime]:
    """The anchor date and start instant of the calendar period holding `at`.

    The start is the latest period start <= `at`. Local dates can run backwards across a
    DST fall-back at midnight, or skip a day (Pacific/Apia, 2011), so the local date only
    gives a first guess that is corrected in both directions.
    """
    tz = zone(cal.timezone)
    anchor = _local_anchor(cal.unit, at.astimezone(tz).date())
    start = _instant(anchor, tz)
    while start > at:
        anchor = _step(cal.unit, anchor, -1)
        start = _instant(anchor, tz)
    while True:
        following = _step(cal.unit, anchor)
        following_start = _instant(following, tz)
        if following_start > at:
            return anchor, start
        anchor, start = following, following_start


def period_start(cal: Calendar, at: datetime) -> datetime:
    """Start (UTC) of the calendar period that holds `at`."""
    return _period_of(cal, at)[1]


def next_refill_at(period: Period, last_refill: datetime) -> datetime:
    """The earliest instant at which a refill after `last_refill` is due."""
    if isinstance(period, Interval):
        if period.months:
            return add_months(last_refill, period.months)
        return last_refill + period.delta
    tz = zone(period.timezone)
    anchor, _ = _period_of(period, last_refill)
    while True:
        anchor = _step(period.unit, anchor)
        start = _instant(anchor, tz)
        if start > last_refill:
            return start


def is_due(period: Period, last_refill: datetime | None, now: datetime) -> bool:
    """Whether a refill is due at `now`; a missing `last_refill` is due."""
    return last_refill is None or next_refill_at(period, last_refill) <= now


def due_cutoff(period: Period, now: datetime) -> datetime:
    """An upper bound on the `lastRefill` values that can be due at `now`.

    Every due value is <= the bound, so a query on `lastRefill <= bound` finds every due
    user (exact for fixed intervals and calendars; for months a few values just under the
    bound near month ends are not due, and `is_due` filters them out).
    """
    if isinstance(period, Calendar):
        return period_start(period, now) - _MS
    if not period.months:
        return now - period.delta
    last_of_now = _calendar.monthrange(now.year, now.month)[1]
    prev = add_months(now.replace(day=1), -period.months)
    last_of_prev = _calendar.monthrange(prev.year, prev.month)[1]
    landing = min(last_of_prev, last_of_now)
    if landing < now.day:  # every day of the earlier month lands before today
        return add_months(prev, 1) - _MS
    if landing == now.day:
        return prev.replace(
            day=last_of_prev,
            hour=now.hour,
            minute=now.minute,
            second=now.second,
            microsecond=now.microsecond,
        )
    return prev.replace(
        day=now.day,
        hour=now.hour,
        minute=now.minute,
        second=now.second,
        microsecond=now.microsecond,
    )


def periods_elapsed(period: Period, last_refill: datetime, now: datetime, *, cap: int = 64) -> int:
    """How many period boundaries lie in (last_refill, now], at most `cap`."""
    if isinstance(period, Interval) and not period.months:
        return min(cap, max(0, (now - last_refill) // period.delta))
    count, mark = 0, last_refill
    while count < cap:
        mark = next_refill_at(period, mark)
        if mark > now:
            break
        count += 1
    return count
