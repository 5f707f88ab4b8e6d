"""Exactly once when a reply is lost while another writer acts (issue 21).

Each operation's compare-and-swap is applied by the server, then another writer changes
the same user, then the reply is lost (`AutoReconnect`). The library's retry no longer
matches, it re-reads, and must recognise its own write among the document's recent op
ids (not by `lastOpId`, which now names the other writer): the end state, the ledger and
the result the caller gets must equal a run where the two operations simply ran one
after the other. Runs on both backends; the wrapper interleaves the same way on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from balance_refill import (
    BalanceRefiller,
    BalanceState,
    IdempotencyConflict,
    InsufficientCredits,
    RefillPolicy,
    StorageError,
    SweepReport,
    TieredPolicy,
    _store,
)
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

from .test_faults import normalise
from .wire import backend

NOW = datetime(2026, 5, 10, 12, tzinfo=UTC)
POLICY = TieredPolicy(
    tiers={
        "std": RefillPolicy(
            amount=100, interval="1d", mode="add", threshold=10**9, start_balance=50
        ),
        "pro": RefillPolicy(amount=100, interval="1d", mode="add", threshold=10**9),
    },
    default_tier="std",
)
SEED = {"user": "u", "tokenCredits": 50, "lastRefill": NOW - timedelta(days=2)}

Op = Callable[[BalanceRefiller], Awaitable[Any]]


@dataclass(frozen=True)
class Named:
    name: str
    op: Op


OPS = [
    Named("ensure_balance refill", lambda r: r.ensure_balance("u")),
    Named("spend with refill", lambda r: r.spend("u", 120, request_id="s1")),
    Named("grant", lambda r: r.grant("u", 100, actor="a", reason="r")),
    Named("set_balance", lambda r: r.set_balance("u", 500, actor="a", reason="r")),
    Named("set_tier", lambda r: r.set_tier("u", "pro", actor="a")),
    Named("set_auto_refill", lambda r: r.set_auto_refill("u", False, actor="a")),
    Named("refill_now", lambda r: r.refill_now("u", actor="a", reason="r")),
    Named("sweep", lambda r: r.sweep()),
]
OTHERS = [
    *OPS,
    Named("spend covered", lambda r: r.spend("u", 10, request_id="o1")),
]


class LostReply(RecordingCollection):
    """Applies the first commit-loop write (one that pushes an op id), lets `other` act
    on the same user, then loses the reply."""

    def __init__(self, inner: Any, log: CallLog) -> None:
        super().__init__(inner, log)
        self.other: Callable[[], Awaitable[object]] | None = None
        self.fired = False

    async def _lose(self, result: object) -> object:
        if self.fired or self.other is None:
            return result
        self.fired = True
        await self.other()
        raise AutoReconnect("connection closed after the server applied the write")

    async def find_one_and_update(self, *args: object, **kwargs: object) -> Any:
        result = await super().find_one_and_update(*args, **kwargs)
        update = args[1] if len(args) > 1 else kwargs.get("update")
        if isinstance(update, dict) and "recentOps" in update.get("$push", {}):
            return await self._lose(result)
        return result

    async def bulk_write(self, *args: object, **kwargs: object) -> object:
        return await self._lose(await super().bulk_write(*args, **kwargs))

    async def update_one(self, *args: object, **kwargs: object) -> object:
        """(On the mock the sweep sends its compare-and-swaps one by one.)"""
        result = await super().update_one(*args, **kwargs)
        update = args[1] if len(args) > 1 else kwargs.get("update")
        if isinstance(update, dict) and "recentOps" in update.get("$push", {}):
            return await self._lose(result)
        return result


def outcome(result: object) -> object:
    if isinstance(result, BaseException):
        return type(result).__name__
    if isinstance(result, BalanceState):
        return ("state", result.balance, result.refilled, result.granted)
    assert isinstance(result, SweepReport)
    return ("sweep", result.refilled, result.errors)


def refiller(db: Any, clock: FakeClock, balances: Any | None = None) -> BalanceRefiller:
    return BalanceRefiller(
        balances if balances is not None else db["balances"],
        POLICY,
        ledger=db["transactions"],
        leases=db["leases"],
        clock=clock,
        retry_delay=0,
    )


async def final(db: Any) -> Any:
    balances = [d async for d in db["balances"].find()]
    rows = [r async for r in db["transactions"].find()]
    return normalise(balances, rows)


async def sequential(victim: Named, other: Named) -> tuple[object, Any]:
    """The reference: the victim's operation, then the other writer's, no fault."""
    async with backend.database("lost") as db:
        await db["balances"].insert_one(dict(SEED))
        result = outcome(await victim.op(refiller(db, FakeClock(NOW))))
        await attempt(other.op, refiller(db, FakeClock(NOW + timedelta(days=2))))
        return result, await final(db)


async def attempt(op: Op, r: BalanceRefiller) -> None:
    """The other writer's operation; a refusal (a spend the balance cannot cover) is an
    outcome like any other."""
    with contextlib.suppress(InsufficientCredits):
        await op(r)


async def interleaved(victim: Named, other: Named) -> tuple[object, Any]:
    """The victim's write lands, the other writer acts, the victim's reply is lost."""
    async with backend.database("lost") as db:
        await db["balances"].insert_one(dict(SEED))
        wrapper = LostReply(db["balances"], CallLog())
        other_refiller = refiller(db, FakeClock(NOW + timedelta(days=2)))

        async def act() -> None:
            await attempt(other.op, other_refiller)

        wrapper.other = act
        result = outcome(await victim.op(refiller(db, FakeClock(NOW), wrapper)))
        assert wrapper.fired, "the lost reply never happened: the test would prove nothing"
        return result, await final(db)


# A sweep cannot act inside another sweep's write: the lease keeps them apart.
PAIRS = [
    (v, o) for v, o in itertools.product(OPS, OTHERS) if (v.name, o.name) != ("sweep", "sweep")
]


@pytest.mark.parametrize(
    ("victim", "other"), PAIRS, ids=[f"{v.name} then {o.name}" for v, o in PAIRS]
)
async def test_a_lost_reply_with_another_writer_in_between(victim: Named, other: Named) -> None:
    """The caller gets what its own write produced, once, whatever the other writer did."""
    expected = await sequential(victim, other)
    got = await interleaved(victim, other)
    assert got[0] == expected[0], "the result the caller got"
    assert got[1] == expected[1], "the balances and the ledger"


async def test_grant_lost_reply_then_another_refill_is_applied_once() -> None:
    """The issue's reproduction: grant 100 from 50, another writer refills 100 in
    between: the balance ends at 250, with one admin row, and the grant reports 150."""
    grant, refill = OPS[2], OPS[0]
    result, (docs, rows, pending) = await interleaved(grant, refill)
    assert result == ("state", 150, False, 100)
    assert ("tokenCredits", "250") in docs[0]
    assert [r[1] for r in rows].count("admin") == 1
    assert pending == 0


# -- admin operations that can be retried -------------------------------------------------


class DownAfterWrite(RecordingCollection):
    """Applies the admin write, then every call fails for `outage` calls."""

    def __init__(self, inner: Any, log: CallLog, outage: int) -> None:
        super().__init__(inner, log)
        self.outage = outage
        self.down = 0

    async def _call(self, method: str, send: Any, args: Any, kwargs: Any) -> Any:
        if self.down:
            self.down -= 1
            raise AutoReconnect("connection pool paused")
        result = await super()._call(method, send, args, kwargs)
        update = args[1] if method == "find_one_and_update" and len(args) > 1 else None
        if isinstance(update, dict) and "recentAdmin" in update.get("$push", {}):
            self.down = self.outage
            raise AutoReconnect("reply lost")
        return result


AdminOp = Callable[[BalanceRefiller, str], Awaitable[BalanceState]]
ADMIN: dict[str, tuple[AdminOp, int, int]] = {
    "grant": (lambda r, k: r.grant("u", 100, actor="a", reason="r", request_id=k), 150, 100),
    "set_balance": (
        lambda r, k: r.set_balance("u", 500, actor="a", reason="r", request_id=k),
        500,
        450,
    ),
    "refill_now": (lambda r, k: r.refill_now("u", actor="a", reason="r", request_id=k), 150, 100),
    "set_tier": (lambda r, k: r.set_tier("u", "pro", actor="a", request_id=k), 50, 0),
    "set_auto_refill": (lambda r, k: r.set_auto_refill("u", False, actor="a", request_id=k), 50, 0),
}


@pytest.mark.parametrize("name", list(ADMIN))
async def test_an_admin_call_retried_with_its_key_applies_once(db: Any, name: str) -> None:
    """The write lands, its reply is lost and the store's retries are spent: the caller
    sees StorageError. Retrying with the same request id (after another writer acted)
    applies nothing more and returns the state of that one application."""
    op, balance, granted = ADMIN[name]
    await db["balances"].insert_one(dict(SEED))
    clock = FakeClock(NOW)
    flaky = BalanceRefiller(
        DownAfterWrite(db["balances"], CallLog(), outage=5),
        POLICY,
        ledger=db["transactions"],
        clock=clock,
        retry_delay=0,
        retry_attempts=3,
    )
    with pytest.raises(StorageError):
        await op(flaky, "key-1")
    healthy = refiller(db, clock)
    await healthy.spend("u", 7)  # another writer in between
    state = await op(healthy, "key-1")
    assert (state.balance, state.granted) == (balance, granted)
    again = await op(healthy, "key-1")
    assert (again.balance, again.granted) == (balance, granted)
    rows = [r async for r in db["transactions"].find({"source": "balance_refill"})]
    assert len(rows) == 1, "one application, one row"


async def test_an_admin_key_reused_for_another_amount_is_a_conflict(db: Any) -> None:
    """Same key, different amount: IdempotencyConflict with the original, nothing changed."""
    await db["balances"].insert_one(dict(SEED))
    r = refiller(db, FakeClock(NOW))
    await r.grant("u", 100, actor="a", reason="r", request_id="g")
    with pytest.raises(IdempotencyConflict) as info:
        await r.grant("u", 999, actor="a", reason="r", request_id="g")
    assert (info.value.original, info.value.operation) == (100, "grant")
    assert (await r.get_state("u")).balance == 150


async def test_an_admin_retry_after_a_failed_ledger_insert_applies_once(db: Any) -> None:
    """The grant committed but writing its ledger row failed (StorageError): a retry with
    the key applies nothing more, and the row is written once."""
    await db["balances"].insert_one(dict(SEED))
    log = CallLog()
    broken_ledger = RecordingCollection(db["transactions"], log)
    fired = [0]

    def fail(call: Any, index: int) -> BaseException | None:
        if call.method == "insert_one" and fired[0] < 3:
            fired[0] += 1
            return AutoReconnect("connection reset")
        return None

    log.fail_before = fail
    first = BalanceRefiller(
        db["balances"], POLICY, ledger=broken_ledger, clock=FakeClock(NOW), retry_delay=0
    )
    with pytest.raises(StorageError):
        await first.grant("u", 100, actor="a", reason="r", request_id="g")
    state = await refiller(db, FakeClock(NOW)).grant(
        "u", 100, actor="a", reason="r", request_id="g"
    )
    assert (state.balance, state.granted) == (150, 100)
    assert await db["transactions"].count_documents({"context": "admin"}) == 1


# -- retries that outlast a paused pool ---------------------------------------------------


class PausedPool(RecordingCollection):
    """Every call fails as PyMongo's paused pool does until `seconds` of (simulated)
    monotonic time have passed since the first call."""

    def __init__(self, inner: Any, seconds: float, now: Callable[[], float]) -> None:
        super().__init__(inner, CallLog())
        self.seconds = seconds
        self.now = now
        self.since: float | None = None
        self.failed = 0

    async def _call(self, method: str, send: Any, args: Any, kwargs: Any) -> Any:
        if self.since is None:
            self.since = self.now()
        if self.now() - self.since < self.seconds:
            self.failed += 1
            raise AutoReconnect("connection pool paused")
        return await super()._call(method, send, args, kwargs)


class SimulatedTime:
    """The store's sleeps advance a simulated monotonic clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> SimulatedTime:
    time = SimulatedTime()
    monkeypatch.setattr(_store, "pause", time.sleep)
    monkeypatch.setattr(_store, "monotonic", time.monotonic)
    return time


