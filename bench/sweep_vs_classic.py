"""Benchmark 6 (issue 4): what a sweep costs, against the classic monthly reset script.

The classic script is the LibreChat monthly reset that is widely shared and run by a
systemd timer: it reads every balance document, then writes `tokenCredits` (and
`lastRefill`) for every user with `bulk_write` of `UpdateOne(..., upsert=True)` in
batches of 500, and writes no ledger. `classic_reset` below is that script, as real code
against the same collections. It is given its best form, not a weak one: it projects
only `user` on the read, sends unordered bulk writes, and addresses each update by the
`_id` it has just read (served by the `_id` index on a server, and by the same O(1)
lookup as the sweep's compare-and-swap on the mock, so the mock's missing `user` index
does not slow it down).

Ours is `await refiller.sweep(active_within="30d", batch_size=500)` under
`RefillPolicy(amount=10_000, interval="30d")`.

Both run on copies of the same LibreChat-layout documents: 20% of the users are due
(`lastRefill` 31-90 days old, balance 0-9,999, below the threshold of 10,000) and 50%
inactive (`lastSeen` 31-180 days old), independently of each other, in exact
proportions, so 10% are due and active. The others were refilled within 30 days and
hold 0-20,000 credits. Sizes: 2,000 and 10,000 users, plus a control run of 10,000 users
of whom only as many are due and active as in the 2,000 run (10% active instead of 50%):
it separates growth with all users from growth with due, active users. `--quick`: 200
and 1,000 users.

What is counted, per side:

* calls: every call goes through `balance_refill.testing.RecordingCollection` (one
  `CallLog` for balances, transactions and the leases collection);
* round trips: what pymongo needs for those calls on a server. Every call is one round
  trip except a `find`, which pymongo (no `batch_size`) sends as a first batch of at most
  101 documents, then `getMore` batches of up to 16 MiB (and the rest of the `limit`),
  computed from the BSON sizes of the documents it returned (`find_round_trips`). The
  same rule applies to both sides;
* documents read: documents returned by any call; documents written: documents a call
  inserted, updated or deleted (the classic's upserts, our compare-and-swaps, ledger
  rows, marker clears and lease writes, one each); transferred = read + written. Also the
  BSON bytes of the documents read and of the write requests sent;
* wall time of the classic script and of `sweep()`, on the mock: the median of 3 runs
  of each side (1 with `--quick`), each on a freshly seeded database.

Our sweep is also checked: the users it refilled (the ledger rows) must be exactly the
due and active users, each now holding 10,000 credits, every other user untouched.

The collections run behind `bench.fastmock.fast_mock` (for speed) and
`balance_refill.testing.BulkWriteShim` (mongomock's `bulk_write` with `UpdateOne` is
broken); both sides get the same.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bson
from bson import ObjectId
from pymongo import UpdateOne

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.testing import BulkWriteShim, CallLog, FakeClock, RecordingCollection

from .common import LIBRECHAT_BALANCE, START, Section, librechat_doc, median, mock_db, ratio
from .fastmock import fast_mock

SIZES = (2_000, 10_000)
QUICK_SIZES = (200, 1_000)
DUE_SHARE = 0.2
ACTIVE_SHARE = 0.5
BATCH_SIZE = 500
AMOUNT = 10_000
ACTIVE_WITHIN = "30d"
SEED = 4
REPEATS = 3  # wall time: median of this many runs of each side (1 with --quick)

FIRST_BATCH = 101  # the server's first reply to a find without batchSize
MAX_BATCH_BYTES = 16 * 1024 * 1024  # a getMore reply is at most 16 MiB of documents

WRITE_METHODS = (
    "update_one",
    "update_many",
    "insert_one",
    "insert_many",
    "delete_one",
    "delete_many",
    "bulk_write",
)


def policy() -> RefillPolicy:
    return RefillPolicy(amount=AMOUNT, interval="30d")


# -- the round-trip model ---------------------------------------------------------------


def _take(sizes: Sequence[int], start: int, most: int) -> int:
    """How many documents from `start` fit in one reply (at least one)."""
    total = count = 0
    for size in sizes[start:]:
        if count == most or (count and total + size > MAX_BATCH_BYTES):
            break
        total += size
        count += 1
    return count


def find_round_trips(sizes: Sequence[int], limit: int = 0) -> int:
    """Round trips pymongo makes to read documents of these BSON sizes with a `find`
    sent without `batch_size` (as both sides send theirs).

    The first reply holds at most 101 documents (the server's default first batch, even
    with a larger `limit`); each `getMore` holds up to 16 MiB (pymongo asks for the rest
    of the `limit`, if any). A first batch cut at 101 documents with nothing after it
    leaves the cursor open, so one more, empty `getMore` follows unless the limit was
    reached. A reply cut by size always has documents after it.
    """
    n = len(sizes)
    i = _take(sizes, 0, FIRST_BATCH)
    trips = 1
    if i == n:
        cut_by_count = n == FIRST_BATCH and (limit == 0 or limit > FIRST_BATCH)
        return trips + int(cut_by_count)
    while i < n:
        i += _take(sizes, i, n - i)
        trips += 1
    return trips


# -- metering what each call moves ------------------------------------------------------


@dataclass
class Op:
    """One call: the documents it returned and what it wrote (sizes are taken after the
    timed run, from the references kept here)."""

    collection: str
    method: str
    limit: int = 0
    batch_size: int = 0  # as sent: pymongo then asks for that many in the first reply
    read: list[Any] = field(default_factory=list)
    written: int = 0
    sent: list[Any] = field(default_factory=list)  # the write requests' documents

    def read_sizes(self) -> list[int]:
        return [len(bson.encode(doc)) for doc in self.read]

    def round_trips(self, *, batch_size_is_limit: bool = False) -> int:
        """Round trips of this call; with `batch_size_is_limit`, as if the find had been
        sent with `batch_size=limit` (pymongo then asks for limit + 1 in the first reply)."""
        if self.method != "find":
            return 1
        batched = self.batch_size >= self.limit > 0 or (batch_size_is_limit and self.limit)
        if batched and sum(self.read_sizes()) <= MAX_BATCH_BYTES:
            return 1
        return find_round_trips(self.read_sizes(), self.limit)


def _written(method: str, result: Any) -> int:
    """Documents a write call inserted, updated (matched: a renewal that sets the same
    expiry under the fake clock still counts) or deleted."""
    if method in ("update_one", "update_many"):
        return int(result.matched_count) + (1 if result.upserted_id is not None else 0)
    if method == "insert_one":
        return 1
    if method == "insert_many":
        return len(result.inserted_ids)
    if method in ("delete_one", "delete_many"):
        return int(result.deleted_count)
    if method == "bulk_write":
        return int(
            result.inserted_count
            + result.matched_count
            + result.upserted_count
            + result.deleted_count
        )
    raise ValueError(method)


def _sent(method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
    """The documents a write call sends (filters and updates, or inserted documents)."""
    if method == "bulk_write":
        return [{"q": r._filter, "u": r._doc} for r in args[0]]
    if method == "insert_many":
        return list(args[0])
    if method == "insert_one":
        return [args[0]]
    if method in ("update_one", "update_many", "find_one_and_update"):
        return [{"q": args[0], "u": args[1]}]
    return [{"q": args[0] if args else kwargs.get("filter", {})}]


class Metered:
    """Sits under `RecordingCollection`: keeps, for every call, what it moved."""

    def __init__(self, inner: Any, ops: list[Op]) -> None:
        self._inner = inner
        self._ops = ops

    @property
    def name(self) -> str:
        return str(self._inner.name)

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._inner, attr)
        if attr in WRITE_METHODS:

            async def write(*args: Any, **kwargs: Any) -> Any:
                op = Op(self.name, attr, sent=_sent(attr, args, kwargs))
                self._ops.append(op)
                result = await target(*args, **kwargs)
                op.written = _written(attr, result)
                return result

            return write
        if attr in ("find_one", "find_one_and_update", "count_documents"):

            async def call(*args: Any, **kwargs: Any) -> Any:
                op = Op(self.name, attr)
                if attr == "find_one_and_update":
                    op.sent = _sent(attr, args, kwargs)
                self._ops.append(op)
                result = await target(*args, **kwargs)
                if isinstance(result, Mapping):
                    op.read.append(result)
                    op.written = int(attr == "find_one_and_update")
                return result

            return call
        if attr in ("aggregate", "create_index", "drop"):
            raise NotImplementedError(f"Metered does not meter {attr}")
        return target

    def find(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        op = Op(
            self.name,
            "find",
            limit=int(kwargs.get("limit", 0) or 0),
            batch_size=int(kwargs.get("batch_size", 0) or 0),
        )

        async def documents() -> AsyncIterator[Any]:
            self._ops.append(op)
            async for doc in self._inner.find(*args, **kwargs):
                op.read.append(doc)
                yield doc

        return documents()


@dataclass
class Side:
    """What one side (classic or ours) cost in one run."""

    name: str
    calls: int
    round_trips: int
    round_trips_batched: int  # if every find with a limit asked for it all in one reply
    docs_read: int
    docs_written: int
    bytes_read: int
    bytes_written: int
    seconds: float
    by_method: dict[str, list[int]]  # "collection.method": [calls, round trips, read, written]

    @property
    def docs(self) -> int:
        return self.docs_read + self.docs_written

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _side(name: str, log: CallLog, ops: list[Op], seconds: float) -> Side:
    if len(ops) != log.count:  # the meter and the recorder must see the same calls
        raise AssertionError(f"{name}: {len(ops)} metered calls, {log.count} recorded")
    by_method: dict[str, list[int]] = {}
    for op in ops:
        row = by_method.setdefault(f"{op.collection}.{op.method}", [0, 0, 0, 0])
        for i, value in enumerate((1, op.round_trips(), len(op.read), op.written)):
            row[i] += value
    return Side(
        name=name,
        calls=log.count,
        round_trips=sum(op.round_trips() for op in ops),
        round_trips_batched=sum(op.round_trips(batch_size_is_limit=True) for op in ops),
        docs_read=sum(len(op.read) for op in ops),
        docs_written=sum(op.written for op in ops),
        bytes_read=sum(sum(op.read_sizes()) for op in ops),
        bytes_written=sum(len(bson.encode(doc)) for op in ops for doc in op.sent),
        seconds=seconds,
        by_method=by_method,
    )


# -- the population ---------------------------------------------------------------------


@dataclass
class Population:
    users: int
    docs: list[dict[str, Any]]
    due_active: set[Any]
    due: int
    active: int


def population(users: int, active_share: float = ACTIVE_SHARE, seed: int = SEED) -> Population:
    """LibreChat-layout documents: DUE_SHARE due and `active_share` active, independently
    and in exact proportions (due and active = their product)."""
    rng = random.Random(seed)
    due = round(users * DUE_SHARE)
    due_active = round(due * active_share)
    other_active = round((users - due) * active_share)
    flags = (
        [(True, True)] * due_active
        + [(True, False)] * (due - due_active)
        + [(False, True)] * other_active
        + [(False, False)] * (users - due - other_active)
    )
    rng.shuffle(flags)

    def ago(low_days: float, high_days: float) -> datetime:
        delta = timedelta(seconds=rng.uniform(low_days * 86_400, high_days * 86_400))
        moment = START - delta
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    docs, wanted = [], set()
    for is_due, is_active in flags:
        user = ObjectId()
        if is_due:
            doc = librechat_doc(user, rng.randint(0, AMOUNT - 1), ago(31, 90))
        else:
            doc = librechat_doc(user, rng.randint(0, 2 * AMOUNT), ago(0, 29.9))
        doc["lastSeen"] = ago(0, 29.9) if is_active else ago(31, 180)
        docs.append(doc)
        if is_due and is_active:
            wanted.add(user)
    return Population(users, docs, wanted, due, due_active + other_active)


async def _collections(pop: Population, names: Sequence[str]) -> tuple[Any, ...]:
    """A fresh mock database seeded with `pop`: for each name the fast-mocked raw
    collection, in front of which the callers put their wrappers."""
    db = mock_db()
    raws = tuple(fast_mock(db[name]) for name in names)
    for i in range(0, pop.users, 5_000):
        await raws[0].insert_many([dict(d) for d in pop.docs[i : i + 5_000]])
    return raws


def _wrap(raw: Any, log: CallLog, ops: list[Op]) -> RecordingCollection:
    return RecordingCollection(Metered(BulkWriteShim(raw), ops), log)


# -- the two sides ----------------------------------------------------------------------


async def classic_reset(
    balances: Any, *, amount: int, now: datetime, batch_size: int = BATCH_SIZE
) -> int:
    """The classic monthly reset: read every user, then write each one in bulk batches
    of `batch_size` upserts. No ledger. Returns the users written."""
    users = [doc async for doc in balances.find({}, {"user": 1})]
    written = 0
    for i in range(0, len(users), batch_size):
        requests = [
            UpdateOne(
                {"_id": doc["_id"]},
                {
                    "$set": {"tokenCredits": amount, "lastRefill": now},
                    "$setOnInsert": {"user": doc.get("user", doc["_id"])},
                },
                upsert=True,
            )
            for doc in users[i : i + batch_size]
        ]
        result = await balances.bulk_write(requests, ordered=False)
        written += result.matched_count + result.upserted_count
    return written


async def run_classic(pop: Population) -> tuple[Side, dict[str, Any]]:
    (raw,) = await _collections(pop, ["balances"])
    log, ops = CallLog(), list[Op]()
    balances = _wrap(raw, log, ops)
    t0 = time.perf_counter()
    written = await classic_reset(balances, amount=AMOUNT, now=START)
    seconds = time.perf_counter() - t0
    credited = await raw.count_documents({"tokenCredits": AMOUNT, "lastRefill": START})
    check = {"users_written": written, "credited": credited, "ledger_rows": 0}
    return _side("classic", log, ops, seconds), check


async def run_ours(pop: Population) -> tuple[Side, dict[str, Any]]:
    raw_bal, raw_tx, raw_leases = await _collections(
        pop, ["balances", "transactions", "balance_refill_leases"]
    )
    log, ops = CallLog(), list[Op]()
    refiller = BalanceRefiller(
        _wrap(raw_bal, log, ops),
        policy(),
        ledger=_wrap(raw_tx, log, ops),
        leases=_wrap(raw_leases, log, ops),
        clock=FakeClock(START),
        retry_delay=0,
    )
    t0 = time.perf_counter()
    report = await refiller.sweep(active_within=ACTIVE_WITHIN, batch_size=BATCH_SIZE)
    seconds = time.perf_counter() - t0
    side = _side("ours", log, ops, seconds)
    check = await _check_ours(pop, raw_bal, raw_tx)
    check["report"] = report.as_dict()
    return side, check


async def _check_ours(pop: Population, balances: Any, transactions: Any) -> dict[str, Any]:
    """Who was refilled: ledger rows, their users, and every user's balance."""
    rows = [r async for r in transactions.find({"context": "autoRefill"})]
    refilled = Counter(r["user"] for r in rows)
    after = {d["_id"]: d async for d in balances.find({}, {"tokenCredits": 1, "lastRefill": 1})}
    before = {d["_id"]: d for d in pop.docs}
    wrong = 0
    for user, doc in after.items():
        if user in pop.due_active:
            wrong += doc["tokenCredits"] != AMOUNT or doc["lastRefill"] != START
        else:
            wrong += doc["tokenCredits"] != before[user]["tokenCredits"]
    return {
        "ledger_rows": len(rows),
        "same_users": set(refilled) == pop.due_active and max(refilled.values(), default=1) == 1,
        "wrong_balances": wrong,
        "pending_left": await balances.count_documents({"pendingLedger": {"$exists": True}}),
    }


