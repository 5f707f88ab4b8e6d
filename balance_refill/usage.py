"""Usage events for the simulator, and where they come from.

`Demand(user, at, credits)` is one `spend(user, credits)` at `at`; `Login(user, at)` one
`ensure_balance(user)`. The sources, each yielding events in time order:

- `transaction_pages`: LibreChat's own `transactions` collection. A spend row has
  `tokenType` "prompt" or "completion", a negative `tokenValue` and a `createdAt`; each
  such row is one Demand of `-tokenValue` credits. Refill and grant rows (`tokenType`
  "credits": LibreChat's and this library's) are not demand.
- `history_events`: the per-period spend the library keeps on balance documents
  (`spendHistory`, `spentSinceRefill`). Coarser: a period's total is spread evenly over
  its days, so the timing inside a period is not known.
- `read_events`: CSV (`user,at,credits`) or JSON lines (`{"user", "at", "credits"}`);
  an empty or missing `credits` is a Login.
- `synthetic`: a seeded generator for planning before launch.

Rows from a database are read as LibreChat may have left them: a row that is not a
spend, or is malformed (a missing field, a string amount, NaN), is skipped and counted
in a `Tally`; a malformed line in a file is an error naming the line.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from . import _schema as S
from ._store import AsyncCollection, Store
from ._validate import MAX_SAFE_INT, Credits, UserId, check_user_id
from .errors import InvalidArgument, InvalidUserId
from .periods import Calendar, add_months, as_utc
from .policy import AnyPolicy, TieredPolicy, as_tiered


class Demand(NamedTuple):
    """One `spend(user, credits)` at `at` (an aware datetime)."""

    user: UserId
    at: datetime
    credits: Credits


class Login(NamedTuple):
    """One `ensure_balance(user)` at `at` (an aware datetime)."""

    user: UserId
    at: datetime


Event = Demand | Login

SPEND_TOKEN_TYPES = ("prompt", "completion")
"""LibreChat's `tokenType` of the rows that charge a message."""


@dataclass
class Tally:
    """What a source read: rows used, and rows skipped by reason."""

    read: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def describe(self) -> str:
        if not self.skipped:
            return f"{self.used} of {self.read} rows used"
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"{self.used} of {self.read} rows used; skipped: {reasons}"


# -- LibreChat's transactions ---------------------------------------------------------


