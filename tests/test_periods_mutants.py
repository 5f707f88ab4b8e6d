"""Period maths, pinned where mutation testing found the older tests loose (tests/MUTATION.md).

Exact values for the edges: messages of refused intervals, the 100-year limit, names and
LibreChat fields of every unit, calendar periods across the rare time-zone transitions
that make the first guess of a period wrong, the exact month cutoffs, and the counting
of elapsed periods.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson.tz_util import utc as bson_utc
from hypothesis import given
from hypothesis import strategies as st

from balance_refill.periods import (
    MAX_DELTA,
    MAX_MONTHS,
    Calendar,
    CalendarUnit,
    Interval,
    Period,
    add_months,
    as_utc,
    due_cutoff,
    is_due,
    next_refill_at,
    parse_interval,
    period_start,
    periods_elapsed,
)

MS = timedelta(milliseconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def exactly(text: str) -> str:
    """A `match` pattern for this message and nothing else."""
    return f"^{re.escape(text)}$"


# -- as_utc: every datetime the library keeps -------------------------------------------


@pytest.fixture
def tokyo_local() -> Iterator[None]:
    """The process's local time zone set to Asia/Tokyo for the test (POSIX `TZ`)."""
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset (POSIX)")
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.parametrize("tz", [UTC, bson_utc])
def test_driver_values_pass_through(tz: Any) -> None:
    """What the driver returns (UTC, whole milliseconds) is returned as it is, unconverted."""
    value = datetime(2026, 1, 1, 12, 0, 0, 123_000, tzinfo=tz)
    assert as_utc(value) is value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 1, 12), utc(2026, 1, 1, 12)),  # noqa: DTZ001 - naive on purpose: UTC
        (datetime(2026, 1, 1, 12, 0, 0, 123_456), datetime(2026, 1, 1, 12, 0, 0, 123_000, UTC)),  # noqa: DTZ001
        (datetime(2026, 1, 1, 12, 0, 0, 1_001, UTC), datetime(2026, 1, 1, 12, 0, 0, 1_000, UTC)),
        (
            datetime(2026, 1, 1, 12, 0, 0, 999_999, bson_utc),
            datetime(2026, 1, 1, 12, 0, 0, 999_000, UTC),
        ),
        (
            datetime(2026, 1, 1, 13, 0, 0, 5_000, ZoneInfo("Europe/Paris")),
            datetime(2026, 1, 1, 12, 0, 0, 5_000, UTC),
        ),
        (
            datetime(2026, 7, 1, 9, 0, 0, 1_000, ZoneInfo("Asia/Tokyo")),
            datetime(2026, 7, 1, 0, 0, 0, 1_000, UTC),
        ),
    ],
)
def test_as_utc_converts_and_truncates(value: datetime, expected: datetime) -> None:
    """Naive means UTC, other zones are converted, and sub-millisecond digits are dropped."""
    result = as_utc(value)
    assert result == expected
    assert result.tzinfo is UTC
    assert result.microsecond == expected.microsecond


@pytest.mark.usefixtures("tokyo_local")
def test_naive_means_utc_whatever_the_local_zone() -> None:
    """A naive value is UTC even when the machine's local time zone is not."""
    result = as_utc(datetime(2026, 1, 1, 12, 0, 0, 500))  # noqa: DTZ001 - naive on purpose
    assert (result, result.tzinfo) == (utc(2026, 1, 1, 12), UTC)
    assert period_start(Calendar("day", "Asia/Tokyo"), utc(2026, 1, 1, 12)).tzinfo is UTC


@given(
    st.datetimes(
        timezones=st.sampled_from([UTC, ZoneInfo("America/St_Johns"), ZoneInfo("Asia/Kolkata")])
    )
)
def test_as_utc_is_utc_milliseconds(value: datetime) -> None:
    """Any aware value comes back in UTC, whole milliseconds, less than 1 ms earlier."""
    result = as_utc(value)
    assert result.tzinfo is UTC
    assert result.microsecond % 1000 == 0
    assert timedelta(0) <= value - result < MS


# -- refused intervals: the exact message each one gets ---------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "an interval is either a positive number of months or a positive duration"),
        (
            {"months": 1, "delta": timedelta(days=1)},
            "an interval is either a positive number of months or a positive duration",
        ),
        ({"months": MAX_MONTHS + 1}, "an interval must be at most 100 years"),
        ({"delta": MAX_DELTA + MS}, "an interval must be at most 100 years"),
        (
            {"delta": timedelta(microseconds=1500)},
            "an interval must be a whole number of milliseconds",
        ),
    ],
)
def test_interval_refusals_say_why(kwargs: dict[str, Any], expected: str) -> None:
    """Each malformed interval is refused with its own message, word for word."""
    with pytest.raises(ValueError, match=exactly(expected)):
        Interval(**kwargs)


