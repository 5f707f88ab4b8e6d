"""Tiers, activity rules and adaptive amounts: pure decisions (tables and hypothesis) and
their effect through the refiller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balance_refill import BalanceRefiller, RefillPolicy, TieredPolicy
from balance_refill._schema import parse
from balance_refill.decide import (
    HISTORY_LENGTH,
    adaptive_amount,
    apply_rules,
    closing_history,
    plan_refill,
)
from balance_refill.policy import AdaptiveAmount, TierRule
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

Make = Callable[..., BalanceRefiller]
NOW = datetime(2026, 6, 1, tzinfo=UTC)

REGULAR = RefillPolicy(amount=1_000, interval="30d")
HEAVY = RefillPolicy(amount=5_000, interval="1d")
PROMOTE = TierRule(from_tier="regular", to_tier="heavy", min_usage=0.8, periods=2, of_last=3)
DEMOTE = TierRule(from_tier="heavy", to_tier="regular", max_usage=0.1, periods=3, of_last=3)
TIERS = TieredPolicy(
    tiers={"regular": REGULAR, "heavy": HEAVY}, default_tier="regular", rules=(PROMOTE, DEMOTE)
)


def doc(**fields: Any) -> Any:
    base = {"_id": 1, "user": "u", "tokenCredits": 0, "lastRefill": NOW - timedelta(days=31)}
    return parse({**base, **fields}).state


@pytest.mark.parametrize(
    ("tier", "history", "expected"),
    [
        ("regular", (800, 0, 800), "heavy"),  # 2 of the last 3 at >= 80% of 1000
        ("regular", (0, 800, 799), "regular"),
        ("regular", (900, 900, 900, 0, 0, 0), "regular"),  # only the last 3 count
        ("regular", (800,), "regular"),  # not enough periods yet
        ("heavy", (600, 100, 0), "heavy"),  # 600 >= 10% of 5000
        ("heavy", (499, 0, 0), "regular"),  # three quiet periods
        ("heavy", (10_000, 499, 0), "heavy"),
    ],
)
def test_apply_rules_table(tier: str, history: tuple[int, ...], expected: str) -> None:
    """Promotion and demotion follow the usage of the last periods."""
    assert apply_rules(TIERS, tier, history, pinned=False) == expected


@given(
    st.sampled_from(["regular", "heavy"]), st.lists(st.integers(0, 20_000), max_size=HISTORY_LENGTH)
)
def test_pinned_users_never_move(tier: str, history: list[int]) -> None:
    assert apply_rules(TIERS, tier, tuple(history), pinned=True) == tier
    assert apply_rules(TIERS, tier, tuple(history), pinned=False) in TIERS.tiers


@pytest.mark.parametrize(
    ("days_since", "spent", "history", "expected"),
    [
        (31, 700, (), (700,)),
        (65, 700, (1, 2), (1, 2, 700, 0)),  # one whole period missed
        (400, 5, (9, 9, 9, 9, 9, 9), (0, 0, 0, 0, 0, 0)),  # long absence: zeros, capped
        (181, 5, (9, 9, 9, 9, 9, 9), (5, 0, 0, 0, 0, 0)),  # six periods: five missed
    ],
)
def test_closing_history(
    days_since: int, spent: int, history: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    """The closing period's spend is recorded, then a zero per missed period."""
    d = doc(
        lastRefill=NOW - timedelta(days=days_since),
        spentSinceRefill=spent,
        spendHistory=list(history),
    )
    assert closing_history(TIERS, d, NOW) == expected


ADAPT = AdaptiveAmount(alpha=0.5, headroom=1.2, min_amount=100, max_amount=4_000)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ((), 1_200),  # prior = base 1000, x1.2
        ((0, 0, 0, 0, 0, 0), 100),  # light user: the minimum (1000/64*1.2 = 19 -> 100)
        ((2_000, 2_000, 2_000, 2_000, 2_000, 2_000), 2_382),  # heavy user: about what they use
        ((50_000,), 4_000),  # capped
    ],
)
def test_adaptive_amount_table(history: tuple[int, ...], expected: int) -> None:
    assert adaptive_amount(ADAPT, 1_000, history) == expected


