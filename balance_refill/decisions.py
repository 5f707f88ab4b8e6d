"""Refill decisions: pure functions of (document state, policy, now).

`BalanceRefiller` reads a document, asks these functions what to do, and writes the
answer with a compare-and-swap; the sweep does the same. Nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from ._docs import HISTORY_LENGTH, BalanceDoc
from ._ids import Credits
from .periods import is_due, next_refill_at, periods_elapsed
from .policy import AdaptiveAmount, RefillMode, RefillPolicy, TieredPolicy


@dataclass(frozen=True, slots=True)
class RefillPlan:
    """What one refill does: the tier it applies (after activity rules), the amount it
    uses (fixed or adaptive), the balance before and after, and the spend history the
    document keeps afterwards (oldest period first). `before` and `after` are stored
    balances; `reserved` is what LibreChat's in-flight requests hold of them."""

    tier: str
    policy: RefillPolicy
    before: Credits
    after: Credits
    amount: Credits
    previous_tier: str | None = None
    history: tuple[Credits, ...] = ()
    reserved: Credits = 0

    @property
    def granted(self) -> Credits:
        return self.after - self.before

    @property
    def available_after(self) -> Credits:
        """What the user can spend after the refill."""
        return self.after - self.reserved


def refill_level(mode: RefillMode, amount: Credits, cap: int | None, before: Credits) -> Credits:
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


def closing_history(tiers: TieredPolicy, doc: BalanceDoc, now: datetime) -> tuple[Credits, ...]:
    """The spend history after closing the current period at `now`: the credits spent
    since the last refill, then a zero for each whole period the user missed."""
    missed = 0
    if doc.last_refill is not None:
        period = tiers.tiers[period_tier(tiers, doc)].period
        missed = max(0, periods_elapsed(period, doc.last_refill, now, cap=HISTORY_LENGTH + 1) - 1)
    history = (*doc.history, doc.spent, *([0] * missed))
    return history[-HISTORY_LENGTH:]


def apply_rules(
    tiers: TieredPolicy, tier: str, history: tuple[Credits, ...], *, pinned: bool
) -> str:
    """The tier the activity rules move a user to (the first rule that fires wins)."""
    if pinned:
        return tier
    for rule in tiers.rules:
        if rule.from_tier != tier:
            continue
        allowance = tiers.tiers[rule.from_tier].amount
        recent = history[-rule.of_last :]
        if rule.min_usage is not None:
            hits = sum(spent >= rule.min_usage * allowance for spent in recent)
        else:
            assert rule.max_usage is not None  # noqa: S101 - guaranteed by validation
            hits = sum(spent < rule.max_usage * allowance for spent in recent)
        if hits >= rule.periods:
            return rule.to_tier
    return tier


def adaptive_amount(adaptive: AdaptiveAmount, base: int, history: tuple[Credits, ...]) -> int:
    """EWMA of spend per period (starting from `base`) times headroom, clamped."""
    estimate = float(base)
    for spent in history:
        estimate = adaptive.alpha * spent + (1 - adaptive.alpha) * estimate
    sized = math.ceil(estimate * adaptive.headroom - 1e-9)
    return min(adaptive.max_amount, max(adaptive.min_amount, sized))


def plan_refill(
    tiers: TieredPolicy,
    doc: BalanceDoc,
    now: datetime,
    needed: Credits = 0,
    *,
    force: bool = False,
) -> RefillPlan | None:
    """The refill due for `doc` at `now`, or None.

    Due when all hold: auto refill is on (for the user and the tier), the period has
    elapsed, and the available balance (credits not reserved by LibreChat's in-flight
    requests) is below max(threshold, needed). `force` (an admin's `refill_now`) skips
    all three and leaves the tier alone. Never while LibreChat's own refill is settling.
    The activity rules then pick the tier, whose amount (fixed or adaptive), mode and cap
    apply to the available balance. A refill that would change nothing is not made
    (unless forced).
    """
    if doc.pending_refill:
        return None
    tier = assigned_tier(tiers, doc)
    if not force:
        if not auto_refill_on(tiers, doc) or not period_elapsed(tiers, doc, now):
            return None
        if doc.available >= max(tiers.tiers[tier].effective_threshold, needed):
            return None
    history = closing_history(tiers, doc, now)
    new_tier = tier if force else apply_rules(tiers, tier, history, pinned=doc.pinned)
    policy = tiers.tiers[new_tier]
    amount = policy.amount
    if policy.adaptive is not None:
        amount = adaptive_amount(policy.adaptive, policy.amount, history)
    level = refill_level(policy.mode, amount, policy.max_balance, doc.available)
    # Unchanged stays exactly unchanged (a float's round trip through `available` may not).
    after = doc.balance if level == doc.available else level + doc.reserved
    if after == doc.balance and not force and new_tier == tier:
        return None
    return RefillPlan(
        tier=new_tier,
        policy=policy,
        before=doc.balance,
        after=after,
        amount=amount,
        previous_tier=tier if new_tier != tier else None,
        history=history,
        reserved=doc.reserved,
    )
