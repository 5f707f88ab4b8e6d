"""Events (`on_event=`): each arrives once after its write committed, never for a write
that failed or an operation refused, once under a 200-way race; callbacks that raise or
hang change nothing about the operation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from balance_refill import (
    BalanceRefiller,
    ConfigurationError,
    InsufficientCredits,
    RefillPolicy,
    StorageError,
    TieredPolicy,
    TierRule,
)
from balance_refill.events import (
    AdminChange,
    ContentionRetry,
    Event,
    LowBalance,
    PolicyActivated,
    Refilled,
    Refused,
    SweepFinished,
    TierChanged,
)
from balance_refill.testing import Call, CallLog, FakeClock

from .conftest import START
from .wire import backend

DUE = timedelta(days=31)
POLICY = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000, low_balance=5_000)
TIERS = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=1_000, interval="30d", start_balance=1_000, low_balance=100),
        "pro": RefillPolicy(amount=5_000, interval="30d", low_balance=500),
    },
    default_tier="free",
)
Make = Callable[..., BalanceRefiller]


class Collect:
    """A sync callback that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def snapshot(db: Any) -> tuple[list[Any], list[Any]]:
    balances = [
        {k: v for k, v in d.items() if k not in ("_id",)} async for d in db["balances"].find()
    ]
    rows = [
        {k: v for k, v in r.items() if k not in ("_id",)} async for r in db["transactions"].find()
    ]
    return balances, rows


def is_cas_write(call: Call) -> bool:
    """A commit-loop write (it pushes an op id), not the spend's one call or a read."""
    update = call.args[1] if len(call.args) > 1 else call.kwargs.get("update")
    return isinstance(update, dict) and "recentOps" in update.get("$push", {})


# -- Refilled -------------------------------------------------------------------------


async def test_refilled_arrives_once_after_the_commit(
    make_refiller: Make, clock: FakeClock, db: Any
) -> None:
    """A due user's refill gives one `Refilled` with the amounts, tier, mode and the ledger
    row's id; the row is in the ledger."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.spend("u", 15_000)
    clock.advance(DUE)
    state = await refiller.ensure_balance("u")
    assert state.refilled
    [event] = seen.of(Refilled)
    assert (event.user, event.tier, event.mode, event.operation) == (
        "u",
        "default",
        "top_up",
        "refill",
    )
    assert (event.balance_before, event.balance_after, event.granted) == (5_000, 10_000, 5_000)
    assert event.policy_version is None
    assert event.at == clock()
    assert await db["transactions"].find_one({"_id": event.ledger_row_id}) is not None
    assert not seen.of(AdminChange)


async def test_no_refilled_when_not_due_or_when_the_write_fails(
    make_refiller: Make, clock: FakeClock, log: CallLog
) -> None:
    """Nothing due: no event. The compare-and-swap failing for good: StorageError and no
    event; the retry that then commits gives exactly one."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.spend("u", 15_000)
    await refiller.ensure_balance("u")
    assert seen.events == []
    clock.advance(DUE)
    log.fail_before = lambda call, i: OperationFailure("boom") if is_cas_write(call) else None
    with pytest.raises(StorageError):
        await refiller.ensure_balance("u")
    assert seen.events == []
    log.fail_before = None
    await refiller.ensure_balance("u")
    assert len(seen.of(Refilled)) == 1


async def test_refilled_once_when_the_reply_is_lost(
    make_refiller: Make, clock: FakeClock, log: CallLog
) -> None:
    """The write is applied, its reply lost (AutoReconnect): the retry no longer matches,
    the re-read recognises the write, and one `Refilled` arrives."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.spend("u", 15_000)
    clock.advance(DUE)
    lost: list[int] = []

    def lose(call: Call, index: int) -> BaseException | None:
        if is_cas_write(call) and not lost:
            lost.append(index)
            return AutoReconnect("reply lost after the write was applied")
        return None

    log.fail_after = lose
    state = await refiller.ensure_balance("u")
    assert lost, "the reply was never lost: the test would prove nothing"
    assert state.refilled
    assert len(seen.of(Refilled)) == 1
    assert len(seen.of(ContentionRetry)) == 1


async def test_refilled_once_under_a_200_way_race(make_racing: Make, clock: FakeClock) -> None:
    """200 gathered calls on a due user make one refill: one `Refilled`, and every lost
    compare-and-swap is a `ContentionRetry`."""
    seen = Collect()
    refiller = make_racing(POLICY, on_event=seen)
    await refiller.spend("u", 15_000)
    clock.advance(DUE)
    states = await asyncio.gather(*(refiller.ensure_balance("u") for _ in range(200)))
    assert sum(s.refilled for s in states) == 1
    assert len(seen.of(Refilled)) == 1
    if backend.is_mock():  # the wire server may serve the calls one after another
        assert seen.of(ContentionRetry), "no race happened: the test would prove nothing"


# -- Refused --------------------------------------------------------------------------


async def test_refused_arrives_once_and_never_for_a_covered_spend(
    make_refiller: Make, clock: FakeClock
) -> None:
    """A spend the balance cannot cover gives one `Refused` (needed, available, next
    refill); a covered spend gives none."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.spend("u", 1_000)
    assert seen.of(Refused) == []
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u", 50_000)
    [event] = seen.of(Refused)
    assert (event.user, event.needed, event.available) == ("u", 50_000, 19_000)
    assert event.next_refill_at == START + timedelta(days=30)


