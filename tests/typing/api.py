"""Exercises the public API under mypy --strict (never run, only type-checked).

`assert_type` fails if a type degrades (to `Any`, say). Each `# type: ignore[code]` here
marks a call that must be refused; mypy's `warn_unused_ignores` (on under `strict`)
fails the check if it is ever accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, assert_type

from bson import ObjectId
from pymongo import AsyncMongoClient

from balance_refill import (
    AdaptiveAmount,
    BalanceRefiller,
    BalanceRefillError,
    BalanceState,
    InsufficientCredits,
    PolicyActivation,
    PolicyStore,
    PolicyVersion,
    RefillPolicy,
    SweepReport,
    TieredPolicy,
    TierRule,
    __version__,
)
from balance_refill.simulate import (
    Demand,
    Event,
    Login,
    PeriodRow,
    SimulationReport,
    Simulator,
    Totals,
    UserOutcome,
    simulate,
)
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection
from balance_refill.usage import Synthetic

POLICY = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)


async def typed_usage() -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        "mongodb://localhost", tz_aware=True
    )
    db = client["LibreChat"]
    monthly = RefillPolicy(
        amount=5,
        calendar="month",
        timezone="Europe/Paris",
        adaptive=AdaptiveAmount(min_amount=1, max_amount=10),
    )
    rule = TierRule(from_tier="regular", to_tier="heavy", min_usage=0.8, periods=2, of_last=3)
    tiers = TieredPolicy(
        tiers={"regular": POLICY, "heavy": monthly}, default_tier="regular", rules=(rule,)
    )
    refiller = BalanceRefiller(
        db["balances"], tiers, ledger=db["transactions"], clock=lambda: datetime.now(UTC)
    )
    await refiller.ensure_indexes()
    state: BalanceState = await refiller.ensure_balance(ObjectId(), needed=5)
    when: datetime | None = state.next_refill_at
    try:
        state = await refiller.spend("user-1", 10.5, request_id="req-1")
    except InsufficientCredits as exc:
        balance: float = exc.balance
        del balance
    except BalanceRefillError:
        raise
    del when
    await refiller.flush_pending()
    await refiller.grant("user-1", 5, actor="ops", reason="typing")
    await refiller.set_tier("user-1", "heavy", actor="ops", pinned=True)
    assert_type(__version__, str)


async def the_driver_fits_the_collection_protocol() -> None:
    """pymongo's own collection, untouched, is what the protocol describes. (pymongo
    wants its client's document type stated under mypy: unannotated, it is `Never`.)"""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://localhost")
    refiller = BalanceRefiller(client["LibreChat"]["balances"], POLICY)
    assert_type(await refiller.get_state(ObjectId()), BalanceState)
    database = client["LibreChat"]
    BalanceRefiller(
        database["balances"],
        POLICY,
        ledger=database["transactions"],
        leases=database["balance_refill_leases"],
        user_ids="objectid",
    )


async def state_fields(refiller: BalanceRefiller) -> None:
    state = await refiller.ensure_balance("65f0c0ffee0123456789abcd")
    assert_type(state.user_id, str | int | ObjectId)  # the id as stored, never Any
    user: str | int | ObjectId = state.user_id
    again = await refiller.get_state(user)  # the stored id is accepted back
    credits: int | float = again.balance + again.granted + again.spent_since_refill
    flags: tuple[bool, bool, bool] = (again.refilled, again.auto_refill, again.pinned)
    seen: datetime | None = again.last_seen or again.last_refill
    tier: str = again.tier
    del credits, flags, seen, tier


async def admin_operations(refiller: BalanceRefiller) -> None:
    """The admin object and the historical names on the refiller return the same types."""
    admin = refiller.admin
    states: list[BalanceState] = [
        await admin.grant("u1", 5, actor="ops", reason="goodwill", allow_negative=True),
        await admin.grant("u2", 5.5, actor="ops", reason="new", create=True),
        await admin.set_balance("u1", 0, actor="ops", reason="reset", create=False),
        await admin.set_tier("u1", "heavy", actor="ops", pinned=None),
        await admin.set_auto_refill("u1", False, actor="ops"),
        await admin.refill_now("u1", actor="ops", reason="support", create=True),
        await refiller.set_auto_refill("u1", True, actor="ops"),
        await refiller.refill_now("u1", actor="ops", reason="support"),
    ]
    rows: Sequence[Mapping[str, object]] = await admin.history("u1", limit=10)
    rows = await refiller.history("u1")
    del rows
    await admin.grant("u1", "5", actor="ops", reason="x")  # type: ignore[arg-type]  # amounts are numbers
    del states


async def sweep_report(refiller: BalanceRefiller) -> None:
    def progress(done: int, total: int | None) -> None:
        del done, total

    report = await refiller.sweep(
        active_within=timedelta(days=30), batch_size=100, limit=1_000, progress=progress
    )
    assert_type(report, SweepReport)
    counts: tuple[int, int, int, int, int, int] = (
        report.scanned,
        report.refilled,
        report.errors,
        report.batches,
        report.read,
        report.settled_pending,
    )
    skipped: Mapping[str, int] = report.skipped
    per_tier: Mapping[str, int] = report.tiers
    granted: int | float = report.granted
    timing: tuple[datetime, timedelta] = (report.started_at, report.duration)
    flags: tuple[bool, bool] = (report.ok, report.dry_run)
    del counts, skipped, per_tier, granted, timing, flags


