"""The demo: a few chat users over 90 simulated days, on the embedded mock by default."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy

from ._connect import Collection


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    messages_per_day: int
    cost: int
    active_every: int = 1  # shows up every n-th day
    first_day: int = 0
    paused: bool = False


PERSONAS = (
    Persona("ana", messages_per_day=3, cost=120),
    Persona("ben", messages_per_day=10, cost=450),
    Persona("cyd", messages_per_day=6, cost=300, active_every=7),
    Persona("dan", messages_per_day=5, cost=500, paused=True),
    Persona("eve", messages_per_day=4, cost=250, first_day=45),
)

DEMO_POLICY = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    messages: int
    refused: int
    refills: int
    ledger_rows: int


class _SimulatedTime:
    """The simulation's clock: the refiller reads it, the simulation moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)


class _Simulation:
    def __init__(self, refiller: BalanceRefiller, clock: _SimulatedTime, seed: int) -> None:
        self.refiller = refiller
        self.clock = clock
        self.rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self.messages = self.refused = self.refills = 0
        self.dry: dict[str, int] = {}  # user -> messages refused since they ran dry

    def _refilled(
        self, notes: list[str], name: str, granted: float, balance: float, where: str
    ) -> None:
        self.refills += 1
        missed = self.dry.pop(name, 0)
        after_dry = f", after {missed} refused" if missed else ""
        notes.append(f"{name} refilled {where} +{granted} -> {balance}{after_dry}")

    async def day(self, p: Persona, day: int, day_start: datetime, notes: list[str]) -> None:
        """One active day of one persona: a login, then their messages."""
        self.clock.now = day_start + timedelta(minutes=self.rng.randint(0, 600))
        state = await self.refiller.ensure_balance(p.name)  # the login hook
        if day == p.first_day:
            notes.append(f"{p.name} signs up with {state.balance}")
            if p.paused:
                await self.refiller.set_auto_refill(p.name, False, actor="demo")
        if state.refilled:
            self._refilled(notes, p.name, state.granted, state.balance, "at login")
        for _ in range(p.messages_per_day):
            self.clock.advance(minutes=self.rng.randint(1, 20))
            cost = max(1, int(p.cost * self.rng.uniform(0.5, 1.5)))
            self.messages += 1
            try:
                state = await self.refiller.spend(p.name, cost)  # the message handler
            except InsufficientCredits as exc:
                self.refused += 1
                if p.name not in self.dry:
                    when = (
                        f"next refill {exc.next_refill_at:%b %d %H:%M}"
                        if exc.next_refill_at
                        else "refills paused"
                    )
                    notes.append(
                        f"{p.name} runs dry: {exc.balance} left, a message needs {cost} ({when})"
                    )
                self.dry[p.name] = self.dry.get(p.name, 0) + 1
                continue
            if state.refilled:
                self._refilled(notes, p.name, state.granted, state.balance + cost, "on send")


async def run_demo(
    balances: Collection,
    ledger: Collection,
    *,
    days: int = 90,
    seed: int = 7,
    out: Callable[[str], None] = print,
) -> DemoSummary:
    """Simulate PERSONAS for `days` days with a simulated clock and print a timeline."""
    start = datetime(2026, 1, 1, 8, tzinfo=UTC)
    clock = _SimulatedTime(start)
    refiller = BalanceRefiller(balances, DEMO_POLICY, ledger=ledger, clock=clock)
    await refiller.ensure_indexes()
    out(
        f"policy: {DEMO_POLICY.amount} credits every {DEMO_POLICY.interval} (top_up), "
        f"new users start with {DEMO_POLICY.start_balance}"
    )
    out("dan's refills are paused (by an admin, with set_auto_refill); eve signs up on day 45\n")
    sim = _Simulation(refiller, clock, seed)
    for day in range(days):
        day_start = start + timedelta(days=day)
        notes: list[str] = []
        for p in PERSONAS:
            if day >= p.first_day and (day - p.first_day) % p.active_every == 0:
                await sim.day(p, day, day_start, notes)
        for note in notes:
            out(f"day {day:>2}  {day_start:%a %b %d}  {note}")
    out("")
    out(f"{'user':<6}{'balance':>9}  next refill")
    clock.now = start + timedelta(days=days)
    for p in PERSONAS:
        state = await refiller.ensure_balance(p.name)
        nxt = f"{state.next_refill_at:%b %d %H:%M}" if state.next_refill_at else "paused"
        out(f"{p.name:<6}{state.balance:>9}  {nxt}")
    rows = await ledger.count_documents({})
    out(
        f"\n{sim.messages} messages, {sim.refused} refused, {sim.refills} refills, {rows} ledger rows"
    )
    return DemoSummary(
        messages=sim.messages, refused=sim.refused, refills=sim.refills, ledger_rows=rows
    )
