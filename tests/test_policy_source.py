"""A refiller that reads its policy from a source (a `PolicyStore`) at run time: at most
once per `policy_refresh`, every decision and ledger row tagged with the version, the
last good version kept when the source fails, never a silent default."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from balance_refill import BalanceRefiller, RefillPolicy, StorageError
from balance_refill.errors import BalanceRefillError
from balance_refill.policy import AnyPolicy
from balance_refill.testing import FakeClock


class NoActive(BalanceRefillError, LookupError):
    """What a store without an active version raises."""


class Source:
    """An in-memory policy source counting its reads."""

    def __init__(self, *versions: AnyPolicy) -> None:
        self.versions = list(versions)
        self.active_version: int | None = len(versions) or None
        self.reads = 0
        self.failing = False

    async def active(self) -> tuple[int, AnyPolicy]:
        self.reads += 1
        if self.failing:
            raise StorageError("read balance_refill_policies failed: AutoReconnect")
        if self.active_version is None:
            raise NoActive("no policy version is active")
        return self.active_version, self.versions[self.active_version - 1]


V1 = RefillPolicy(amount=1_000, interval="1d", start_balance=100)
V2 = RefillPolicy(amount=8_000, interval="1d", start_balance=100)


def make(db: Any, clock: FakeClock, source: Source) -> BalanceRefiller:
    return BalanceRefiller(
        db["balances"], source, ledger=db["transactions"], leases=db["leases"], clock=clock
    )


async def test_the_active_version_is_read_once_per_refresh(db: Any, clock: FakeClock) -> None:
    """Ten operations within the refresh interval read the source once; after it, again."""
    source = Source(V1)
    refiller = make(db, clock, source)
    for i in range(10):
        await refiller.ensure_balance(f"u{i}")
    assert source.reads == 1
    clock.advance(timedelta(seconds=31))
    await refiller.ensure_balance("u0")
    assert source.reads == 2
    assert refiller.policy_version == 1


async def test_two_refillers_switch_over_within_the_refresh(db: Any, clock: FakeClock) -> None:
    """Activating version 2 reaches both refillers of a process within `policy_refresh`,
    and the refills they make then are decided by it and say so in the ledger."""
    source = Source(V1, V2)
    source.active_version = 1
    a, b = make(db, clock, source), make(db, clock, source)
    await a.ensure_balance("x")
    await b.ensure_balance("y")
    source.active_version = 2
    clock.advance(timedelta(days=2))  # both due, both past the refresh interval
    state_a = await a.ensure_balance("x")
    state_b = await b.ensure_balance("y")
    assert (state_a.balance, state_b.balance) == (8_000, 8_000)
    assert (a.policy_version, b.policy_version) == (2, 2)
    rows = [r async for r in db["transactions"].find({"context": "autoRefill"})]
    assert sorted(r["policyVersion"] for r in rows) == [2, 2]


async def test_every_row_records_the_version_that_decided_it(db: Any, clock: FakeClock) -> None:
    """Admin rows and sweep rows carry `policyVersion` too."""
    source = Source(V1)
    refiller = make(db, clock, source)
    await refiller.ensure_balance("u")
    await refiller.grant("u", 5, actor="ops", reason="r")
    await refiller.set_auto_refill("u", True, actor="ops")
    clock.advance(timedelta(days=2))
    await refiller.spend("u", 105)
    report = await refiller.sweep()
    assert report.scanned >= 1
    rows = [r async for r in db["transactions"].find()]
    assert rows
    assert {r["policyVersion"] for r in rows} == {1}


async def test_a_failing_source_keeps_the_last_good_version(
    db: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Once read, a source that fails is logged once and the last good version decides."""
    source = Source(V1)
    refiller = make(db, clock, source)
    await refiller.ensure_balance("u")
    source.failing = True
    caplog.set_level(logging.WARNING, logger="balance_refill")
    for _ in range(3):
        clock.advance(timedelta(seconds=31))
        state = await refiller.ensure_balance("u")
    assert state.balance == 100
    assert refiller.policy_version == 1
    warnings = [r for r in caplog.records if "cannot read the active policy" in r.message]
    assert len(warnings) == 1


async def test_no_active_version_is_a_clear_error(db: Any, clock: FakeClock) -> None:
    """With nothing active and nothing read before, operations fail; nothing is written."""
    source = Source()
    refiller = make(db, clock, source)
    with pytest.raises(NoActive, match="no policy version is active"):
        await refiller.ensure_balance("u")
    with pytest.raises(NoActive):
        await refiller.grant("u", 5, actor="ops", reason="r", create=True)
    assert await db["balances"].count_documents({}) == 0


async def test_a_fixed_policy_never_touches_a_source(db: Any, clock: FakeClock) -> None:
    """A plain policy has no version and rows carry none."""
    refiller = BalanceRefiller(db["balances"], V1, ledger=db["transactions"], clock=clock)
    clock.advance(timedelta(days=1))
    await refiller.ensure_balance("u")
    assert refiller.policy_version is None
    assert refiller.policy == V1
    assert [r async for r in db["transactions"].find({"policyVersion": {"$exists": True}})] == []


async def test_a_refiller_on_a_policy_store_switches_and_says_so(db: Any, clock: FakeClock) -> None:
    """On the real PolicyStore: activating version 2 reaches the refiller within the
    refresh interval, its rows record version 2, and `PolicyActivated` arrives once with
    the actor and reason of the activation."""
    from balance_refill import PolicyStore
    from balance_refill.events import Event, PolicyActivated

    store = PolicyStore(db["balance_refill_policies"], clock=clock)
    assert await store.push(V1, actor="ops", reason="launch") == 1
    await store.activate(1, actor="ops", reason="launch")
    seen: list[Event] = []
    refiller = BalanceRefiller(
        db["balances"], store, ledger=db["transactions"], clock=clock, on_event=seen.append
    )
    await refiller.ensure_balance("u")
    assert await store.push(V2, actor="ann", reason="more for everyone") == 2
    await store.activate(2, actor="ann", reason="more for everyone")
    clock.advance(timedelta(days=2))
    state = await refiller.ensure_balance("u")
    assert (state.balance, refiller.policy_version) == (8_000, 2)
    activated = [e for e in seen if isinstance(e, PolicyActivated)]
    assert [(e.version, e.previous, e.actor, e.reason) for e in activated] == [
        (2, 1, "ann", "more for everyone")
    ]
    [row] = [r async for r in db["transactions"].find({"context": "autoRefill"})]
    assert row["policyVersion"] == 2
