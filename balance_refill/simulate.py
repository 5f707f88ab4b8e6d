"""Replay usage against a policy: what the live library would do, user for user.

    report = simulate(policy, events, start=..., end=...)

`events` is an iterable of `Demand(user, at, credits)` (one `spend(user, credits)` at
`at`) and `Login(user, at)` (one `ensure_balance(user)` at `at`), in time order. The
simulator runs the library's own decisions (`decide.plan_refill`, `decide.spend_outcome`)
on each user's `UserState`, and turns a refill into the user's next state through the
library's own document code (`_schema.first_seen_insert`, `_schema.refill_update`,
`_schema.parse`), so the report is what `BalanceRefiller` with a `FakeClock` would leave
in a real collection: the final balance, the refills (the ledger's `autoRefill` and
`refillReset` rows), the refused spends and the tier of every user. Memory is O(users):
the events are read once, as they come.

Event sources (LibreChat's transactions, spend history, CSV / JSON lines, a synthetic
generator) are in `balance_refill.usage`; the HTML report in `balance_refill.report`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from bson import ObjectId

from . import _schema as S
from ._ledger import AUTO_REFILL, REFILL_RESET, row
from ._validate import MAX_SAFE_INT, Credits, UserId, check_amount, stored_user_id
from .decide import (
    RefillPlan,
    SpendOutcome,
    UserState,
    after_charge,
    assigned_tier,
    next_refill,
    plan_refill,
    spend_outcome,
)
from .errors import InvalidArgument
from .periods import as_utc
from .policy import AnyPolicy, TieredPolicy, as_tiered
from .usage import Demand, Event, Login

REFILL_CONTEXTS = (AUTO_REFILL, REFILL_RESET)
"""The ledger contexts the report counts as refills."""

StartBalance = Credits | Mapping[str, Any]
"""A user's state at the start: a number of credits (a document holding that balance,
refilled at `start`), or a balance document in LibreChat's shape (read as the library
reads it)."""


@dataclass(frozen=True, slots=True)
class UserOutcome:
    """One user at the end: the stored balance, the refills made (ledger rows
    `autoRefill` / `refillReset`), the spends refused for insufficient credits and the
    assigned tier; `granted` is what the refills added (negative for a lowering reset),
    `spent` what was charged, `demands` how many spends were asked for."""

    balance: Credits
    refills: int
    refused: int
    tier: str
    granted: Credits = 0
    spent: Credits = 0
    demands: int = 0


@dataclass(frozen=True, slots=True)
class Totals:
    """The whole window: credits the refills added, refills, refused spends, and users
    refused at least once (`users_dry`); `users` seen, `demands` and `spent` besides."""

    credits_granted: Credits
    refills: int
    refused: int
    users_dry: int
    users: int = 0
    demands: int = 0
    spent: Credits = 0


@dataclass(frozen=True, slots=True)
class PeriodRow:
    """One calendar month (UTC) of the window, with the same figures as `Totals`
    (`users_dry`: users refused at least once in that month)."""

    month: date
    credits_granted: Credits
    refills: int
    refused: int
    users_dry: int
    demands: int = 0


@dataclass(frozen=True, slots=True)
class DayRow:
    """One UTC day: users with an event that day, and users refused at least once."""

    day: date
    users_active: int
    users_refused: int

    @property
    def share_refused(self) -> float:
        return self.users_refused / self.users_active if self.users_active else 0.0


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What a policy did to the events of a window (see the module doc)."""

    start: datetime
    end: datetime
    users: Mapping[UserId, UserOutcome]
    totals: Totals
    periods: tuple[PeriodRow, ...]
    days: tuple[DayRow, ...] = ()
    refills_by_tier: Mapping[str, int] = field(default_factory=dict)
    events: int = 0

    def as_json(self, *, with_users: bool = True) -> dict[str, object]:
        """Plain values for `json.dumps` (dates as ISO strings, user ids as strings)."""
        data: dict[str, object] = {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "events": self.events,
            "totals": _plain(self.totals),
            "periods": [{**_plain(p), "month": p.month.isoformat()[:7]} for p in self.periods],
            "days": [
                {
                    "day": d.day.isoformat(),
                    "users_active": d.users_active,
                    "users_refused": d.users_refused,
                }
                for d in self.days
            ],
            "refills_by_tier": dict(self.refills_by_tier),
        }
        if with_users:
            data["users"] = {_user_key(u): _plain(o) for u, o in self.users.items()}
        return data


