"""The scheduled sweep: same decisions as the lazy path, batched, leased, crash-safe."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from balance_refill import (
    BalanceRefiller,
    BalanceState,
    InvalidArgument,
    RefillPolicy,
    StorageError,
    SweepLocked,
    SweepReport,
    TieredPolicy,
)
from balance_refill._schema import parse
from balance_refill.decide import plan_refill
from balance_refill.policy import as_tiered
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection
from tests.wire import backend

Make = Callable[..., BalanceRefiller]
POLICY = RefillPolicy(amount=1_000, interval="30d")


async def populate(db: Any, clock: FakeClock, n: int, seed: int = 1) -> list[dict[str, Any]]:
    """n users with assorted balances, ages, activity and pauses (LibreChat-like docs too)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        doc: dict[str, Any] = {
            "user": f"u{i:04d}",
            "tokenCredits": rng.choice([0, 10, 999, 1_000, 5_000]),
        }
        if rng.random() < 0.9:
            doc["lastRefill"] = clock() - timedelta(
                days=rng.randint(0, 90), minutes=rng.randint(0, 600)
            )
        if rng.random() < 0.7:
            doc["lastSeen"] = clock() - timedelta(days=rng.randint(0, 90))
        if rng.random() < 0.1:
            doc["autoRefillEnabled"] = False
        docs.append(doc)
    await db["balances"].insert_many([dict(d) for d in docs])
    return docs


@pytest.fixture
def sweeper(make_refiller: Make, db: Any, log: CallLog) -> BalanceRefiller:
    return make_refiller(policy=POLICY, leases=RecordingCollection(db["leases"], log))


async def test_sweep_refills_exactly_the_due_users(
    sweeper: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """The sweep uses plan_refill: it refills whom ensure_balance would, with the same result."""
    docs = await populate(db, clock, 300)
    expected = {}
    for raw in [d async for d in db["balances"].find()]:
        plan = plan_refill(as_tiered(POLICY), parse(raw).state, clock())
        if plan is not None:
            expected[raw["user"]] = plan.after
    report = await sweeper.sweep(batch_size=40)
    assert report.refilled == len(expected) > 0
    assert report.scanned >= report.refilled
    assert report.errors == 0
    assert report.granted == sum(expected.values()) - sum(
        next(d["tokenCredits"] for d in docs if d["user"] == u) for u in expected
    )
    after = {d["user"]: d async for d in db["balances"].find()}
    for user, balance in expected.items():
        assert after[user]["tokenCredits"] == balance
        assert after[user]["lastRefill"] == clock()
    rows = [r async for r in db["transactions"].find()]
    assert sorted(r["user"] for r in rows) == sorted(expected)
    assert all(r["context"] == "autoRefill" and r["trigger"] == "sweep" for r in rows)
    assert await db["balances"].count_documents({"pendingLedger": {"$exists": True}}) == 0
    again = await sweeper.sweep(batch_size=40)
    assert again.refilled == 0


async def test_skip_reasons(sweeper: BalanceRefiller, db: Any, clock: FakeClock) -> None:
    """Every skipped user is counted under its reason."""
    old = clock() - timedelta(days=40)
    await db["balances"].insert_many(
        [
            {"user": "due", "tokenCredits": 0, "lastRefill": old, "lastSeen": clock()},
            {"user": "paused", "tokenCredits": 0, "lastRefill": old, "refillPaused": True},
            {"user": "rich", "tokenCredits": 5_000, "lastRefill": old, "lastSeen": clock()},
            {"user": "recent", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=3)},
            {
                "user": "idle",
                "tokenCredits": 0,
                "lastRefill": old,
                "lastSeen": clock() - timedelta(days=60),
            },
            {
                "user": "unknown",
                "tokenCredits": 0,
            },  # a LibreChat document: no lastRefill, no lastSeen
        ]
    )
    report = await sweeper.sweep(active_within="30d")
    assert report.refilled == 1
    assert dict(report.skipped) == {
        "inactive": 2,
        "not_due": 1,  # "recent", counted on the server
        "paused": 1,
        "above_threshold": 1,
        "raced": 0,
    }
    everyone = await sweeper.sweep()  # without an activity window, idle and unknown are due too
    assert everyone.refilled == 2