@given(
    st.lists(st.integers(0, 2**40), max_size=HISTORY_LENGTH),
    st.lists(st.integers(0, 2**40), max_size=HISTORY_LENGTH),
)
def test_adaptive_amount_bounded_and_monotone(a: list[int], b: list[int]) -> None:
    """Always within [min, max]; spending more never lowers the next refill."""
    amount = adaptive_amount(ADAPT, 1_000, tuple(a))
    assert ADAPT.min_amount <= amount <= ADAPT.max_amount
    if len(a) == len(b) and all(x <= y for x, y in zip(a, b, strict=True)):
        assert amount <= adaptive_amount(ADAPT, 1_000, tuple(b))


@given(
    st.sampled_from(["regular", "heavy", None]),
    st.integers(0, 10_000),
    st.integers(0, 100),
    st.integers(0, 20_000),
    st.booleans(),
)
def test_plan_refill_invariants(
    tier: str | None, balance: int, days: int, spent: int, pinned: bool
) -> None:
    """A plan only exists when due; it never lowers a top_up balance; its tier is known."""
    d = doc(
        tier=tier,
        tokenCredits=balance,
        lastRefill=NOW - timedelta(days=days),
        spentSinceRefill=spent,
        tierPinned=pinned,
    )
    plan = plan_refill(TIERS, d, NOW)
    if plan is None:
        return
    assert plan.tier in TIERS.tiers
    assert plan.after >= plan.before
    assert plan.after > plan.before or plan.previous_tier is not None
    if pinned:
        assert plan.previous_tier is None


@pytest.fixture
def tiered(make_refiller: Make) -> BalanceRefiller:
    return make_refiller(policy=TIERS)


async def test_tier_amounts_apply_and_state_reports_tier(
    tiered: BalanceRefiller, clock: FakeClock
) -> None:
    """Each tier refills with its own amount; a missing tier means the default."""
    state = await tiered.ensure_balance("u")
    assert (state.tier, state.balance) == ("regular", 0)
    clock.advance(days=31)
    assert (await tiered.ensure_balance("u")).balance == 1_000
    await tiered.set_tier("u", "heavy", actor="ops")
    assert (await tiered.get_state("u")).tier == "heavy"
    clock.advance(days=30)
    await tiered.spend("u", 1_000)
    state = await tiered.ensure_balance("u")
    assert (state.refilled, state.balance, state.tier) == (True, 5_000, "heavy")


async def test_tier_change_mid_period_never_refills_twice(
    tiered: BalanceRefiller, clock: FakeClock, ledger: RecordingCollection
) -> None:
    """Moving to a tier with a shorter period does not make the current period due again."""
    await tiered.ensure_balance("u")
    clock.advance(days=31)
    assert (await tiered.ensure_balance("u")).refilled  # refilled under regular (30d)
    await tiered.spend("u", 1_000)
    await tiered.set_tier("u", "heavy", actor="ops")
    for _ in range(28):
        clock.advance(days=1)
        state = await tiered.ensure_balance("u")
        assert not state.refilled
    clock.advance(days=2)  # 30 days after the refill: due, with the heavy amount
    state = await tiered.ensure_balance("u")
    assert (state.refilled, state.balance) == (True, 5_000)
    clock.advance(days=1)  # heavy's period now governs
    await tiered.spend("u", 5_000)
    assert (await tiered.ensure_balance("u")).refilled
    assert await ledger.inner.count_documents({"context": "autoRefill"}) == 3


