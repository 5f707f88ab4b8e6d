"""The demo: a few chat users over 90 simulated days, on the embedded mock by default."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from balance_refill import BalanceRefiller, InsufficientCredits, InvalidArgument, RefillPolicy

from ._connect import Collection
from ._parser import MAX_DAYS, MAX_SEED

START = datetime(2026, 1, 1, 8, tzinfo=UTC)
DAY = "%a %Y-%m-%d"
WHEN = "%Y-%m-%d %H:%M"


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
class DemoUser:
    """One simulated user at the end: their balance, next refill and what they asked for."""

    name: str
    balance: float
    next_refill_at: datetime | None
    messages: int
    refused: int
    refills: int
    asked_per_30_days: float
    """Credits their messages cost (refused ones included), per 30 days since sign-up."""

    def as_dict(self) -> dict[str, object]:
        return {
            "user": self.name,
            "balance": self.balance,
            "next_refill_at": self.next_refill_at.isoformat() if self.next_refill_at else None,
            "auto_refill": self.next_refill_at is not None,
            "messages": self.messages,
            "refused": self.refused,
            "refills": self.refills,
            "asked_per_30_days": round(self.asked_per_30_days),
        }


@dataclass(frozen=True, slots=True)
class DemoEvent:
    day: int
    date: datetime
    text: str


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the simulation did: totals, each user at the end, the timeline."""

    messages: int
    refused: int
    refills: int
    ledger_rows: int
    days: int = 90
    seed: int = 7
    users: tuple[DemoUser, ...] = ()
    timeline: tuple[DemoEvent, ...] = ()

    @property
    def end(self) -> datetime:
        return START + timedelta(days=self.days)

    def explanation(self) -> list[str]:
        """A few lines saying why messages were refused and when the next refills are."""
        policy = DEMO_POLICY
        lines = [
            f"Why {self.refused} of {self.messages} messages were refused: a message is "
            "refused when the balance cannot pay for it and no refill is due yet. The demo "
            f"policy brings a balance back up to {policy.amount} credits at most once every "
            f"{policy.interval} (top_up), so a user whose messages cost more than that per "
            f"{policy.interval} runs dry and waits:",
        ]
        for user in self.users:
            paused = user.next_refill_at is None
            why = (
                "refills paused: only the start balance, then nothing"
                if paused
                else f"asked for about {user.asked_per_30_days:,.0f} credits per 30 days"
            )
            lines.append(
                f"  {user.name}: {why}; {user.refused} of {user.messages} messages refused"
            )
        lines.append(
            f"Next refills (the table): {policy.interval} after each user's last refill, made "
            "when the user next logs in or sends a message (or a sweep runs); none while "
            "paused, until an admin resumes them."
        )
        return lines

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": DEMO_POLICY.describe(),
            "start": START.isoformat(),
            "end": self.end.isoformat(),
            "days": self.days,
            "seed": self.seed,
            "messages": self.messages,
            "refused": self.refused,
            "refills": self.refills,
            "ledger_rows": self.ledger_rows,
            "users": [u.as_dict() for u in self.users],
            "timeline": [
                {"day": e.day, "date": e.date.date().isoformat(), "event": e.text}
                for e in self.timeline
            ],
            "explanation": self.explanation(),
        }