# -- LowBalance -----------------------------------------------------------------------


async def test_low_balance_once_per_crossing(make_refiller: Make) -> None:
    """The spend that takes the balance below the tier's level gives one `LowBalance`;
    spends that stay below, and refused ones, give none."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.spend("u", 10_000)  # 20,000 -> 10,000: above 5,000
    assert seen.of(LowBalance) == []
    await refiller.spend("u", 6_000)  # -> 4,000: crosses
    await refiller.spend("u", 1_000)  # -> 3,000: still below
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u", 9_000)
    [event] = seen.of(LowBalance)
    assert (event.user, event.tier, event.balance, event.level, event.operation) == (
        "u", "default", 4_000, 5_000, "spend",
    )  # fmt: skip


async def test_low_balance_off_by_default(make_refiller: Make) -> None:
    """A tier without `low_balance` never sends one."""
    seen = Collect()
    refiller = make_refiller(on_event=seen)
    await refiller.spend("u", 19_999)
    assert seen.of(LowBalance) == []


async def test_low_balance_from_an_admin_correction(make_refiller: Make) -> None:
    """A correction that lowers the balance below the level sends it too."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.grant("u", -16_000, actor="ops", reason="refund", create=True)
    [event] = seen.of(LowBalance)
    assert (event.balance, event.operation) == (4_000, "grant")


async def test_a_retried_spend_gives_no_second_low_balance(make_refiller: Make) -> None:
    """The same request id charged once gives one event, however often it is retried."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    for _ in range(3):
        await refiller.spend("u", 16_000, request_id="msg-1")
    assert len(seen.of(LowBalance)) == 1


async def test_low_balance_once_under_a_200_way_race(make_racing: Make) -> None:
    """200 gathered spends each take 100: exactly one of them crosses the level, and each
    of the 50 the balance cannot cover gives one `Refused`."""
    seen = Collect()
    refiller = make_racing(POLICY, on_event=seen)
    await refiller.spend("u", 5_000)  # 15,000 left
    results = await asyncio.gather(
        *(refiller.spend("u", 100, request_id=f"r{i}") for i in range(200)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, InsufficientCredits) for r in results) == 50
    assert (await refiller.get_state("u")).balance == 0
    assert len(seen.of(LowBalance)) == 1
    assert len(seen.of(Refused)) == 50  # one per refused spend


# -- AdminChange and TierChanged --------------------------------------------------------


async def test_admin_change_once_and_none_when_refused(make_refiller: Make) -> None:
    """A grant gives one `AdminChange` with actor and reason; a refused correction and a
    replayed request id give none."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.grant("u", 500, actor="ops", reason="goodwill", create=True, request_id="g1")
    await refiller.grant("u", 500, actor="ops", reason="goodwill", create=True, request_id="g1")
    with pytest.raises(InsufficientCredits):
        await refiller.grant("u", -1_000_000, actor="ops", reason="oops")
    [event] = seen.of(AdminChange)
    assert (event.operation, event.actor, event.reason, event.granted) == (
        "grant", "ops", "goodwill", 500,
    )  # fmt: skip
    assert (event.balance_before, event.balance_after) == (20_000, 20_500)
    assert event.ledger_row_id is not None


async def test_admin_change_once_under_a_200_way_race(make_racing: Make) -> None:
    """200 gathered grants with one request id apply once: one `AdminChange`."""
    seen = Collect()
    refiller = make_racing(POLICY, on_event=seen)
    await refiller.ensure_balance("u")
    await asyncio.gather(
        *(refiller.grant("u", 7, actor="ops", reason="r", request_id="k") for _ in range(200))
    )
    assert (await refiller.get_state("u")).balance == 20_007
    assert len(seen.of(AdminChange)) == 1