async def test_promotion_and_demotion_through_refills(
    tiered: BalanceRefiller, clock: FakeClock, db: Any
) -> None:
    """A busy regular user is promoted; three quiet heavy periods demote them."""
    await tiered.ensure_balance("u")
    for _ in range(2):  # two busy regular periods (>= 80% of 1000)
        clock.advance(days=31)
        await tiered.ensure_balance("u")
        await tiered.spend("u", 900)
    clock.advance(days=31)
    state = await tiered.ensure_balance("u")
    assert (state.refilled, state.tier, state.balance) == (True, "heavy", 5_000)
    row = await db["transactions"].find_one({"previousTier": "regular"})
    assert row["tier"] == "heavy"
    clock.advance(days=4)  # absent for three heavy periods (1d each), then back and broke
    await tiered.spend("u", 5_000)
    state = await tiered.ensure_balance("u")
    assert (state.tier, state.balance) == ("regular", 1_000)


async def test_pinned_user_is_not_promoted(tiered: BalanceRefiller, clock: FakeClock) -> None:
    await tiered.ensure_balance("u")
    await tiered.set_tier("u", "regular", actor="ops", pinned=True)
    for _ in range(3):
        clock.advance(days=31)
        await tiered.ensure_balance("u")
        await tiered.spend("u", 1_000)
    clock.advance(days=31)
    state = await tiered.ensure_balance("u")
    assert (state.tier, state.pinned) == ("regular", True)


async def test_adaptive_tier_refills_with_usage(make_refiller: Make, clock: FakeClock) -> None:
    """An adaptive tier sizes refills from the user's own spend."""
    policy = RefillPolicy(amount=1_000, interval="30d", mode="add", threshold=10**9, adaptive=ADAPT)
    refiller = make_refiller(policy=policy)
    await refiller.ensure_balance("u")
    clock.advance(days=31)
    first = await refiller.ensure_balance("u")
    assert first.granted == adaptive_amount(ADAPT, 1_000, (0,))
    await refiller.spend("u", first.balance)
    clock.advance(days=31)
    second = await refiller.ensure_balance("u")
    assert second.granted == adaptive_amount(ADAPT, 1_000, (0, first.balance))
    assert second.granted > first.granted


def due_for_promotion(clock: FakeClock) -> dict[str, Any]:
    """A regular user whose refill is due, after two busy periods (900 of 1000 each)."""
    return {
        "user": "u",
        "tokenCredits": 0,
        "lastRefill": clock() - timedelta(days=31),
        "spentSinceRefill": 900,
        "spendHistory": [900],
    }


async def test_refill_with_promotion_within_budget(
    tiered: BalanceRefiller, clock: FakeClock, db: Any, log: CallLog
) -> None:
    """Tier changes ride on the refill's own write: still at most four calls, one on login without refill."""
    await db["balances"].insert_one(due_for_promotion(clock))
    log.reset()
    state = await tiered.ensure_balance("u")
    assert (state.tier, log.count <= 4) == ("heavy", True)
    log.reset()
    await tiered.ensure_balance("u")
    await tiered.spend("u", 1)
    assert log.count == 2


async def test_concurrent_refills_with_promotion_once(
    db: Any, clock: FakeClock, make_racing: Make
) -> None:
    """Racing calls on a user due for a promotion: one refill, one tier change."""
    refiller = make_racing(TIERS)
    await db["balances"].insert_one(due_for_promotion(clock))
    racers = [refiller.ensure_balance("u") for _ in range(100)]
    racers += [refiller.spend("u", 1) for _ in range(100)]
    await asyncio.gather(*racers)
    assert await db["transactions"].count_documents({}) == 1
    final = await db["balances"].find_one({"user": "u"})
    assert (final["tier"], final["tokenCredits"]) == ("heavy", 5_000 - 100)


async def test_concurrent_set_tier_and_refill(db: Any, clock: FakeClock, make_racing: Make) -> None:
    """An admin's tier change racing a refill never yields two refills."""
    refiller = make_racing(TIERS)
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    await asyncio.gather(
        *(refiller.ensure_balance("u") for _ in range(50)),
        *(refiller.set_tier("u", t, actor="ops") for t in ["heavy", "regular"] * 10),
    )
    assert await db["transactions"].count_documents({"context": "autoRefill"}) == 1
    assert await db["transactions"].count_documents({"context": "setTier"}) == 20
