"""The hot path's shortcuts (issue 19) give what the general code gives.

Each shortcut exists only for speed: the default clock built from integer milliseconds,
`BalanceState` built through its slots, `check_amount`'s one test for a plain int, and
`ensure_balance` deciding "nothing due" from the outlook it reports anyway. Each is
compared here with the general form it replaces, over generated values.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balance_refill import BalanceState
from balance_refill import _engine as engine_module
from balance_refill._validate import MAX_SAFE_INT, check_amount
from balance_refill.decide import UserState, outlook, plan_refill
from balance_refill.errors import InvalidAmount
from balance_refill.policy import RefillPolicy, TieredPolicy, TierRule
from balance_refill.state import new_state

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_MS = (datetime(2106, 2, 7, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


@given(st.integers(0, LAST_MS), st.integers(0, 999_999))
def test_the_default_clock_is_the_instant_to_the_millisecond(ms: int, below: int) -> None:
    """Whatever the nanoseconds below the millisecond, the clock gives the millisecond:
    exact (no float rounding off by one), aware UTC, and `Engine.now` takes it as is."""
    with mock.patch("time.time_ns", return_value=ms * 1_000_000 + below):
        value = engine_module.utc_now()
    assert value == EPOCH + timedelta(milliseconds=ms)
    assert value.tzinfo is UTC
    assert value.microsecond % 1000 == 0


def test_the_default_clock_follows_the_system_clock() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    value = engine_module.utc_now()
    assert before <= value <= datetime.now(UTC)


values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3))


@given(st.tuples(*(values for _ in dataclasses.fields(BalanceState))))
def test_new_state_is_the_class_called_with_every_field(fields: tuple[object, ...]) -> None:
    built = new_state(*fields)
    called = BalanceState(*fields)  # type: ignore[arg-type]  # any values: a plain record
    assert type(built) is BalanceState
    assert built == called
    assert repr(built) == repr(called)
    assert dataclasses.astuple(built) == fields  # every field set, in the class's order
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.balance = 0  # type: ignore[misc]  # frozen, as the class is


def general_rule(amount: int, *, allow_zero: bool) -> bool:
    """check_amount's rule for an int, as its general branch states it."""
    return abs(amount) <= MAX_SAFE_INT and amount >= 0 and (amount != 0 or allow_zero)


edges = st.sampled_from([0, 1, -1, MAX_SAFE_INT, MAX_SAFE_INT + 1, -MAX_SAFE_INT, 2**63])


@given(st.one_of(st.integers(), edges), st.booleans())
def test_check_amount_takes_an_int_as_its_general_rule_does(amount: int, allow_zero: bool) -> None:
    if general_rule(amount, allow_zero=allow_zero):
        assert check_amount(amount, allow_zero=allow_zero) is amount
    else:
        with pytest.raises(InvalidAmount):
            check_amount(amount, allow_zero=allow_zero)


def test_check_amount_still_refuses_bools_and_int_subclasses() -> None:
    class Sneaky(int):
        pass

    assert check_amount(Sneaky(5)) == 5  # an int subclass takes the general branch
    with pytest.raises(InvalidAmount):
        check_amount(True)


NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
TIERS = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=100, interval="30d", threshold=50),
        "pro": RefillPolicy(amount=1_000, interval="7d"),
        "off": RefillPolicy(amount=5, interval="1d", auto_refill=False),
        "month": RefillPolicy(amount=10, interval="1mo"),
    },
    default_tier="free",
    rules=[TierRule(from_tier="free", to_tier="pro", min_usage=0.5, of_last=2, periods=1)],
)
names = st.sampled_from([None, "free", "pro", "off", "month", "gone"])
states = st.builds(
    UserState,
    balance=st.integers(-50, 2_000),
    reserved=st.integers(0, 100),
    last_refill=st.one_of(
        st.none(), st.integers(0, 90 * 24).map(lambda h: NOW - timedelta(hours=h))
    ),
    paused=st.booleans(),
    tier=names,
    refill_tier=names,
    pinned=st.booleans(),
    spent=st.integers(0, 2_000),
    history=st.lists(st.integers(0, 2_000), max_size=3).map(tuple),
    refill_pending=st.booleans(),
)


@given(states, st.integers(0, 3_000))
def test_nothing_due_by_the_outlook_means_no_plan(state: UserState, needed: int) -> None:
    """`ensure_balance` returns without planning when the outlook shows refills off, the
    period running, or LibreChat's refill settling: `plan_refill` plans nothing then."""
    next_at = outlook(TIERS, state, NOW)[2]
    if next_at is None or next_at > NOW or state.refill_pending:
        assert plan_refill(TIERS, state, NOW, needed) is None
