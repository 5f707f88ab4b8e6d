"""Refill decisions: pure functions of (document state, policy, now).

`BalanceRefiller` reads a document, asks these functions what to do, and writes the
answer with a compare-and-swap; the sweep does the same. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ._docs import BalanceDoc
from .periods import is_due, next_refill_at
from .policy import RefillMode, RefillPolicy, TieredPolicy


@dataclass(frozen=True, slots=True)
class RefillPlan:
    """What one refill does: the tier it applies, and the balance before and after."""

    tier: str
    policy: RefillPolicy
    before: int
    after: int

    @property
    def granted(self) -> int:
        return self.after - self.before


def refill_level(mode: RefillMode, amount: int, cap: int | None, before: int) -> int:
    """The balance a refill leaves: top_up never lowers, add adds, reset sets; a cap
    limits what a refill brings but never takes away credits already held."""
    if mode == "reset":
        return amount if cap is None else min(amount, cap)
    target = before + amount if mode == "add" else max(before, amount)
    if cap is not None:
        target = max(before, min(target, cap))
    return target


def assigned_tier(tiers: TieredPolicy, doc: BalanceDoc) -> str:
    """The tier stored on the document (missing or unknown: the default tier)."""
    return tiers.tier_of(doc.tier)


def period_tier(tiers: TieredPolicy, doc: BalanceDoc) -> str:
    """The tier whose period governs the current period: the one applied at the last
    refill, so a tier change mid-period never makes a second refill due early."""
    if doc.refill_tier is not None and doc.refill_tier in tiers.tiers:
        return doc.refill_tier
    return assigned_tier(tiers, doc)


def auto_refill_on(tiers: TieredPolicy, doc: BalanceDoc) -> bool:
    return doc.auto_refill and tiers.tiers[assigned_tier(tiers, doc)].auto_refill


def next_refill(tiers: TieredPolicy, doc: BalanceDoc, now: datetime) -> datetime | None:
    """Earliest time another automatic refill can happen (None when auto refill is off)."""
    if not auto_refill_on(tiers, doc):
        return None
    if doc.last_refill is None:
        return now
    return next_refill_at(tiers.tiers[period_tier(tiers, doc)].period, doc.last_refill)


def period_elapsed(tiers: TieredPolicy, doc: BalanceDoc, now: datetime) -> bool:
    return is_due(tiers.tiers[period_tier(tiers, doc)].period, doc.last_refill, now)


def plan_refill(
    tiers: TieredPolicy, doc: BalanceDoc, now: datetime, needed: int = 0, *, force: bool = False
) -> RefillPlan | None:
    """The refill due for `doc` at `now`, or None.

    Due when all hold: auto refill is on (for the user and the tier), the period has
    elapsed, and the balance is below max(threshold, needed). `force` (an admin's
    `refill_now`) skips all three. A refill that would change nothing is not made.
    """
    tier = assigned_tier(tiers, doc)
    policy = tiers.tiers[tier]
    if not force:
        if not auto_refill_on(tiers, doc) or not period_elapsed(tiers, doc, now):
            return None
        if doc.balance >= max(policy.effective_threshold, needed):
            return None
    after = refill_level(policy.mode, policy.amount, policy.max_balance, doc.balance)
    if after == doc.balance and not force:
        return None
    return RefillPlan(tier=tier, policy=policy, before=doc.balance, after=after)
