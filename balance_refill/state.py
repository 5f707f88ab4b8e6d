"""The value every balance operation returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class BalanceState:
    """A user's balance after an operation.

    `refilled` says whether this call refilled, `granted` how many credits it added
    (negative only for a `reset` refill that lowered the balance). `next_refill_at` is the
    earliest time another automatic refill can happen, or None when auto refill is off.
    """

    user_id: Any
    balance: int
    refilled: bool
    granted: int
    last_refill: datetime | None
    next_refill_at: datetime | None
    tier: str = "default"
    auto_refill: bool = True
    pinned: bool = False
    spent_since_refill: int = 0
    last_seen: datetime | None = None
