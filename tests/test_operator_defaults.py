"""Defaults that never silently do nothing, and fields that mean what they say (issue 15):
the classic reset resets, a librechat.yaml never turns refills off unseen, tiers follow
activity while a user is away, `granted` and `auto_refill` have one meaning, request ids
remember their amounts, `ensure_indexes` reports instead of raising, and the sweep sees
the activity LibreChat records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import (
    BalanceRefiller,
    IdempotencyConflict,
    PolicyFileError,
    RefillPolicy,
    TieredPolicy,
    TierRule,
)
from balance_refill.policy_file import load_policy_text
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

from .wire import backend

Make = Callable[..., BalanceRefiller]

MONTHLY_RESET = RefillPolicy(amount=1_000, calendar="month", mode="reset")


async def rows(db: Any, **query: Any) -> list[dict[str, Any]]:
    return [r async for r in db["transactions"].find(query)]


# -- 1. the classic monthly reset resets ------------------------------------------------


def test_reset_has_no_default_threshold_and_says_so() -> None:
    """`reset` without a threshold refills every due user; `top_up` and `add` keep the
    threshold at `amount`; `describe()` (what `policy check` prints) says which."""
    assert MONTHLY_RESET.threshold is None
    assert MONTHLY_RESET.effective_threshold == float("inf")
    assert "every due user is reset" in str(MONTHLY_RESET.describe()["threshold_rule"])
    assert RefillPolicy(amount=1_000, interval="30d").threshold == 1_000
    assert RefillPolicy(amount=1_000, interval="30d", mode="add").threshold == 1_000
    explicit = RefillPolicy(amount=1_000, calendar="month", mode="reset", threshold=10)
    assert explicit.effective_threshold == 10
    assert explicit.describe()["threshold_rule"] == "10"


async def test_monthly_reset_lowers_a_granted_balance(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A user granted up to 5,000 is set back to 1,000 at the first activity of the next
    month, with a `refillReset` row (the seed's monthly script sets everyone to the preset)."""
    refiller = make_refiller(policy=MONTHLY_RESET)
    await refiller.ensure_balance("u")
    await refiller.grant("u", 5_000, actor="ops", reason="launch bonus")
    clock.advance(timedelta(days=32))
    state = await refiller.ensure_balance("u")
    assert (state.refilled, state.balance, state.granted) == (True, 1_000, -4_000)
    [reset] = await rows(db, context="refillReset")
    assert (reset["balanceBefore"], reset["balanceAfter"], reset["rawAmount"]) == (
        5_000,
        1_000,
        -4_000,
    )


async def test_reset_with_an_explicit_threshold_still_applies_it(
    make_refiller: Make, clock: FakeClock
) -> None:
    """An explicit threshold keeps a `reset` from touching users at or above it."""
    policy = RefillPolicy(amount=1_000, calendar="month", mode="reset", threshold=100)
    refiller = make_refiller(policy=policy)
    await refiller.ensure_balance("u")
    clock.advance(timedelta(days=32))
    state = await refiller.ensure_balance("u")
    assert (state.refilled, state.balance) == (True, 1_000)  # 0 < 100: reset
    await refiller.spend("u", 500)
    clock.advance(timedelta(days=32))
    state = await refiller.ensure_balance("u")
    assert (state.refilled, state.balance) == (False, 500)  # 500 >= 100: left alone