async def test_tier_changed_by_set_tier_and_not_when_unchanged(make_refiller: Make) -> None:
    """`set_tier` to another tier gives `TierChanged` (with the actor) and `AdminChange`;
    to the same tier only `AdminChange`."""
    seen = Collect()
    refiller = make_refiller(policy=TIERS, on_event=seen)
    await refiller.ensure_balance("u")
    await refiller.set_tier("u", "pro", actor="ops")
    await refiller.set_tier("u", "pro", actor="ops")
    [event] = seen.of(TierChanged)
    assert (event.tier, event.previous_tier, event.actor, event.operation) == (
        "pro", "free", "ops", "set_tier",
    )  # fmt: skip
    assert len(seen.of(AdminChange)) == 2


async def test_tier_changed_by_the_rules_once_under_a_200_way_race(
    make_racing: Make, clock: FakeClock
) -> None:
    """Activity rules move a heavy user at the refill: 200 gathered calls, one move."""
    policy = TieredPolicy(
        tiers=TIERS.tiers,
        default_tier="free",
        rules=(TierRule(from_tier="free", to_tier="pro", min_usage=0.8),),
    )
    seen = Collect()
    refiller = make_racing(policy, on_event=seen)
    await refiller.spend("u", 900)
    clock.advance(DUE)
    await asyncio.gather(*(refiller.ensure_balance("u") for _ in range(200)))
    [event] = seen.of(TierChanged)
    assert (event.tier, event.previous_tier, event.actor) == ("pro", "free", None)
    assert len(seen.of(Refilled)) == 1


# -- SweepFinished and PolicyActivated -------------------------------------------------


async def test_sweep_finished_carries_the_report(make_refiller: Make, clock: FakeClock) -> None:
    """A sweep gives one `Refilled` per refill (operation "sweep") and one
    `SweepFinished` with its report."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    for user in ("a", "b"):
        await refiller.spend(user, 15_000)
    clock.advance(DUE)
    report = await refiller.sweep()
    [finished] = seen.of(SweepFinished)
    assert finished.report is report
    assert finished.duration == report.duration
    assert report.refilled == 2
    assert [e.operation for e in seen.of(Refilled)] == ["sweep", "sweep"]


async def test_no_sweep_finished_when_the_sweep_fails(
    make_refiller: Make, clock: FakeClock, log: CallLog
) -> None:
    """A sweep that raises gives no `SweepFinished`."""
    seen = Collect()
    refiller = make_refiller(policy=POLICY, on_event=seen)
    await refiller.spend("u", 15_000)
    clock.advance(DUE)
    log.fail_before = lambda call, i: OperationFailure("down") if call.method == "find" else None
    with pytest.raises(StorageError):
        await refiller.sweep()
    assert seen.of(SweepFinished) == []


async def test_policy_activated_is_emitted_by_the_helper(make_refiller: Make) -> None:
    """The policy store's one-line hook delivers `PolicyActivated`."""
    seen = Collect()
    refiller = make_refiller(on_event=seen)
    observer = refiller.observer
    assert observer is not None
    observer.policy_activated(3, previous=2, actor="ops", reason="cheaper", at=START)
    assert seen.events == [
        PolicyActivated(version=3, previous=2, actor="ops", reason="cheaper", at=START)
    ]


# -- callbacks that raise or hang -------------------------------------------------------


async def run_scenario(refiller: BalanceRefiller, clock: FakeClock) -> list[object]:
    results: list[object] = [await refiller.spend("u", 16_000, request_id="a")]
    clock.advance(DUE)
    results.append(await refiller.ensure_balance("u"))
    try:
        await refiller.spend("u", 10**9)
    except InsufficientCredits as exc:
        results.append(str(exc))
    results.append(await refiller.grant("u", 10, actor="ops", reason="r"))
    return results


async def reference(db: Any) -> tuple[list[object], Any, int]:
    """The scenario with no callback: results, the database, and the calls made."""
    log = CallLog()
    from balance_refill.testing import RecordingCollection

    clock = FakeClock(START)
    refiller = BalanceRefiller(
        RecordingCollection(db["ref_balances"], log),
        POLICY,
        ledger=RecordingCollection(db["ref_transactions"], log),
        clock=clock,
        retry_delay=0,
    )
    results = await run_scenario(refiller, clock)
    balances = [{k: v for k, v in d.items() if k != "_id"} async for d in db["ref_balances"].find()]
    rows = [{k: v for k, v in d.items() if k != "_id"} async for d in db["ref_transactions"].find()]
    return results, (balances, rows), log.count


def normalised(snapshot: tuple[list[Any], list[Any]]) -> Any:
    balances, rows = snapshot
    drop = ("recentOps", "lastOpId", "pendingLedger")
    return (
        [{k: v for k, v in d.items() if k not in drop} for d in balances],
        [{k: v for k, v in r.items() if k not in ("_id",)} for r in rows],
    )


