"""Ledger rows in LibreChat's transaction shape. The library only ever inserts rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId

from ._ids import Credits
from .decisions import RefillPlan

AUTO_REFILL = "autoRefill"
REFILL_RESET = "refillReset"  # a `reset` refill that lowered the balance (LibreChat's
# autoRefill rows only ever add, so a lowering gets a context of its own)
ADMIN = "admin"
SET_BALANCE = "setBalance"
SET_TIER = "setTier"
SET_AUTO_REFILL = "setAutoRefill"
REFILL_NOW = "refillNow"
SOURCE = "balance_refill"


def refill_row(
    row_id: ObjectId,
    user: Any,
    now: datetime,
    plan: RefillPlan,
    *,
    context: str = AUTO_REFILL,
    actor: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The row recording one refill: `rawAmount` and `tokenValue` are the credits added
    (negative, under `refillReset`, when a reset lowered the balance)."""
    if context == AUTO_REFILL and plan.granted < 0:
        context = REFILL_RESET
    row: dict[str, Any] = {
        "_id": row_id,
        "user": user,
        "tokenType": "credits",
        "context": context,
        "rawAmount": plan.granted,
        "tokenValue": plan.granted,
        "rate": 1,
        "createdAt": now,
        "updatedAt": now,
        "mode": plan.policy.mode,
        "tier": plan.tier,
        "balanceBefore": plan.before,
        "balanceAfter": plan.after,
        "source": SOURCE,
    }
    if plan.previous_tier is not None:
        row["previousTier"] = plan.previous_tier
    if actor is not None:
        row["actor"] = actor
    if reason is not None:
        row["reason"] = reason
    return row


def change_row(
    row_id: ObjectId,
    user: Any,
    now: datetime,
    *,
    context: str,
    before: Credits,
    after: Credits,
    actor: str,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The row recording an admin change; `rawAmount` is the difference it made."""
    row: dict[str, Any] = {
        "_id": row_id,
        "user": user,
        "tokenType": "credits",
        "context": context,
        "rawAmount": after - before,
        "tokenValue": after - before,
        "rate": 1,
        "createdAt": now,
        "updatedAt": now,
        "balanceBefore": before,
        "balanceAfter": after,
        "actor": actor,
        "source": SOURCE,
    }
    if reason is not None:
        row["reason"] = reason
    if extra:
        row.update(extra)
    return row
