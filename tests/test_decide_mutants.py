"""The decisions, pinned where mutation testing found the older tests loose (tests/MUTATION.md).

Request keys stay the same across releases and fit BSON's int64; a stored refill tier
that no longer exists is ignored; usage rules compare strictly where they say so; a
threshold of 0 refills only for what is needed; a forced refill applies no rule and
keeps a fractional balance exact; the skip reasons are the sweep's report keys.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from balance_refill.decide import (
    SKIP_REASONS,
    UserState,
    closing_history,
    period_tier,
    plan_refill,
    random_request_key,
    request_key,
    skip_reason,
)
from balance_refill.policy import (
    AdaptiveAmount,
    RefillPolicy,
    TieredPolicy,
    TierRule,
    as_tiered,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DUE = NOW - timedelta(days=40)
INT64 = range(-(2**63), 2**63)


def two_tiers(*rules: TierRule) -> TieredPolicy:
    return TieredPolicy(
        tiers={
            "free": RefillPolicy(amount=100, interval="30d"),
            "pro": RefillPolicy(amount=1_000, interval="7d"),
        },
        default_tier="free",
        rules=rules,
    )


# -- request keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_id", "key"),
    [
        ("r1", -8944841499210040016),
        ("", -1970711489451281740),
        ("a", 4681665781835383343),
        ("request-42", -491170373978164191),
    ],
)
def test_request_keys_are_stable(request_id: str, key: int) -> None:
    """A request id's key never changes between releases: a retry sent across an upgrade
    must find the key its first attempt stored (blake2b, 8 bytes, big-endian, signed)."""
    assert request_key(request_id) == key


def test_random_request_keys_fit_int64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys for spends without an id span exactly BSON's int64, both ends included."""
    asked: list[int] = []

    def extreme(bits: int) -> int:
        asked.append(bits)
        return (2**bits - 1) if len(asked) % 2 else 0

    monkeypatch.setattr(secrets, "randbits", extreme)
    assert random_request_key() == 2**63 - 1
    assert random_request_key() == -(2**63)
    assert asked == [64, 64]


def test_random_request_keys_are_signed_and_spread() -> None:
    """Real random keys all fit int64 and take both signs."""
    keys = [random_request_key() for _ in range(500)]
    assert all(key in INT64 for key in keys)
    assert any(key < 0 for key in keys)
    assert any(key >= 0 for key in keys)
    assert len(set(keys)) == len(keys)


# -- tiers and rules ------------------------------------------------------------------------


def test_unknown_refill_tier_falls_back_to_the_assigned_tier() -> None:
    """A stored `refillTier` naming a tier the policy no longer has is ignored."""
    tiers = two_tiers()
    assert period_tier(tiers, UserState(tier="pro", refill_tier="gone")) == "pro"
    assert period_tier(tiers, UserState(tier="pro", refill_tier="free")) == "free"
    assert period_tier(tiers, UserState(tier=None, refill_tier=None)) == "free"
    state = UserState(
        balance=0, tier="pro", refill_tier="gone", last_refill=NOW - timedelta(days=8)
    )
    plan = plan_refill(tiers, state, NOW)
    assert plan is not None
    assert plan.tier == "pro"


def test_history_of_a_never_refilled_user_is_only_its_spend() -> None:
    """Without a last refill no period was missed: the history gains the spend alone."""
    tiers = two_tiers()
    assert closing_history(tiers, UserState(spent=5, history=(1, 2)), NOW) == (1, 2, 5)
    assert closing_history(tiers, UserState(spent=5), NOW) == (5,)


def test_history_counts_missed_periods_as_zero() -> None:
    """Each whole period missed since the last refill adds a zero, oldest spend first."""
    tiers = two_tiers()
    state = UserState(spent=7, history=(3,), last_refill=NOW - timedelta(days=95))
    assert closing_history(tiers, state, NOW) == (3, 7, 0, 0)
    long_gone = UserState(spent=7, history=(3,), last_refill=NOW - timedelta(days=3000))
    assert closing_history(tiers, long_gone, NOW) == (0,) * 6


@pytest.mark.parametrize(("spent", "demoted"), [(49, True), (50, False), (51, False)])
def test_demotion_usage_is_strictly_below(spent: int, demoted: bool) -> None:
    """A `max_usage` rule fires only for usage strictly below the share (50 of 100 is not)."""
    tiers = two_tiers(TierRule(from_tier="free", to_tier="pro", max_usage=0.5))
    state = UserState(balance=0, tier="free", spent=spent, last_refill=DUE)
    plan = plan_refill(tiers, state, NOW)
    assert plan is not None
    assert (plan.tier == "pro") == demoted


