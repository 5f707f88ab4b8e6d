"""Period maths: tables for the edges, hypothesis for the invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balance_refill.periods import (
    Calendar,
    CalendarUnit,
    Interval,
    add_months,
    as_utc,
    due_cutoff,
    is_due,
    next_refill_at,
    parse_interval,
    period_start,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", Interval(delta=timedelta(seconds=90))),
        ("15m", Interval(delta=timedelta(minutes=15))),
        ("12h", Interval(delta=timedelta(hours=12))),
        ("30d", Interval(delta=timedelta(days=30))),
        ("2w", Interval(delta=timedelta(weeks=2))),
        ("1mo", Interval(months=1)),
        (" 3mo ", Interval(months=3)),
        (timedelta(hours=1), Interval(delta=timedelta(hours=1))),
    ],
)
def test_parse_interval(text: str | timedelta, expected: Interval) -> None:
    """Every documented spelling parses to the right period."""
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "0d", "-1d", "5", "5y", "1.5d", "d", "1 month", timedelta(0), timedelta(-1)]
)
def test_parse_interval_rejects(bad: str | timedelta) -> None:
    """Zero, negative, unitless and unknown-unit intervals are ValueErrors."""
    with pytest.raises(ValueError, match="interval"):
        parse_interval(bad)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (utc(2026, 1, 31, 8), 1, utc(2026, 2, 28, 8)),
        (utc(2028, 1, 31, 8), 1, utc(2028, 2, 29, 8)),  # leap year
        (utc(2026, 3, 31), 1, utc(2026, 4, 30)),
        (utc(2026, 12, 15), 1, utc(2027, 1, 15)),
        (utc(2026, 8, 31), 6, utc(2027, 2, 28)),
        (utc(2028, 2, 29), 12, utc(2029, 2, 28)),
        (utc(2026, 3, 31), -1, utc(2026, 2, 28)),
    ],
)
def test_add_months_clamps(start: datetime, months: int, expected: datetime) -> None:
    """Months clamp at month end and keep the time of day (not JavaScript's overflow)."""
    assert add_months(start, months) == expected


@pytest.mark.parametrize(
    ("cal", "at", "start", "following"),
    [
        (Calendar("day"), utc(2026, 5, 5, 13), utc(2026, 5, 5), utc(2026, 5, 6)),
        (Calendar("week"), utc(2026, 5, 7, 13), utc(2026, 5, 4), utc(2026, 5, 11)),  # Monday
        (Calendar("month"), utc(2026, 12, 31, 23), utc(2026, 12, 1), utc(2027, 1, 1)),
        # Paris is UTC+1 in winter, UTC+2 in summer; the spring-forward day is 23 hours long.
        (
            Calendar("day", "Europe/Paris"),
            utc(2026, 3, 29, 12),
            utc(2026, 3, 28, 23),
            utc(2026, 3, 29, 22),
        ),
        (
            Calendar("month", "Europe/Paris"),
            utc(2026, 3, 31, 22, 30),
            utc(2026, 3, 31, 22),
            utc(2026, 4, 30, 22),
        ),
        # Samoa skipped 30 December 2011 entirely.
        (
            Calendar("day", "Pacific/Apia"),
            utc(2011, 12, 30, 11),
            utc(2011, 12, 30, 10),
            utc(2011, 12, 31, 10),
        ),
    ],
)
def test_calendar_periods(
    cal: Calendar, at: datetime, start: datetime, following: datetime
) -> None:
    """Calendar periods start at local midnight (Monday for weeks, the 1st for months)."""
    assert period_start(cal, at) == start
    assert next_refill_at(cal, at) == following


def test_missing_last_refill_is_due() -> None:
    """A document without lastRefill is due (LibreChat's current behaviour)."""
    assert is_due(Interval(months=1), None, utc(2026, 1, 1))


ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Beirut",
    "America/Havana",
    "Pacific/Apia",
    "Asia/Kolkata",
    "Pacific/Chatham",
]
instants = st.datetimes(min_value=datetime(2005, 1, 1), max_value=datetime(2035, 12, 31)).map(  # noqa: DTZ001 - hypothesis bounds are naive
    lambda d: as_utc(d.replace(tzinfo=UTC))
)
periods = st.one_of(
    st.builds(Calendar, st.sampled_from(["day", "week", "month"]), st.sampled_from(ZONES)),
    st.integers(1, 14).map(lambda m: Interval(months=m)),
    st.integers(1, 90 * 86400).map(lambda s: Interval(delta=timedelta(seconds=s))),
)


@given(periods, instants, instants)
@settings(max_examples=400)
def test_due_matches_next_refill_and_cutoff(
    period: Calendar | Interval, last: datetime, now: datetime
) -> None:
    """is_due agrees with next_refill_at, and every due lastRefill is under the query cutoff."""
    due = is_due(period, last, now)
    assert due == (next_refill_at(period, last) <= now)
    assert next_refill_at(period, last) > last
    if due:
        assert last <= due_cutoff(period, now)
    if isinstance(period, Calendar) or not period.months:
        assert due == (last <= due_cutoff(period, now))  # exact for all but months


@given(
    st.sampled_from(["day", "week", "month"]),
    st.sampled_from(ZONES),
    instants,
    st.lists(st.integers(1, 40 * 3600), min_size=1, max_size=60),
)
@settings(max_examples=300)
def test_calendar_refills_once_per_period_never_skipping(
    unit: CalendarUnit, tz: str, start: datetime, steps: list[int]
) -> None:
    """Checks at increasing times refill exactly once in each calendar period they visit."""
    cal = Calendar(unit, tz)
    last: datetime | None = None
    refilled_periods: list[datetime] = []
    visited: set[datetime] = set()
    now = start
    for step in steps:
        now += timedelta(seconds=step)
        visited.add(period_start(cal, now))
        if is_due(cal, last, now):
            refilled_periods.append(period_start(cal, now))
            last = now
    assert len(refilled_periods) == len(set(refilled_periods))  # never twice in one period
    assert set(refilled_periods) == visited  # never skipped a visited period


@given(instants, st.integers(1, 24))
def test_month_interval_lands_in_target_month(last: datetime, months: int) -> None:
    """A month interval always lands in the target month, clamped, same time of day."""
    nxt = next_refill_at(Interval(months=months), last)
    assert (nxt.year * 12 + nxt.month) - (last.year * 12 + last.month) == months
    assert nxt.time() == last.time()
    assert nxt.day == last.day or nxt.day < last.day