def _plain(value: UserOutcome | Totals | PeriodRow) -> dict[str, object]:
    return {name: getattr(value, name) for name in value.__slots__}


def _user_key(user: UserId) -> str:
    return str(user) if isinstance(user, ObjectId | str) else f"{user}"


_PLAIN_IDS = frozenset({str, int, ObjectId})


class _User:
    """One user's running state: the document the live library would hold (what
    `_schema.parse` reads), its decision state, and the user's counters."""

    __slots__ = (
        "day_active",
        "day_refused",
        "demands",
        "doc",
        "granted",
        "month_refused",
        "next_at",
        "refills",
        "refused",
        "spent",
        "state",
    )

    def __init__(self, doc: dict[str, Any], tiers: TieredPolicy, now: datetime) -> None:
        self.doc = doc
        self.state: UserState = S.parse(doc).state
        self.next_at = _next_at(tiers, self.state, now)
        self.refills = 0
        self.refused = 0
        self.demands = 0
        self.granted: Credits = 0
        self.spent: Credits = 0
        self.day_active = -1
        self.day_refused = -1
        self.month_refused = -1


def _apply(doc: dict[str, Any], update: S.Update) -> None:
    """Apply a refill's update to the simulated document as the server would. Only the
    operators `refill_update` uses are known; any other fails loudly, so a change there
    cannot silently part the simulator from the live library."""
    for op, fields in update.items():
        if op == "$set":
            doc.update(fields)
        elif op == "$max":
            for key, value in fields.items():
                old = doc.get(key)
                if old is None or value > old:
                    doc[key] = value
        elif op == "$unset":
            for key in fields:
                doc.pop(key, None)
        elif op == "$push" and set(fields) == {S.RECENT}:
            continue  # request keys: the simulator's spends are never retried
        else:
            raise NotImplementedError(f"the simulator cannot apply {op} {sorted(fields)}")


