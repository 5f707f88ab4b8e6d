"""The refill decisions, table by table, and the mutants an earlier suite let live.

Three hand-made mutants once survived every test: a spend that a refill covers exactly
was refused (`>=` turned into `>`), a stale compare-and-swap without `lastRefill` refilled
twice in one period, and a cap without `max(before, ...)` took credits away. Each has a
test here that fails on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill._schema import parse
from balance_refill.decide import plan_refill, refill_level
from balance_refill.policy import as_tiered
from balance_refill.testing import FakeClock, RecordingCollection

Make = Callable[..., BalanceRefiller]
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("mode", "amount", "cap", "before", "expected"),
    [
        ("top_up", 100, None, 0, 100),
        ("top_up", 100, None, 40.5, 100),
        ("top_up", 100, None, 100, 100),
        ("top_up", 100, None, 250, 250),  # never lowers
        ("top_up", 100, 150, 0, 100),
        ("top_up", 100, 150, 300, 300),  # a cap never takes away what is held
        ("add", 100, None, 0, 100),
        ("add", 100, None, 40.5, 140.5),
        ("add", 100, 150, 120, 150),  # capped
        ("add", 100, 150, 150, 150),
        ("add", 100, 150, 300, 300),  # above the cap: unchanged, not lowered
        ("reset", 100, None, 250, 100),  # reset lowers
        ("reset", 100, None, 0, 100),
        ("reset", 100, 80, 0, 80),
    ],
)
def test_refill_level_table(
    mode: Any, amount: int, cap: int | None, before: float, expected: float
) -> None:
    """top_up raises to the amount, add adds, reset sets; a cap limits only what is brought."""
    assert refill_level(mode, amount, cap, before) == expected


def doc(**fields: Any) -> Any:
    return parse({"_id": "u", "user": "u", "lastRefill": NOW - timedelta(days=31), **fields}).state


@pytest.mark.parametrize(
    ("fields", "needed", "due"),
    [
        ({"tokenCredits": 0}, 0, True),
        ({"tokenCredits": 49.5}, 0, True),
        ({"tokenCredits": 50}, 0, False),  # at the threshold: not below it
        ({"tokenCredits": 50}, 51, True),  # needed raises the bar
        ({"tokenCredits": 50}, 50, False),
        ({"tokenCredits": 100}, 101, False),  # below the bar, but a top-up adds nothing
        ({"tokenCredits": 100, "reservedCredits": 60.5}, 0, True),  # 39.5 available
        ({"tokenCredits": 110, "reservedCredits": 60}, 0, False),  # 50 available
        ({"tokenCredits": 0, "refillPaused": True}, 0, False),
        ({"tokenCredits": 0, "autoRefillEnabled": False}, 0, True),  # LibreChat's, not ours
        ({"tokenCredits": 0, "pendingRefill": {"rawAmount": 5}}, 0, False),
        ({"tokenCredits": 0, "lastRefill": NOW - timedelta(days=29)}, 0, False),
        ({"tokenCredits": 0, "lastRefill": NOW - timedelta(days=30)}, 0, True),
        ({"tokenCredits": 0, "lastRefill": None}, 0, True),
    ],
)
def test_when_a_refill_is_due(fields: dict[str, Any], needed: float, due: bool) -> None:
    """Due exactly when not paused, the period elapsed and the available balance is low."""
    tiers = as_tiered(RefillPolicy(amount=100, interval="30d", threshold=50))
    assert (plan_refill(tiers, doc(**fields), NOW, needed) is not None) == due


def test_plan_keeps_reserved_credits_on_top() -> None:
    """A top-up counts only what is available and adds the reserved credits back on top."""
    tiers = as_tiered(RefillPolicy(amount=100, interval="30d"))
    plan = plan_refill(tiers, doc(tokenCredits=70.5, reservedCredits=50), NOW)
    assert plan is not None
    assert (plan.before, plan.after, plan.granted, plan.available_after) == (70.5, 150, 79.5, 100)


def test_forced_plan_never_lowers_under_a_cap() -> None:
    """refill_now on 30,000 with a 15,000 cap plans no change, never -15,000."""
    tiers = as_tiered(RefillPolicy(amount=10_000, interval="30d", max_balance=15_000))
    plan = plan_refill(tiers, doc(tokenCredits=30_000), NOW, force=True)
    assert plan is not None
    assert (plan.after, plan.granted) == (30_000, 0)


# -- the three surviving mutants, end to end ------------------------------------------


async def test_spend_covered_exactly_by_a_refill(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A spend equal to what the refill brings is charged, leaving exactly 0."""
    await balances.inner.insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    state = await refiller.spend("u", 10_000)
    assert (state.refilled, state.balance) == (True, 0)