async def test_the_sweep_resets_users_above_the_amount(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """The sweep reads users above the amount too when `reset` has no threshold."""
    refiller = make_refiller(policy=MONTHLY_RESET)
    old = clock() - timedelta(days=40)
    await db["balances"].insert_many(
        [
            {"user": "rich", "tokenCredits": 9_000, "lastRefill": old},
            {"user": "poor", "tokenCredits": 10, "lastRefill": old},
        ]
    )
    report = await refiller.sweep()
    assert (report.refilled, report.skipped["above_threshold"]) == (2, 0)
    assert await db["balances"].count_documents({"tokenCredits": 1_000}) == 2


# -- 2. a librechat.yaml never turns the library's refills off unseen ---------------------

LIBRECHAT_OFF = """
version: 1.2.1
balance:
  enabled: true
  startBalance: 20000
  autoRefillEnabled: false
  refillIntervalValue: 30
  refillIntervalUnit: days
  refillAmount: 10000
"""


def test_a_librechat_yaml_with_refills_off_is_refused_as_a_policy() -> None:
    """Loading it for a sweep or a refiller fails with one line naming the trap and the fix."""
    with pytest.raises(PolicyFileError, match="would refill nobody") as info:
        load_policy_text(LIBRECHAT_OFF, source="librechat.yaml")
    message = str(info.value)
    assert "autoRefillEnabled is false" in message
    assert "own policy file" in message
    assert "\n" not in message


def test_policy_check_shows_the_trap_as_a_warning() -> None:
    """With a warnings list (what `policy check` passes) the file loads with refills off
    and the same explanation comes back as a warning."""
    warnings: list[str] = []
    policy = load_policy_text(LIBRECHAT_OFF, source="librechat.yaml", warnings=warnings)
    assert isinstance(policy, RefillPolicy)
    assert policy.auto_refill is False
    assert len(warnings) == 1
    assert "would refill nobody" in warnings[0]


def test_an_explicit_override_decides() -> None:
    """`librechat_auto_refill=True` refills on LibreChat's amount while its own switch stays off."""
    policy = load_policy_text(LIBRECHAT_OFF, librechat_auto_refill=True)
    assert isinstance(policy, RefillPolicy)
    assert (policy.auto_refill, policy.amount, str(policy.period)) == (True, 10_000, "30d")


# -- 3. tiers follow activity while a user is away ---------------------------------------

QUIET = TieredPolicy(
    tiers={
        "normal": RefillPolicy(amount=1_000, interval="1d"),
        "heavy": RefillPolicy(amount=10_000, interval="1d"),
    },
    default_tier="normal",
    rules=(
        TierRule(from_tier="heavy", to_tier="normal", max_usage=0.1, periods=3, of_last=3),
        TierRule(from_tier="normal", to_tier="heavy", min_usage=0.8, periods=1, of_last=1),
    ),
)


async def heavy_user_away(db: Any, clock: FakeClock, user: str = "u", days: int = 200) -> None:
    await db["balances"].insert_one(
        {
            "user": user,
            "tokenCredits": 9_000,
            "tier": "heavy",
            "refillTier": "heavy",
            "lastRefill": clock() - timedelta(days=days),
            "spendHistory": [9_000, 9_500, 9_800],
        }
    )


async def test_a_quiet_heavy_user_is_demoted_on_return_without_a_refill_row(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """Away 200 days with 9,000 credits left: the first call demotes the user (quiet
    periods count as zero spend), adds nothing, writes a `tierChange` row and no
    `autoRefill` row, and reports refilled=False, granted 0."""
    await heavy_user_away(db, clock)
    refiller = make_refiller(policy=QUIET)
    state = await refiller.ensure_balance("u")
    assert (state.tier, state.refilled, state.granted, state.balance) == (
        "normal",
        False,
        0,
        9_000,
    )
    assert await rows(db, context="autoRefill") == []
    [change] = await rows(db, context="tierChange")
    assert (change["tier"], change["previousTier"], change["rawAmount"]) == ("normal", "heavy", 0)
    # Nothing more to do: a second call writes nothing.
    again = await refiller.ensure_balance("u")
    assert again.tier == "normal"
    assert len(await rows(db)) == 1


async def test_a_spend_after_demotion_is_not_a_zero_refill(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A spend the balance cannot cover, when the rules demote the user and the new tier
    has nothing to add: the spend is refused, no `autoRefill` row of 0 is written."""
    await heavy_user_away(db, clock)
    refiller = make_refiller(policy=QUIET)
    with pytest.raises(Exception, match="needs 9500"):
        await refiller.spend("u", 9_500)
    assert await rows(db, context="autoRefill") == []
    assert [r["context"] for r in await rows(db)] == ["tierChange"]


async def test_the_sweep_demotes_quiet_users_above_the_threshold(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """The sweep reads due users whatever their balance when rules exist, and reports the
    demotion as a tier change, not as a refill."""
    await heavy_user_away(db, clock)
    refiller = make_refiller(policy=QUIET)
    report = await refiller.sweep()
    assert (report.refilled, report.tier_changes, report.scanned) == (0, 1, 1)
    stored = await db["balances"].find_one({"user": "u"})
    assert stored["tier"] == "normal"


# -- 4 and 5. one meaning per field -------------------------------------------------------


async def test_granted_is_what_the_call_added(make_refiller: Make) -> None:
    """A grant reports the credits it added; a correction and a lowering set_balance
    report the (negative) change."""
    refiller = make_refiller()
    await refiller.ensure_balance("u")
    assert (await refiller.grant("u", 500, actor="ops", reason="r")).granted == 500
    assert (await refiller.grant("u", -200, actor="ops", reason="r")).granted == -200
    assert (await refiller.set_balance("u", 100, actor="ops", reason="r")).granted == -20_200


async def test_auto_refill_is_what_the_library_will_do(make_refiller: Make) -> None:
    """`auto_refill` is False when the user's tier does not refill, not only when paused,
    and agrees with `next_refill_at`."""
    policy = RefillPolicy.from_librechat(
        {"enabled": True, "autoRefillEnabled": False}, auto_refill=False
    )
    refiller = make_refiller(policy=policy)
    state = await refiller.ensure_balance("u")
    assert (state.auto_refill, state.next_refill_at) == (False, None)
    on = make_refiller(policy=RefillPolicy(amount=10, interval="1d"))
    assert (await on.ensure_balance("v")).auto_refill is True
    paused = await on.set_auto_refill("v", False, actor="ops")
    assert (paused.auto_refill, paused.next_refill_at) == (False, None)


# -- 6. idempotency that holds ------------------------------------------------------------


async def test_a_retry_beyond_32_requests_is_still_recognised(make_refiller: Make) -> None:
    """The default window remembers at least 128 ids: a retry 33 (and 127) requests
    back is not charged again."""
    refiller = make_refiller(policy=RefillPolicy(amount=10, interval="30d", start_balance=1_000))
    for i in range(200):
        await refiller.spend("u", 1, request_id=f"r{i}")
    before = (await refiller.get_state("u")).balance
    assert before == 800
    for back in (33, 127):
        assert (await refiller.spend("u", 1, request_id=f"r{199 - back}")).balance == before


async def test_a_reused_id_with_another_amount_is_a_conflict(make_refiller: Make, db: Any) -> None:
    """Reusing a request id with a different amount raises IdempotencyConflict carrying
    the original amount, and changes nothing."""
    refiller = make_refiller()
    await refiller.spend("u", 50, request_id="k")
    before = await db["balances"].find_one({"user": "u"})
    with pytest.raises(IdempotencyConflict) as info:
        await refiller.spend("u", 5_000, request_id="k")
    assert (info.value.original, info.value.given, info.value.operation) == (50, 5_000, "spend")
    after = await db["balances"].find_one({"user": "u"})
    assert (after["tokenCredits"], after["recentRequests"]) == (
        before["tokenCredits"],
        before["recentRequests"],
    )
    assert (await refiller.spend("u", 50, request_id="k")).balance == before["tokenCredits"]


async def test_request_window_is_a_checked_setting(make_refiller: Make) -> None:
    """The window is a constructor setting with a clear error when out of range."""
    with pytest.raises(ValueError, match="request_window"):
        make_refiller(request_window=0)


# -- 8. ensure_indexes never raises after changing something ------------------------------


async def test_ensure_indexes_converts_and_reports_without_raising(
    make_refiller: Make, db: Any
) -> None:
    """Hex-string users are converted and counted; duplicates (including one the
    conversion revealed) are listed; nothing raises, so a host's startup survives."""
    oid = ObjectId()
    await db["balances"].insert_many(
        [{"user": str(oid)}, {"user": oid}, {"user": "dup"}, {"user": "dup"}, {"user": "x"}]
    )
    report = await make_refiller().ensure_indexes()
    assert report.converted == 1
    assert report.duplicates == {oid: 2, "dup": 2}
    assert await db["balances"].count_documents({"user": oid}) == 2


# -- 9. honest errors ---------------------------------------------------------------------


class OddBulk(RecordingCollection):
    """A collection whose bulk_write fails with a TypeError that is not mongomock's."""

    async def bulk_write(self, *args: object, **kwargs: object) -> Any:
        raise TypeError("bulk_write() missing 1 required positional argument: 'session'")


async def test_only_the_known_mock_mismatch_switches_bulk_writes_off(
    db: Any, clock: FakeClock
) -> None:
    """Any other TypeError from bulk_write propagates; the one-by-one fallback is not
    taken on a guess."""
    refiller = BalanceRefiller(
        OddBulk(db["balances"]),
        RefillPolicy(amount=100, interval="30d"),
        leases=db["leases"],
        clock=clock,
        retry_delay=0,
    )
    await db["balances"].insert_one({"user": "u", "tokenCredits": 0, "lastRefill": None})
    with pytest.raises(TypeError, match="session"):
        await refiller.sweep()


async def test_the_bulk_fallback_is_decided_once_per_collection(db: Any, clock: FakeClock) -> None:
    """On the mock, the first sweep finds the mismatch and later sweeps send no bulk_write."""
    if not backend.is_mock():
        pytest.skip("the mismatch is mongomock's; a server runs bulk writes")
    log = CallLog()
    refiller = BalanceRefiller(
        RecordingCollection(db["balances"], log),
        RefillPolicy(amount=100, interval="1d"),
        leases=db["leases"],
        clock=clock,
        retry_delay=0,
    )
    await db["balances"].insert_many(
        [{"user": f"u{i}", "tokenCredits": 0, "lastRefill": None} for i in range(3)]
    )
    assert (await refiller.sweep()).refilled == 3
    await db["balances"].update_many({}, {"$set": {"tokenCredits": 0}})
    clock.advance(timedelta(days=2))
    assert (await refiller.sweep()).refilled == 3
    assert sum(1 for c in log.calls if c.method == "bulk_write") == 1


# -- 12. activity as LibreChat records it -------------------------------------------------


async def test_only_active_users_counts_librechat_spend_rows(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """100 LibreChat-layout users due for a monthly reset, 50 of whom chatted yesterday
    (LibreChat spend rows, no lastSeen): `active_within="30d"` refills those 50."""
    users = [ObjectId() for _ in range(100)]
    month_ago = clock() - timedelta(days=40)
    await db["balances"].insert_many(
        [
            {"user": u, "tokenCredits": 5, "autoRefillEnabled": False, "lastRefill": month_ago}
            for u in users
        ]
    )
    yesterday = clock() - timedelta(days=1)
    await db["transactions"].insert_many(
        [
            {
                "user": u,
                "tokenType": kind,
                "model": "gpt-4o",
                "context": "message",
                "rawAmount": -100,
                "tokenValue": -250.5,
                "rate": 2.505,
                "createdAt": yesterday,
            }
            for u in users[:50]
            for kind in ("prompt", "completion")
        ]
    )
    refiller = make_refiller(policy=MONTHLY_RESET)
    report = await refiller.sweep(active_within="30d", batch_size=30)
    assert (report.refilled, report.skipped["inactive"]) == (50, 50)
    assert report.scanned == report.refilled + report.tier_changes + sum(report.skipped.values())
    refilled = {d["user"] async for d in db["balances"].find({"tokenCredits": 1_000})}
    assert refilled == set(users[:50])


async def test_in_flight_reservations_count_as_activity(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A user with credits held by LibreChat's in-flight requests is active."""
    await db["balances"].insert_one(
        {
            "user": "busy",
            "tokenCredits": 50,
            "reservedCredits": 40,
            "lastRefill": clock() - timedelta(days=40),
        }
    )
    report = await make_refiller(policy=MONTHLY_RESET).sweep(active_within="30d")
    assert (report.refilled, report.skipped["inactive"]) == (1, 0)


async def test_ids_with_surrounding_whitespace_are_refused(make_refiller: Make, db: Any) -> None:
    """`" u "` is not silently another user than `"u"`: refused, nothing written."""
    refiller = make_refiller()
    for bad in (" u", "u ", "\tu\n"):
        with pytest.raises(ValueError, match="leading or trailing whitespace"):
            await refiller.ensure_balance(bad)
    assert await db["balances"].count_documents({}) == 0


async def test_a_conflict_names_the_amount_of_that_request_not_the_newest(
    make_refiller: Make,
) -> None:
    """The amount checked is the one remembered for that very id, wherever it sits in
    the window (not the newest or the oldest entry)."""
    refiller = make_refiller()
    for key, amount in (("k0", 10), ("k1", 50), ("k2", 60)):
        await refiller.spend("u", amount, request_id=key)
    with pytest.raises(IdempotencyConflict) as info:
        await refiller.spend("u", 70, request_id="k1")
    assert info.value.original == 50
