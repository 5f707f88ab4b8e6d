"""What a new user tripped on: admin defaults that minted credits, a refill by hand that
restarted the period for nothing, a sweep that failed on plain mongomock collections, and
a driver `TypeError` that escaped as itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient

from balance_refill import BalanceRefiller, RefillPolicy, UserNotFound
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

Make = Callable[..., BalanceRefiller]


async def snapshot(db: Any) -> tuple[list[Any], list[Any]]:
    return ([d async for d in db["balances"].find()], [d async for d in db["transactions"].find()])


@pytest.mark.parametrize(
    "operation",
    [
        lambda r, **kw: r.grant("typo-user", 5, actor="me", reason="test", **kw),
        lambda r, **kw: r.set_balance("typo-user", 5, actor="me", reason="test", **kw),
        lambda r, **kw: r.refill_now("typo-user", actor="me", reason="test", **kw),
    ],
    ids=["grant", "set_balance", "refill_now"],
)
async def test_admin_operations_never_create_a_user_by_accident(
    refiller: BalanceRefiller, db: Any, operation: Any
) -> None:
    """An unknown user is UserNotFound with nothing written; create=True creates it."""
    await refiller.ensure_balance("someone-else")
    before = await snapshot(db)
    with pytest.raises(UserNotFound, match="typo-user"):
        await operation(refiller)
    assert await snapshot(db) == before
    state = await operation(refiller, create=True)
    assert state.user_id == "typo-user"
    assert await db["balances"].count_documents({"user": "typo-user"}) == 1


async def test_grant_with_create_starts_from_the_start_balance(refiller: BalanceRefiller) -> None:
    """grant(..., create=True) on a new user adds to the policy's start_balance."""
    state = await refiller.grant("new", 5, actor="me", reason="welcome", create=True)
    assert state.balance == 20_005


async def test_refill_now_that_adds_nothing_changes_nothing(
    make_refiller: Make, balances: RecordingCollection, db: Any, log: CallLog, clock: FakeClock
) -> None:
    """A top_up user at 15,000 with amount 10,000: no write, no row, lastRefill kept."""
    refiller = make_refiller(policy=RefillPolicy(amount=10_000, interval="30d"))
    last = clock() - timedelta(days=3)
    await balances.inner.insert_one({"user": "u", "tokenCredits": 15_000, "lastRefill": last})
    log.reset()
    state = await refiller.refill_now("u", actor="me", reason="asked")
    assert (state.refilled, state.granted, state.balance) == (False, 0, 15_000)
    assert log.methods() == ["balances.find_one"]  # the read, nothing else
    assert (await db["balances"].find_one({"user": "u"}))["lastRefill"] == last
    assert await db["transactions"].count_documents({}) == 0


async def test_a_reset_that_lowers_is_still_made_by_hand(
    make_refiller: Make, balances: RecordingCollection, clock: FakeClock
) -> None:
    """refill_now with mode reset on a balance above the amount lowers it: a change."""
    refiller = make_refiller(policy=RefillPolicy(amount=1_000, interval="30d", mode="reset"))
    await balances.inner.insert_one({"user": "u", "tokenCredits": 4_000, "lastRefill": clock()})
    state = await refiller.refill_now("u", actor="me", reason="monthly reset by hand")
    assert (state.refilled, state.granted, state.balance) == (True, -3_000, 1_000)


async def test_sweep_on_plain_mongomock_collections(clock: FakeClock) -> None:
    """The README's own setup, with no wrapper: the sweep refills (mongomock's bulk_write
    refuses UpdateOne under pymongo >= 4.11; the store sends those one by one)."""
    client: Any = AsyncMongoMockClient(tz_aware=True)
    db = client["LibreChat"]
    refiller = BalanceRefiller(
        db["balances"],
        RefillPolicy(amount=100, interval="30d"),
        ledger=db["transactions"],
        clock=clock,
    )
    await db["balances"].insert_many(
        [
            {"user": f"u{i}", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
            for i in range(7)
        ]
    )
    report = await refiller.sweep(batch_size=3)
    assert (report.refilled, report.errors) == (7, 0)
    assert await db["transactions"].count_documents({"context": "autoRefill"}) == 7
    assert await db["balances"].count_documents({"tokenCredits": 100}) == 7
    client.close()


class Broken:
    """A collection whose every call fails the way a mismatched driver does."""

    name = "balances"

    def __getattr__(self, attr: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            raise TypeError(f"{attr}() got an unexpected keyword argument 'sort'")

        return call


async def test_errors_that_are_not_the_drivers_propagate_as_themselves(clock: FakeClock) -> None:
    """Only the driver's exceptions become StorageError: a TypeError from a collection (or
    from a bug of the library's own) propagates unchanged, so it is not mistaken for a
    database outage."""
    refiller = BalanceRefiller(Broken(), RefillPolicy(amount=100, interval="30d"), clock=clock)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sort'"):
        await refiller.ensure_balance("u")


async def test_a_key_error_inside_the_store_is_not_a_storage_error(clock: FakeClock) -> None:
    """A KeyError raised by a collection call is the library's bug to see, not a
    StorageError (the old store wrapped KeyError and TypeError as database errors)."""

    class Faulty(Broken):
        def __getattr__(self, attr: str) -> Any:
            async def call(*args: Any, **kwargs: Any) -> Any:
                raise KeyError("tokenCredits")

            return call

    refiller = BalanceRefiller(Faulty(), RefillPolicy(amount=100, interval="30d"), clock=clock)
    with pytest.raises(KeyError):
        await refiller.ensure_balance("u")
