"""Ledger rows in LibreChat's transaction shape, field by field (tests/MUTATION.md).

Every row the library writes carries the same fields: LibreChat's (`tokenType`,
`context`, `rawAmount`, `tokenValue`, `rate`, `createdAt`, `updatedAt`), ours
(`balanceBefore`, `balanceAfter`, `source`) and the extras of the operation. Only an
automatic refill that lowers the balance changes its context.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from balance_refill import BalanceRefiller, RefillPolicy, TieredPolicy, TierRule
from balance_refill._ledger import ADMIN, AUTO_REFILL, REFILL_NOW, REFILL_RESET, SOURCE, row
from balance_refill.testing import FakeClock

Make = Callable[..., BalanceRefiller]
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
SHAPE = {
    "_id",
    "user",
    "tokenType",
    "context",
    "rawAmount",
    "tokenValue",
    "rate",
    "createdAt",
    "updatedAt",
    "balanceBefore",
    "balanceAfter",
    "source",
}


def test_row_shape() -> None:
    """A row is LibreChat's credit transaction plus our before/after and source;
    extras with no value are left out."""
    assert row("u", NOW, context=ADMIN, before=10, after=12.5, actor="ops", reason=None) == {
        "user": "u",
        "tokenType": "credits",
        "context": "admin",
        "rawAmount": 2.5,
        "tokenValue": 2.5,
        "rate": 1,
        "createdAt": NOW,
        "updatedAt": NOW,
        "balanceBefore": 10,
        "balanceAfter": 12.5,
        "source": "balance_refill",
        "actor": "ops",
    }
    assert SOURCE == "balance_refill"


@pytest.mark.parametrize(
    ("context", "before", "after", "expected"),
    [
        (AUTO_REFILL, 10, 100, AUTO_REFILL),
        (AUTO_REFILL, 100, 100, AUTO_REFILL),  # a tier move that grants nothing
        (AUTO_REFILL, 5000.5, 1000, REFILL_RESET),  # a reset that lowers
        (AUTO_REFILL, 100, 99.5, REFILL_RESET),
        (ADMIN, 100, 50, ADMIN),  # corrections keep their own context
        (REFILL_NOW, 100, 50, REFILL_NOW),
    ],
)
def test_only_a_lowering_automatic_refill_changes_context(
    context: str, before: float, after: float, expected: str
) -> None:
    """`autoRefill` rows only ever add (as LibreChat's); a lowering one is `refillReset`."""
    shaped = row("u", NOW, context=context, before=before, after=after)
    assert shaped["context"] == expected
    assert shaped["rawAmount"] == shaped["tokenValue"] == after - before


async def ledger_rows(db: Any) -> list[dict[str, Any]]:
    return [r async for r in db["transactions"].find({}, sort=[("createdAt", 1), ("_id", 1)])]


async def test_every_written_row_has_the_full_shape(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """Rows of a refill and of each admin change carry every field, `updatedAt` equal to
    `createdAt`, our source, and the op id of their write as `_id`."""
    refiller = make_refiller(policy=RefillPolicy(amount=100, interval="30d", start_balance=0))
    await refiller.ensure_balance("u")
    clock.advance(timedelta(days=31))
    await refiller.ensure_balance("u")
    await refiller.grant("u", 5, actor="ops", reason="welcome")
    await refiller.set_balance("u", 7.5, actor="ops", reason="fix")
    await refiller.set_tier("u", "default", actor="ops", pinned=True)
    rows = await ledger_rows(db)
    assert [r["context"] for r in rows] == ["autoRefill", "admin", "setBalance", "setTier"]
    for written in rows:
        assert set(written) >= SHAPE
        assert written["updatedAt"] == written["createdAt"]
        assert written["source"] == "balance_refill"
        assert (written["tokenType"], written["rate"]) == ("credits", 1)
        assert written["tokenValue"] == written["rawAmount"]
        assert written["rawAmount"] == written["balanceAfter"] - written["balanceBefore"]
    stored = await db["balances"].find_one({"user": "u"})
    assert stored["lastOpId"] == rows[-1]["_id"]


async def test_a_tier_move_that_grants_nothing_is_a_tier_change(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A rule's tier move that adds no credits is no refill: it writes a `tierChange` row
    (amount 0), reports refilled=False, and leaves the period running."""
    tiers = TieredPolicy(
        tiers={
            "free": RefillPolicy(amount=100, interval="30d", threshold=200),
            "pro": RefillPolicy(amount=100, interval="30d", threshold=200),
        },
        default_tier="free",
        rules=(TierRule(from_tier="free", to_tier="pro", min_usage=0.0),),
    )
    refiller = make_refiller(policy=tiers)
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 150, "lastRefill": clock() - timedelta(days=31)}
    )
    state = await refiller.ensure_balance("u")
    assert (state.tier, state.balance, state.granted, state.refilled) == ("pro", 150, 0, False)
    [written] = await ledger_rows(db)
    assert (written["context"], written["rawAmount"], written["tier"]) == ("tierChange", 0, "pro")
    assert written["previousTier"] == "free"
    doc = await db["balances"].find_one({"user": "u"})
    assert doc["lastRefill"] == clock() - timedelta(days=31)  # no new period started
    assert doc["tier"] == "pro"
