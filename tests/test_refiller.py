"""ensure_balance and spend: semantics, call budgets, LibreChat quirks, exactly-once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    InsufficientCredits,
    InvalidUserId,
    RefillPolicy,
    StorageError,
)
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection

Make = Callable[..., BalanceRefiller]


async def seed(coll: RecordingCollection, **fields: Any) -> Any:
    """Insert a document directly, bypassing the recorder."""
    doc = {"user": "u1", "tokenCredits": 0, "autoRefillEnabled": True, **fields}
    result = await coll.inner.insert_one(doc)
    return result.inserted_id


async def stored(coll: RecordingCollection, query: dict[str, Any]) -> Mapping[str, Any]:
    """The document matching `query`, read directly, bypassing the recorder."""
    doc = await coll.inner.find_one(query)
    assert doc is not None, f"no document matches {query}"
    return doc


async def test_first_seen_user_created_in_one_call(
    refiller: BalanceRefiller, log: CallLog, clock: FakeClock
) -> None:
    """A new user gets start_balance and lastRefill = now, in exactly one call."""
    state = await refiller.ensure_balance("alice")
    assert log.count == 1
    assert state.balance == 20_000
    assert not state.refilled
    assert state.last_refill == clock()
    assert state.next_refill_at == clock() + timedelta(days=30)


async def test_existing_user_no_refill_one_call(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """ensure_balance with nothing due costs exactly one call."""
    await seed(balances, tokenCredits=500, lastRefill=clock() - timedelta(days=2))
    state = await refiller.ensure_balance("u1")
    assert log.count == 1
    assert (state.balance, state.refilled) == (500, False)


async def test_refill_budget_and_ledger_row(
    refiller: BalanceRefiller,
    log: CallLog,
    balances: RecordingCollection,
    ledger: RecordingCollection,
    clock: FakeClock,
) -> None:
    """A due refill tops up, writes one LibreChat-shaped row, in at most four calls."""
    await seed(balances, tokenCredits=1_500, lastRefill=clock() - timedelta(days=31))
    state = await refiller.ensure_balance("u1")
    assert log.count <= 4
    assert (state.balance, state.refilled, state.granted) == (10_000, True, 8_500)
    assert state.last_refill == clock()
    rows = [r async for r in ledger.inner.find({})]
    assert len(rows) == 1
    row = rows[0]
    assert row["user"] == "u1"
    assert (row["tokenType"], row["context"], row["rawAmount"], row["tokenValue"]) == (
        "credits",
        "autoRefill",
        8_500,
        8_500,
    )
    assert (row["balanceBefore"], row["balanceAfter"], row["mode"]) == (1_500, 10_000, "top_up")
    assert row["createdAt"] == clock()
    doc = await stored(balances, {"user": "u1"})
    assert "pendingLedger" not in doc
    assert doc["lastRefill"] == clock()


async def test_refill_without_ledger_two_calls(
    make_refiller: Make, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Without a ledger, a refill is the read plus one compare-and-swap."""
    refiller = make_refiller(ledger=None)
    await seed(balances, tokenCredits=0, lastRefill=clock() - timedelta(days=31))
    state = await refiller.ensure_balance("u1")
    assert state.refilled
    assert log.count == 2


@pytest.mark.parametrize(
    ("mode", "before", "after"),
    [
        ("top_up", 1_500, 10_000),
        ("add", 1_500, 11_500),
        ("reset", 1_500, 10_000),
    ],
)
async def test_modes(
    make_refiller: Make,
    balances: RecordingCollection,
    clock: FakeClock,
    mode: str,
    before: int,
    after: int,
) -> None:
    """top_up raises to amount, add adds, reset sets."""
    refiller = make_refiller(policy=RefillPolicy(amount=10_000, interval="30d", mode=mode))
    await seed(balances, tokenCredits=before, lastRefill=clock() - timedelta(days=30))
    state = await refiller.ensure_balance("u1")
    assert (state.balance, state.granted) == (after, after - before)


async def test_reset_can_lower_when_threshold_above_amount(
    make_refiller: Make, balances: RecordingCollection, clock: FakeClock
) -> None:
    """reset sets the balance even below what it was (the classic script's behaviour)."""
    refiller = make_refiller(
        policy=RefillPolicy(amount=100, interval="1d", mode="reset", threshold=500)
    )
    await seed(balances, tokenCredits=300, lastRefill=clock() - timedelta(days=2))
    state = await refiller.ensure_balance("u1")
    assert (state.balance, state.granted, state.refilled) == (100, -200, True)


async def test_max_balance_caps_add(
    make_refiller: Make, balances: RecordingCollection, clock: FakeClock
) -> None:
    """The cap limits what a refill brings."""
    refiller = make_refiller(
        policy=RefillPolicy(amount=10_000, interval="30d", mode="add", max_balance=15_000)
    )
    await seed(balances, tokenCredits=8_000, lastRefill=clock() - timedelta(days=31))
    state = await refiller.ensure_balance("u1")
    assert (state.balance, state.granted) == (15_000, 7_000)


