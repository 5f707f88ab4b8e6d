"""RefillPolicy validation and the librechat.yaml mapping."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from balance_refill import RefillPolicy, TieredPolicy
from balance_refill.periods import Calendar, Interval


def test_defaults() -> None:
    """threshold defaults to amount; top_up; start 0; auto refill on."""
    p = RefillPolicy(amount=10_000, interval="30d")
    assert (p.effective_threshold, p.threshold, p.mode, p.start_balance, p.auto_refill) == (
        10_000,
        10_000,
        "top_up",
        0,
        True,
    )
    assert p.period == Interval(delta=timedelta(days=30))


def test_calendar_policy() -> None:
    p = RefillPolicy(amount=5, calendar="week", timezone="America/New_York")
    assert p.period == Calendar("week", "America/New_York")


def test_policy_is_frozen() -> None:
    p = RefillPolicy(amount=5, interval="1d")
    with pytest.raises(ValidationError):
        p.amount = 6  # type: ignore[misc]  # frozen: mypy refuses it too, which is the point


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 0, "interval": "1d"}, "greater than 0"),
        ({"amount": -5, "interval": "1d"}, "greater than 0"),
        ({"amount": 1.5, "interval": "1d"}, "valid integer"),
        ({"amount": "5", "interval": "1d"}, "valid integer"),
        ({"amount": True, "interval": "1d"}, "valid integer"),
        ({"amount": 2**53 + 1, "interval": "1d"}, "less than or equal"),
        ({"amount": 5}, "exactly one"),
        ({"amount": 5, "interval": "1d", "calendar": "day"}, "exactly one"),
        ({"amount": 5, "interval": "0s"}, "positive"),
        ({"amount": 5, "interval": timedelta(seconds=-1)}, "positive"),
        ({"amount": 5, "interval": "3y"}, "cannot read interval"),
        ({"amount": 5, "interval": 30}, "needs a unit"),
        ({"amount": 5, "calendar": "year"}, "calendar"),
        ({"amount": 5, "calendar": "day", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"amount": 5, "interval": "1d", "timezone": "Europe/Paris"}, "only applies"),
        ({"amount": 5, "interval": "1d", "mode": "double"}, "mode"),
        ({"amount": 5, "interval": "1d", "threshold": -1}, "greater than or equal"),
        ({"amount": 5, "interval": "1d", "max_balance": 4}, "below amount"),
        ({"amount": 5, "interval": "1d", "max_balance": 10, "start_balance": 11}, "start_balance"),
        ({"amount": 5, "interval": "1d", "max_balance": 10, "threshold": 11}, "threshold"),
        ({"amount": 5, "interval": "1d", "surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_policies(kwargs: dict[str, Any], message: str) -> None:
    """Every invalid value is a ValueError with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        RefillPolicy(**kwargs)


def test_from_librechat_defaults_and_semantics() -> None:
    """LibreChat's keys map to add mode, threshold 0 (refill when a request is not covered)."""
    p = RefillPolicy.from_librechat(
        {
            "enabled": True,
            "startBalance": 20000,
            "autoRefillEnabled": True,
            "refillIntervalValue": 30,
            "refillIntervalUnit": "days",
            "refillAmount": 10000,
        }
    )
    assert (p.amount, p.mode, p.effective_threshold, p.start_balance, p.auto_refill) == (
        10_000,
        "add",
        0,
        20_000,
        True,
    )
    assert p.period == Interval(delta=timedelta(days=30))


@pytest.mark.parametrize(
    ("unit", "period"),
    [
        ("seconds", Interval(delta=timedelta(seconds=7))),
        ("months", Interval(months=7)),
        ("weeks", Interval(delta=timedelta(weeks=7))),
    ],
)
def test_from_librechat_units(unit: str, period: Interval) -> None:
    p = RefillPolicy.from_librechat(
        {
            "enabled": True,
            "autoRefillEnabled": True,
            "refillIntervalValue": 7,
            "refillIntervalUnit": unit,
        }
    )
    assert p.period == period


@pytest.mark.parametrize(
    "section",
    [
        {"enabled": False, "autoRefillEnabled": True},
        {"enabled": True, "autoRefillEnabled": False},
        {},
    ],
)
def test_from_librechat_disabled_is_refused_without_an_override(section: dict[str, Any]) -> None:
    """A librechat.yaml with LibreChat's refill off would refill nobody as our policy:
    refused with the trap and the fix, unless an explicit override says what to do."""
    with pytest.raises(ValueError, match="would refill nobody") as info:
        RefillPolicy.from_librechat(section)
    assert "explicit override" in str(info.value)
    assert "\n" not in str(info.value)
    assert not RefillPolicy.from_librechat(section, auto_refill=False).auto_refill
    assert RefillPolicy.from_librechat(section, auto_refill=True).auto_refill


def test_from_librechat_accepts_whole_file() -> None:
    p = RefillPolicy.from_librechat(
        {"balance": {"enabled": True, "autoRefillEnabled": True, "refillAmount": 5}}
    )
    assert p.amount == 5


@pytest.mark.parametrize(
    "section",
    [
        {"enabled": "yes"},
        {"enabled": True, "autoRefillEnabled": True, "refillIntervalUnit": "fortnights"},
        {"enabled": True, "autoRefillEnabled": True, "refillIntervalValue": 0},
        {"enabled": True, "autoRefillEnabled": True, "refillAmount": 0},
        {"enabled": True, "bogus": 1},
        ["not", "a", "mapping"],
    ],
)
def test_from_librechat_rejects(section: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by case; the type is the contract
        RefillPolicy.from_librechat(section)


def test_tiered_policy_validation() -> None:
    p = RefillPolicy(amount=5, interval="1d")
    with pytest.raises(ValueError, match="default_tier"):
        TieredPolicy(tiers={"a": p}, default_tier="b")
    with pytest.raises(ValueError, match="at least one"):
        TieredPolicy(tiers={}, default_tier="b")
    assert TieredPolicy(tiers={"a": p}, default_tier="a").tier_of("zzz") == "a"