async def measure(
    users: int, *, active_share: float = ACTIVE_SHARE, repeats: int = 1
) -> dict[str, Any]:
    """Both sides on fresh copies of one population, `repeats` times each (alternating);
    the counts of every repeat must agree, the wall time is their median."""
    pop = population(users, active_share)
    runs: dict[str, list[tuple[Side, dict[str, Any]]]] = {"classic": [], "ours": []}
    for _ in range(repeats):
        runs["classic"].append(await run_classic(pop))
        runs["ours"].append(await run_ours(pop))
    sides = {}
    for name, results in runs.items():
        first = results[0][0]
        for side, _check in results[1:]:
            if _counts(side) != _counts(first):
                raise AssertionError(f"{name}: counts differ between repeats")
        first.seconds = median(side.seconds for side, _ in results)
        sides[name] = first
    return {
        "users": users,
        "due": pop.due,
        "active": pop.active,
        "due_active": len(pop.due_active),
        "repeats": repeats,
        "classic": sides["classic"],
        "ours": sides["ours"],
        "classic_check": runs["classic"][0][1],
        "ours_check": runs["ours"][0][1],
    }


def _counts(side: Side) -> tuple[int, ...]:
    return (side.calls, side.round_trips, side.docs_read, side.docs_written)


# -- the section ------------------------------------------------------------------------

