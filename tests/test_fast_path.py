"""The calls each path of `spend` and `ensure_balance` makes (README, "Calls per case"):
the steady-state spend is one plain conditional update, every other case is read and
decided as before."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import BalanceRefiller, IdempotencyConflict, InsufficientCredits
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection

from .querylint import lint

Make = Callable[..., BalanceRefiller]
BIG_ARRAYS = ("recentRequests", "recentAmounts", "recentOps", "recentAdmin")


async def seed(coll: RecordingCollection, clock: FakeClock, **fields: Any) -> Any:
    """A document the library already manages (LibreChat's switch off), not due."""
    doc = {
        "user": "u1",
        "tokenCredits": 1_000,
        "autoRefillEnabled": False,
        "lastRefill": clock() - timedelta(days=1),
        **fields,
    }
    return (await coll.inner.insert_one(doc)).inserted_id


async def stored(coll: RecordingCollection, query: Mapping[str, Any]) -> Mapping[str, Any]:
    doc = await coll.inner.find_one(dict(query))
    assert doc is not None
    return doc


async def warm(refiller: BalanceRefiller, log: CallLog) -> None:
    """The first call of a refiller learns the document's `_id` (one read)."""
    await refiller.ensure_balance("u1")
    log.reset()


def last_update(log: CallLog) -> Any:
    return log.calls[-1].args[1]


def is_pipeline(call: Call) -> bool:
    return isinstance(call.args[1], list)


async def test_steady_spend_is_one_plain_update(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A covered spend with a new id: one find_one_and_update, no pipeline, no $expr, the
    request window not read back, and the charge, id and amount stored."""
    await seed(balances, clock)
    await warm(refiller, log)
    state = await refiller.spend("u1", 30, request_id="r-1")
    assert [c.method for c in log.calls] == ["find_one_and_update"]
    call = log.calls[0]
    assert not is_pipeline(call)
    assert "$expr" not in repr(call.args[0])
    update: Any = call.args[1]
    assert set(update) == {"$inc", "$push"}  # lastSeen was written by the read, just now
    query: Any = call.args[0]
    assert query["reservedCredits"] is None  # none reserved: the field is missing
    projection: Any = call.kwargs["projection"]
    assert all(projection[name] == 0 for name in BIG_ARRAYS[:2])
    assert lint(call) == []
    assert (state.balance, state.spent_since_refill) == (970, 30)
    doc = await stored(balances, {"user": "u1"})
    assert (doc["tokenCredits"], doc["spentSinceRefill"]) == (970, 30)
    assert (doc["recentAmounts"], len(doc["recentRequests"])) == ([30], 1)
    assert doc["lastSeen"] == clock()


async def test_steady_ensure_balance_is_one_call_without_the_window(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """ensure_balance with nothing due: one call, which does not read the request window."""
    await seed(balances, clock, recentRequests=[1, 2], recentAmounts=[5, 6])
    state = await refiller.ensure_balance("u1")
    assert [c.method for c in log.calls] == ["find_one_and_update"]
    projection: Any = log.calls[0].kwargs["projection"]
    assert all(projection[name] == 0 for name in BIG_ARRAYS[:2])
    assert (state.balance, state.refilled) == (1_000, False)


async def test_first_spend_of_a_refiller_uses_the_pipeline(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Before a refiller knows the document, the spend is the pipeline (one call); the
    next one is the plain update."""
    await seed(balances, clock)
    await refiller.spend("u1", 10)
    assert [is_pipeline(c) for c in log.calls] == [True]
    log.reset()
    await refiller.spend("u1", 10)
    assert [is_pipeline(c) for c in log.calls] == [False]
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 980


async def test_retried_id_reads_once_and_charges_once(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A retried id misses the plain update and the pipeline recognises it: two calls,
    one charge; a different amount raises IdempotencyConflict and changes nothing."""
    await seed(balances, clock)
    await warm(refiller, log)
    await refiller.spend("u1", 30, request_id="r-1")
    log.reset()
    state = await refiller.spend("u1", 30, request_id="r-1")
    assert [is_pipeline(c) for c in log.calls] == [False, True]
    assert state.balance == 970
    with pytest.raises(IdempotencyConflict):
        await refiller.spend("u1", 31, request_id="r-1")
    doc = await stored(balances, {"user": "u1"})
    assert (doc["tokenCredits"], doc["recentAmounts"]) == (970, [30])


async def test_insufficient_without_refill_is_one_pipeline_call(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Not covered, nothing due, as the refiller last saw the balance: the plain update is
    not tried; the pipeline reads, the spend is refused and nothing is charged."""
    await seed(balances, clock, tokenCredits=20)
    await warm(refiller, log)
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u1", 30)
    assert [is_pipeline(c) for c in log.calls] == [True]
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 20


async def test_balance_changed_elsewhere(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """What the refiller remembers of the balance only picks the path: credits added by
    another writer are charged (by the pipeline, one call), credits taken by another
    writer make the plain update miss and the pipeline refuse (two calls)."""
    await seed(balances, clock, tokenCredits=20)
    await warm(refiller, log)
    await balances.inner.update_one({"user": "u1"}, {"$inc": {"tokenCredits": 100}})
    state = await refiller.spend("u1", 30)
    assert ([is_pipeline(c) for c in log.calls], state.balance) == ([True], 90)
    await balances.inner.update_one({"user": "u1"}, {"$set": {"tokenCredits": 5}})
    log.reset()
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u1", 30)
    assert [is_pipeline(c) for c in log.calls] == [False, True]
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 5


async def test_refill_due_spend_calls(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Not covered and due: pipeline (read), compare-and-swap that also charges, ledger
    row, marker clear: four calls, one refill; the next spend is one plain update."""
    await seed(balances, clock, tokenCredits=20)
    await warm(refiller, log)
    clock.advance(timedelta(days=31))
    state = await refiller.spend("u1", 30)
    assert [c.method for c in log.calls] == [
        "find_one_and_update",
        "find_one_and_update",
        "insert_one",
        "update_one",
    ]
    assert is_pipeline(log.calls[0])
    assert (state.refilled, state.balance) == (True, 10_000 - 30)
    log.reset()
    await refiller.spend("u1", 30)
    assert [is_pipeline(c) for c in log.calls] == [False]


async def test_reserved_credits_take_the_pipeline(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Credits reserved by LibreChat: the plain update is not tried (it never charges
    them); the pipeline charges only what the available balance covers."""
    await seed(balances, clock, reservedCredits=950)
    await warm(refiller, log)
    await refiller.spend("u1", 50)
    assert [is_pipeline(c) for c in log.calls] == [True]
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u1", 1)
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 950


async def test_librechat_switch_on_takes_the_pipeline(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A document whose LibreChat refill switch is on is adopted by the pipeline (which
    switches it off), not by the plain update."""
    await seed(balances, clock, autoRefillEnabled=True)
    await refiller.spend("u1", 10)  # learns the id through the pipeline
    await balances.inner.update_one({"user": "u1"}, {"$set": {"autoRefillEnabled": True}})
    log.reset()
    await refiller.spend("u1", 10)
    assert [is_pipeline(c) for c in log.calls] == [False, True]
    doc = await stored(balances, {"user": "u1"})
    assert (doc["tokenCredits"], doc["autoRefillEnabled"]) == (980, False)


async def test_duplicates_charge_only_the_oldest(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """With two documents for one user the spend charges only the oldest, even when the
    oldest cannot pay and the newer one could."""
    oldest = await seed(balances, clock, _id=ObjectId("000000000000000000000001"), tokenCredits=5)
    newer = await seed(balances, clock, tokenCredits=1_000)
    await warm(refiller, log)
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u1", 10)
    assert (await stored(balances, {"_id": oldest}))["tokenCredits"] == 5
    assert (await stored(balances, {"_id": newer}))["tokenCredits"] == 1_000


async def test_deleted_document_is_found_again(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """The document the refiller knew is gone: the spend reads the user's oldest again
    and charges it (a remembered `_id` is never trusted blindly)."""
    first = await seed(balances, clock, _id=ObjectId("000000000000000000000001"))
    second = await seed(balances, clock, tokenCredits=500)
    await warm(refiller, log)
    await balances.inner.delete_one({"_id": first})
    state = await refiller.spend("u1", 10)
    assert state.balance == 490
    assert (await stored(balances, {"_id": second}))["tokenCredits"] == 490


async def test_the_whole_balance_is_spent_by_the_plain_update(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A spend of exactly the balance is covered: one plain update, the balance ends at 0."""
    await seed(balances, clock, tokenCredits=30)
    await warm(refiller, log)
    state = await refiller.spend("u1", 30)
    assert ([is_pipeline(c) for c in log.calls], state.balance) == ([False], 0)


async def test_credits_reserved_meanwhile_are_not_spent(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """LibreChat reserves credits after the refiller's last read: the plain update does
    not match and the pipeline refuses what the available balance does not cover."""
    await seed(balances, clock)
    await warm(refiller, log)
    await balances.inner.update_one({"user": "u1"}, {"$set": {"reservedCredits": 990}})
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u1", 20)
    assert [is_pipeline(c) for c in log.calls] == [False, True]
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 1_000


async def test_the_plain_update_keeps_the_window(
    make_refiller: Make, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """The plain update keeps the last `request_window` keys and their amounts, aligned."""
    refiller = make_refiller(request_window=2)
    await seed(balances, clock)
    await warm(refiller, log)
    for i, amount in enumerate((1, 2, 3)):
        await refiller.spend("u1", amount, request_id=f"w-{i}")
    assert not any(is_pipeline(c) for c in log.calls)
    doc = await stored(balances, {"user": "u1"})
    assert (len(doc["recentRequests"]), doc["recentAmounts"]) == (2, [2, 3])
    with pytest.raises(IdempotencyConflict):  # w-2 is remembered with its amount, 3
        await refiller.spend("u1", 4, request_id="w-2")


async def test_a_fraction_of_a_credit_reserved_is_not_spent(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Half a credit reserved by LibreChat after the last read: a spend of the whole
    stored balance is not covered (the plain update leaves it to the pipeline)."""
    await seed(balances, clock, tokenCredits=20)
    await warm(refiller, log)
    await balances.inner.update_one({"user": "u1"}, {"$set": {"reservedCredits": 0.5}})
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u1", 20)
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 20


async def test_last_seen_is_rewritten_once_a_minute(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """The plain update raises lastSeen only when the value last read is a minute old:
    within the minute it is left as stored, after it the spend writes the new time."""
    await seed(balances, clock)
    await warm(refiller, log)
    seen = clock()
    clock.advance(timedelta(seconds=59))
    await refiller.spend("u1", 1)
    assert "$max" not in last_update(log)
    assert (await stored(balances, {"user": "u1"}))["lastSeen"] == seen
    clock.advance(timedelta(seconds=1))
    await refiller.spend("u1", 1)
    assert last_update(log)["$max"] == {"lastSeen": clock()}
    assert (await stored(balances, {"user": "u1"}))["lastSeen"] == clock()
    clock.advance(timedelta(seconds=30))  # a minute from the last write, not the first
    await refiller.spend("u1", 1)
    assert "$max" not in last_update(log)
    assert not any(is_pipeline(c) for c in log.calls)


@pytest.mark.parametrize(
    ("reserved", "named", "plain"),
    [(None, None, True), (0, 0, True), (0.0, 0, True), (5, None, False), (-1, None, False)],
)
async def test_reserved_credits_are_named_as_last_read(
    refiller: BalanceRefiller,
    log: CallLog,
    balances: RecordingCollection,
    clock: FakeClock,
    reserved: float | None,
    named: int | None,
    plain: bool,
) -> None:
    """The plain update names the reserved credits it last read (missing, or zero); any
    other value leaves the spend to the pipeline, which decides on the available balance."""
    await seed(balances, clock, reservedCredits=reserved)
    await warm(refiller, log)
    await refiller.spend("u1", 1)
    assert [is_pipeline(c) for c in log.calls] == [not plain]
    if plain:
        query: Any = log.calls[0].args[0]
        assert query["reservedCredits"] == named
    assert (await stored(balances, {"user": "u1"}))["tokenCredits"] == 999


async def test_calls_leave_the_shared_projections_as_they_are(
    refiller: BalanceRefiller, log: CallLog, balances: RecordingCollection, clock: FakeClock
) -> None:
    """The projections are module constants passed to every call; mongomock writes `_id`
    into a projection it is given, which then reached the next server's commands."""
    from balance_refill import _schema as S

    expected = {
        "FAST_PROJECTION": {"recentRequests": 0, "recentAmounts": 0},
        "READ_PROJECTION": {"recentRequests": 0, "recentAmounts": 0, "recentAdmin": 0},
        "SWEEP_PROJECTION": {"recentRequests": 0, "recentAmounts": 0, "recentAdmin": 0},
    }
    await seed(balances, clock, lastRefill=clock() - timedelta(days=40), tokenCredits=0)
    await warm(refiller, log)
    await refiller.spend("u1", 1)
    clock.advance(timedelta(days=40))
    await refiller.sweep()
    for name, value in expected.items():
        assert getattr(S, name) == value, name
