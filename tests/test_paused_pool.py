"""Finding 3 of issue 21: one cut connection pauses PyMongo's connection pool
(`AutoReconnect: connection pool paused`) for a moment; calls on the library running at
the same time must ride it out with the library's own retries, on its defaults.

Under PyMongo 4.20's async client a checkout refused by a paused pool is itself handled
as a network error at the pool's current generation: it clears the pool again and
cancels the monitor's check, so retries arriving while it is paused keep it paused (the
pool listener below counts the clears)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.testing import FakeClock

from .conftest import START
from .wire import backend
from .wire.proxy import Proxy

LANES = 30  # users, each charged by one lane of sequential calls
CALLS = 5  # per lane
AMOUNT = 12.5
START_BALANCE = 1_000.25


class PoolEvents(monitoring.ConnectionPoolListener):
    """Counts the times the driver cleared (and so paused) its pool."""

    def __init__(self) -> None:
        self.cleared = 0

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        self.cleared += 1

    def pool_created(self, event: Any) -> None: ...
    def pool_ready(self, event: Any) -> None: ...
    def pool_closed(self, event: Any) -> None: ...
    def connection_created(self, event: Any) -> None: ...
    def connection_ready(self, event: Any) -> None: ...
    def connection_closed(self, event: Any) -> None: ...
    def connection_check_out_started(self, event: Any) -> None: ...
    def connection_check_out_failed(self, event: Any) -> None: ...
    def connection_checked_out(self, event: Any) -> None: ...
    def connection_checked_in(self, event: Any) -> None: ...


@pytest.mark.skipif(
    not backend.is_wire(),
    reason="needs the real driver and a proxy to one wire server (BALANCE_REFILL_TEST_BACKEND=wire)",
)
async def test_calls_during_a_paused_pool_succeed() -> None:
    """A connection cut after the server applied a spend pauses the pool; every call made
    meanwhile still succeeds, and each user is charged exactly once per request id."""
    target = urlsplit(backend.uri())
    name = backend.unique_name("paused_pool")
    users = [str(ObjectId()) for _ in range(LANES)]
    policy = RefillPolicy(amount=100, interval="30d")
    direct: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backend.uri(), tz_aware=True)
    events = PoolEvents()
    async with Proxy(
        target.hostname or "127.0.0.1", target.port or 27017, commands={"findAndModify"}
    ) as proxy:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            proxy.uri, tz_aware=True, event_listeners=[events]
        )
        try:
            await direct[name]["balances"].insert_many(
                [
                    {"user": ObjectId(u), "tokenCredits": START_BALANCE, "lastRefill": START}
                    for u in users
                ]
            )
            db = client[name]
            refiller = BalanceRefiller(
                db["balances"], policy, ledger=db["transactions"], clock=FakeClock(START)
            )
            await asyncio.gather(*(refiller.get_state(u) for u in users))  # open connections
            proxy.cut_next(after_apply=True)

            async def lane(user: str) -> list[float]:
                return [
                    (await refiller.spend(user, AMOUNT, request_id=f"{user}-{n}")).balance
                    for n in range(CALLS)
                ]

            results = await asyncio.gather(*(lane(u) for u in users), return_exceptions=True)
        finally:
            await client.close()
    try:
        failures = [r for r in results if isinstance(r, BaseException)]
        finals = {
            str(d["user"]): d["tokenCredits"] async for d in direct[name]["balances"].find({})
        }
    finally:
        await direct.drop_database(name)
        await direct.close()
    assert proxy.stats.cuts_after_apply == 1
    assert events.cleared >= 1  # the driver did pause its pool
    assert failures == [], (
        f"{len(failures)} of {LANES} lanes failed; the pool was cleared {events.cleared} times"
    )
    assert finals == dict.fromkeys(users, START_BALANCE - CALLS * AMOUNT)