async def test_refill_now_above_the_cap_changes_nothing(
    make_refiller: Make, balances: RecordingCollection, db: Any, clock: FakeClock
) -> None:
    """refill_now on 30,000 with a 15,000 cap keeps 30,000, writes nothing, keeps the period."""
    refiller = make_refiller(policy=RefillPolicy(amount=10_000, interval="30d", max_balance=15_000))
    last = clock() - timedelta(days=3)
    await balances.inner.insert_one({"user": "u", "tokenCredits": 30_000, "lastRefill": last})
    state = await refiller.refill_now("u", actor="ops", reason="asked")
    assert (state.refilled, state.granted, state.balance) == (False, 0, 30_000)
    assert (await db["balances"].find_one({"user": "u"}))["lastRefill"] == last
    assert await db["transactions"].count_documents({}) == 0


class GatedCollection:
    """Forwards every call, but holds the `hold`-th find_one_and_update (1-based) until
    `release` is set, signalling `held` when it gets there."""

    def __init__(self, inner: Any, hold: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.hold = hold
        self.calls = 0
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.hold:
            self.held.set()
            await self.release.wait()
        return await self.inner.find_one_and_update(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


async def test_stale_refill_after_refill_and_reset_to_zero(
    make_refiller: Make, balances: RecordingCollection, db: Any, clock: FakeClock
) -> None:
    """A refill decided on a stale read loses to a refill plus set_balance(0) in between."""
    await balances.inner.insert_one(
        {
            "user": "u",
            "tokenCredits": 0,
            "spentSinceRefill": 0,  # as after any refill: only lastRefill tells the reads apart
            "lastRefill": clock() - timedelta(days=31),
        }
    )
    gated = GatedCollection(balances.inner, hold=2)  # 1: the read, 2: the refill's CAS
    slow = make_refiller(balances=gated)
    fast = make_refiller()
    stale = asyncio.create_task(slow.ensure_balance("u"))
    await gated.held.wait()  # the slow refill has read and decided; its write waits
    assert (await fast.ensure_balance("u")).refilled
    await fast.set_balance("u", 0, actor="ops", reason="back to zero")
    gated.release.set()
    assert not (await stale).refilled  # same period: the stale decision must not land
    assert await db["transactions"].count_documents({"context": "autoRefill"}) == 1
    assert (await db["balances"].find_one({"user": "u"}))["tokenCredits"] == 0


def test_outlook_is_the_three_functions_at_once() -> None:
    """`outlook` (what every call reports) agrees with `assigned_tier`, `auto_refill_on`
    and `next_refill` on every combination of tier, period tier, pause and last refill."""
    from balance_refill.decide import (
        UserState,
        assigned_tier,
        auto_refill_on,
        next_refill,
        outlook,
    )
    from balance_refill.policy import TieredPolicy

    tiers = TieredPolicy(
        tiers={
            "free": RefillPolicy(amount=100, interval="30d"),
            "pro": RefillPolicy(amount=1_000, interval="7d"),
            "off": RefillPolicy(amount=5, interval="1d", auto_refill=False),
        },
        default_tier="free",
    )
    names = [None, "free", "pro", "off", "gone", 5]
    checked = 0
    for tier in names:
        for refill_tier in names:
            for paused in (False, True):
                for last_refill in (None, NOW - timedelta(days=3)):
                    state = UserState(
                        tier=tier if isinstance(tier, str) or tier is None else None,
                        refill_tier=refill_tier if isinstance(refill_tier, str) else None,
                        paused=paused,
                        last_refill=last_refill,
                    )
                    expected = (
                        assigned_tier(tiers, state),
                        auto_refill_on(tiers, state),
                        next_refill(tiers, state, NOW),
                    )
                    assert outlook(tiers, state, NOW) == expected, state
                    checked += 1
    assert checked == 144
