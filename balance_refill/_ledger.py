"""Ledger rows in LibreChat's transaction shape. The library only ever inserts rows.

Every row has `tokenType: "credits"`, `rate: 1` and `tokenValue == rawAmount` (the
credits the change added; negative when it took some away), as LibreChat's
`transactionSchema` expects, plus `balanceBefore`, `balanceAfter` and
`source: "balance_refill"`.
"""

from __future__ import annotations

from datetime import datetime

from ._schema import Update
from ._validate import Credits, UserId

AUTO_REFILL = "autoRefill"
REFILL_RESET = "refillReset"  # an automatic `reset` that lowered the balance: LibreChat's
# autoRefill rows only ever add, so a lowering gets a context of its own
ADMIN = "admin"
SET_BALANCE = "setBalance"
SET_TIER = "setTier"
SET_AUTO_REFILL = "setAutoRefill"
REFILL_NOW = "refillNow"
TIER_CHANGE = "tierChange"  # the activity rules moved the user without adding credits
SOURCE = "balance_refill"


def row(
    user: UserId,
    now: datetime,
    *,
    context: str,
    before: Credits,
    after: Credits,
    **extra: object,
) -> Update:
    """One row recording a change of `before` to `after` (extra fields with a None value
    are left out). Its `_id` is the op id of the write that carries it, set by the
    commit loop."""
    amount = after - before
    if context == AUTO_REFILL and amount < 0:
        context = REFILL_RESET
    shaped: Update = {
        "user": user,
        "tokenType": "credits",
        "context": context,
        "rawAmount": amount,
        "tokenValue": amount,
        "rate": 1,
        "createdAt": now,
        "updatedAt": now,
        "balanceBefore": before,
        "balanceAfter": after,
        "source": SOURCE,
    }
    shaped.update({key: value for key, value in extra.items() if value is not None})
    return shaped
