"""The value every balance operation returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ._validate import Credits, UserId


@dataclass(frozen=True, slots=True)
class BalanceState:
    """A user's balance after an operation.

    `user_id` is the id as stored (a 24-hex string comes back as an ObjectId under the
    default `user_ids="auto"`); `balance` is the stored `tokenCredits`, exactly (LibreChat's
    balances are often fractional). `refilled` says whether this call refilled, `granted`
    how many credits it added (negative only for a `reset` refill that lowered the
    balance). `next_refill_at` is the earliest time another automatic refill can happen,
    or None when auto refill is off.
    """

    user_id: UserId
    balance: Credits
    refilled: bool
    granted: Credits
    last_refill: datetime | None
    next_refill_at: datetime | None
    tier: str = "default"
    auto_refill: bool = True
    pinned: bool = False
    spent_since_refill: Credits = 0
    last_seen: datetime | None = None