def _amount(value: object) -> Credits | None:
    """A finite number that is not a bool, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def demand_of_transaction(doc: Mapping[str, Any], tally: Tally | None = None) -> Demand | None:
    """The Demand a `transactions` row stands for, or None (not a spend, or malformed;
    counted in `tally` by reason)."""
    tally = tally if tally is not None else Tally()
    tally.read += 1
    if doc.get("tokenType") not in SPEND_TOKEN_TYPES:
        tally.skip("not a spend row")
        return None
    value = _amount(doc.get("tokenValue"))
    if value is None:
        tally.skip("tokenValue not a finite number")
        return None
    if value >= 0:
        tally.skip("tokenValue not negative")
        return None
    if -value > MAX_SAFE_INT:
        tally.skip("tokenValue beyond 2**53")
        return None
    at = doc.get("createdAt")
    if not isinstance(at, datetime):
        tally.skip("createdAt not a date")
        return None
    try:
        user = check_user_id(doc.get("user"))
    except InvalidUserId:
        tally.skip("user not an id")
        return None
    tally.used += 1
    return Demand(user, as_utc(at), -value)


SPEND_ROWS: S.Update = {"tokenType": {"$in": list(SPEND_TOKEN_TYPES)}}


async def transaction_pages(
    transactions: AsyncCollection,
    *,
    start: datetime,
    end: datetime,
    page_size: int = 5_000,
    tally: Tally | None = None,
) -> AsyncIterator[list[Demand]]:
    """LibreChat's spend rows created in [start, end], oldest first, as pages of
    Demands (memory: one page). Rows are read in (createdAt, _id) order, a page at a
    time after the last one seen, so the read holds no cursor open."""
    tally = tally if tally is not None else Tally()
    store = Store(transactions)
    window: S.Update = {"createdAt": {"$gte": start, "$lte": end}}
    after: S.Update = {}
    order = [("createdAt", 1), ("_id", 1)]
    while True:
        docs = await store.iterate(
            transactions, {**SPEND_ROWS, **window, **after}, sort=order, limit=page_size
        )
        page = [d for d in (demand_of_transaction(doc, tally) for doc in docs) if d is not None]
        if page:
            yield page
        if len(docs) < page_size:
            return
        last = docs[-1]
        after = {
            "$or": [
                {"createdAt": {"$gt": last["createdAt"], "$lte": end}},
                {"createdAt": last["createdAt"], "_id": {"$gt": last["_id"]}},
            ]
        }
        window = {}


# -- the library's per-period spend history --------------------------------------------

HISTORY_NOTE = (
    "spend history: each period's total is spread evenly over its days (the library "
    "keeps one total per period, not each message), so refusals inside a period are "
    "approximate"
)


async def history_events(
    balances: AsyncCollection,
    policy: AnyPolicy,
    *,
    start: datetime,
    end: datetime,
    tally: Tally | None = None,
) -> Iterator[Demand]:
    """Demands rebuilt from the balance documents' spend history: for each user, the
    closed periods (`spendHistory`, newest last, the newest ending at `lastRefill`, each
    as long as the user's tier's period) and the open one (`spentSinceRefill`, from
    `lastRefill` to `end`), each spread evenly as one Demand a day over its days, at the
    middle of each day's share, kept within [start, end]. Coarse: see `HISTORY_NOTE`.
    The documents are read first (a few periods per user); the events then come in time
    order, merged from one lazy stream per user (memory O(users))."""
    tally = tally if tally is not None else Tally()
    tiers = as_tiered(policy)
    store = Store(balances)
    streams: list[Iterator[Demand]] = []
    after: S.Update = {}
    while True:
        docs = await store.iterate(balances, after, sort=[("_id", 1)], limit=5_000)
        for doc in docs:
            spans = _history_spans(doc, tiers, end, tally)
            if spans:
                streams.append(_spread(spans[0], spans[1], start, end))
        if len(docs) < 5_000:
            break
        after = {"_id": {"$gt": docs[-1]["_id"]}}
    return heapq.merge(*streams, key=_at)


def _at(event: Demand) -> datetime:
    return event.at


Span = tuple[datetime, datetime, Credits]


def _history_spans(
    doc: Mapping[str, Any], tiers: TieredPolicy, end: datetime, tally: Tally
) -> tuple[UserId, list[Span]] | None:
    """The user and its periods as (from, to, credits spent), oldest first."""
    tally.read += 1
    try:
        user = check_user_id(doc.get(S.USER))
    except InvalidUserId:
        tally.skip("user not an id")
        return None
    state = S.parse(doc).state
    if state.last_refill is None:
        tally.skip("no lastRefill")
        return None
    tally.used += 1
    period = tiers.tiers[tiers.tier_of(state.refill_tier or state.tier)].period
    spans: list[Span] = [(state.last_refill, end, state.spent)]
    upper = state.last_refill
    for spent in reversed(state.history):
        lower = _period_before(period, upper)
        spans.append((lower, upper, spent))
        upper = lower
    spans.reverse()
    return user, spans


def _spread(user: UserId, spans: list[Span], start: datetime, end: datetime) -> Iterator[Demand]:
    """One Demand a day of each span, at the middle of equal slots (in time order)."""
    day = timedelta(days=1)
    for lower, upper, spent in spans:
        if spent <= 0 or upper <= lower:
            continue
        days = max(1, math.ceil((upper - lower) / day))
        share = spent / days
        slot = (upper - lower) / days
        for i in range(days):
            at = as_utc(lower + slot * i + slot / 2)
            if start <= at <= end:
                yield Demand(user, at, share)


def _period_before(period: object, upper: datetime) -> datetime:
    """The start of a period of `period`'s length that ends at `upper` (approximate for
    calendar periods, whose refills fall anywhere inside them)."""
    if isinstance(period, Calendar):
        if period.unit == "month":
            return add_months(upper, -1)
        return upper - timedelta(days=1 if period.unit == "day" else 7)
    months = getattr(period, "months", 0)
    if months:
        return add_months(upper, -months)
    delta: timedelta = getattr(period, "delta", timedelta(days=30))
    return upper - delta


# -- CSV and JSON lines ------------------------------------------------------------------


_SECONDS = re.compile(r"\d+(\.\d*)?")


def _parse_at(value: object, where: str) -> datetime:
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: 'at' must be a date, got {value!r}")
    if isinstance(value, str) and _SECONDS.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where}: 'at' must be a date, got {value!r}")
        try:
            return as_utc(datetime.fromtimestamp(value, UTC))
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidArgument(f"{where}: 'at' {value!r} is out of range") from exc
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{where}: 'at' is missing or not a date: {value!r}")
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgument(
            f"{where}: cannot read 'at' {value!r} (use ISO 8601, e.g. 2026-03-01T12:00:00Z)"
        ) from None
    return as_utc(at)  # a naive time is read as UTC


def _parse_credits(value: object, where: str) -> Credits | None:
    """A positive finite amount; None (a Login) when empty or missing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    amount: object = value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            amount = int(text)
        except ValueError:
            try:
                amount = float(text)
            except ValueError:
                raise InvalidArgument(f"{where}: 'credits' is not a number: {value!r}") from None
    checked = _amount(amount)
    if checked is None or checked <= 0 or checked > MAX_SAFE_INT:
        raise InvalidArgument(
            f"{where}: 'credits' must be a positive finite number up to 2**53, got {value!r}"
        )
    return checked