def test_interval_limits_are_inclusive() -> None:
    """Exactly 100 years (1,200 months, or the longest duration) is still accepted."""
    assert Interval(months=MAX_MONTHS).months == MAX_MONTHS
    assert Interval(delta=MAX_DELTA).delta == MAX_DELTA


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "interval must be positive, got 0:00:00"),
        (timedelta(seconds=-1), "interval must be positive, got -1 day, 23:59:59"),
        ("0d", "interval must be positive, got '0d'"),
        ("0mo", "interval must be positive, got '0mo'"),
        (30, "interval must be a string like '30d' or a timedelta, got 30"),
        (
            "30 days",
            "cannot read interval '30 days': use a number and one of ms, s, m, h, d, w, mo (e.g. '30d', '1mo')",
        ),
    ],
)
def test_parse_interval_refusals_say_why(value: object, expected: str) -> None:
    """A zero, negative, unreadable or mistyped interval gets its own message."""
    with pytest.raises(ValueError, match=exactly(expected)):
        parse_interval(value)


def test_unknown_calendar_unit_is_named() -> None:
    """A calendar with an unknown unit is refused with a message naming the unit."""
    expected = "calendar must be 'day', 'week' or 'month', got 'year'"
    with pytest.raises(ValueError, match=exactly(expected)):
        Calendar("year")  # type: ignore[arg-type]


# -- names: how an interval prints and how LibreChat's documents spell it ---------------


@pytest.mark.parametrize(
    ("interval", "text", "fields"),
    [
        (Interval(months=3), "3mo", (3, "months")),
        (Interval(delta=timedelta(weeks=2)), "2w", (2, "weeks")),
        (Interval(delta=timedelta(days=3)), "3d", (3, "days")),
        (Interval(delta=timedelta(days=8)), "8d", (8, "days")),
        (Interval(delta=timedelta(hours=5)), "5h", (5, "hours")),
        (Interval(delta=timedelta(hours=25)), "25h", (25, "hours")),
        (Interval(delta=timedelta(minutes=15)), "15m", (15, "minutes")),
        (Interval(delta=timedelta(minutes=61)), "61m", (61, "minutes")),
        (Interval(delta=timedelta(seconds=90)), "90s", (90, "seconds")),
        (Interval(delta=timedelta(seconds=61)), "61s", (61, "seconds")),
        (Interval(delta=timedelta(milliseconds=1500)), "1500ms", (1, "seconds")),
    ],
)
def test_interval_names(interval: Interval, text: str, fields: tuple[int, str]) -> None:
    """An interval prints in its largest whole unit and maps to LibreChat's unit names."""
    assert str(interval) == text
    value, unit = interval.librechat_fields()
    assert (value, unit) == fields
    assert type(value) is int  # stored as a BSON integer, as LibreChat's schema does


def test_sub_second_interval_is_mirrored_as_one_second() -> None:
    """A 500 ms interval is shown to LibreChat as 1 second, never as 0 of anything."""
    interval = Interval(delta=timedelta(milliseconds=500))
    assert str(interval) == "500ms"
    assert interval.librechat_fields() == (1, "seconds")


@given(st.integers(min_value=1, max_value=36_600 * 86_400_000))
def test_any_interval_prints_text_that_parses_back(ms: int) -> None:
    """Every valid interval, sub-second and odd-millisecond ones included, prints as
    text that `parse_interval` reads back to the same interval (a policy dumped and
    reloaded keeps its period)."""
    interval = Interval(delta=timedelta(milliseconds=ms))
    assert parse_interval(str(interval)) == interval


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d", "w", "mo"]))
def test_interval_text_round_trips(count: int, unit: str) -> None:
    """Printing a parsed interval and parsing it again gives the same interval."""
    if unit == "mo":
        count = min(count, MAX_MONTHS)
    elif count * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] > 36_600 * 86400:
        count = 1
    interval = parse_interval(f"{count}{unit}")
    assert parse_interval(str(interval)) == interval


@pytest.mark.parametrize(
    ("unit", "fields"), [("day", (1, "days")), ("week", (1, "weeks")), ("month", (1, "months"))]
)
def test_calendar_librechat_fields(unit: CalendarUnit, fields: tuple[int, str]) -> None:
    """A calendar period is shown to LibreChat as one of its unit."""
    assert Calendar(unit, "Europe/Paris").librechat_fields() == fields


# -- calendar periods: the first guess corrected in both directions ----------------------


