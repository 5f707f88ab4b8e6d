"""The policy store (issue 17, section 3): numbered versions that round-trip exactly,
invalid input refused with nothing stored, exactly one active version enforced by unique
indexes, racing pushes and activations, and the audit trail. On both backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from balance_refill import (
    AdaptiveAmount,
    InvalidArgument,
    NoActivePolicy,
    PolicyNotFound,
    PolicyStore,
    RefillPolicy,
    TieredPolicy,
    TierRule,
    load_policy_file,
)
from balance_refill.policy_store import DEFAULT_COLLECTION
from balance_refill.testing import FakeClock, RecordingCollection

from .wire import backend

ROOT = Path(__file__).resolve().parent.parent

POLICIES: list[RefillPolicy | TieredPolicy] = [
    RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
    RefillPolicy(
        amount=1_000,
        calendar="month",
        timezone="Europe/Paris",
        mode="reset",
        threshold=500,
        max_balance=4_000,
        auto_refill=False,
    ),
    TieredPolicy(
        tiers={
            "regular": RefillPolicy(amount=10_000, interval="1w"),
            "heavy": RefillPolicy(
                amount=50_000,
                interval="1mo",
                mode="add",
                adaptive=AdaptiveAmount(min_amount=20_000, max_amount=80_000, alpha=0.3),
            ),
        },
        default_tier="regular",
        rules=(
            TierRule(from_tier="regular", to_tier="heavy", min_usage=0.8, periods=2, of_last=3),
        ),
    ),
]


@pytest.fixture
def policies(db: Any) -> Any:
    return db[DEFAULT_COLLECTION]


@pytest.fixture
def store(policies: Any, clock: FakeClock) -> PolicyStore:
    return PolicyStore(policies, clock=clock, retry_delay=0)


async def count(policies: Any, kind: str) -> int:
    return int(await policies.count_documents({"kind": kind}))


@pytest.mark.parametrize("policy", [*POLICIES, "example"])
async def test_push_and_get_round_trip_exactly(
    store: PolicyStore, clock: FakeClock, policy: object
) -> None:
    """A pushed policy comes back equal (same model type, fractions and tiers included),
    with the actor, the reason and the clock's time."""
    if policy == "example":
        policy = load_policy_file(ROOT / "examples" / "policy.yaml")
    assert isinstance(policy, RefillPolicy | TieredPolicy)
    assert await store.push(policy, actor="ops:ana", reason="first") == 1
    got = await store.get(1)
    assert type(got.policy) is type(policy)
    assert got.policy == policy
    assert (got.version, got.actor, got.reason, got.active) == (1, "ops:ana", "first", False)
    assert got.created_at == clock()


async def test_versions_are_numbered_in_order(store: PolicyStore, clock: FakeClock) -> None:
    """Each push takes the next number; `versions()` lists them oldest first."""
    numbers = []
    for i, policy in enumerate(POLICIES):
        numbers.append(await store.push(policy, actor="ops", reason=f"r{i}"))
        clock.advance(timedelta(minutes=1))
    assert numbers == [1, 2, 3]
    listed = await store.versions()
    assert [(v.version, v.reason, v.policy) for v in listed] == [
        (1, "r0", POLICIES[0]),
        (2, "r1", POLICIES[1]),
        (3, "r2", POLICIES[2]),
    ]
    assert listed[2].created_at - listed[0].created_at == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("policy", "actor", "reason", "message"),
    [
        (RefillPolicy.model_construct(amount=-5, interval=None), "ops", "r", "invalid policy"),
        ({"amount": 5, "interval": "1d"}, "ops", "r", "RefillPolicy or a TieredPolicy"),
        (None, "ops", "r", "RefillPolicy or a TieredPolicy"),
        (
            TieredPolicy(tiers={"a.b": POLICIES[0]}, default_tier="a.b"),
            "ops",
            "r",
            "cannot be stored",
        ),
        (POLICIES[0], "", "r", "actor"),
        (POLICIES[0], "ops", "  ", "reason"),
        (POLICIES[0], {"$gt": ""}, "r", "actor"),
    ],
)
async def test_invalid_push_is_refused_and_stores_nothing(
    store: PolicyStore, policies: Any, policy: Any, actor: Any, reason: Any, message: str
) -> None:
    """A policy that is not one, no longer validates or cannot be stored, or a bad actor
    or reason: InvalidArgument naming it, and the collection holds no version."""
    with pytest.raises(InvalidArgument, match=message):
        await store.push(policy, actor=actor, reason=reason)
    assert await count(policies, "version") == 0


async def test_nothing_active_until_activated(store: PolicyStore, policies: Any) -> None:
    """No activation: `active()` is NoActivePolicy; activating an unknown version is
    PolicyNotFound and records nothing; after activation, `active()` is that version."""
    with pytest.raises(NoActivePolicy, match="push one and activate it"):
        await store.active()
    await store.push(POLICIES[0], actor="ops", reason="r")
    with pytest.raises(PolicyNotFound, match="version 7"):
        await store.activate(7, actor="ops", reason="r")
    with pytest.raises(PolicyNotFound):
        await store.get(2)
    assert await count(policies, "activation") == 0
    await store.activate(1, actor="ops", reason="go")
    assert await store.active() == (1, POLICIES[0])


