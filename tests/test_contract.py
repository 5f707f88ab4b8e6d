"""The contract suite on a MongoDB server: on the wire backend (mongoeco) or at MONGODB_URI;
skipped on the mock.

    BALANCE_REFILL_TEST_BACKEND=wire python -m pytest tests/test_contract.py

Or with a local replica set, for example:
    mongod --replSet rs0 --dbpath /tmp/db --port 27017 &
    mongosh --eval 'rs.initiate()'
    MONGODB_URI=mongodb://localhost:27017/?replicaSet=rs0 python -m pytest tests/test_contract.py

Where mongoeco answers differently from a server, the check is an expected failure on the
wire: tests/wire/differences.py.
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

from .test_querylint import exercise
from .wire import backend

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        backend.is_mock(),
        reason="needs a server: BALANCE_REFILL_TEST_BACKEND=wire, or MONGODB_URI",
    ),
]


@pytest.fixture
async def server_db() -> AsyncIterator[Any]:
    async with backend.database("balance_refill_contract") as database:
        yield database


@pytest.fixture
def server_clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 15, 12, tzinfo=UTC))


def make(db: Any, clock: FakeClock, log: CallLog | None = None, **policy: Any) -> BalanceRefiller:
    log = log or CallLog()
    policy.setdefault("amount", 10_000)
    policy.setdefault("interval", "30d")
    policy.setdefault("start_balance", 20_000)
    return BalanceRefiller(
        RecordingCollection(db["balances"], log),
        RefillPolicy(**policy),
        ledger=RecordingCollection(db["transactions"], log),
        clock=clock,
        max_attempts=500,
    )


async def test_budgets_on_server(server_db: Any, server_clock: FakeClock) -> None:
    """The call budgets hold on a real server."""
    log = CallLog()
    refiller = make(server_db, server_clock, log)
    await refiller.ensure_indexes()
    log.reset()
    assert (await refiller.ensure_balance(ObjectId())).balance == 20_000
    assert log.count == 1
    user = ObjectId()
    await server_db["balances"].insert_one(
        {"user": user, "tokenCredits": 5, "lastRefill": server_clock() - timedelta(days=31)}
    )
    log.reset()
    state = await refiller.spend(user, 100)
    assert (state.refilled, state.balance, log.count <= 4) == (True, 9_900, True)
    log.reset()
    await refiller.spend(user, 100)
    assert log.count == 1


async def test_concurrent_first_seen_one_document(server_db: Any, server_clock: FakeClock) -> None:
    """Truly concurrent first requests of a new user leave one document."""
    refiller = make(server_db, server_clock)
    user = ObjectId()
    await asyncio.gather(
        *(refiller.ensure_balance(user) for _ in range(100)),
        *(refiller.spend(user, 1) for _ in range(100)),
    )
    assert await server_db["balances"].count_documents({"user": user}) == 1
    assert (await server_db["balances"].find_one({"user": user}))["tokenCredits"] == 20_000 - 100


async def test_concurrent_refill_once(server_db: Any, server_clock: FakeClock) -> None:
    refiller = make(server_db, server_clock)
    user = ObjectId()
    await server_db["balances"].insert_one(
        {"user": user, "tokenCredits": 0, "lastRefill": server_clock() - timedelta(days=31)}
    )
    states = await asyncio.gather(*(refiller.ensure_balance(user) for _ in range(200)))
    assert sum(s.refilled for s in states) == 1
    assert await server_db["transactions"].count_documents({"user": user}) == 1


async def test_concurrent_spends_never_overdraw(server_db: Any, server_clock: FakeClock) -> None:
    refiller = make(server_db, server_clock)
    user = ObjectId()
    await server_db["balances"].insert_one(
        {"user": user, "tokenCredits": 100, "lastRefill": server_clock()}
    )
    results = await asyncio.gather(
        *(refiller.spend(user, 1) for _ in range(300)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 100
    assert all(isinstance(r, InsufficientCredits) for r in results if isinstance(r, BaseException))
    assert (await server_db["balances"].find_one({"user": user}))["tokenCredits"] == 0


@pytest.mark.parametrize("mode", ["top_up", "add", "reset"])
async def test_every_operation_accepted_by_the_server(
    server_db: Any, server_clock: FakeClock, mode: str
) -> None:
    """The lint scenario runs without a server error in every mode."""
    refiller = make(
        server_db, server_clock, amount=100, mode=mode, max_balance=150, start_balance=100
    )
    await exercise(refiller, server_db, server_clock)


async def test_server_rejects_path_conflicts(server_db: Any) -> None:
    """Sanity: the server rejects what the mock accepts, so the suite above means something."""
    from pymongo.errors import OperationFailure

    with pytest.raises(OperationFailure):
        await server_db["balances"].find_one_and_update(
            {"user": "x"},
            {"$setOnInsert": {"tokenCredits": 0}, "$inc": {"tokenCredits": 1}},
            upsert=True,
        )


async def seed_half_due(db: Any, clock: FakeClock) -> BalanceRefiller:
    """40 users, every other one due; returns a refiller whose indexes exist."""
    refiller = make(db, clock)
    await refiller.ensure_indexes()
    old = clock() - timedelta(days=31)
    await db["balances"].insert_many(
        [
            {"user": ObjectId(), "tokenCredits": 0, "lastRefill": old if i % 2 else clock()}
            for i in range(40)
        ]
    )
    return refiller


async def test_sweep_on_server(server_db: Any, server_clock: FakeClock) -> None:
    """The sweep runs on a real server, bulk compare-and-swap included."""
    refiller = await seed_half_due(server_db, server_clock)
    report = await refiller.sweep(batch_size=7)
    assert (report.refilled, report.errors) == (20, 0)
    assert await server_db["transactions"].count_documents({}) == 20


async def test_sweep_candidates_are_read_from_an_index(
    server_db: Any, server_clock: FakeClock
) -> None:
    """The sweep's candidate query is answered from an index."""
    from balance_refill._engine import Engine
    from balance_refill.sweep import LEASE_TTL, Sweep

    await seed_half_due(server_db, server_clock)
    engine = Engine(
        server_db["balances"],
        RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
        ledger=None,
        leases=None,
        clock=server_clock,
        max_attempts=1,
        retry_attempts=1,
        retry_delay=0,
        user_ids="auto",
    )
    query = Sweep(
        engine,
        active_within=None,
        batch_size=7,
        dry_run=False,
        limit=None,
        progress=None,
        lease_ttl=LEASE_TTL,
    ).candidates(server_clock())
    explain = await server_db.command(
        "explain",
        {"find": "balances", "filter": query, "sort": {"lastRefill": 1, "_id": 1}, "limit": 7},
        verbosity="queryPlanner",
    )
    assert "IXSCAN" in str(explain["queryPlanner"]["winningPlan"])