METRICS: tuple[tuple[str, Callable[[Side], float], str], ...] = (
    ("database round trips (driver model)", lambda s: s.round_trips, ""),
    ("database calls as issued", lambda s: s.calls, ""),
    ("documents read", lambda s: s.docs_read, ""),
    ("documents written", lambda s: s.docs_written, ""),
    ("documents transferred (read + written)", lambda s: s.docs, ""),
    ("BSON transferred (documents read + write requests)", lambda s: s.bytes / 1e3, "kB"),
    ("wall time on the mock (indicative only)", lambda s: s.seconds, "s"),
)


def _users(r: Mapping[str, Any]) -> str:
    return f"{r['users']:,} users"


def _add_comparison(section: Section, r: Mapping[str, Any]) -> None:
    classic, ours = r["classic"], r["ours"]
    head = _users(r)
    section.add(
        f"{head}: due / active / due and active",
        f"{r['due']:,} / {r['active']:,} / {r['due_active']:,}",
    )
    for text, get, unit in METRICS:
        section.add(f"{head}: {text}, classic", get(classic), unit)
        section.add(f"{head}: {text}, ours", get(ours), unit)
        goal, met = "", None
        if text.startswith("documents transferred"):
            goal, met = "> 1x", ours.docs < classic.docs
        section.add(
            f"{head}: {text}, classic / ours", ratio(get(classic), get(ours)), "x", goal, met
        )