def _parse_user(value: object, where: str) -> UserId:
    if isinstance(value, str):
        value = value.strip()
    try:
        return check_user_id(value)
    except InvalidUserId as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def _event(user: object, at: object, credits: object, where: str) -> Event:
    uid = _parse_user(user, where)
    when = _parse_at(at, where)
    amount = _parse_credits(credits, where)
    return Login(uid, when) if amount is None else Demand(uid, when, amount)


def read_events(lines: Iterable[str], *, name: str = "events") -> Iterator[Event]:
    """Events from CSV with a `user,at,credits` header, or from JSON lines (a file whose
    first non-blank character is `{`). `at` is ISO 8601 (naive: UTC) or Unix seconds;
    an empty or missing `credits` is a Login. A bad line raises `InvalidArgument` naming
    it. Lines are read as they come (memory O(1))."""
    it = iter(lines)
    buffered: list[str] = []
    for line in it:
        buffered.append(line)
        if line.strip():
            break
    if not buffered or not buffered[-1].strip():
        return
    rest = _chain(buffered, it)
    if buffered[-1].lstrip().startswith("{"):
        yield from _json_lines(rest, name)
    else:
        yield from _csv_rows(rest, name)


def _chain(first: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from first
    yield from rest


def _json_lines(lines: Iterator[str], name: str) -> Iterator[Event]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InvalidArgument(f"{where}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidArgument(f"{where}: expected an object with user, at, credits")
        yield _event(obj.get("user"), obj.get("at"), obj.get("credits"), where)


def _csv_rows(lines: Iterator[str], name: str) -> Iterator[Event]:
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [h for h in ("user", "at") if h not in header]
    if missing:
        raise InvalidArgument(
            f"{name} line 1: the CSV header must name user, at and credits, got {header}"
        )
    iu, ia = header.index("user"), header.index("at")
    ic = header.index("credits") if "credits" in header else None
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{name} line {reader.line_num}"
        if len(row) != len(header):
            raise InvalidArgument(f"{where}: {len(row)} fields, the header has {len(header)}")
        yield _event(row[iu], row[ia], None if ic is None else row[ic], where)


# -- synthetic -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Synthetic:
    """A seeded synthetic population: `users` users over `days` days from `start`; a
    share `heavy_share` of them heavy (`heavy_factor` times the messages); each ordinary
    user sends `messages_per_day` messages a day on average (a Poisson process), each
    costing a log-normal amount with median `cost_median` and spread `cost_sigma`
    (rounded to cents of a credit). Each day a user is active starts with a Login."""

    users: int = 1_000
    days: int = 90
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    heavy_share: float = 0.1
    heavy_factor: float = 5.0
    messages_per_day: float = 2.0
    cost_median: float = 1_000.0
    cost_sigma: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("users", self.users, 1, 10_000_000),
            ("days", self.days, 1, 3_650),
            ("heavy_share", self.heavy_share, 0, 1),
            ("heavy_factor", self.heavy_factor, 1, 1_000),
            ("messages_per_day", self.messages_per_day, 0.001, 10_000),
            ("cost_median", self.cost_median, 0.01, 1e12),
            ("cost_sigma", self.cost_sigma, 0, 5),
        )
        for what, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"synthetic {what} must be a number, got {value!r}")
            if not (low <= value <= high):
                raise InvalidArgument(f"synthetic {what} must be from {low} to {high}, got {value}")
        if not isinstance(self.start, datetime) or self.start.tzinfo is None:
            raise InvalidArgument(f"synthetic start must be an aware datetime, got {self.start!r}")

    @property
    def end(self) -> datetime:
        return as_utc(self.start) + timedelta(days=self.days)

    def user_id(self, index: int) -> str:
        return f"user{index:07d}"

    def days_of_events(self) -> Iterator[list[Event]]:
        """The events of each day in time order, one list a day (memory: one day)."""
        rng = random.Random(self.seed)  # noqa: S311 - a seeded simulation, not a secret
        start = as_utc(self.start)
        day_ms = 86_400_000
        rates = []
        for _ in range(self.users):
            heavy = rng.random() < self.heavy_share
            rates.append(self.messages_per_day * (self.heavy_factor if heavy else 1) / day_ms)
        ids = [self.user_id(i) for i in range(self.users)]
        following = [rng.expovariate(rate) for rate in rates]
        mu, sigma = math.log(self.cost_median), self.cost_sigma
        expo, gauss = rng.expovariate, rng.gauss
        for day in range(self.days):
            top = (day + 1) * day_ms
            stamps: list[tuple[int, int, float]] = []
            for i in range(self.users):
                t = following[i]
                if t >= top:
                    continue
                rate = rates[i]
                stamps.append((int(t), i, -1.0))  # the day's login, at its first message
                while t < top:
                    cost = round(math.exp(mu + sigma * gauss()), 2) or 0.01
                    stamps.append((int(t), i, cost))
                    t += expo(rate)
                following[i] = t
            stamps.sort()
            events: list[Event] = []
            for ms, i, cost in stamps:
                at = start + timedelta(milliseconds=ms)
                events.append(Login(ids[i], at) if cost < 0 else Demand(ids[i], at, cost))
            yield events

    def __iter__(self) -> Iterator[Event]:
        for day in self.days_of_events():
            yield from day


def synthetic(**kwargs: Any) -> Synthetic:
    """A `Synthetic` population (iterate it for the events); see `Synthetic`."""
    return Synthetic(**kwargs)


__all__ = [
    "HISTORY_NOTE",
    "Demand",
    "Event",
    "Login",
    "Synthetic",
    "Tally",
    "demand_of_transaction",
    "history_events",
    "read_events",
    "synthetic",
    "transaction_pages",
]