@pytest.mark.parametrize("unit", ["day", "week", "month"])
def test_period_starts_are_utc(unit: CalendarUnit) -> None:
    """Calendar instants come back in `datetime.UTC` itself (the fast path of `as_utc`)."""
    cal = Calendar(unit, "Asia/Tokyo")
    at = utc(2026, 5, 20, 18, 30)
    assert period_start(cal, at).tzinfo is UTC
    assert next_refill_at(cal, at).tzinfo is UTC


@pytest.mark.parametrize(
    ("unit", "at", "expected"),
    [
        # Toronto, 1919-03-30 23:30 EST jumped to 00:30 EDT: midnight of the 31st never
        # showed, and resolves to 05:00 UTC, after this instant. Its own local date is too
        # late a guess: the period is still the 30th's.
        ("day", utc(1919, 3, 31, 4, 30), utc(1919, 3, 30, 5)),
        ("day", utc(1919, 3, 31, 4, 59), utc(1919, 3, 30, 5)),
        ("day", utc(1919, 3, 31, 5), utc(1919, 3, 31, 5)),
        ("week", utc(1919, 3, 31, 4, 30), utc(1919, 3, 24, 5)),
        ("week", utc(1919, 3, 31, 5), utc(1919, 3, 31, 5)),
        ("month", utc(1919, 3, 31, 4, 30), utc(1919, 3, 1, 5)),
    ],
)
def test_period_start_steps_back_over_a_skipped_midnight(
    unit: CalendarUnit, at: datetime, expected: datetime
) -> None:
    """When the local date's midnight lies after `at`, the period is the one before."""
    start = period_start(Calendar(unit, "America/Toronto"), at)
    assert start == expected
    assert start <= at


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # St. John's, 2010-11-07 00:01 NDT fell back to 2010-11-06 23:01 NST: for the next
        # hour the local date says the 6th again, although the 7th began at 02:30 UTC.
        (utc(2010, 11, 7, 2, 29), utc(2010, 11, 6, 2, 30)),
        (utc(2010, 11, 7, 2, 30), utc(2010, 11, 7, 2, 30)),
        (utc(2010, 11, 7, 2, 31), utc(2010, 11, 7, 2, 30)),
        (utc(2010, 11, 7, 3, 29), utc(2010, 11, 7, 2, 30)),
        (utc(2010, 11, 8, 3, 29), utc(2010, 11, 7, 2, 30)),
        (utc(2010, 11, 8, 3, 30), utc(2010, 11, 8, 3, 30)),
    ],
)
def test_period_start_steps_forward_over_a_repeated_hour(at: datetime, expected: datetime) -> None:
    """When the local date runs backwards over midnight, the period is still the new day."""
    assert period_start(Calendar("day", "America/St_Johns"), at) == expected


def test_next_refill_after_a_skipped_midnight() -> None:
    """The next calendar day after a refill on the eve of the 1919 jump is 05:00 UTC."""
    cal = Calendar("day", "America/Toronto")
    assert next_refill_at(cal, utc(1919, 3, 30, 12)) == utc(1919, 3, 31, 5)
    assert next_refill_at(cal, utc(1919, 3, 31, 4, 45)) == utc(1919, 3, 31, 5)


# -- month cutoffs: exact, by branch ---------------------------------------------------


@pytest.mark.parametrize(
    ("months", "now", "expected"),
    [
        # The same day of an earlier month exists: exact (that instant is due).
        (
            1,
            datetime(2026, 3, 15, 12, 34, 56, 789000, UTC),
            datetime(2026, 2, 15, 12, 34, 56, 789000, UTC),
        ),
        (3, utc(2026, 7, 20, 8), utc(2026, 4, 20, 8)),
        (12, utc(2027, 1, 1), utc(2026, 1, 1)),
        # Today is the last day both months reach: the earlier month's last day.
        (1, utc(2026, 2, 28, 12), utc(2026, 1, 31, 12)),
        (1, utc(2026, 4, 30, 6), utc(2026, 3, 31, 6)),
        (2, utc(2026, 2, 28, 6), utc(2025, 12, 31, 6)),
        # Every day of the earlier month lands before today: just before this month.
        (1, utc(2026, 3, 31, 12), utc(2026, 3, 1, 12) - MS),
        (3, utc(2026, 5, 31, 9), utc(2026, 3, 1, 9) - MS),
        (1, utc(2026, 3, 30, 12), utc(2026, 3, 1, 12) - MS),
        (2, utc(2026, 4, 30, 6), utc(2026, 3, 1, 6) - MS),
    ],
)
def test_month_cutoff_table(months: int, now: datetime, expected: datetime) -> None:
    """The sweep's `lastRefill` bound for month intervals, value by value."""
    assert due_cutoff(Interval(months=months), now) == expected


