"""The value every balance operation returns."""

from __future__ import annotations

from collections.abc import Callable
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


def _state_builder() -> Callable[..., BalanceState]:
    """A constructor of `BalanceState` for the hot path, equal to calling the class.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`; setting
    the slots through their own descriptors builds the same object in half the time (one
    is built on every call)."""
    new = object.__new__
    slot = BalanceState.__dict__
    s_user, s_balance, s_refilled, s_granted, s_last, s_next = (
        slot[name].__set__
        for name in ("user_id", "balance", "refilled", "granted", "last_refill", "next_refill_at")
    )
    s_tier, s_auto, s_pinned, s_spent, s_seen = (
        slot[name].__set__
        for name in ("tier", "auto_refill", "pinned", "spent_since_refill", "last_seen")
    )

    def build(  # noqa: PLR0917 - one argument a field, positional like the class's
        user_id: UserId,
        balance: Credits,
        refilled: bool,
        granted: Credits,
        last_refill: datetime | None,
        next_refill_at: datetime | None,
        tier: str,
        auto_refill: bool,
        pinned: bool,
        spent_since_refill: Credits,
        last_seen: datetime | None,
    ) -> BalanceState:
        state: BalanceState = new(BalanceState)
        s_user(state, user_id)
        s_balance(state, balance)
        s_refilled(state, refilled)
        s_granted(state, granted)
        s_last(state, last_refill)
        s_next(state, next_refill_at)
        s_tier(state, tier)
        s_auto(state, auto_refill)
        s_pinned(state, pinned)
        s_spent(state, spent_since_refill)
        s_seen(state, last_seen)
        return state

    return build


new_state = _state_builder()
"""`new_state(*values)` is `BalanceState(*values)`, every field given, built faster."""