async def test_seen_falls_back_to_last_refill(
    sweeper: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """For documents without lastSeen (LibreChat's), a recent lastRefill counts as seen."""
    await db["balances"].insert_one(
        {"user": "lc", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
    )
    assert (await sweeper.sweep(active_within="45d")).refilled == 1


async def test_calls_grow_with_due_users_not_all_users(
    sweeper: BalanceRefiller, db: Any, clock: FakeClock, log: CallLog
) -> None:
    """With nobody due, a sweep over many users costs a constant number of calls; with
    due users, reads are batches of at most batch_size."""
    await db["balances"].insert_many(
        [{"user": f"n{i}", "tokenCredits": 0, "lastRefill": clock()} for i in range(500)]
    )
    log.reset()
    report = await sweeper.sweep(batch_size=10)
    quiet_calls = log.count
    assert (report.scanned, report.read, report.refilled) == (500, 0, 0)
    assert report.skipped["not_due"] == 500
    await db["balances"].insert_many(
        [
            {"user": f"d{i}", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
            for i in range(45)
        ]
    )
    log.reset()
    report = await sweeper.sweep(batch_size=10)
    assert report.refilled == 45
    finds = [c for c in log.calls if c.method == "find" and c.collection == "balances"]
    limits = [c.kwargs["limit"] for c in finds]
    assert all(isinstance(n, int) and 0 < n <= 10 for n in limits), limits
    assert report.batches == 5
    per_batch = {
        m: sum(1 for c in log.calls if c.method == m and c.collection != "leases")
        for m in ("bulk_write", "update_one", "insert_many", "update_many")
    }
    assert quiet_calls <= 10
    if backend.is_mock():
        # mongomock's bulk_write refuses UpdateOne (once: the store then remembers), so
        # the compare-and-swaps go one by one; rows and markers are still one call a batch.
        assert per_batch == {"bulk_write": 1, "update_one": 45, "insert_many": 5, "update_many": 5}
        return
    assert per_batch == {"bulk_write": 5, "update_one": 0, "insert_many": 5, "update_many": 5}
    assert (
        log.count <= quiet_calls + 5 * 5
    )  # per batch: find, bulk_write, insert_many, update_many, lease renewal


async def test_dry_run_writes_nothing(
    sweeper: BalanceRefiller, db: Any, clock: FakeClock, log: CallLog
) -> None:
    await populate(db, clock, 50)
    before = (
        [d async for d in db["balances"].find()],
        [d async for d in db["transactions"].find()],
    )
    log.reset()
    report = await sweeper.sweep(dry_run=True)
    assert report.dry_run
    assert report.refilled > 0
    assert not [c for c in log.calls if c.method not in ("find", "count_documents")]
    assert (
        [d async for d in db["balances"].find()],
        [d async for d in db["transactions"].find()],
    ) == before
    assert await db["leases"].count_documents({}) == 0


async def test_limit_and_progress(sweeper: BalanceRefiller, db: Any, clock: FakeClock) -> None:
    await db["balances"].insert_many(
        [
            {"user": f"d{i}", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
            for i in range(25)
        ]
    )
    seen: list[tuple[int, int | None]] = []
    report = await sweeper.sweep(
        batch_size=10, limit=15, progress=lambda done, total: seen.append((done, total))
    )
    assert (report.scanned, report.refilled) == (15, 15)
    assert seen == [(10, 15), (15, 15)]


async def test_tier_counts(make_refiller: Make, db: Any, clock: FakeClock) -> None:
    tiers = TieredPolicy(
        tiers={"regular": POLICY, "heavy": RefillPolicy(amount=5_000, interval="1d")},
        default_tier="regular",
    )
    refiller = make_refiller(policy=tiers, leases=db["leases"])
    await db["balances"].insert_many(
        [
            {"user": "a", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)},
            {
                "user": "b",
                "tokenCredits": 0,
                "lastRefill": clock() - timedelta(days=2),
                "tier": "heavy",
                "refillTier": "heavy",
            },
            {"user": "c", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=2)},
        ]
    )
    report = await refiller.sweep()
    assert dict(report.tiers) == {"regular": 1, "heavy": 1}
    assert report.skipped["not_due"] == 1


async def test_bad_arguments(sweeper: BalanceRefiller) -> None:
    for kwargs in (
        {"batch_size": 0},
        {"batch_size": 10**6},
        {"limit": 0},
        {"active_within": "1mo"},
        {"active_within": "soon"},
    ):
        with pytest.raises(InvalidArgument):
            await sweeper.sweep(**kwargs)


async def test_sweep_racing_lazy_refills_never_double_refills(
    db: Any, clock: FakeClock, make_racing: Make
) -> None:
    """Interleaved sweep and lazy calls (every call yields first; bulk requests interleave)."""
    refiller = make_racing(POLICY)
    users = [f"r{i}" for i in range(60)]
    await db["balances"].insert_many(
        [{"user": u, "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)} for u in users]
    )
    lazy = [refiller.ensure_balance(u) for u in users for _ in range(3)]
    lazy += [refiller.spend(u, 1) for u in users[::2]]
    results = await asyncio.gather(refiller.sweep(batch_size=7), *lazy)
    report = results[0]
    assert isinstance(report, SweepReport)
    rows = [r async for r in db["transactions"].find()]
    assert sorted(r["user"] for r in rows) == sorted(users)  # one refill and one row per user
    states = [s for s in results[1:] if isinstance(s, BalanceState)]
    assert len(states) == len(lazy)
    lazy_refills = sum(1 for s in states if s.refilled)
    assert report.refilled + lazy_refills == len(users)
    for doc in [d async for d in db["balances"].find()]:
        assert doc["tokenCredits"] == 1_000 - (1 if doc["user"] in users[::2] else 0)


async def test_two_sweeps_at_once(db: Any, make_racing: Make) -> None:
    """Two sweeps started together: one runs, the other reports the lease holder."""

    def make() -> BalanceRefiller:
        return make_racing(POLICY)

    await db["balances"].insert_many([{"user": f"x{i}", "tokenCredits": 0} for i in range(30)])
    results = await asyncio.gather(
        make().sweep(batch_size=5), make().sweep(batch_size=5), return_exceptions=True
    )
    reports = [r for r in results if isinstance(r, SweepReport)]
    locked = [r for r in results if isinstance(r, SweepLocked)]
    assert (len(reports), len(locked)) == (1, 1)
    assert reports[0].refilled == 30
    assert await db["transactions"].count_documents({}) == 30
    assert await db["leases"].count_documents({}) == 0  # released


async def test_crashed_sweeps_lease_expires(
    sweeper: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """A lease left by a dead process blocks until it expires, then is taken over."""
    await db["leases"].insert_one(
        {
            "_id": "sweep:balances",
            "holder": "dead-host:1",
            "expiresAt": clock() + timedelta(minutes=5),
        }
    )
    with pytest.raises(SweepLocked, match="dead-host"):
        await sweeper.sweep()
    clock.advance(minutes=6)
    await sweeper.sweep()
    assert await db["leases"].count_documents({}) == 0


@pytest.mark.parametrize("fail_at", ["bulk_write", "insert_many", "update_many"])
async def test_rerun_after_crash_finishes_without_duplicates(
    sweeper: BalanceRefiller, db: Any, clock: FakeClock, log: CallLog, fail_at: str
) -> None:
    """A sweep dies mid-batch (after its writes landed, reply lost); the rerun settles
    the markers and finishes: every due user refilled once, one row each."""
    await db["balances"].insert_many(
        [
            {"user": f"c{i}", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=31)}
            for i in range(23)
        ]
    )
    seen = [0]
    method, nth = fail_at, 2  # the second batch's call
    if fail_at == "bulk_write" and backend.is_mock():
        method, nth = "update_one", 20  # the mock gets the updates one by one: batch 2's last

    def crash(call: Call, index: int) -> BaseException | None:
        if call.method == method and call.collection != "leases":
            seen[0] += 1
            if seen[0] == nth:
                return OperationFailure("connection reset by a dying process", code=6)
        return None

    log.fail_after = crash
    with pytest.raises(StorageError):
        await sweeper.sweep(batch_size=10)
    log.fail_after = None
    report = await sweeper.sweep(batch_size=10)
    rows = [r async for r in db["transactions"].find()]
    assert sorted(r["user"] for r in rows) == sorted(f"c{i}" for i in range(23))
    assert all(d["tokenCredits"] == 1_000 for d in [d async for d in db["balances"].find()])
    assert await db["balances"].count_documents({"pendingLedger": {"$exists": True}}) == 0
    # Batch 1 finished; batch 2's refills landed before the crash; the rerun settles what
    # batch 2 left pending and refills the last 3 users.
    assert report.refilled == 3
    assert report.settled_pending == (0 if fail_at == "update_many" else 10)


async def test_lease_lost_mid_sweep_stops(make_refiller: Make, db: Any) -> None:
    """If another runner takes the lease over (ours expired), the sweep stops at the next renewal."""
    await db["balances"].insert_many([{"user": f"l{i}", "tokenCredits": 0} for i in range(20)])
    original = db["leases"]

    class Thief:
        name = "leases"

        def __getattr__(self, attr: str) -> Any:
            return getattr(original, attr)

        async def update_one(self, *args: Any, **kwargs: Any) -> Any:
            await original.update_one({"_id": "sweep:balances"}, {"$set": {"holder": "thief"}})
            return await original.update_one(*args, **kwargs)

    sweeper = make_refiller(policy=POLICY, leases=Thief())
    with pytest.raises(SweepLocked):
        await sweeper.sweep(batch_size=5)
    assert await db["transactions"].count_documents({}) == 5  # the first batch completed


@pytest.mark.parametrize("dry_run", [False, True])
async def test_report_adds_up(
    make_refiller: Make, db: Any, clock: FakeClock, dry_run: bool
) -> None:
    """scanned = refilled + every skipped reason + errors, dry run too; users not yet due
    are counted as not_due, not left out."""
    sweeper = make_refiller(policy=RefillPolicy(amount=1_000, interval="30d"), leases=db["leases"])
    old, recent = clock() - timedelta(days=40), clock() - timedelta(days=2)
    await db["balances"].insert_many(
        [{"user": f"due{i}", "tokenCredits": 0, "lastRefill": old} for i in range(7)]
        + [{"user": f"new{i}", "tokenCredits": 0, "lastRefill": recent} for i in range(11)]
        + [{"user": f"rich{i}", "tokenCredits": 5_000, "lastRefill": old} for i in range(3)]
        + [{"user": "paused", "tokenCredits": 0, "lastRefill": old, "refillPaused": True}]
    )
    report = await sweeper.sweep(dry_run=dry_run, batch_size=4)
    assert report.scanned == 22 == report.refilled + sum(report.skipped.values()) + report.errors
    assert (report.refilled, report.skipped["not_due"], report.skipped["paused"]) == (7, 11, 1)
    assert report.skipped["above_threshold"] == 3