async def test_not_due_before_period(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """No refill one millisecond before the period ends; a refill exactly at it."""
    await seed(
        balances,
        tokenCredits=0,
        lastRefill=clock() - timedelta(days=30) + timedelta(milliseconds=1),
    )
    assert not (await refiller.ensure_balance("u1")).refilled
    clock.advance(milliseconds=1)
    assert (await refiller.ensure_balance("u1")).refilled


async def test_threshold_and_needed(
    make_refiller: Make, balances: RecordingCollection, clock: FakeClock
) -> None:
    """At or above the threshold nothing happens unless `needed` raises the bar."""
    refiller = make_refiller(policy=RefillPolicy(amount=10_000, interval="30d", threshold=5_000))
    await seed(balances, tokenCredits=6_000, lastRefill=clock() - timedelta(days=40))
    assert not (await refiller.ensure_balance("u1")).refilled
    assert not (await refiller.ensure_balance("u1", needed=6_000)).refilled
    state = await refiller.ensure_balance("u1", needed=6_001)
    assert (state.refilled, state.balance) == (True, 10_000)


async def test_refill_that_would_change_nothing_is_skipped(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """top_up at amount with a higher `needed` has nothing to grant, so the period is kept."""
    await seed(balances, tokenCredits=10_000, lastRefill=clock() - timedelta(days=40))
    state = await refiller.ensure_balance("u1", needed=10_001)
    assert not state.refilled
    assert state.next_refill_at is not None
    assert state.next_refill_at <= clock()


async def test_missing_last_refill_is_due(
    refiller: BalanceRefiller, balances: RecordingCollection
) -> None:
    """LibreChat documents without lastRefill are due."""
    await seed(balances, tokenCredits=0)
    assert (await refiller.ensure_balance("u1")).refilled


async def test_paused_user_never_refilled(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """refillPaused: true is the library's per-user pause; next_refill_at is None."""
    await seed(
        balances, tokenCredits=0, refillPaused=True, lastRefill=clock() - timedelta(days=400)
    )
    state = await refiller.ensure_balance("u1")
    assert not state.refilled
    assert state.next_refill_at is None
    with pytest.raises(InsufficientCredits) as info:
        await refiller.spend("u1", 1)
    assert info.value.next_refill_at is None


async def test_policy_auto_refill_off(
    make_refiller: Make, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A policy with auto_refill off never refills anyone."""
    refiller = make_refiller(policy=RefillPolicy(amount=5, interval="1d", auto_refill=False))
    await seed(balances, tokenCredits=0, lastRefill=clock() - timedelta(days=400))
    state = await refiller.ensure_balance("u1")
    assert (state.refilled, state.next_refill_at) == (False, None)


async def test_objectid_user_and_duplicates_use_oldest(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """With duplicate documents the oldest (lowest _id) is used and none is created."""
    user = ObjectId()
    old = ObjectId()
    new = ObjectId()
    await balances.inner.insert_one(
        {"_id": new, "user": user, "tokenCredits": 9_999, "lastRefill": clock()}
    )
    await balances.inner.insert_one(
        {"_id": old, "user": user, "tokenCredits": 3, "lastRefill": clock()}
    )
    assert (await refiller.ensure_balance(user)).balance == 3
    with pytest.raises(InsufficientCredits):
        await refiller.spend(user, 5)
    assert (await refiller.spend(user, 3)).balance == 0
    assert await balances.inner.count_documents({"user": user}) == 2
    assert (await stored(balances, {"_id": new}))["tokenCredits"] == 9_999


async def test_ensure_indexes_reports_duplicates_by_user(
    refiller: BalanceRefiller, balances: RecordingCollection
) -> None:
    """Duplicates are reported by user in the returned report; nothing raises."""
    await balances.inner.insert_many([{"user": "dup"}, {"user": "dup"}, {"user": "single"}])
    report = await refiller.ensure_indexes()
    assert report.duplicates == {"dup": 2}
    assert not report.ok
    assert "user_1__id_1" in report.indexes


async def test_spend_covered_is_one_call(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A covered spend costs exactly one call and tracks spend since refill."""
    await seed(balances, tokenCredits=100, lastRefill=clock())
    state = await refiller.spend("u1", 40)
    assert log.count == 1
    assert (state.balance, state.spent_since_refill) == (60, 40)
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 60


async def test_spend_insufficient_changes_nothing(
    refiller: BalanceRefiller,
    balances: RecordingCollection,
    ledger: RecordingCollection,
    clock: FakeClock,
) -> None:
    """Not covered and not due: InsufficientCredits with balance and next refill time."""
    await seed(balances, tokenCredits=10, lastRefill=clock() - timedelta(days=1))
    before = await stored(balances, {"user": "u1"})
    with pytest.raises(InsufficientCredits) as info:
        await refiller.spend("u1", 11)
    assert info.value.balance == 10
    assert info.value.next_refill_at == clock() + timedelta(days=29)
    after = await stored(balances, {"user": "u1"})
    assert after["tokenCredits"] == before["tokenCredits"]
    assert after.get("spentSinceRefill", 0) == before.get("spentSinceRefill", 0)
    assert await ledger.inner.count_documents({}) == 0


async def test_spend_refills_when_due_within_budget(
    refiller: BalanceRefiller,
    log: CallLog,
    balances: RecordingCollection,
    ledger: RecordingCollection,
    clock: FakeClock,
) -> None:
    """Not covered but due: refill then charge, ledger row included, in at most four calls."""
    await seed(balances, tokenCredits=10, lastRefill=clock() - timedelta(days=31))
    state = await refiller.spend("u1", 500)
    assert log.count <= 4
    assert (state.balance, state.refilled, state.granted) == (9_500, True, 9_990)
    assert await ledger.inner.count_documents({"context": "autoRefill"}) == 1


async def test_spend_first_seen_user(refiller: BalanceRefiller) -> None:
    """A first spend creates the user with start_balance and charges it."""
    state = await refiller.spend("new", 5)
    assert state.balance == 19_995


async def test_spend_refill_that_still_does_not_cover(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """If even the refilled balance does not cover the cost, the refill stays and the spend is refused."""
    await seed(balances, tokenCredits=10, lastRefill=clock() - timedelta(days=31))
    with pytest.raises(InsufficientCredits) as info:
        await refiller.spend("u1", 50_000)
    assert info.value.balance == 10_000
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 10_000


async def test_spend_request_id_is_idempotent(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """The same request_id is charged once; the retry misses the fast path and is read
    by the pipeline (two calls)."""
    await seed(balances, tokenCredits=100, lastRefill=clock())
    await refiller.spend("u1", 30, request_id="req-1")
    log.reset()
    state = await refiller.spend("u1", 30, request_id="req-1")
    assert log.count == 2
    assert state.balance == 70


@pytest.mark.parametrize(
    "bad",
    [
        {"$gt": ""},
        {"$ne": None},
        ["u1"],
        None,
        True,
        False,
        1.5,
        float("nan"),
        "",
        "   ",
        "x" * 10_000_000,
        b"u1",
    ],
)
async def test_bad_user_ids_never_reach_a_query(
    refiller: BalanceRefiller, log: CallLog, bad: Any
) -> None:
    """Anything but a non-empty str, an int or an ObjectId is InvalidUserId, with no call made."""
    for call in (refiller.ensure_balance(bad), refiller.spend(bad, 1)):
        with pytest.raises(InvalidUserId):
            await call
    assert log.count == 0


@pytest.mark.parametrize(
    "bad", [0, -1, -0.5, float("nan"), float("inf"), 2**53 + 1, 2.0**60, "5", None, True]
)
async def test_bad_amounts_rejected(refiller: BalanceRefiller, log: CallLog, bad: Any) -> None:
    """Amounts must be positive finite numbers within 2**53; nothing is sent otherwise."""
    with pytest.raises(BalanceRefillError, match="amount"):
        await refiller.spend("u1", bad)
    assert log.count == 0


async def test_naive_clock_rejected(make_refiller: Make) -> None:
    """A clock returning a naive datetime is a clear error."""
    refiller = make_refiller(clock=lambda: datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(BalanceRefillError, match="aware"):
        await refiller.ensure_balance("u1")


async def test_driver_errors_are_wrapped(refiller: BalanceRefiller, log: CallLog) -> None:
    """A driver failure surfaces as StorageError with the original as __cause__."""
    boom = OperationFailure("not authorized", code=13)
    log.fail_before = lambda call, i: boom
    with pytest.raises(StorageError) as info:
        await refiller.ensure_balance("u1")
    assert info.value.__cause__ is boom


async def test_transient_errors_are_retried(refiller: BalanceRefiller, log: CallLog) -> None:
    """A dropped connection on an idempotent call is retried."""
    log.fail_before = lambda call, i: AutoReconnect("flap") if i == 0 else None
    state = await refiller.ensure_balance("u1")
    assert state.balance == 20_000
    assert log.count == 2


async def test_first_seen_duplicate_key_race_is_retried(
    refiller: BalanceRefiller, balances: RecordingCollection, log: CallLog
) -> None:
    """A real server's DuplicateKeyError on a racing first upsert is retried into one document."""

    def fail(call: Call, i: int) -> BaseException | None:
        if i == 0:
            # The other request created the document first; ours collided on _id.
            return DuplicateKeyError(
                "E11000 duplicate key error collection: balances index: _id_", code=11000
            )
        return None

    log.fail_before = fail
    await balances.inner.insert_one(
        {
            "_id": "u9",
            "user": "u9",
            "tokenCredits": 7,
            "lastRefill": datetime(2026, 1, 15, tzinfo=UTC),
        }
    )
    state = await refiller.ensure_balance("u9")
    assert state.balance == 7
    assert await balances.inner.count_documents({"user": "u9"}) == 1


async def test_new_document_id_is_the_user_id(
    refiller: BalanceRefiller, balances: RecordingCollection
) -> None:
    """New documents get _id = user id, so racing inserts collide on the _id index."""
    user = ObjectId()
    await refiller.ensure_balance(user)
    doc = await stored(balances, {"user": user})
    assert doc["_id"] == user
    assert (doc["refillAmount"], doc["refillIntervalValue"], doc["refillIntervalUnit"]) == (
        10_000,
        30,
        "days",
    )