async def testing_helpers() -> None:
    """What a host app's tests use: a fake clock and recording collections, which go
    wherever a collection does."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://localhost")
    database = client["test"]
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert_type(clock(), datetime)
    later: datetime = clock.advance(days=31)
    clock.advance(timedelta(hours=1))
    clock.set(later)

    def lose_reply(call: Call, index: int) -> BaseException | None:
        method: str = call.method
        where: str = call.collection
        first: object = call.args[0] if call.args else call.kwargs.get("filter")
        del method, where, first
        return TimeoutError("reply lost") if index == 1 else None

    log = CallLog(fail_after=lose_reply)
    balances = RecordingCollection(database["balances"], log, yield_first=True)
    ledger = RecordingCollection(database["transactions"], log)
    refiller = BalanceRefiller(
        balances, POLICY, ledger=ledger, leases=RecordingCollection(database["leases"]), clock=clock
    )
    await refiller.spend("u1", 1)
    calls: list[Call] = log.calls
    count: int = log.count
    names: list[str] = log.methods()
    log.reset()
    del calls, count, names

    # The wrapped collection, for seeding and reading without recording.
    doc = await balances.inner.find_one({"user": "u1"})
    assert_type(doc, Mapping[str, Any] | None)
    recorded = await balances.find_one({"user": "u1"})
    assert_type(recorded, Mapping[str, Any] | None)
    rows: list[Mapping[str, Any]] = await ledger.find({"user": "u1"}).to_list()
    async for row in ledger.find({}):
        assert_type(row, Mapping[str, Any])
    del rows

    RecordingCollection(object())  # type: ignore[arg-type]  # only a collection can be wrapped
    FakeClock("2026-01-01")  # type: ignore[arg-type]  # an aware datetime, not a string


class _NoUpdates:
    """Has a name but not the calls the library makes."""

    name = "balances"


def refused_collections() -> None:
    BalanceRefiller(_NoUpdates(), POLICY)  # type: ignore[arg-type]  # the protocol is checked
    BalanceRefiller({"balances": []}, POLICY)  # type: ignore[arg-type]  # not a collection


async def policy_store_usage(collection: RecordingCollection) -> None:
    store = PolicyStore(collection, clock=FakeClock())
    assert_type(await store.push(POLICY, actor="ops", reason="r"), int)
    await store.activate(1, actor="ops", reason="r")
    assert_type(await store.active(), tuple[int, RefillPolicy | TieredPolicy])
    assert_type(await store.get(1), PolicyVersion)
    assert_type(await store.versions(), list[PolicyVersion])
    assert_type((await store.activations())[0], PolicyActivation)
    await store.activate("1", actor="ops", reason="r")  # type: ignore[arg-type]  # a number
    await store.push(POLICY, actor="ops")  # type: ignore[call-arg]  # a reason is required
    PolicyStore(_NoUpdates())  # type: ignore[arg-type]  # the protocol is checked


def simulation() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events: list[Event] = [
        Login("ann", start),
        Demand("ann", start, 12.5),
        Demand(ObjectId(), start, 3),
    ]
    report = simulate(POLICY, events, start=start, end=start + timedelta(days=30))
    assert_type(report, SimulationReport)
    outcome = report.users["ann"]
    assert_type(outcome, UserOutcome)
    assert_type(outcome.balance, int | float)
    assert_type(outcome.tier, str)
    assert_type(report.totals, Totals)
    first: PeriodRow = report.periods[0]
    granted: int | float = first.credits_granted
    del granted
    simulator = Simulator(POLICY, start=start, end=start, start_balances={"ann": 5, "bob": {}})
    simulator.feed(Synthetic(users=3, days=1, start=start))
    assert_type(simulator.report(), SimulationReport)
    simulate(POLICY, [("ann", start)], start=start, end=start)  # type: ignore[list-item]  # events are Demand or Login
    Demand("ann", start, "12")  # type: ignore[arg-type]  # credits are numbers


async def observed(db: Any) -> None:
    """`on_event` takes a sync or async callable or a list; `metrics` a `Metrics`."""
    from balance_refill.events import Event as Observed
    from balance_refill.events import LowBalance, Refilled
    from balance_refill.metrics import Metrics

    def sync(event: Observed) -> None:
        if isinstance(event, Refilled):
            assert_type(event.granted, int | float)
            assert_type(event.policy_version, int | None)

    async def notify(event: Observed) -> None:
        if isinstance(event, LowBalance):
            assert_type(event.level, int | float)

    BalanceRefiller(db["balances"], POLICY, on_event=sync)
    refiller = BalanceRefiller(db["balances"], POLICY, on_event=[sync, notify], metrics=Metrics())
    await refiller.events.drain()
    delivered: int = refiller.events.stats.delivered
    del delivered
    BalanceRefiller(db["balances"], POLICY, on_event=lambda e, x: None)  # type: ignore[arg-type]  # one argument
    BalanceRefiller(db["balances"], POLICY, metrics=object())  # type: ignore[arg-type]  # a Metrics
