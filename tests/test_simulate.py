"""The simulator is the live library: random policies and traces, run through
`simulate` and through `BalanceRefiller` with a `FakeClock` on the test backend, agree
on every user's balance, refills, refused spends, tier and credits granted.

Examples: a quarter of the Hypothesis profile's (`ci`: 500, on both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balance_refill import (
    AdaptiveAmount,
    BalanceRefiller,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    InvalidUserId,
    RefillPolicy,
    TieredPolicy,
    TierRule,
    UserId,
)
from balance_refill import simulate as simulate_module
from balance_refill._validate import stored_user_id
from balance_refill.decide import plan_refill
from balance_refill.policy import AnyPolicy, as_tiered
from balance_refill.simulate import Demand, Event, Login, SimulationReport, simulate
from balance_refill.testing import FakeClock

from .wire import backend

START = datetime(2028, 1, 20, 10, tzinfo=UTC)
USERS: tuple[UserId, ...] = ("ann", "bob", "64f0c0ffee0000000000beef", 7)
REFILL_CONTEXTS = ("autoRefill", "refillReset")
EXAMPLES = max(25, settings().max_examples // 4)
RUNS = {"examples": 0}
"""Examples the exactness property ran (for the run's summary line)."""

# -- strategies -----------------------------------------------------------------------

credits = st.one_of(
    st.integers(min_value=1, max_value=3_000),
    st.integers(min_value=1, max_value=60_000).map(lambda n: n / 4),  # exact quarters
    st.floats(min_value=0.01, max_value=3_000, allow_nan=False).map(lambda x: round(x, 2)),
)


@st.composite
def tier_policies(draw: st.DrawFn) -> RefillPolicy:
    amount = draw(st.sampled_from([500, 1_000, 2_500, 4_000]))
    kind = draw(st.sampled_from(["interval", "calendar"]))
    fields: dict[str, Any] = {"amount": amount}
    if kind == "interval":
        fields["interval"] = draw(st.sampled_from(["1d", "3d", "7d", "30d", "1mo", "12h"]))
    else:
        fields["calendar"] = draw(st.sampled_from(["day", "week", "month"]))
        fields["timezone"] = draw(st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]))
    fields["mode"] = draw(st.sampled_from(["top_up", "add", "reset"]))
    fields["threshold"] = draw(st.sampled_from([None, 0, amount // 2, amount]))
    if draw(st.booleans()):
        fields["max_balance"] = amount * draw(st.sampled_from([1, 2, 3]))
    fields["start_balance"] = draw(st.sampled_from([0, amount // 2, amount]))
    if "max_balance" in fields:
        fields["start_balance"] = min(fields["start_balance"], fields["max_balance"])
    fields["auto_refill"] = draw(st.sampled_from([True, True, True, False]))
    if draw(st.booleans()):
        top = fields.get("max_balance", amount * 3)
        low = draw(st.integers(min_value=1, max_value=amount))
        fields["adaptive"] = AdaptiveAmount(
            alpha=draw(st.sampled_from([0.3, 0.5, 1.0])),
            headroom=draw(st.sampled_from([1.0, 1.2, 1.5])),
            min_amount=low,
            max_amount=draw(st.integers(min_value=low, max_value=top)),
        )
    return RefillPolicy(**fields)


@st.composite
def policies(draw: st.DrawFn) -> AnyPolicy:
    names = draw(st.sampled_from([("only",), ("light", "heavy"), ("light", "heavy", "daily")]))
    tiers = {name: draw(tier_policies()) for name in names}
    if len(names) == 1 and draw(st.booleans()):
        return tiers["only"]
    rules = []
    for _ in range(draw(st.integers(min_value=0, max_value=3)) if len(names) > 1 else 0):
        a, b = draw(st.permutations(names))[:2]
        of_last = draw(st.integers(min_value=1, max_value=4))
        periods = draw(st.integers(min_value=1, max_value=of_last))
        usage = draw(st.sampled_from([0.05, 0.1, 0.5, 0.8, 1.0]))
        promote = draw(st.booleans())
        rules.append(
            TierRule(
                from_tier=a,
                to_tier=b,
                periods=periods,
                of_last=of_last,
                **({"min_usage": usage} if promote else {"max_usage": usage}),
            )
        )
    return TieredPolicy(tiers=tiers, default_tier=names[0], rules=tuple(rules))


steps = st.sampled_from(
    [
        timedelta(0),
        timedelta(milliseconds=1),
        timedelta(minutes=7),
        timedelta(hours=5),
        timedelta(days=1),
        timedelta(days=3),
        timedelta(days=8),
        timedelta(days=31),
    ]
)


@st.composite
def traces(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    at = START
    for _ in range(draw(st.integers(min_value=1, max_value=24))):
        at += draw(steps)
        user = draw(st.sampled_from(USERS))
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            events.append(Login(user, at))
        else:
            events.append(Demand(user, at, draw(credits)))
    return events


@st.composite
def start_balances(draw: st.DrawFn, tiers: TieredPolicy) -> dict[object, Any]:
    chosen = draw(st.lists(st.sampled_from(USERS[:2]), unique=True, max_size=2))
    out: dict[object, Any] = {}
    for user in chosen:
        if draw(st.booleans()):
            out[user] = draw(credits)
            continue
        doc: dict[str, Any] = {
            "tokenCredits": draw(credits),
            "lastRefill": START - draw(steps) - draw(steps),
            "spentSinceRefill": draw(st.sampled_from([0, 250, 1_200.5])),
            "spendHistory": draw(st.lists(st.sampled_from([0, 100, 900, 4_000]), max_size=6)),
        }
        if draw(st.booleans()):
            doc["tier"] = draw(st.sampled_from(sorted(tiers.tiers)))
        if draw(st.booleans()):
            doc["tierPinned"] = True
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            doc["refillPaused"] = True
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            doc["reservedCredits"] = draw(st.sampled_from([100, 250.5]))  # LibreChat's holds
        out[user] = doc
    return out


# -- running both ways ----------------------------------------------------------------


async def run_live(
    db: Any, policy: AnyPolicy, events: Iterable[Event], start_docs: Mapping[object, Any]
) -> dict[object, dict[str, Any]]:
    """The events through `ensure_balance` / `spend` on a real collection; per user the
    balance, refills (ledger rows), refused spends, tier and credits granted."""
    clock = FakeClock(START)
    refiller = BalanceRefiller(db["balances"], policy, ledger=db["transactions"], clock=clock)
    for user, value in start_docs.items():
        uid = stored_user_id(user, "auto")
        doc = (
            dict(value)
            if isinstance(value, Mapping)
            else {"tokenCredits": value, "lastRefill": START, "spentSinceRefill": 0}
        )
        await db["balances"].insert_one({**doc, "_id": uid, "user": uid})
    refused: dict[object, int] = {}
    for event in events:
        clock.set(event.at)
        user = stored_user_id(event.user, "auto")
        if isinstance(event, Demand):
            try:
                await refiller.spend(event.user, event.credits)
            except InsufficientCredits:
                refused[user] = refused.get(user, 0) + 1
        else:
            await refiller.ensure_balance(event.user)
    rows = [r async for r in db["transactions"].find({"context": {"$in": list(REFILL_CONTEXTS)}})]
    rows.sort(key=lambda r: (r["createdAt"], r["_id"]))
    out: dict[object, dict[str, Any]] = {}
    async for doc in db["balances"].find({}):
        state = await refiller.get_state(doc["user"])
        out[doc["user"]] = {
            "balance": state.balance,
            "refills": 0,
            "refused": refused.get(doc["user"], 0),
            "tier": state.tier,
            "granted": 0,
        }
    for r in rows:
        out[r["user"]]["refills"] += 1
        out[r["user"]]["granted"] += r["rawAmount"]
    return out


def simulated(report: SimulationReport) -> dict[object, dict[str, Any]]:
    return {
        user: {
            "balance": o.balance,
            "refills": o.refills,
            "refused": o.refused,
            "tier": o.tier,
            "granted": o.granted,
        }
        for user, o in report.users.items()
    }


def both_ways(
    policy: AnyPolicy, events: list[Event], start_docs: Mapping[object, Any]
) -> tuple[dict[object, dict[str, Any]], dict[object, dict[str, Any]], SimulationReport]:
    end = (events[-1].at if events else START) + timedelta(days=1)
    report = simulate(policy, events, start=START, end=end, start_balances=start_docs)

    async def live() -> dict[object, dict[str, Any]]:
        async with backend.database("simulate") as db:
            return await run_live(db, policy, events, start_docs)

    return simulated(report), asyncio.run(live()), report


@settings(
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_simulated_equals_live_for_every_user(data: st.DataObject) -> None:
    """For random policies (each mode, rolling and calendar periods, tiers with rules,
    adaptive amounts, caps), start documents and traces, the report matches the live
    library user for user: balance (exactly, fractions too), refills, refused, tier,
    credits granted; and the totals are the sums."""
    RUNS["examples"] += 1
    policy = data.draw(policies())
    start_docs = data.draw(start_balances(as_tiered(policy)))
    events = data.draw(traces())
    sim, live, report = both_ways(policy, events, start_docs)
    assert sim == live
    totals = report.totals
    assert totals.refills == sum(u["refills"] for u in live.values())
    assert totals.refused == sum(u["refused"] for u in live.values())
    assert totals.users_dry == sum(1 for u in live.values() if u["refused"])
    assert sum(p.refills for p in report.periods) == totals.refills
    assert sum(p.refused for p in report.periods) == totals.refused


# -- the property can fail ------------------------------------------------------------

ALTERED_CASE: tuple[RefillPolicy, list[Event]] = (
    RefillPolicy(amount=1_000, interval="7d", threshold=0, start_balance=500),
    [
        Demand("ann", START, 400),
        Login("ann", START + timedelta(days=8)),  # 100 left: above the threshold 0
    ],
)


def test_the_unaltered_case_agrees() -> None:
    """The fixed case used below agrees as written (so only the alteration can part it)."""
    policy, events = ALTERED_CASE
    sim, live, _ = both_ways(policy, events, {})
    assert sim == live


def test_an_altered_decision_makes_the_comparison_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulator whose refill decision is altered (refilling as if every spend needed
    10,000 credits more: a rule the live library does not have) disagrees with the live
    run."""

    def altered(tiers: TieredPolicy, state: Any, now: datetime, needed: float = 0) -> Any:
        return plan_refill(tiers, state, now, needed + 10_000)

    monkeypatch.setattr(simulate_module, "plan_refill", altered)
    policy, events = ALTERED_CASE
    sim, live, _ = both_ways(policy, events, {})
    assert sim != live


# -- the contract ---------------------------------------------------------------------

POLICY = RefillPolicy(amount=1_000, interval="30d", start_balance=1_000)


def test_out_of_order_events_are_a_clear_error() -> None:
    """An event earlier than the one before it raises InvalidArgument naming it."""
    events: list[Event] = [
        Demand("ann", START + timedelta(hours=2), 10),
        Login("bob", START + timedelta(hours=1)),
    ]
    with pytest.raises(InvalidArgument, match=r"event 2 .* before the previous event"):
        simulate(POLICY, events, start=START, end=START + timedelta(days=1))


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        (Demand("ann", START - timedelta(seconds=1), 10), InvalidArgument, "before the window"),
        (Demand("ann", START + timedelta(days=2), 10), InvalidArgument, "after the window"),
        (Demand("ann", START.replace(tzinfo=None), 10), InvalidArgument, "aware datetime"),
        (Demand("ann", START, 0), InvalidAmount, "must not be zero"),
        (Demand("ann", START, float("nan")), InvalidAmount, "finite"),
        (Demand("ann", START, "10"), InvalidAmount, "must be a number"),  # type: ignore[arg-type]
        (Demand({"$gt": ""}, START, 10), InvalidUserId, "user id"),  # type: ignore[arg-type]
        (Login(True, START), InvalidUserId, "bool"),
        (("ann", START), InvalidArgument, "aware datetime"),
    ],
)
def test_bad_events_are_refused(event: Any, error: type[Exception], message: str) -> None:
    """Events outside the window, naive times, bad amounts and bad ids are refused with
    an error under BalanceRefillError."""
    with pytest.raises(error, match=message):
        simulate(POLICY, [event], start=START, end=START + timedelta(days=1))


def test_the_window_must_be_aware_and_ordered() -> None:
    """A naive start or an end before the start is refused."""
    with pytest.raises(InvalidArgument, match="aware"):
        simulate(POLICY, [], start=START.replace(tzinfo=None), end=START)
    with pytest.raises(InvalidArgument, match="before start"):
        simulate(POLICY, [], start=START, end=START - timedelta(days=1))


def test_periods_and_days_count_per_calendar_month() -> None:
    """One period row per calendar month of the window, with refills, refused spends and
    users refused at least once that month; one day row per day."""
    events = [
        Demand("ann", START, 800),  # 1,000 -> 200
        Demand("ann", START + timedelta(hours=1), 500),  # refused
        Demand("ann", START + timedelta(hours=2), 500),  # refused again: one dry user
        Demand("ann", START + timedelta(days=31), 500),  # refill to 1,000, charge: 500
        Demand("bob", START + timedelta(days=31), 2_000),  # refused (new user, 1,000)
    ]
    report = simulate(POLICY, events, start=START, end=START + timedelta(days=40))
    assert [p.month.isoformat() for p in report.periods] == ["2028-01-01", "2028-02-01"]
    jan, feb = report.periods
    assert (jan.refills, jan.refused, jan.users_dry, jan.credits_granted) == (0, 2, 1, 0)
    assert (feb.refills, feb.refused, feb.users_dry, feb.credits_granted) == (1, 1, 1, 800)
    assert report.totals.users_dry == 2
    assert report.users["ann"].balance == 500
    assert report.users["ann"].refused == 2
    assert len(report.days) == 41
    assert (report.days[0].users_active, report.days[0].users_refused) == (1, 1)
    assert report.days[31].share_refused == 0.5  # ann charged, bob refused
    assert report.refills_by_tier == {"default": 1}
    assert report.as_json()["totals"] == {
        "credits_granted": 800,
        "refills": 1,
        "refused": 3,
        "users_dry": 2,
        "users": 2,
        "demands": 5,
        "spent": 1_300,
    }


def test_ids_are_read_as_the_library_stores_them() -> None:
    """A 24-hex string and its ObjectId are one user, as `user_ids="auto"` stores them."""
    from bson import ObjectId

    hex_id = "64f0c0ffee0000000000beef"
    events = [Demand(hex_id, START, 100), Demand(ObjectId(hex_id), START, 100)]
    report = simulate(POLICY, events, start=START, end=START)
    assert list(report.users) == [ObjectId(hex_id)]
    assert report.users[ObjectId(hex_id)].balance == 800


def test_start_balances_take_numbers_and_documents() -> None:
    """A number starts the user with that balance, refilled at `start`; a document is
    read as the library reads one (a stored tier, a due lastRefill)."""
    tiers = TieredPolicy(
        tiers={"a": POLICY, "b": RefillPolicy(amount=5_000, interval="1d")}, default_tier="a"
    )
    report = simulate(
        tiers,
        [Login("ann", START), Login("bob", START)],
        start=START,
        end=START,
        start_balances={
            "ann": 10,
            "bob": {"tokenCredits": 10, "tier": "b", "lastRefill": START - timedelta(days=2)},
        },
    )
    assert report.users["ann"].balance == 10  # refilled at start: not due
    assert (report.users["bob"].balance, report.users["bob"].tier) == (5_000, "b")


def test_feeding_in_parts_equals_one_run() -> None:
    """`Simulator.feed` in several calls gives the report of one call."""
    from balance_refill.simulate import Simulator
    from balance_refill.usage import Synthetic

    weekly = RefillPolicy(amount=1_000, interval="7d", start_balance=1_000)
    syn = Synthetic(users=30, days=20, start=START, cost_median=150, seed=3)
    whole = simulate(weekly, syn, start=START, end=syn.end)
    parts = Simulator(weekly, start=START, end=syn.end)
    for day in syn.days_of_events():
        parts.feed(day)
    assert parts.report() == whole
    assert whole.totals.refills > 0
    assert whole.totals.refused > 0


def test_a_bad_event_changes_nothing() -> None:
    """A refused event creates no user and moves no clock: the run so far is intact."""
    from balance_refill.simulate import Simulator

    sim = Simulator(POLICY, start=START, end=START + timedelta(days=1))
    sim.feed([Demand("ann", START, 10)])
    for bad in (Demand("bob", START + timedelta(hours=2), 0), ("bob", START)):
        with pytest.raises((InvalidAmount, InvalidArgument)):
            sim.feed([bad])  # type: ignore[list-item]
    sim.feed([Demand("ann", START + timedelta(hours=1), 10)])  # still in time
    report = sim.report()
    assert list(report.users) == ["ann"]
    assert report.users["ann"].balance == 980