def _add_growth(section: Section, small: Mapping[str, Any], large: Mapping[str, Any]) -> None:
    """How each side grows from `small` to `large`; ours should follow due+active users."""
    users = ratio(large["users"], small["users"])
    wanted = ratio(large["due_active"], small["due_active"])
    head = (
        f"growth {small['users']:,} -> {large['users']:,} users "
        f"({users:g}x users, {wanted:g}x due and active)"
    )
    for side in ("classic", "ours"):
        a, b = small[side], large[side]
        section.add(f"{head}: round trips, {side}", ratio(b.round_trips, a.round_trips), "x")
        growth = ratio(b.docs, a.docs)
        goal, met = "", None
        if side == "ours":
            goal = f"~{wanted:g}x (due+active)"
            met = abs(growth / wanted - 1) <= 0.1
        section.add(f"{head}: documents transferred, {side}", growth, "x", goal, met)


def _add_control(section: Section, control: Mapping[str, Any]) -> None:
    head = f"{_users(control)} (control, {control['due_active']:,} due and active)"
    for side in ("classic", "ours"):
        s = control[side]
        section.add(
            f"{head}: round trips / documents transferred, {side}",
            f"{s.round_trips:,} / {s.docs:,}",
        )


def _add_checks(section: Section, r: Mapping[str, Any], label: str = "") -> None:
    head = f"{_users(r)}{label}"
    check, wanted = r["ours_check"], r["due_active"]
    ok = check["same_users"] and check["wrong_balances"] == 0 and check["pending_left"] == 0
    section.add(
        f"{head}: ours, ledger rows (the due and active users, once each)",
        check["ledger_rows"],
        "",
        f"= {wanted:,}",
        check["ledger_rows"] == wanted and ok,
    )
    classic = r["classic_check"]
    section.add(
        f"{head}: classic, users written / ledger rows",
        f"{classic['users_written']:,} / {classic['ledger_rows']}",
    )


