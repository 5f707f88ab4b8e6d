"""Exercises the public API under mypy --strict (never run, only type-checked)."""

from __future__ import annotations

from datetime import UTC, datetime

from bson import ObjectId
from pymongo import AsyncMongoClient

from balance_refill import (
    AdaptiveAmount,
    BalanceRefiller,
    BalanceRefillError,
    BalanceState,
    InsufficientCredits,
    RefillPolicy,
    SweepReport,
    TieredPolicy,
    TierRule,
)


async def typed_usage() -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        "mongodb://localhost", tz_aware=True
    )
    db = client["LibreChat"]
    policy = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)
    monthly = RefillPolicy(
        amount=5,
        calendar="month",
        timezone="Europe/Paris",
        adaptive=AdaptiveAmount(min_amount=1, max_amount=10),
    )
    rule = TierRule(from_tier="regular", to_tier="heavy", min_usage=0.8, periods=2, of_last=3)
    tiers = TieredPolicy(
        tiers={"regular": policy, "heavy": monthly}, default_tier="regular", rules=(rule,)
    )
    refiller = BalanceRefiller(
        db["balances"], tiers, ledger=db["transactions"], clock=lambda: datetime.now(UTC)
    )
    await refiller.ensure_indexes()
    state: BalanceState = await refiller.ensure_balance(ObjectId(), needed=5)
    when: datetime | None = state.next_refill_at
    try:
        state = await refiller.spend("user-1", 10.5, request_id="req-1")
    except InsufficientCredits as exc:
        balance: float = exc.balance
        del balance
    except BalanceRefillError:
        raise
    del when
    await refiller.flush_pending()
    report: SweepReport = await refiller.sweep(active_within="30d", dry_run=True)
    scanned: int = report.scanned
    del scanned
    await refiller.grant("user-1", 5, actor="ops", reason="typing")
    await refiller.set_tier("user-1", "heavy", actor="ops", pinned=True)