async def test_retryable_writes_survive_a_dropped_connection(
    server_db: Any, server_clock: FakeClock
) -> None:
    """On a replica set, a connection closed mid-findAndModify (failCommand fail point,
    needs enableTestCommands) is retried: the spend is charged exactly once."""
    from pymongo.errors import OperationFailure

    admin = server_db.client.admin
    try:
        await admin.command(
            "configureFailPoint",
            "failCommand",
            mode={"times": 1},
            data={"failCommands": ["findAndModify"], "closeConnection": True},
        )
    except OperationFailure as exc:
        pytest.skip(f"fail points unavailable on this server: {exc}")
    try:
        refiller = make(server_db, server_clock)
        user = ObjectId()
        await server_db["balances"].insert_one(
            {"user": user, "tokenCredits": 100, "lastRefill": server_clock()}
        )
        state = await refiller.spend(user, 30, request_id="once")
        assert state.balance == 70
        assert (await server_db["balances"].find_one({"user": user}))["tokenCredits"] == 70
    finally:
        await admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.mark.parametrize(
    ("filter_", "update", "upsert"),
    [
        ({"user": "x"}, {"$setOnInsert": {"tokenCredits": 0}, "$inc": {"tokenCredits": 1}}, True),
        ({"user": "x"}, {"$set": {"a": 1}, "$unset": {"a": ""}}, False),
        ({"$expr": {"$lt": ["$a", 1]}, "user": "y"}, {"$set": {"a": 1}}, True),
        ({"user": "x"}, [{"$set": {"a": {"$undefinedOperator": 1}}}], False),
    ],
    ids=["two-operators-one-path", "set-and-unset", "expr-in-upsert-filter", "unknown-operator"],
)
async def test_server_rejects_what_the_lint_forbids(
    server_db: Any, filter_: Any, update: Any, upsert: bool
) -> None:
    """Each rule the query lint enforces is one a real server enforces too."""
    from pymongo.errors import OperationFailure

    await server_db["balances"].insert_one({"user": "x", "a": 0})
    with pytest.raises(OperationFailure):
        await server_db["balances"].find_one_and_update(filter_, update, upsert=upsert)