async def run(quick: bool = False, *, sizes: tuple[int, int] | None = None) -> Section:
    section = Section("sweepcost", "6. sweep vs classic reset")
    small_n, large_n = sizes or (QUICK_SIZES if quick else SIZES)
    repeats = 1 if quick else REPEATS
    small = await measure(small_n, repeats=repeats)
    large = await measure(large_n, repeats=repeats)
    # The control run: as many users as the large run, as many due and active as the
    # small one (fewer of them active).
    control_share = ACTIVE_SHARE * small_n / large_n
    control = await measure(large_n, active_share=control_share, repeats=repeats)
    _add_comparison(section, large)
    _add_growth(section, small, large)
    _add_control(section, control)
    _add_growth(section, small, control)
    _add_checks(section, small)
    _add_checks(section, large)
    _add_checks(section, control, " (control)")
    section.notes.extend(_notes(large, control))
    section.data = {
        "runs": [
            {
                **{k: v for k, v in r.items() if k not in ("classic", "ours")},
                "classic": {**vars(r["classic"]), "docs": r["classic"].docs},
                "ours": {**vars(r["ours"]), "docs": r["ours"].docs},
            }
            for r in (small, large, control)
        ]
    }
    return section


def _breakdown(side: Side) -> str:
    parts = [
        f"{name} {calls}/{trips}/{read}/{written}"
        for name, (calls, trips, read, written) in side.by_method.items()
    ]
    return ", ".join(parts)


