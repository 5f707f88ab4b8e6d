"""The decisions: pure functions of (a user's state, the policy, now). No I/O, no storage.

`UserState` is what a decision needs to know about one user, free of how it is stored.
The storage layer reads a document into a `UserState`, these functions say what to do,
and the storage layer writes the answer with a compare-and-swap.
"""

from __future__ import annotations

import enum
import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from ._validate import Credits
from .periods import is_due, next_refill_at, periods_elapsed
from .policy import AdaptiveAmount, RefillMode, RefillPolicy, TieredPolicy

HISTORY_LENGTH = 6
"""Periods of spend history kept per user (the activity rules look at most this far)."""


class UserState(NamedTuple):
    """One user's state as the decisions see it (immutable; a named tuple because one is
    built on every call of the hot path, and a tuple builds several times faster than a
    frozen dataclass).

    `balance` is the stored balance; `reserved` what LibreChat's in-flight requests hold
    of it. `paused` is the library's per-user pause; `refill_pending` says LibreChat's own
    refill is still writing its ledger row. `tier` is the stored tier (None: default),
    `refill_tier` the tier whose period governs the current period.
    """

    balance: Credits = 0
    reserved: Credits = 0
    last_refill: datetime | None = None
    paused: bool = False
    tier: str | None = None
    refill_tier: str | None = None
    pinned: bool = False
    spent: Credits = 0
    history: tuple[Credits, ...] = ()
    refill_pending: bool = False

    @property
    def available(self) -> Credits:
        """Credits not held by LibreChat's in-flight requests (LibreChat's own rule)."""
        return self.balance - self.reserved


class SpendOutcome(enum.Enum):
    """What the one-call spend did."""

    CHARGED = "charged"
    DUPLICATE = "duplicate"  # the request id was charged before: nothing charged again
    INSUFFICIENT = "insufficient"


def spend_outcome(state: UserState, amount: Credits, *, seen: bool) -> SpendOutcome:
    """The spend's rule: a request seen before is not charged again; otherwise it is
    charged when the available balance covers it. The storage layer runs the same rule
    on the server and this function tells, from the state before, what it did."""
    if seen:
        return SpendOutcome.DUPLICATE
    if state.available >= amount:
        return SpendOutcome.CHARGED
    return SpendOutcome.INSUFFICIENT


def after_charge(state: UserState, amount: Credits) -> UserState:
    """The state after a spend of `amount` that charged: the balance down and the
    period's spend up by `amount`, which is what `_schema.spend_pipeline` does on the
    server and what `Engine.state` reports (the simulator applies it to each charge)."""
    return state._replace(balance=state.balance - amount, spent=state.spent + amount)


def request_key(request_id: str) -> int:
    """The 64-bit key kept for a request id (8 bytes instead of the whole id)."""
    return int.from_bytes(
        hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big", signed=True
    )


def random_request_key() -> int:
    """A key for a spend that came without a request id (makes the library's own retries safe)."""
    return secrets.randbits(64) - 2**63


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
    tier_only: bool = False
    """True: the activity rules moved the user to another tier and no credits change
    (no refill is made; the tier is written with a `tierChange` ledger row)."""
    period_tier: str | None = None
    """For a tier-only change: the tier whose period keeps governing the current period."""

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


def assigned_tier(tiers: TieredPolicy, state: UserState) -> str:
    """The tier stored on the document (missing or unknown: the default tier)."""
    return tiers.tier_of(state.tier)


def period_tier(tiers: TieredPolicy, state: UserState) -> str:
    """The tier whose period governs the current period: the one applied at the last
    refill, so a tier change mid-period never makes a second refill due early."""
    if state.refill_tier is not None and state.refill_tier in tiers.tiers:
        return state.refill_tier
    return assigned_tier(tiers, state)


def auto_refill_on(tiers: TieredPolicy, state: UserState) -> bool:
    """Automatic refills are on for the user (not paused) and for the user's tier."""
    return not state.paused and tiers.tiers[assigned_tier(tiers, state)].auto_refill


def next_refill(tiers: TieredPolicy, state: UserState, now: datetime) -> datetime | None:
    """Earliest time another automatic refill can happen (None when auto refill is off)."""
    if not auto_refill_on(tiers, state):
        return None
    if state.last_refill is None:
        return now
    return next_refill_at(tiers.tiers[period_tier(tiers, state)].period, state.last_refill)


def outlook(
    tiers: TieredPolicy, state: UserState, now: datetime
) -> tuple[str, bool, datetime | None]:
    """`assigned_tier`, `auto_refill_on` and `next_refill` at once (what every call
    reports; the tier is looked up once)."""
    tier = tiers.tier_of(state.tier)
    if state.paused or not tiers.tiers[tier].auto_refill:
        return tier, False, None
    if state.last_refill is None:
        return tier, True, now
    governing = tiers.tiers.get(state.refill_tier) if state.refill_tier is not None else None
    period = (tiers.tiers[tier] if governing is None else governing).period
    return tier, True, next_refill_at(period, state.last_refill)