class Simulator:
    """The running simulation: `feed` events (in time order, in as many calls as
    wanted), then take the `report`. `simulate` is the one-call form."""

    def __init__(
        self,
        policy: AnyPolicy,
        *,
        start: datetime,
        end: datetime,
        start_balances: Mapping[Any, StartBalance] | None = None,
    ) -> None:
        self.tiers: TieredPolicy = as_tiered(policy)
        self.start = _instant(start, "start")
        self.end = _instant(end, "end")
        if self.end < self.start:
            raise InvalidArgument(f"end ({self.end}) is before start ({self.start})")
        default = self.tiers.tiers[self.tiers.default_tier]
        self._start_balance = default.start_balance
        self._users: dict[UserId, _User] = {}
        self._ids: dict[object, UserId] = {}
        self._last = self.start
        self._events = 0
        self._first_month = _month_index(self.start)
        self._first_day = self.start.toordinal()
        months = _month_index(self.end) - self._first_month + 1
        days = self.end.toordinal() - self._first_day + 1
        self._m_granted: list[Credits] = [0] * months
        self._m_refills = [0] * months
        self._m_refused = [0] * months
        self._m_dry = [0] * months
        self._m_demands = [0] * months
        self._d_active = [0] * days
        self._d_refused = [0] * days
        self._by_tier: dict[str, int] = dict.fromkeys(self.tiers.tiers, 0)
        for raw, value in (start_balances or {}).items():
            user = self._id(raw)
            self._users[user] = _User(self._start_doc(user, value), self.tiers, self.start)

    # -- users ----------------------------------------------------------------------

    def _id(self, raw: object) -> UserId:
        """The id as the live library stores it (`user_ids="auto"`), checked once per id
        (only ids of exactly str, int or ObjectId are remembered: True == 1 must not
        pass as the id 1)."""
        plain = raw.__class__ in _PLAIN_IDS
        if plain:
            known = self._ids.get(raw)
            if known is not None:
                return known
        user = stored_user_id(raw, "auto")
        if plain:
            self._ids[raw] = user
        return user

    def _start_doc(self, user: UserId, value: object) -> dict[str, Any]:
        if isinstance(value, Mapping):
            doc = dict(value)
        else:
            credits = check_amount(value, what="start balance", allow_zero=True)
            doc = {S.CREDITS: credits, S.LAST_REFILL: self.start, S.SPENT: 0}
        doc["_id"] = user
        doc[S.USER] = user
        return doc

    def _first_seen(self, user: UserId, now: datetime) -> _User:
        """A new user, created as `Engine.read_or_create` creates one (the mirrored
        LibreChat fields are left out: no decision reads them)."""
        insert = S.first_seen_insert(user, now, start_balance=self._start_balance, mirrored={})
        sim = _User(S.after_first_seen(None, insert, user, now), self.tiers, now)
        self._users[user] = sim
        return sim

    # -- the events -----------------------------------------------------------------

    def feed(self, events: Iterable[Event]) -> None:  # noqa: PLR0912, PLR0915 - the hot loop, inlined on purpose
        """Run `events` (in time order, each within [start, end])."""
        users = self._users
        ids = self._ids
        last = self._last
        end = self.end
        first_day = self._first_day
        first_month = self._first_month
        d_active = self._d_active
        m_demands = self._m_demands
        count = self._events
        tiers = self.tiers
        charged = SpendOutcome.CHARGED
        try:
            for event in events:
                count += 1
                try:
                    now = event.at
                except AttributeError:
                    now = None
                if now.__class__ is not datetime or now.tzinfo is not UTC or now.microsecond % 1000:
                    now = _event_time(event, count)
                if now < last:
                    raise InvalidArgument(
                        f"event {count} at {now.isoformat()} comes before "
                        f"{'the window start' if count == 1 else 'the previous event'} "
                        f"({last.isoformat()}): events must be in time order, within the window"
                    )
                if now > end:
                    raise InvalidArgument(
                        f"event {count} at {now.isoformat()} is after the window's end "
                        f"({end.isoformat()})"
                    )
                raw = event.user
                user = ids.get(raw) if raw.__class__ in _PLAIN_IDS else None
                if user is None:
                    user = self._id(raw)
                if type(event) is Demand:
                    is_demand = True
                    amount = event.credits
                    if (type(amount) is not int and type(amount) is not float) or not (
                        0 < amount <= MAX_SAFE_INT
                    ):
                        amount = check_amount(amount, what=f"event {count}: credits")
                elif type(event) is Login:
                    is_demand = False
                else:
                    raise InvalidArgument(
                        f"event {count} is a {type(event).__name__}, not a Demand or a Login"
                    )
                last = now
                sim = users.get(user)
                if sim is None:
                    sim = self._first_seen(user, now)
                day = now.toordinal() - first_day
                if sim.day_active != day:
                    sim.day_active = day
                    d_active[day] += 1
                if is_demand:
                    month = now.year * 12 + now.month - 1 - first_month
                    sim.demands += 1
                    m_demands[month] += 1
                    state = sim.state
                    if spend_outcome(state, amount, seen=False) is charged:
                        sim.state = state = after_charge(state, amount)
                        sim.spent += amount
                        doc = sim.doc
                        doc[S.CREDITS] = state.balance
                        doc[S.SPENT] = state.spent
                    elif now < sim.next_at or not self._refill_and_charge(sim, now, amount, month):
                        self._refuse(sim, day, month)
                elif now >= sim.next_at:  # a Login; before `next_refill` none can be due
                    plan = plan_refill(tiers, sim.state, now, 0)
                    if plan is not None:
                        month = now.year * 12 + now.month - 1 - first_month
                        self._refill(sim, now, plan, 0, month)
        finally:
            self._last = last
            self._events = count

    def _refill_and_charge(self, sim: _User, now: datetime, amount: Credits, month: int) -> bool:
        """`spend`'s path when the balance does not cover `amount`: a refill if one is
        due, charging in the same write when the refill covers it. True if charged."""
        plan = plan_refill(self.tiers, sim.state, now, amount)
        if plan is None:
            return False
        charge = amount if not plan.tier_only and plan.available_after >= amount else 0
        self._refill(sim, now, plan, charge, month)
        if charge:
            sim.spent += amount
        return bool(charge)

    def _refill(
        self, sim: _User, now: datetime, plan: RefillPlan, charge: Credits, month: int
    ) -> None:
        """Apply `plan` as `refill_update` writes it, and count its ledger row (a
        tier-only change is written with a `tierChange` row: not a refill)."""
        _apply(sim.doc, S.refill_update(plan, now, charge=charge, mirrored={}))
        sim.state = S.parse(sim.doc).state
        sim.next_at = _next_at(self.tiers, sim.state, now)
        if plan.tier_only:
            return
        ledger = row(
            sim.doc[S.USER], now, context=AUTO_REFILL, before=plan.before, after=plan.after
        )
        if ledger["context"] in REFILL_CONTEXTS:
            granted = ledger["rawAmount"]
            sim.refills += 1
            sim.granted += granted
            self._m_refills[month] += 1
            self._m_granted[month] += granted
            self._by_tier[plan.tier] = self._by_tier.get(plan.tier, 0) + 1

    def _refuse(self, sim: _User, day: int, month: int) -> None:
        sim.refused += 1
        self._m_refused[month] += 1
        if sim.month_refused != month:
            sim.month_refused = month
            self._m_dry[month] += 1
        if sim.day_refused != day:
            sim.day_refused = day
            self._d_refused[day] += 1

    # -- the report -----------------------------------------------------------------

    def report(self) -> SimulationReport:
        """The report of everything fed so far."""
        tiers = self.tiers
        users: dict[UserId, UserOutcome] = {}
        granted: Credits = 0
        spent: Credits = 0
        refills = refused = dry = demands = 0
        for user, sim in self._users.items():
            users[user] = UserOutcome(
                balance=sim.state.balance,
                refills=sim.refills,
                refused=sim.refused,
                tier=assigned_tier(tiers, sim.state),
                granted=sim.granted,
                spent=sim.spent,
                demands=sim.demands,
            )
            granted += sim.granted
            spent += sim.spent
            refills += sim.refills
            refused += sim.refused
            dry += sim.refused > 0
            demands += sim.demands
        periods = tuple(
            PeriodRow(
                month=_month_start(self._first_month + i),
                credits_granted=self._m_granted[i],
                refills=self._m_refills[i],
                refused=self._m_refused[i],
                users_dry=self._m_dry[i],
                demands=self._m_demands[i],
            )
            for i in range(len(self._m_refills))
        )
        days = tuple(
            DayRow(date.fromordinal(self._first_day + i), active, self._d_refused[i])
            for i, active in enumerate(self._d_active)
        )
        return SimulationReport(
            start=self.start,
            end=self.end,
            users=users,
            totals=Totals(
                credits_granted=granted,
                refills=refills,
                refused=refused,
                users_dry=dry,
                users=len(users),
                demands=demands,
                spent=spent,
            ),
            periods=periods,
            days=days,
            refills_by_tier=dict(self._by_tier),
            events=self._events,
        )