def latest_due(months: int, now: datetime) -> datetime:
    """The latest `lastRefill` (to the millisecond) due at `now`, by trying every candidate.

    Month-end clamping makes the due values no interval (Mar 30 12:00 is not due on
    Apr 30 at 00:00 while Mar 31 00:00 is), so no bisection: a latest due value is either
    at `now`'s time of day or at the last millisecond of a day of the month `months` back.
    """
    first = add_months(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), -months)
    candidates = [first - MS]  # the month before: always due
    day = first
    while day.month == first.month:
        candidates += [
            day.replace(
                hour=now.hour, minute=now.minute, second=now.second, microsecond=now.microsecond
            ),
            day + timedelta(days=1) - MS,
        ]
        day += timedelta(days=1)
    return max(c for c in candidates if is_due(Interval(months=months), c, now))


@given(
    st.integers(min_value=1, max_value=24),
    # hypothesis takes naive bounds and adds the zone itself
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 12, 31)).map(  # noqa: DTZ001
        lambda value: value.replace(microsecond=value.microsecond // 1000 * 1000, tzinfo=UTC)
    ),
)
def test_month_cutoff_is_within_a_day_of_the_latest_due(months: int, now: datetime) -> None:
    """Every due `lastRefill` is <= the cutoff, and the cutoff overshoots by under a day."""
    latest = latest_due(months, now)
    cutoff = due_cutoff(Interval(months=months), now)
    assert latest <= cutoff < latest + timedelta(days=1)
    if now.day <= 28:  # the same day exists in every month: the cutoff is exact
        assert cutoff == latest


# -- counting elapsed periods ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "last", "now", "expected"),
    [
        (Interval(delta=timedelta(days=1)), utc(2026, 1, 1), utc(2026, 1, 1, 23), 0),
        (Interval(delta=timedelta(days=1)), utc(2026, 1, 1), utc(2025, 12, 1), 0),
        (Interval(delta=timedelta(days=1)), utc(2026, 1, 1), utc(2026, 1, 2), 1),
        (Interval(delta=timedelta(days=1)), utc(2026, 1, 1), utc(2026, 1, 4, 12), 3),
        (Interval(delta=timedelta(days=1)), utc(2026, 1, 1), utc(2027, 1, 1), 64),
        (Interval(months=1), utc(2026, 1, 15), utc(2026, 2, 14), 0),
        (Interval(months=1), utc(2026, 1, 15), utc(2026, 2, 15), 1),
        (Interval(months=1), utc(2026, 1, 15), utc(2026, 3, 15), 2),
        (Interval(months=1), utc(2026, 1, 15), utc(2026, 4, 14), 2),
        (Interval(months=1), utc(2026, 1, 15), utc(2036, 1, 15), 64),
        (Calendar("week"), utc(2026, 1, 7), utc(2026, 1, 12), 1),  # a Wednesday, then Monday
        (Calendar("week"), utc(2026, 1, 7), utc(2026, 1, 11, 23), 0),
        (Calendar("month"), utc(2026, 1, 31), utc(2026, 4, 1), 3),
    ],
)
def test_periods_elapsed_table(
    period: Period, last: datetime, now: datetime, expected: int
) -> None:
    """Boundaries in (last, now] are counted one by one, up to the default cap of 64."""
    assert periods_elapsed(period, last, now) == expected


@pytest.mark.parametrize(
    "period", [Interval(delta=timedelta(hours=1)), Interval(months=1), Calendar("day")]
)
def test_periods_elapsed_stops_at_the_cap(period: Period) -> None:
    """A long absence counts at most `cap` periods."""
    last = utc(2020, 1, 1)
    assert periods_elapsed(period, last, utc(2030, 1, 1), cap=5) == 5
    assert periods_elapsed(period, last, next_refill_at(period, last), cap=5) == 1


def test_month_arithmetic_crosses_years_both_ways() -> None:
    """`add_months` crosses a year boundary forwards and backwards, clamping the day."""
    assert add_months(utc(2026, 11, 30), 3) == utc(2027, 2, 28)
    assert add_months(utc(2026, 3, 31), -13) == utc(2025, 2, 28)


@pytest.mark.parametrize("text", ["9999999999999w", "9999999999999d", "5300000000h"])
def test_huge_intervals_are_refused_before_any_overflow(text: str) -> None:
    """Counts too large for a timedelta are a ValueError naming the limit, never an
    OverflowError from building the timedelta."""
    with pytest.raises(ValueError, match=r"^an interval must be at most 100 years$"):
        parse_interval(text)