async def test_activation_history_and_rollback(store: PolicyStore, clock: FakeClock) -> None:
    """Each activation is recorded (which version, who, why, when), newest first;
    rolling back is activating an older version, and `versions()` marks the active one."""
    for policy in POLICIES[:2]:
        await store.push(policy, actor="ops", reason="r")
    start = clock()
    await store.activate(1, actor="ana", reason="launch")
    clock.advance(timedelta(days=1))
    await store.activate(2, actor="ben", reason="cheaper")
    clock.advance(timedelta(days=1))
    await store.activate(1, actor="ana", reason="roll back")
    assert await store.active() == (1, POLICIES[0])
    history = await store.activations()
    assert [(a.seq, a.version, a.actor, a.reason, a.at - start) for a in history] == [
        (3, 1, "ana", "roll back", timedelta(days=2)),
        (2, 2, "ben", "cheaper", timedelta(days=1)),
        (1, 1, "ana", "launch", timedelta(0)),
    ]
    assert [v.active for v in await store.versions()] == [True, False]
    assert (await store.get(1)).active


async def test_unique_indexes_do_the_enforcing(store: PolicyStore, policies: Any) -> None:
    """The database itself refuses a second active document, a second document of one
    version number and a second activation of one seq, whoever writes them."""
    await store.push(POLICIES[0], actor="ops", reason="r")
    await store.activate(1, actor="ops", reason="r")
    for doc in (
        {"kind": "active", "version": 1, "seq": 99},
        {"kind": "version", "version": 1},
        {"kind": "activation", "seq": 1},
    ):
        with pytest.raises(DuplicateKeyError):
            await policies.insert_one(doc)
    await policies.insert_one({"kind": "other", "version": 1, "seq": 1})  # indexes are partial


def racing_store(db: Any, clock: FakeClock) -> PolicyStore:
    """A store whose gathered calls interleave: on the mock every call yields first; on
    the wire they interleave for real."""
    collection = RecordingCollection(db[DEFAULT_COLLECTION], yield_first=backend.is_mock())
    return PolicyStore(collection, clock=clock, retry_delay=0)


async def test_racing_pushes_get_different_numbers(db: Any, clock: FakeClock) -> None:
    """Ten gathered pushes all succeed, numbered 1 to 10 with no number twice."""
    store = racing_store(db, clock)
    await store.ensure_indexes()
    numbers = await asyncio.gather(
        *(store.push(POLICIES[i % 3], actor="ops", reason=f"r{i}") for i in range(10))
    )
    assert sorted(numbers) == list(range(1, 11))
    listed = await store.versions()
    assert {v.reason: v.version for v in listed} == {f"r{i}": n for i, n in enumerate(numbers)}


@pytest.mark.parametrize("racers", [2, 12])
async def test_racing_activations_leave_exactly_one_active(
    db: Any, clock: FakeClock, policies: Any, racers: int
) -> None:
    """Gathered activations of different versions all succeed and are all recorded;
    exactly one version is active afterwards: the one activated last."""
    store = racing_store(db, clock)
    for i in range(racers):
        await store.push(POLICIES[i % 3], actor="ops", reason=f"r{i}")
    await asyncio.gather(
        *(store.activate(v, actor=f"op{v}", reason="race") for v in range(1, racers + 1))
    )
    assert await count(policies, "active") == 1
    history = await store.activations()
    assert sorted(a.version for a in history) == list(range(1, racers + 1))
    version, _ = await store.active()
    assert version == history[0].version  # the latest activation won
    assert [v.version for v in await store.versions() if v.active] == [version]


class HoldingCollection(RecordingCollection):
    """Holds the active-document write of actor "slow" until `release` is set, and sets
    `holding` when it starts waiting."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def _hold(self, doc: object) -> None:
        if "'slow'" in repr(doc) and "'activation'" not in repr(doc):
            self.holding.set()
            await self.release.wait()

    async def insert_one(self, *args: object, **kwargs: object) -> object:
        await self._hold(args[0])
        return await super().insert_one(*args, **kwargs)

    async def update_one(self, *args: object, **kwargs: object) -> object:
        await self._hold(args[1])
        return await super().update_one(*args, **kwargs)


@pytest.mark.parametrize("pointer_exists", [False, True])
async def test_a_late_write_of_an_earlier_activation_does_not_win(
    db: Any, clock: FakeClock, pointer_exists: bool
) -> None:
    """An activation recorded first but whose switch arrives last (a slow process) does
    not undo the activation recorded after it: the active version only moves forward."""
    collection = HoldingCollection(db[DEFAULT_COLLECTION])
    store = PolicyStore(collection, clock=clock, retry_delay=0)
    for policy in POLICIES:
        await store.push(policy, actor="ops", reason="r")
    if pointer_exists:
        await store.activate(3, actor="ops", reason="before")

    async def fast() -> None:
        await collection.holding.wait()  # "slow" has recorded its activation
        await store.activate(2, actor="fast", reason="second")
        collection.release.set()

    await asyncio.gather(store.activate(1, actor="slow", reason="first"), fast())
    assert await store.active() == (2, POLICIES[1])
    assert [(a.version, a.actor) for a in await store.activations(limit=2)] == [
        (2, "fast"),
        (1, "slow"),
    ]