@pytest.mark.parametrize(("spent", "promoted"), [(79, False), (80, True)])
def test_promotion_usage_is_at_least(spent: int, promoted: bool) -> None:
    """A `min_usage` rule fires from the share itself upwards (80 of 100 is 0.8)."""
    tiers = two_tiers(TierRule(from_tier="free", to_tier="pro", min_usage=0.8))
    state = UserState(balance=0, tier="free", spent=spent, last_refill=DUE)
    plan = plan_refill(tiers, state, NOW)
    assert plan is not None
    assert (plan.tier == "pro") == promoted


def test_forced_refill_applies_no_rule() -> None:
    """An admin's `refill_now` refills in the user's own tier, whatever the rules say."""
    tiers = two_tiers(TierRule(from_tier="free", to_tier="pro", min_usage=0.0))
    state = UserState(balance=0, tier="free", spent=100, last_refill=NOW)
    plan = plan_refill(tiers, state, NOW, force=True)
    assert plan is not None
    assert (plan.tier, plan.previous_tier, plan.after) == ("free", None, 100)
    due = plan_refill(tiers, UserState(balance=0, tier="free", last_refill=DUE), NOW)
    assert due is not None
    assert due.tier == "pro"


# -- amounts and balances -------------------------------------------------------------------


def test_threshold_zero_refills_only_for_what_is_needed() -> None:
    """With LibreChat's threshold 0, an empty balance is refilled only when a spend needs it."""
    tiers = as_tiered(RefillPolicy(amount=100, interval="30d", threshold=0, mode="add"))
    state = UserState(balance=0, last_refill=DUE)
    assert plan_refill(tiers, state, NOW) is None
    plan = plan_refill(tiers, state, NOW, 1)
    assert plan is not None
    assert plan.after == 100


def test_plan_carries_the_adaptive_amount() -> None:
    """The plan reports the amount it used: the adaptive one, not the tier's base amount."""
    adaptive = AdaptiveAmount(alpha=1.0, headroom=1.0, min_amount=10, max_amount=500)
    tiers = as_tiered(RefillPolicy(amount=100, interval="30d", mode="add", adaptive=adaptive))
    plan = plan_refill(tiers, UserState(balance=0, spent=40, last_refill=DUE), NOW)
    assert plan is not None
    assert (plan.amount, plan.after, plan.granted) == (40, 40, 40)


def test_forced_no_op_keeps_a_fractional_balance_exact() -> None:
    """A forced top-up above the amount leaves 203.6 as 203.6, although
    (203.6 - 44.3) + 44.3 is 203.60000000000002 in floating point."""
    tiers = as_tiered(RefillPolicy(amount=100, interval="30d"))
    state = UserState(balance=203.6, reserved=44.3, last_refill=NOW)
    plan = plan_refill(tiers, state, NOW, force=True)
    assert plan is not None
    assert plan.after == 203.6
    assert plan.granted == 0


# -- skip reasons ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (UserState(balance=0, refill_pending=True, last_refill=DUE), "raced"),
        (UserState(balance=0, paused=True, last_refill=DUE), "paused"),
        (UserState(balance=0, last_refill=NOW), "not_due"),
        (UserState(balance=500, last_refill=DUE), "above_threshold"),
    ],
)
def test_skip_reasons_are_the_report_keys(state: UserState, reason: str) -> None:
    """Each reason the sweep reports is spelled as in `SKIP_REASONS`."""
    tiers = as_tiered(RefillPolicy(amount=100, interval="30d"))
    assert plan_refill(tiers, state, NOW) is None
    assert skip_reason(tiers, state, NOW) == reason
    assert reason in SKIP_REASONS


# -- written against the survivors of the 2026-12-06 run (issues 15 and 21) --------------

from balance_refill import _schema as S  # noqa: E402 - grouped with the tests that use it
from balance_refill.decide import UserState, state_after  # noqa: E402

ADD_AT_THRESHOLD = TieredPolicy.single(
    RefillPolicy(amount=100, interval="1d", mode="add", threshold=100)
)
DEMOTE_QUIET = TieredPolicy(
    tiers={
        "normal": RefillPolicy(amount=100, interval="1d"),
        "heavy": RefillPolicy(amount=1_000, interval="7d"),
    },
    default_tier="normal",
    rules=(TierRule(from_tier="heavy", to_tier="normal", max_usage=0.1, periods=1, of_last=1),),
)


