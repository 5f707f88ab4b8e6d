"""Races through a yielding wrapper, and failures between a refill and its ledger row."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy, StorageError
from balance_refill.testing import Call, CallLog, FakeClock

Make = Callable[..., BalanceRefiller]


@pytest.fixture
def racing(make_racing: Make, policy: RefillPolicy) -> BalanceRefiller:
    """A refiller whose every call yields to the event loop first, so gathered calls interleave."""
    return make_racing(policy)


async def test_500_concurrent_ensure_balance_refill_once(
    racing: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """500 racing ensure_balance calls with a refill due: one refill, one ledger row."""
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    states = await asyncio.gather(*(racing.ensure_balance("u") for _ in range(500)))
    assert sum(s.refilled for s in states) == 1
    assert all(s.balance == 10_000 for s in states)
    assert await db["transactions"].count_documents({}) == 1
    assert (await db["balances"].find_one({"user": "u"}))["tokenCredits"] == 10_000


async def test_500_concurrent_spends_never_overdraw(
    racing: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """500 racing spend(1) against 100 credits: exactly 100 succeed, balance ends at 0."""
    await db["balances"].insert_one({"user": "u", "tokenCredits": 100, "lastRefill": clock()})
    results = await asyncio.gather(
        *(racing.spend("u", 1) for _ in range(500)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(ok), len(refused)) == (100, 400)
    assert min(s.balance for s in ok) == 0
    assert (await db["balances"].find_one({"user": "u"}))["tokenCredits"] == 0


async def test_concurrent_spends_with_refill_due_refill_once(
    racing: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """Racing spends that all find the balance empty and a refill due: one refill, all charged."""
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    states = await asyncio.gather(*(racing.spend("u", 10) for _ in range(200)))
    assert sum(s.refilled for s in states) == 1
    assert (await db["balances"].find_one({"user": "u"}))["tokenCredits"] == 10_000 - 2_000
    assert await db["transactions"].count_documents({}) == 1


async def test_concurrent_first_seen_creates_one_document(racing: BalanceRefiller, db: Any) -> None:
    """Racing first requests of a new user create a single document."""
    await asyncio.gather(
        *(racing.ensure_balance("new") for _ in range(50)),
        *(racing.spend("new", 1) for _ in range(50)),
    )
    assert await db["balances"].count_documents({"user": "new"}) == 1
    assert (await db["balances"].find_one({"user": "new"}))["tokenCredits"] == 20_000 - 50


def fail_on(
    method: str, collection: str, exc: BaseException, *, nth: int = 1
) -> Callable[[Call, int], BaseException | None]:
    """Fail the nth call of `method` on `collection`, once."""
    seen = [0]

    def fault(call: Call, index: int) -> BaseException | None:
        if call.method == method and call.collection == collection:
            seen[0] += 1
            if seen[0] == nth:
                return exc
        return None

    return fault


HARD = OperationFailure("boom", code=1)


@pytest.mark.parametrize(
    ("where", "method", "collection"),
    [
        ("before", "insert_one", "transactions"),  # ledger write never reached the server
        ("after", "insert_one", "transactions"),  # row written, reply lost
        ("before", "update_one", "balances"),  # marker clear never sent
        ("after", "update_one", "balances"),  # marker cleared, reply lost
        ("after", "find_one_and_update", "balances"),  # refill applied, its reply lost
    ],
)
@pytest.mark.parametrize("recover", ["next_call", "flush_pending"])
async def test_failure_between_refill_and_ledger(
    refiller: BalanceRefiller,
    log: CallLog,
    db: Any,
    clock: FakeClock,
    where: str,
    method: str,
    collection: str,
    recover: str,
) -> None:
    """Whatever fails, the marker finishes the job later and exactly one row exists."""
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    fault = fail_on(method, collection, HARD, nth=2 if method == "find_one_and_update" else 1)
    if where == "before":
        log.fail_before = fault
    else:
        log.fail_after = fault
    with contextlib.suppress(StorageError):
        await refiller.ensure_balance("u")
    log.fail_before = log.fail_after = None
    if recover == "next_call":
        state = await refiller.ensure_balance("u")
        assert not state.refilled
    else:
        await refiller.flush_pending()
    assert await db["transactions"].count_documents({}) == 1
    doc = await db["balances"].find_one({"user": "u"})
    assert doc["tokenCredits"] == 10_000
    assert "pendingLedger" not in doc
    # A second recovery writes nothing more.
    assert await refiller.flush_pending() == 0
    assert await db["transactions"].count_documents({}) == 1


async def test_lost_reply_of_the_refill_itself(
    refiller: BalanceRefiller, log: CallLog, db: Any, clock: FakeClock
) -> None:
    """The compare-and-swap applied but its reply was lost: the retry recognises its own refill."""
    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )

    def lose_cas_reply(call: Call, index: int) -> BaseException | None:
        return AutoReconnect("reply lost") if index == 1 else None

    log.fail_after = lose_cas_reply
    state = await refiller.ensure_balance("u")
    assert (state.refilled, state.granted, state.balance) == (True, 10_000, 10_000)
    assert await db["transactions"].count_documents({}) == 1


async def test_lost_reply_of_a_spend_is_not_charged_twice(
    refiller: BalanceRefiller, log: CallLog, db: Any, clock: FakeClock
) -> None:
    """A spend applied on the server whose reply was lost is retried without a second charge."""
    await db["balances"].insert_one({"user": "u", "tokenCredits": 100, "lastRefill": clock()})
    log.fail_after = fail_on("find_one_and_update", "balances", AutoReconnect("reply lost"))
    state = await refiller.spend("u", 30)
    assert state.balance == 70
    assert (await db["balances"].find_one({"user": "u"}))["tokenCredits"] == 70


async def test_flush_pending_batches(refiller: BalanceRefiller, db: Any, clock: FakeClock) -> None:
    """flush_pending settles every stranded marker, across batches, without duplicates."""
    from bson import ObjectId

    rows = []
    for i in range(7):
        row = {
            "_id": ObjectId(),
            "user": f"u{i}",
            "tokenType": "credits",
            "context": "autoRefill",
            "rawAmount": 5,
            "tokenValue": 5,
            "createdAt": clock(),
        }
        rows.append(row)
        await db["balances"].insert_one({"user": f"u{i}", "tokenCredits": 5, "pendingLedger": row})
    await db["transactions"].insert_one(rows[0])  # one row already made it
    assert await refiller.flush_pending(batch_size=3) == 7
    assert await db["transactions"].count_documents({}) == 7
    assert await db["balances"].count_documents({"pendingLedger": {"$exists": True}}) == 0


async def test_aba_balance_does_not_fool_the_compare_and_swap(
    make_refiller: Callable[..., BalanceRefiller], balances: Any, db: Any, clock: FakeClock
) -> None:
    """A stale reader whose balance value came back (refill, then spent to the same
    value) must not refill again: the swap also compares lastRefill and spend."""
    from tests.test_decisions import GatedCollection

    await db["balances"].insert_one(
        {"user": "u", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    gated = GatedCollection(balances.inner, hold=2)  # 1: the read, 2: the refill's CAS
    stale = asyncio.create_task(make_refiller(balances=gated).ensure_balance("u"))
    await gated.held.wait()
    fast = make_refiller()
    assert (await fast.ensure_balance("u")).refilled
    await fast.spend("u", 10_000)  # back to 0: the same tokenCredits as the stale read
    gated.release.set()
    assert not (await stale).refilled
    assert await db["transactions"].count_documents({}) == 1
