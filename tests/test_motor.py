"""The hot path, a race and the sweep through Motor's `AsyncIOMotorClient`, on a server.

Motor is past end of life but still common in existing backends. It runs only on a server
backend (the wire server or MONGODB_URI): on the mock these tests are skipped, as the
mock client is itself a Motor look-alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

from .wire import backend

pytestmark = pytest.mark.skipif(
    backend.is_mock(),
    reason="Motor needs a server: BALANCE_REFILL_TEST_BACKEND=wire, or MONGODB_URI",
)

NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)
POLICY = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)


@pytest.fixture
async def motor_db() -> AsyncIterator[Any]:
    """A fresh database through a Motor client made in the test's event loop."""
    from motor.motor_asyncio import AsyncIOMotorClient

    client: Any = AsyncIOMotorClient(backend.uri(), tz_aware=True)
    name = backend.unique_name("balance_refill_motor")
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        client.close()


def make(db: Any, log: CallLog, clock: FakeClock) -> BalanceRefiller:
    return BalanceRefiller(
        RecordingCollection(db["balances"], log),
        POLICY,
        ledger=RecordingCollection(db["transactions"], log),
        leases=RecordingCollection(db["leases"], log),
        clock=clock,
        retry_delay=0,
        max_attempts=200,
    )


async def test_hot_path_through_motor(motor_db: Any) -> None:
    """First sight, a covered spend, a refusal and a refill on spend, within the budgets."""
    log, clock = CallLog(), FakeClock(NOW)
    refiller = make(motor_db, log, clock)
    await refiller.ensure_indexes()
    user = ObjectId()
    log.reset()
    assert (await refiller.ensure_balance(user)).balance == 20_000
    assert log.count == 1
    log.reset()
    assert (await refiller.spend(user, 1_500, request_id="m1")).balance == 18_500
    assert log.count == 1
    with pytest.raises(InsufficientCredits):
        await refiller.spend(user, 50_000)
    assert (await motor_db["balances"].find_one({"user": user}))["tokenCredits"] == 18_500
    await motor_db["balances"].update_one({"user": user}, {"$set": {"tokenCredits": 5}})
    clock.advance(days=31)
    log.reset()
    state = await refiller.spend(user, 100)
    assert (state.refilled, state.balance) == (True, 9_900)
    # the plain update first (the balance was lowered behind the refiller's back: it last
    # saw 18,500), then the refill's four calls
    assert log.count <= 5
    assert await motor_db["transactions"].count_documents({"user": user}) == 1


async def test_racing_logins_refill_once_through_motor(motor_db: Any) -> None:
    """50 gathered ensure_balance calls on a due user: one refill, one ledger row."""
    refiller = make(motor_db, CallLog(), FakeClock(NOW))
    user = ObjectId()
    await motor_db["balances"].insert_one(
        {"user": user, "tokenCredits": 0, "lastRefill": NOW - timedelta(days=31)}
    )
    states = await asyncio.gather(*(refiller.ensure_balance(user) for _ in range(50)))
    assert sum(s.refilled for s in states) == 1
    assert {s.balance for s in states} == {10_000}
    assert await motor_db["transactions"].count_documents({"user": user}) == 1
    assert (await motor_db["balances"].find_one({"user": user}))["tokenCredits"] == 10_000


async def test_sweep_through_motor(motor_db: Any) -> None:
    """The sweep's bulk compare-and-swap runs on Motor's own bulk_write: every due user
    refilled once, with its ledger row, and a second sweep finds nothing to do."""
    refiller = make(motor_db, CallLog(), FakeClock(NOW))
    await refiller.ensure_indexes()
    old = NOW - timedelta(days=31)
    await motor_db["balances"].insert_many(
        [
            {"user": ObjectId(), "tokenCredits": 0, "lastRefill": old if i % 2 else NOW}
            for i in range(20)
        ]
    )
    report = await refiller.sweep(batch_size=3)
    assert (report.refilled, report.errors) == (10, 0)
    assert await motor_db["transactions"].count_documents({}) == 10
    assert await motor_db["balances"].count_documents({"tokenCredits": 10_000}) == 10
    assert await motor_db["balances"].count_documents({"pendingLedger": {"$exists": True}}) == 0
    assert await motor_db["leases"].count_documents({}) == 0
    assert (await refiller.sweep(batch_size=3)).refilled == 0