def written(doc: dict[str, object], update: S.Update) -> UserState:
    """The state a server leaves after `update` (the operators `refill_update` uses)."""
    after = dict(doc)
    for op, fields in update.items():
        if op == "$set":
            after.update(fields)
        elif op == "$max":
            for key, value in fields.items():
                old = after.get(key)
                after[key] = value if old is None or value > old else old
        elif op != "$push":
            raise AssertionError(op)
    return S.parse(after).state


def test_a_balance_exactly_at_the_threshold_is_not_refilled() -> None:
    """`add` with the available balance equal to the threshold: nothing is due (the test
    is `>=`, with or without activity rules)."""
    state = UserState(balance=100, last_refill=NOW - timedelta(days=2))
    with_rules = TieredPolicy(
        tiers={
            "std": ADD_AT_THRESHOLD.tiers["default"],
            "other": RefillPolicy(amount=5, interval="1d"),
        },
        default_tier="std",
        rules=(TierRule(from_tier="other", to_tier="std", min_usage=0.5),),
    )
    for tiers in (ADD_AT_THRESHOLD, with_rules):
        assert plan_refill(tiers, state, NOW) is None
        assert plan_refill(tiers, state._replace(balance=99.5), NOW) is not None


@pytest.mark.parametrize("charge", [0, 30, 12.5])
def test_state_after_a_refill_is_what_the_update_writes(charge: float) -> None:
    """`state_after` (what a caller whose reply was lost is told) equals the state the
    refill's update leaves, field by field, with a tier move and a charge."""
    doc: dict[str, object] = {
        "_id": 1, "user": "u", "tokenCredits": 0, "tier": "heavy", "refillTier": "heavy",
        "lastRefill": NOW - timedelta(days=8), "spentSinceRefill": 5, "spendHistory": [3],
    }  # fmt: skip
    before = S.parse(doc).state
    plan = plan_refill(DEMOTE_QUIET, before, NOW)
    assert plan is not None
    assert (plan.tier_only, plan.previous_tier) == (False, "heavy")
    update = S.refill_update(plan, NOW, charge=charge, mirrored={})
    assert state_after(before, plan, NOW, charge=charge) == written(doc, update)


def test_state_after_a_tier_only_change_is_what_the_update_writes() -> None:
    """A demotion that adds nothing: the plan keeps the balance, history and reservations,
    names the tier whose period keeps governing, and `state_after` equals what its update
    writes (tier and refillTier only)."""
    doc: dict[str, object] = {
        "_id": 1, "user": "u", "tokenCredits": 900, "reservedCredits": 7, "tier": "heavy",
        "lastRefill": NOW - timedelta(days=8), "spendHistory": [3, 4],
    }  # fmt: skip
    before = S.parse(doc).state
    plan = plan_refill(DEMOTE_QUIET, before, NOW)
    assert plan is not None
    assert plan.tier_only
    assert (plan.tier, plan.previous_tier, plan.period_tier) == ("normal", "heavy", "heavy")
    assert (plan.amount, plan.history, plan.reserved) == (0, (3, 4), 7)
    assert plan.policy is DEMOTE_QUIET.tiers["normal"]
    assert (plan.before, plan.after, plan.granted) == (900, 900, 0)
    update = S.refill_update(plan, NOW, charge=0, mirrored={})
    assert update["$set"] == {"tier": "normal", "refillTier": "heavy"}
    assert state_after(before, plan, NOW) == written(doc, update)


def test_state_after_a_refill_without_a_move_keeps_a_missing_tier() -> None:
    """A refill that moves nobody leaves a missing `tier` missing (the default tier by
    absence), as its update does: `state_after` must not fill it in."""
    doc: dict[str, object] = {
        "_id": 1, "user": "u", "tokenCredits": 0, "lastRefill": NOW - timedelta(days=2),
    }  # fmt: skip
    before = S.parse(doc).state
    plan = plan_refill(ADD_AT_THRESHOLD, before, NOW)
    assert plan is not None
    assert plan.previous_tier is None
    update = S.refill_update(plan, NOW, charge=0, mirrored={})
    after = state_after(before, plan, NOW)
    assert after.tier is None
    assert after == written(doc, update)