def simulate(
    policy: AnyPolicy,
    events: Iterable[Event],
    *,
    start: datetime,
    end: datetime,
    start_balances: Mapping[Any, StartBalance] | None = None,
) -> SimulationReport:
    """Replay `events` (in time order, within [start, end]) under `policy`.

    Users absent from `start_balances` start as the live library creates them (the
    default tier's `start_balance`, `lastRefill` at their first event). Out-of-order
    events, events outside the window and bad amounts or user ids raise an error under
    `BalanceRefillError` (`InvalidArgument`, `InvalidAmount`, `InvalidUserId`)."""
    simulator = Simulator(policy, start=start, end=end, start_balances=start_balances)
    simulator.feed(events)
    return simulator.report()


# -- helpers ------------------------------------------------------------------------


NEVER = datetime.max.replace(tzinfo=UTC)


def _next_at(tiers: TieredPolicy, state: UserState, now: datetime) -> datetime:
    """Before this instant `plan_refill` plans nothing for `state` (no refill is due
    before `decide.next_refill`, the time the library reports to the user); a charge
    does not move it (only a refill or an admin change does). A shortcut only: at or
    after it, `plan_refill` decides."""
    at = next_refill(tiers, state, now)
    return NEVER if at is None else at


def _instant(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgument(f"{what} must be an aware datetime, got {value!r}")
    return as_utc(value)


def _event_time(event: object, count: int) -> datetime:
    at = getattr(event, "at", None)
    if isinstance(at, datetime) and at.tzinfo is not None:
        return as_utc(at)
    raise InvalidArgument(
        f"event {count}: 'at' must be an aware datetime, got {at!r} (events are Demand or Login)"
    )


def _month_index(value: datetime) -> int:
    return value.year * 12 + value.month - 1


def _month_start(index: int) -> date:
    year, month0 = divmod(index, 12)
    return date(year, month0 + 1, 1)


__all__ = [
    "DayRow",
    "Demand",
    "Event",
    "Login",
    "PeriodRow",
    "SimulationReport",
    "Simulator",
    "Totals",
    "UserOutcome",
    "simulate",
]