def period_elapsed(tiers: TieredPolicy, state: UserState, now: datetime) -> bool:
    return is_due(tiers.tiers[period_tier(tiers, state)].period, state.last_refill, now)


def closing_history(tiers: TieredPolicy, state: UserState, now: datetime) -> tuple[Credits, ...]:
    """The spend history after closing the current period at `now`: the credits spent
    since the last refill, then a zero for each whole period the user missed."""
    missed = 0
    if state.last_refill is not None:
        period = tiers.tiers[period_tier(tiers, state)].period
        missed = max(0, periods_elapsed(period, state.last_refill, now, cap=HISTORY_LENGTH + 1) - 1)
    history = (*state.history, state.spent, *([0] * missed))
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
    state: UserState,
    now: datetime,
    needed: Credits = 0,
    *,
    force: bool = False,
) -> RefillPlan | None:
    """The refill due for `state` at `now`, or None.

    Nothing is planned unless auto refill is on (for the user and the tier) and the
    period has elapsed. The activity rules then pick the tier from the closed periods
    (periods the user stayed away count as zero spend), and a refill is due when the
    available balance (credits not reserved by LibreChat's in-flight requests) is below
    max(that tier's threshold, needed). Its amount (fixed or adaptive), mode and cap apply
    to the available balance. A refill that would change nothing is not made; if the
    rules moved the user, the plan is then a tier-only change (`tier_only`), which adds
    no credits and does not start a new period. `force` (an admin's `refill_now`) skips
    the pause, period and threshold tests and leaves the tier alone. Never while
    LibreChat's own refill is settling.
    """
    if state.refill_pending:
        return None
    tier = tiers.tier_of(state.tier)  # assigned_tier, auto_refill_on, period_elapsed inlined
    if not force:
        if state.paused or not tiers.tiers[tier].auto_refill:
            return None
        governing = tiers.tiers.get(state.refill_tier) if state.refill_tier is not None else None
        period = (tiers.tiers[tier] if governing is None else governing).period
        if not is_due(period, state.last_refill, now):
            return None
        if not tiers.rules and state.available >= max(
            tiers.tiers[tier].effective_threshold, needed
        ):
            return None  # no rule can move the user: the threshold alone decides
    history = closing_history(tiers, state, now)
    new_tier = tier if force else apply_rules(tiers, tier, history, pinned=state.pinned)
    policy = tiers.tiers[new_tier]
    if not force and state.available >= max(policy.effective_threshold, needed):
        return _tier_only(tiers, state, tier, new_tier)
    amount = policy.amount
    if policy.adaptive is not None:
        amount = adaptive_amount(policy.adaptive, policy.amount, history)
    level = refill_level(policy.mode, amount, policy.max_balance, state.available)
    # Unchanged stays exactly unchanged (a float's round trip through `available` may not).
    after = state.balance if level == state.available else level + state.reserved
    if after == state.balance and not force:
        return _tier_only(tiers, state, tier, new_tier)
    return RefillPlan(
        tier=new_tier,
        policy=policy,
        before=state.balance,
        after=after,
        amount=amount,
        previous_tier=tier if new_tier != tier else None,
        history=history,
        reserved=state.reserved,
    )


def _tier_only(
    tiers: TieredPolicy, state: UserState, tier: str, new_tier: str
) -> RefillPlan | None:
    """No credits to add: a tier change if the rules moved the user, else nothing."""
    if new_tier == tier:
        return None
    return RefillPlan(
        tier=new_tier,
        policy=tiers.tiers[new_tier],
        before=state.balance,
        after=state.balance,
        amount=0,
        previous_tier=tier,
        history=state.history,
        reserved=state.reserved,
        tier_only=True,
        period_tier=period_tier(tiers, state),
    )


def state_after(
    state: UserState, plan: RefillPlan, now: datetime, *, charge: Credits = 0
) -> UserState:
    """The user's state after `plan` is written at `now` (charging `charge` in the same
    write): what the storage layer's update leaves, as the decisions see it."""
    if plan.tier_only:
        return state._replace(tier=plan.tier, refill_tier=plan.period_tier)
    return state._replace(
        balance=plan.after - charge,
        last_refill=now,
        tier=plan.tier if plan.previous_tier is not None else state.tier,
        refill_tier=plan.tier,
        spent=charge,
        history=plan.history,
    )


SkipReason = Literal["inactive", "not_due", "paused", "above_threshold", "raced"]
SKIP_REASONS: tuple[SkipReason, ...] = ("inactive", "not_due", "paused", "above_threshold", "raced")


def skip_reason(tiers: TieredPolicy, state: UserState, now: datetime) -> SkipReason:
    """Why `plan_refill` planned nothing for a user (for the sweep's report)."""
    if state.refill_pending:
        return "raced"  # LibreChat's own refill is settling
    if not auto_refill_on(tiers, state):
        return "paused"
    if not period_elapsed(tiers, state, now):
        return "not_due"
    return "above_threshold"