async def test_calls_outlast_a_paused_pool(db: Any, simulated: SimulatedTime) -> None:
    """A pool paused for 3 s (as one cut connection pauses PyMongo's here) is retried
    through within the default budget, with growing, jittered, capped waits; the call
    succeeds. (The old 3 attempts with 50/100 ms back-off gave up after 0.15 s.)"""
    pool = PausedPool(db["balances"], 3.0, simulated.monotonic)
    r = BalanceRefiller(pool, POLICY, clock=FakeClock(NOW))
    state = await r.ensure_balance("new")
    assert state.balance == 50
    assert pool.failed == len(simulated.slept) > 3
    assert simulated.slept[0] <= 0.05
    assert max(simulated.slept) <= _store.MAX_BACKOFF
    assert 3.0 <= sum(simulated.slept) < _store.RETRY_BUDGET


async def test_a_spent_budget_raises_storage_error_naming_it(
    db: Any, simulated: SimulatedTime
) -> None:
    """When the budget is spent the caller sees StorageError with the attempts and time."""
    pool = PausedPool(db["balances"], 1e9, simulated.monotonic)
    r = BalanceRefiller(pool, POLICY, clock=FakeClock(NOW), retry_budget=2.0)
    with pytest.raises(StorageError, match=r"after \d+ attempt\(s\) in 2\.0 s") as info:
        await r.ensure_balance("new")
    assert isinstance(info.value.__cause__, AutoReconnect)
    assert sum(simulated.slept) == pytest.approx(2.0)


async def test_concurrent_calls_all_succeed_through_an_outage(
    db: Any, simulated: SimulatedTime
) -> None:
    """Ten concurrent calls during a 2 s pause all succeed once it recovers."""
    pool = PausedPool(db["balances"], 2.0, simulated.monotonic)
    r = BalanceRefiller(pool, POLICY, clock=FakeClock(NOW))
    states = await asyncio.gather(*(r.ensure_balance(f"u{i}") for i in range(10)))
    assert [s.balance for s in states] == [50] * 10