def _notes(large: Mapping[str, Any], control: Mapping[str, Any]) -> list[str]:
    report = large["ours_check"]["report"]
    return [
        f"Population: {DUE_SHARE:.0%} due (lastRefill 31-90 days old, 0-9,999 credits), "
        f"{ACTIVE_SHARE:.0%} inactive (lastSeen 31-180 days old), independent and exact; "
        f"control: {large['users']:,} users of whom {control['active']:,} active, so as many "
        "due and active as the small run. Ours: sweep(active_within="
        f"'{ACTIVE_WITHIN}', batch_size={BATCH_SIZE}) under RefillPolicy(amount={AMOUNT:,}, "
        f"interval='30d'). Classic: find({{}}, {{user: 1}}), then bulk_write of "
        f"UpdateOne({{_id}}, $set tokenCredits={AMOUNT:,} + lastRefill, upsert=True) "
        f"in batches of {BATCH_SIZE}, unordered; no ledger (LibreChat's refillAmount is "
        f"{LIBRECHAT_BALANCE['refillAmount']:,}).",
        "Round trips: a find sent without batch_size is a first batch of at most 101 "
        "documents (the server's default, limit or not), then getMores of up to 16 MiB, from "
        "the BSON sizes of the documents returned; every other call is one. So the classic's "
        "read of every user is 2 round trips. The library sends its batch reads with "
        "batch_size = limit (500), so each is one round trip "
        f"({large['ours'].round_trips_batched} round trips in all at {large['users']:,} users).",
        "The two sides do not do the same thing: the classic sets every user to "
        f"{AMOUNT:,} (inactive users and users not due too; users above {AMOUNT:,} lose "
        "credits) and records nothing; ours tops up only the users due under the policy and "
        f"seen within {ACTIVE_WITHIN}, with a ledger row each, and is safe beside lazy "
        "refills.",
        "Written = documents inserted, updated or deleted, one each (for ours: compare-and-"
        "swaps, ledger rows, marker clears, lease insert/renewals/release); count_documents "
        "moves no documents. Calls per method (calls/round trips/read/written) at "
        f"{large['users']:,} users: classic: {_breakdown(large['classic'])}; "
        f"ours: {_breakdown(large['ours'])}.",
        f"Our sweep at {large['users']:,} users: scanned {report['scanned']:,}, refilled "
        f"{report['refilled']:,}, skipped {report['skipped']}, {report['batches']} batches.",
        f"Wall time: median of {large['repeats']} runs of each side on mongomock (behind "
        "fast_mock and BulkWriteShim, both sides) in this process. The mock is not a "
        "server: every query without an _id scans the whole collection in Python (our "
        "counts and candidate pages too), there is no network, and the time is indicative "
        "only.",
        "Not counted: work on the server. Our candidate query and counts range over the "
        "lastRefill index (the time-due users); the pending-marker check at the start of a "
        "sweep filters on pendingLedger, which the sparse pendingLedger._id index cannot "
        "serve, so on a server it examines every balance document (nothing is transferred).",
    ]


def main() -> None:
    import asyncio  # noqa: PLC0415 - standalone entry point only

    from .common import render  # noqa: PLC0415

    print(render([asyncio.run(run())]))


if __name__ == "__main__":
    main()
