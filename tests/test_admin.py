"""Admin operations: one ledger row each, exactly once, bad input writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    InsufficientCredits,
    RefillPolicy,
    TieredPolicy,
    UnknownTier,
    UserNotFound,
)
from balance_refill.testing import Call, CallLog, FakeClock

Make = Callable[..., BalanceRefiller]
TIERS = TieredPolicy(
    tiers={
        "regular": RefillPolicy(amount=1_000, interval="30d", start_balance=500),
        "heavy": RefillPolicy(amount=5_000, interval="1d"),
    },
    default_tier="regular",
)


@pytest.fixture
def admin(make_refiller: Make) -> BalanceRefiller:
    return make_refiller(policy=TIERS)


async def rows(db: Any, **query: Any) -> list[dict[str, Any]]:
    return [r async for r in db["transactions"].find(query)]


async def snapshot(db: Any) -> tuple[list[Any], list[Any]]:
    return ([d async for d in db["balances"].find()], [d async for d in db["transactions"].find()])


async def test_grant_writes_an_admin_row(admin: BalanceRefiller, db: Any, clock: FakeClock) -> None:
    state = await admin.grant("u", 250, actor="alice", reason="support ticket 42", create=True)
    assert state.balance == 750  # created with start_balance 500
    (row,) = await rows(db)
    assert (row["context"], row["actor"], row["reason"], row["rawAmount"], row["tokenValue"]) == (
        "admin",
        "alice",
        "support ticket 42",
        250,
        250,
    )
    assert (row["balanceBefore"], row["balanceAfter"], row["tokenType"], row["createdAt"]) == (
        500,
        750,
        "credits",
        clock(),
    )


async def test_negative_grant_is_a_correction_never_below_zero(
    admin: BalanceRefiller, db: Any
) -> None:
    await admin.grant("u", 100, actor="a", reason="r", create=True)
    before = await snapshot(db)
    with pytest.raises(InsufficientCredits):
        await admin.grant("u", -601, actor="a", reason="too much")
    assert await snapshot(db) == before
    assert (await admin.grant("u", -600, actor="a", reason="fix")).balance == 0
    assert (await admin.grant("u", -5, actor="a", reason="debt", allow_negative=True)).balance == -5


async def test_set_balance_records_the_difference(admin: BalanceRefiller, db: Any) -> None:
    await admin.ensure_balance("u")
    state = await admin.set_balance("u", 200, actor="a", reason="reset by hand")
    assert state.balance == 200
    (row,) = await rows(db, context="setBalance")
    assert (row["rawAmount"], row["balanceBefore"], row["balanceAfter"]) == (-300, 500, 200)


async def test_set_tier_pin_and_rows(admin: BalanceRefiller, db: Any) -> None:
    await admin.ensure_balance("u")
    state = await admin.set_tier("u", "heavy", actor="a", pinned=True)
    assert (state.tier, state.pinned) == ("heavy", True)
    (row,) = await rows(db, context="setTier")
    assert (row["tier"], row["previousTier"], row["tierPinned"], row["rawAmount"]) == (
        "heavy",
        "regular",
        True,
        0,
    )


async def test_pause_and_resume(admin: BalanceRefiller, db: Any, clock: FakeClock) -> None:
    await admin.ensure_balance("u")
    await admin.set_balance("u", 0, actor="a", reason="r")
    await admin.set_auto_refill("u", False, actor="a")
    clock.advance(days=40)
    state = await admin.ensure_balance("u")
    assert (state.refilled, state.auto_refill, state.next_refill_at) == (False, False, None)
    await admin.set_auto_refill("u", True, actor="a")
    assert (await admin.ensure_balance("u")).refilled
    assert len(await rows(db, context="setAutoRefill")) == 2


async def test_refill_now_ignores_period_and_threshold(admin: BalanceRefiller, db: Any) -> None:
    await admin.ensure_balance("u")
    state = await admin.refill_now("u", actor="a", reason="goodwill", create=True)
    assert (state.refilled, state.balance, state.granted) == (True, 1_000, 500)
    (row,) = await rows(db, context="refillNow")
    assert (row["actor"], row["reason"], row["rawAmount"]) == ("a", "goodwill", 500)


async def test_refill_now_once_despite_lost_reply(
    admin: BalanceRefiller, db: Any, log: CallLog
) -> None:
    """The write landed, its reply was lost, the library retried: still one refill, one row."""
    await admin.set_balance("u", 0, actor="a", reason="r", create=True)
    seen = [0]

    def lose_reply(call: Call, index: int) -> BaseException | None:
        if call.method == "find_one_and_update" and call.collection == "balances":
            seen[0] += 1
            if seen[0] == 2:  # the refill's compare-and-swap
                return AutoReconnect("reply lost")
        return None

    log.fail_after = lose_reply
    state = await admin.refill_now("u", actor="a", reason="r")
    assert (state.balance, state.granted) == (1_000, 1_000)
    assert len(await rows(db, context="refillNow")) == 1


async def test_history_newest_first(admin: BalanceRefiller, clock: FakeClock) -> None:
    for i in range(5):
        clock.advance(minutes=1)
        await admin.grant("u", i + 1, actor="a", reason=f"r{i}", create=True)
    history = await admin.history("u", limit=3)
    assert [r["reason"] for r in history] == ["r4", "r3", "r2"]


async def test_get_state_is_read_only(
    admin: BalanceRefiller, db: Any, log: CallLog, clock: FakeClock
) -> None:
    """get_state creates nothing and changes nothing, in one call."""
    with pytest.raises(UserNotFound):
        await admin.get_state("ghost")
    assert await db["balances"].count_documents({}) == 0
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=90)}
    )
    before = await snapshot(db)
    log.reset()
    state = await admin.get_state("u")
    assert log.methods() == ["balances.find_one"]
    assert (state.balance, state.refilled, state.next_refill_at) == (
        0,
        False,
        clock() - timedelta(days=60),
    )
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        (lambda r: r.set_tier("u", "platinum", actor="a"), UnknownTier),
        (lambda r: r.set_tier("u", {"$ne": 1}, actor="a"), UnknownTier),
        (lambda r: r.grant("u", -0.0, actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", float("nan"), actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", float("inf"), actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", 2**53 + 1, actor="a", reason="r"), BalanceRefillError),
        (
            lambda r: r.grant("u", 2**53, actor="a", reason="r"),
            BalanceRefillError,
        ),  # result beyond 2**53
        (lambda r: r.grant("u", "10", actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", 0, actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", 5, actor="", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", 5, actor="   ", reason="r"), BalanceRefillError),
        (lambda r: r.grant("u", 5, actor="a", reason=""), BalanceRefillError),
        (lambda r: r.set_balance("u", -1, actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.set_balance("u", 2**53 + 1, actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.set_auto_refill("u", "yes", actor="a"), BalanceRefillError),
        (lambda r: r.set_auto_refill("u", True, actor=""), BalanceRefillError),
        (lambda r: r.refill_now("u", actor="", reason="r"), BalanceRefillError),
        (lambda r: r.grant({"$gt": ""}, 5, actor="a", reason="r"), BalanceRefillError),
        (lambda r: r.history("u", limit=0), BalanceRefillError),
        (lambda r: r.set_tier("ghost", "heavy", actor="a"), UserNotFound),
    ],
)
async def test_bad_admin_input_writes_nothing(
    admin: BalanceRefiller, db: Any, operation: Any, error: type[Exception]
) -> None:
    """Each bad input is a clear library error and the collections are unchanged."""
    await admin.ensure_balance("u")
    before = await snapshot(db)
    with pytest.raises(error):
        await operation(admin)
    assert await snapshot(db) == before


async def test_concurrent_grants_each_applied_once(db: Any, make_racing: Make) -> None:
    """100 racing grants: +100 credits, 100 rows."""
    refiller = make_racing(TIERS)
    await refiller.ensure_balance("u")
    await asyncio.gather(
        *(refiller.grant("u", 1, actor="a", reason="r") for _ in range(100)),
        *(refiller.spend("u", 1) for _ in range(50)),
    )
    assert (await db["balances"].find_one({"user": "u"}))["tokenCredits"] == 500 + 100 - 50
    assert len(await rows(db, context="admin")) == 100


async def test_every_admin_operation_racing_the_hot_path(
    db: Any, clock: FakeClock, make_racing: Make
) -> None:
    """All admin operations interleaved with lazy refills and spends: each call lands
    once, and the ledger accounts for every credit that did not go to a spend."""
    refiller = make_racing(TIERS)
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    calls = [
        *(refiller.refill_now("u", actor="a", reason="r") for _ in range(5)),
        *(refiller.grant("u", 7, actor="a", reason="r") for _ in range(5)),
        *(refiller.set_auto_refill("u", flag, actor="a") for flag in (False, True) * 3),
        *(refiller.set_tier("u", tier, actor="a") for tier in ("heavy", "regular") * 3),
        *(refiller.ensure_balance("u") for _ in range(20)),
        *(refiller.spend("u", 3) for _ in range(20)),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    spent = sum(3 for r in results[-20:] if not isinstance(r, BaseException))
    assert all(
        not isinstance(r, BaseException) or isinstance(r, InsufficientCredits) for r in results
    )
    refilled_now = sum(1 for r in results[:5] if not isinstance(r, BaseException) and r.refilled)
    assert refilled_now >= 1  # a refill_now that would add nothing writes nothing
    assert len(await rows(db, context="refillNow")) == refilled_now
    assert len(await rows(db, context="admin")) == 5
    assert len(await rows(db, context="setAutoRefill")) == 6
    assert len(await rows(db, context="setTier")) == 6
    all_rows = await rows(db)
    final = (await db["balances"].find_one({"user": "u"}))["tokenCredits"]
    assert final == sum(r["rawAmount"] for r in all_rows) - spent
    assert await db["balances"].count_documents({"pendingLedger": {"$exists": True}}) == 0