class _SimulatedTime:
    """The simulation's clock: the refiller reads it, the simulation moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)


@dataclass
class _Tally:
    messages: int = 0
    refused: int = 0
    refills: int = 0
    asked: float = 0


class _Simulation:
    def __init__(self, refiller: BalanceRefiller, clock: _SimulatedTime, seed: int) -> None:
        self.refiller = refiller
        self.clock = clock
        self.rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self.tally: dict[str, _Tally] = {p.name: _Tally() for p in PERSONAS}
        self.dry: dict[str, int] = {}  # user -> messages refused since they ran dry

    def _refilled(
        self, notes: list[str], name: str, granted: float, balance: float, where: str
    ) -> None:
        self.tally[name].refills += 1
        missed = self.dry.pop(name, 0)
        after_dry = f", after {missed} refused" if missed else ""
        notes.append(f"{name} refilled {where} +{granted} -> {balance}{after_dry}")

    async def day(self, p: Persona, day: int, day_start: datetime, notes: list[str]) -> None:
        """One active day of one persona: a login, then their messages."""
        tally = self.tally[p.name]
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
            tally.messages += 1
            tally.asked += cost
            try:
                state = await self.refiller.spend(p.name, cost)  # the message handler
            except InsufficientCredits as exc:
                tally.refused += 1
                if p.name not in self.dry:
                    when = (
                        f"next refill {exc.next_refill_at:{WHEN}}"
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


def _check(value: object, what: str, high: int, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return value


async def run_demo(
    balances: Collection,
    ledger: Collection,
    *,
    days: int = 90,
    seed: int = 7,
    out: Callable[[str], None] | None = print,
) -> DemoSummary:
    """Simulate PERSONAS for `days` days (1 to 3650) with a simulated clock; print a
    timeline, a table and an explanation through `out` (None: print nothing)."""
    days = _check(days, "days", MAX_DAYS, low=1)
    seed = _check(seed, "seed", MAX_SEED)
    say = out or (lambda _: None)
    clock = _SimulatedTime(START)
    refiller = BalanceRefiller(balances, DEMO_POLICY, ledger=ledger, clock=clock)
    await refiller.ensure_indexes()
    say(
        f"policy: {DEMO_POLICY.amount} credits every {DEMO_POLICY.interval} (top_up), "
        f"new users start with {DEMO_POLICY.start_balance}"
    )
    late = ", ".join(f"{p.name} signs up on day {p.first_day}" for p in PERSONAS if p.first_day)
    say(
        f"{days} simulated day(s) from {START:{DAY}}; dan's refills are paused (by an admin, "
        f"with set_auto_refill); {late}\n"
    )
    sim = _Simulation(refiller, clock, seed)
    timeline: list[DemoEvent] = []
    for day in range(days):
        day_start = START + timedelta(days=day)
        notes: list[str] = []
        for p in PERSONAS:
            if day >= p.first_day and (day - p.first_day) % p.active_every == 0:
                await sim.day(p, day, day_start, notes)
        for note in notes:
            timeline.append(DemoEvent(day, day_start, note))
            say(f"day {day:>2}  {day_start:{DAY}}  {note}")
    clock.now = START + timedelta(days=days)
    users: list[DemoUser] = []
    for p in PERSONAS:
        if p.first_day >= days:
            continue  # not signed up yet
        state = await refiller.get_state(p.name)
        tally = sim.tally[p.name]
        users.append(
            DemoUser(
                p.name,
                state.balance,
                state.next_refill_at,
                tally.messages,
                tally.refused,
                tally.refills,
                tally.asked / (days - p.first_day) * 30,
            )
        )
    rows = await ledger.count_documents({})
    summary = DemoSummary(
        messages=sum(t.messages for t in sim.tally.values()),
        refused=sum(t.refused for t in sim.tally.values()),
        refills=sum(t.refills for t in sim.tally.values()),
        ledger_rows=rows,
        days=days,
        seed=seed,
        users=tuple(users),
        timeline=tuple(timeline),
    )
    if out is not None:
        out("")
        out(f"state at the end ({summary.end:{DAY}}):")
        out(f"{'user':<6}{'balance':>9}  next refill")
        for user in users:
            nxt = f"{user.next_refill_at:{WHEN}}" if user.next_refill_at else "paused"
            if user.next_refill_at and user.next_refill_at <= clock.now:
                nxt += " (due: made at their next login or message)"
            out(f"{user.name:<6}{user.balance:>9}  {nxt}")
        if any(p.first_day >= days for p in PERSONAS):
            out("(users who sign up after the last simulated day are not shown)")
        out(
            f"\n{summary.messages} messages, {summary.refused} refused, "
            f"{summary.refills} refills, {rows} ledger rows"
        )
        out("")
        for line in summary.explanation():
            out(line)
    return summary
