"""Stateful model test: random interleavings of every operation and clock jumps across
month ends, a leap day and DST changes, checked against a plain-Python model.

The number of examples comes from the Hypothesis profile (tests/conftest.py): 200 by
default (`dev`), 2,000 in CI (`HYPOTHESIS_PROFILE=ci`, on both backends), 20,000 with
`HYPOTHESIS_PROFILE=long`. On the wire every step is a real round trip (about 0.2 s an
example on mongoeco).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from balance_refill import (
    BalanceRefiller,
    InsufficientCredits,
    RefillPolicy,
    TieredPolicy,
    UserNotFound,
)
from balance_refill.periods import next_refill_at
from balance_refill.testing import FakeClock

from .wire import backend

REGULAR = RefillPolicy(amount=1_000, interval="1mo", start_balance=300)
HEAVY = RefillPolicy(
    amount=4_000,
    calendar="week",
    timezone="Europe/Paris",
    mode="add",
    threshold=2_000,
    max_balance=9_000,
)
WEEKEND = RefillPolicy(amount=500, calendar="day", timezone="America/New_York", mode="reset")
TIERS = TieredPolicy(
    tiers={"regular": REGULAR, "heavy": HEAVY, "daily": WEEKEND}, default_tier="regular"
)
USERS = ("ann", "bob", "cat")
# Instants worth landing on: month ends, the 2028 leap day, DST changes in Paris and New York.
LANDMARKS = [
    datetime(2028, 1, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2028, 2, 1, tzinfo=UTC),
    datetime(2028, 2, 29, 12, tzinfo=UTC),
    datetime(2028, 3, 1, tzinfo=UTC),
    datetime(2028, 3, 12, 7, tzinfo=UTC),  # New York springs forward
    datetime(2028, 3, 26, 1, tzinfo=UTC),  # Paris springs forward
    datetime(2028, 3, 31, 23, tzinfo=UTC),
    datetime(2028, 10, 29, 1, tzinfo=UTC),  # Paris falls back
    datetime(2028, 11, 5, 6, tzinfo=UTC),  # New York falls back
    datetime(2028, 12, 31, 23, 30, tzinfo=UTC),
]
REFILL_CONTEXTS = ("autoRefill", "refillReset", "refillNow")


@dataclass
class ModelUser:
    balance: float
    last_refill: datetime
    tier: str = "regular"
    refill_tier: str | None = None
    auto: bool = True
    spent: float = 0


def level(policy: RefillPolicy, before: float) -> float:
    """Refill arithmetic, written out independently of the library."""
    if policy.mode == "reset":
        return policy.amount
    target = before + policy.amount if policy.mode == "add" else max(before, policy.amount)
    if policy.max_balance is not None:
        target = max(before, min(target, policy.max_balance))
    return target


RUNS = {"examples": 0}
"""Examples the model test ran, for the run's summary line (tests/conftest.py)."""


class BalanceModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        RUNS["examples"] += 1
        self.loop = asyncio.new_event_loop()
        self.database = backend.database("model")  # a fresh one per example
        self.db = self.run(self.database.__aenter__())
        self.clock = FakeClock(datetime(2028, 1, 20, 10, tzinfo=UTC))
        self.refiller = BalanceRefiller(
            self.db["balances"],
            TIERS,
            ledger=self.db["transactions"],
            leases=self.db["leases"],
            clock=self.clock,
        )
        self.users: dict[str, ModelUser] = {}
        self.refills = 0
        self.grants = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.database.__aexit__(None, None, None))
        self.loop.close()

    # -- the model's decisions ------------------------------------------------------

    def due(self, u: ModelUser, needed: float) -> bool:
        period = TIERS.tiers[u.refill_tier or u.tier].period
        if not u.auto or next_refill_at(period, u.last_refill) > self.clock():
            return False
        policy = TIERS.tiers[u.tier]
        return (
            u.balance < max(policy.effective_threshold, needed)
            and level(policy, u.balance) != u.balance
        )

    def refill(self, u: ModelUser) -> None:
        u.balance = level(TIERS.tiers[u.tier], u.balance)
        u.last_refill = self.clock()
        u.refill_tier = u.tier
        u.spent = 0
        self.refills += 1

    def get(self, name: str) -> ModelUser:
        if name not in self.users:
            self.users[name] = ModelUser(balance=300, last_refill=self.clock())
        return self.users[name]

    # -- rules ----------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.run(self.refiller.ensure_indexes())

    @rule(
        delta=st.sampled_from(
            [
                timedelta(milliseconds=1),
                timedelta(minutes=37),
                timedelta(hours=5),
                timedelta(days=1),
                timedelta(days=6),
                timedelta(days=29),
                timedelta(days=31),
            ]
        )
    )
    def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)

    @rule(
        when=st.sampled_from(LANDMARKS),
        nudge=st.sampled_from(
            [timedelta(0), timedelta(milliseconds=-1), timedelta(milliseconds=1)]
        ),
    )
    def jump(self, when: datetime, nudge: timedelta) -> None:
        target = when + nudge
        if target > self.clock():
            self.clock.set(target)

    @rule(name=st.sampled_from(USERS), needed=st.sampled_from([0, 500, 5_000]))
    def ensure_balance(self, name: str, needed: int) -> None:
        u = self.get(name)
        expect = self.due(u, needed)
        state = self.run(self.refiller.ensure_balance(name, needed))
        assert state.refilled == expect
        if expect:
            self.refill(u)
        assert state.balance == u.balance

    @rule(
        name=st.sampled_from(USERS),
        amount=st.sampled_from([1, 100, 999, 3_000, 8_000, 0.5, 2.25, 333.3]),
    )
    def spend(self, name: str, amount: float) -> None:
        u = self.get(name)
        if u.balance < amount and self.due(u, amount):
            self.refill(u)
        try:
            state = self.run(self.refiller.spend(name, amount))
        except InsufficientCredits as exc:
            refused_balance = exc.balance
            assert u.balance < amount
            assert refused_balance == u.balance
            return
        assert u.balance >= amount
        u.balance -= amount
        u.spent += amount
        assert state.balance == u.balance

    @rule(name=st.sampled_from(USERS), amount=st.sampled_from([-400, 50, 700, 12.75, -0.125]))
    def grant(self, name: str, amount: float) -> None:
        u = self.get(name)
        try:
            state = self.run(
                self.refiller.grant(name, amount, actor="model", reason="test", create=True)
            )
        except InsufficientCredits:
            assert u.balance + amount < 0
            return
        u.balance += amount
        self.grants += 1
        assert state.balance == u.balance

    @rule(name=st.sampled_from(USERS))
    def refill_now(self, name: str) -> None:
        u = self.get(name)
        changes = level(TIERS.tiers[u.tier], u.balance) != u.balance
        if changes:  # a refill that would add nothing writes nothing and keeps the period
            self.refill(u)
        state = self.run(self.refiller.refill_now(name, actor="model", reason="test", create=True))
        assert state.refilled == changes
        assert state.balance == u.balance

    @precondition(lambda self: bool(self.users))
    @rule(data=st.data(), tier=st.sampled_from(sorted(TIERS.tiers)))
    def set_tier(self, data: st.DataObject, tier: str) -> None:
        name = data.draw(st.sampled_from(sorted(self.users)))
        u = self.users[name]
        u.refill_tier = u.refill_tier or u.tier
        u.tier = tier
        self.grants += 1  # one ledger row
        assert self.run(self.refiller.set_tier(name, tier, actor="model")).tier == tier

    @rule(name=st.sampled_from(USERS), enabled=st.booleans())
    def set_auto_refill(self, name: str, enabled: bool) -> None:
        if name not in self.users:
            try:
                self.run(self.refiller.set_auto_refill(name, enabled, actor="model"))
            except UserNotFound:
                return
            raise AssertionError("set_auto_refill created a user")
        self.users[name].auto = enabled
        self.grants += 1
        self.run(self.refiller.set_auto_refill(name, enabled, actor="model"))

    @rule(batch=st.sampled_from([1, 2, 500]))
    def sweep(self, batch: int) -> None:
        expected = 0
        for u in self.users.values():
            if self.due(u, 0):
                self.refill(u)
                expected += 1
        report = self.run(self.refiller.sweep(batch_size=batch))
        assert report.refilled == expected

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def state_equals_model(self) -> None:
        docs = {d["user"]: d for d in self.run(self._all("balances"))}
        assert set(docs) == set(self.users)
        for name, u in self.users.items():
            d = docs[name]
            assert d["tokenCredits"] == u.balance >= 0
            assert d["lastRefill"] == u.last_refill
            assert d.get("tier", "regular") == u.tier
            assert d.get("refillPaused", False) == (not u.auto)
            assert d["autoRefillEnabled"] is False  # LibreChat's own refill stays off
            assert "pendingLedger" not in d

    @invariant()
    def ledger_accounts_for_every_refill_and_grant(self) -> None:
        rows = self.run(self._all("transactions"))
        refills = [r for r in rows if r["context"] in REFILL_CONTEXTS]
        assert len(refills) == self.refills
        assert len(rows) - len(refills) == self.grants
        for r in rows:
            assert r["rawAmount"] == r["tokenValue"] == r["balanceAfter"] - r["balanceBefore"]
            assert (r["tokenType"], r["rate"]) == ("credits", 1)
        for r in refills:  # an automatic refill that lowered the balance has its own context
            assert (r["context"] == "refillReset") == (
                r["context"] != "refillNow" and r["rawAmount"] < 0
            )

    @invariant()
    def at_most_one_automatic_refill_per_period(self) -> None:
        rows = self.run(self._all("transactions"))
        by_user: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: (r["createdAt"], r["_id"])):
            if r["context"] in REFILL_CONTEXTS:
                by_user.setdefault(r["user"], []).append(r)
        for refills in by_user.values():
            for prev, cur in itertools.pairwise(refills):
                if cur["context"] != "refillNow":
                    assert cur["createdAt"] >= next_refill_at(
                        TIERS.tiers[prev["tier"]].period, prev["createdAt"]
                    )

    async def _all(self, name: str) -> list[dict[str, Any]]:
        return [d async for d in self.db[name].find()]


BalanceModel.TestCase.settings = settings(  # the profile's examples and seed policy
    stateful_step_count=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBalanceModel = BalanceModel.TestCase