async def test_raising_and_hanging_callbacks_change_nothing(
    make_refiller: Make, clock: FakeClock, db: Any, log: CallLog
) -> None:
    """A sync callback that raises, an async one that raises and an async one that never
    returns: the operations return the same results, make the same database calls
    (nothing waits on a callback) and leave the same documents as with no callback; the
    failures are counted, and the hanging callbacks are still pending afterwards."""
    expected, expected_db, expected_calls = await reference(db)
    release = asyncio.Event()

    def broken(event: Event) -> None:
        raise RuntimeError("host bug")

    async def broken_async(event: Event) -> None:
        raise RuntimeError("host bug")

    async def hangs(event: Event) -> None:
        await release.wait()

    refiller = make_refiller(policy=POLICY, on_event=[broken, broken_async, hangs])
    log.reset()
    got = await run_scenario(refiller, clock)
    assert got == expected
    assert log.count == expected_calls
    assert refiller.events.pending > 0, "the hanging callbacks were awaited"
    assert normalised(await snapshot(db)) == normalised(expected_db)
    release.set()
    await refiller.events.drain()
    stats = refiller.events.stats
    assert (stats.delivered, stats.failed, stats.timed_out) == (4, 8, 0)
    assert refiller.events.pending == 0


async def test_a_hanging_callback_is_cancelled_after_the_timeout(make_refiller: Make) -> None:
    """An async callback that never returns is cancelled after `event_timeout` and
    counted; the operation had already returned."""
    never = asyncio.Event()

    async def hangs(event: Event) -> None:
        await never.wait()

    refiller = make_refiller(policy=POLICY, on_event=hangs, event_timeout=0.001)
    await refiller.spend("u", 16_000)
    assert refiller.events.pending == 1
    await refiller.events.drain()
    assert refiller.events.stats.timed_out == 1


async def test_async_callbacks_beyond_max_pending_are_dropped(make_refiller: Make) -> None:
    """With `max_pending` callbacks running, further events are dropped and counted
    instead of piling up."""
    release = asyncio.Event()
    got: list[Event] = []

    async def slow(event: Event) -> None:
        await release.wait()
        got.append(event)

    refiller = make_refiller(policy=POLICY, on_event=slow, max_pending=1)
    await refiller.spend("u", 16_000)  # LowBalance: runs
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u", 10**9)  # Refused: dropped
    assert refiller.events.stats.dropped == 1
    release.set()
    await refiller.events.drain()
    assert [type(e) for e in got] == [LowBalance]


async def test_async_callbacks_receive_the_events(make_refiller: Make) -> None:
    """An async callback gets the same events as a sync one, once each."""
    sync = Collect()
    got: list[Event] = []

    async def notify(event: Event) -> None:
        got.append(event)

    refiller = make_refiller(policy=POLICY, on_event=[sync, notify])
    await refiller.spend("u", 16_000)
    await refiller.events.drain()
    assert got == sync.events
    assert [type(e) for e in got] == [LowBalance]
    assert refiller.events.stats.delivered == 2


@pytest.mark.parametrize("bad", [42, [print, "not callable"]])
def test_on_event_must_be_callable(make_refiller: Make, bad: Any) -> None:
    """Anything but a callable or a list of callables is refused at construction."""
    with pytest.raises(ConfigurationError, match="on_event"):
        make_refiller(on_event=bad)


def test_no_observer_without_events_or_metrics(make_refiller: Make) -> None:
    """Without `on_event` and `metrics` nothing is wrapped: the hot path is the plain
    method."""
    refiller = make_refiller()
    assert refiller.observer is None
    assert "spend" not in vars(refiller)


# -- logs -------------------------------------------------------------------------------


async def test_decisions_are_logged_at_debug_and_no_amount_at_warning(
    make_refiller: Make, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG on, the refill written, the change committed and the refusal are logged
    with `user`, `operation` (and `policy_version` where it applies); the records at
    WARNING and above (a failing callback's, here) never show an amount."""

    def broken(event: Event) -> None:
        raise RuntimeError("host bug")

    caplog.set_level("DEBUG", logger="balance_refill")
    refiller = make_refiller(policy=POLICY, on_event=broken)
    await refiller.spend("u", 12_345)
    clock.advance(DUE)
    await refiller.ensure_balance("u")
    with pytest.raises(InsufficientCredits):
        await refiller.spend("u", 987_654)
    debug = [r for r in caplog.records if r.levelname == "DEBUG"]
    operations = {(getattr(r, "user", None), getattr(r, "operation", None)) for r in debug}
    assert {("u", "refill"), ("u", "refuse")} <= operations
    assert any(hasattr(r, "policy_version") for r in debug)
    loud = [r for r in caplog.records if r.levelno >= 30]
    assert loud, "the failing callback was not logged"
    for record in loud:
        text = record.getMessage() + (record.exc_text or "")
        for amount in ("12345", "12,345", "987654", "7655", "987,654"):
            assert amount not in text
