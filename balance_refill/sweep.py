"""The scheduled sweep: the classic cron reset, done right.

It applies the same policy and the same decision function (`plan_refill`) as
`ensure_balance`, and writes each refill with the same compare-and-swap, so a sweep and
lazy refills running at the same time never both refill one user in one period.

* It reads only candidates: users whose `lastRefill` is old enough to be due in some tier
  (a range on the `lastRefill_1__id_1` index), whose auto refill is on, who were seen within
  `active_within`, and whose balance is under the highest threshold. The reasons others
  are skipped are counted on the server, not read.
* It works in batches of `batch_size` (keyset pagination on `lastRefill, _id`), so memory
  is O(batch_size). Per batch: one read, one bulk compare-and-swap, one `insert_many` of
  ledger rows and one `update_many` clearing their markers, whatever the batch holds.
* Each refill leaves its ledger row as a marker in the balance document (as the lazy
  path does); a crash anywhere leaves markers that the next sweep (or `flush_pending`)
  settles first, so a rerun finishes the work without duplicate refills or rows.
* One runner at a time: a lease document with an expiry, renewed after every batch.
  A second sweep raises `SweepLocked`; a crashed sweep's lease expires.

"Seen" (for `active_within`) is the later of `lastSeen` (written by this library at every
call) and `lastRefill`. LibreChat's own documents carry no `lastSeen`: for them only
`lastRefill` is evidence, and a document with neither is treated as not seen. That is
the safe side: the sweep skips them, and they still get their refill lazily the next time
they show up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from . import _docs as D
from .decisions import auto_refill_on, period_elapsed, plan_refill
from .errors import InvalidArgument, SweepLocked
from .ledger import refill_row
from .periods import due_cutoff, parse_interval

if TYPE_CHECKING:
    from .refiller import BalanceRefiller

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
"""Called after every batch with (users scanned so far, candidates expected or None)."""

SKIP_REASONS = ("inactive", "not_due", "paused", "above_threshold", "raced")
LEASE_TTL = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep did (or, with `dry_run`, would do)."""

    scanned: int
    refilled: int
    granted: int
    skipped: Mapping[str, int]
    errors: int
    tiers: Mapping[str, int]
    started_at: datetime
    duration: timedelta
    dry_run: bool = False
    settled_pending: int = 0
    batches: int = 0

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "refilled": self.refilled,
            "granted": self.granted,
            "skipped": dict(self.skipped),
            "errors": self.errors,
            "tiers": dict(self.tiers),
            "started_at": self.started_at.isoformat(),
            "duration_seconds": round(self.duration.total_seconds(), 3),
            "dry_run": self.dry_run,
            "settled_pending": self.settled_pending,
            "batches": self.batches,
        }


@dataclass
class _Tally:
    scanned: int = 0
    refilled: int = 0
    granted: int = 0
    errors: int = 0
    batches: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)


class _Lease:
    """A lease document: insert to take, take over only once expired, renew, release."""

    def __init__(
        self, refiller: BalanceRefiller, collection: Any, name: str, ttl: timedelta
    ) -> None:
        self.store = refiller._store
        self.clock = refiller.now
        self.collection = collection
        self.id = name
        self.ttl = ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def acquire(self) -> None:
        now = self.clock()
        doc = {
            "_id": self.id,
            "holder": self.holder,
            "acquiredAt": now,
            "expiresAt": now + self.ttl,
        }
        if await self.store.try_insert(self.collection, doc):
            return
        # Take over an expired lease, or find our own insert whose reply was lost.
        taken = await self.store.find_one_and_update(
            self.collection,
            {"_id": self.id, "$or": [{"expiresAt": {"$lte": now}}, {"holder": self.holder}]},
            {"$set": {"holder": self.holder, "acquiredAt": now, "expiresAt": now + self.ttl}},
        )
        if taken is not None:
            return
        current = await self.store.find_one(self.collection, {"_id": self.id}) or {}
        expires = current.get("expiresAt")
        raise SweepLocked(
            str(current.get("holder", "another sweep")),
            expires if isinstance(expires, datetime) else now,
        )

    async def renew(self) -> None:
        now = self.clock()
        if not await self.store.update_one(
            self.collection,
            {"_id": self.id, "holder": self.holder},
            {"$set": {"expiresAt": now + self.ttl}},
        ):
            raise SweepLocked("another sweep (ours expired and was taken over)", now)

    async def release(self) -> None:
        await self.store.delete_one(self.collection, {"_id": self.id, "holder": self.holder})


class Sweep:
    """One run of the sweep over a refiller's balances."""

    def __init__(
        self,
        refiller: BalanceRefiller,
        *,
        active_within: timedelta | str | None,
        batch_size: int,
        dry_run: bool,
        limit: int | None,
        progress: Progress | None,
        lease_ttl: timedelta,
    ) -> None:
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= 10_000
        ):
            raise InvalidArgument(f"batch_size must be an int from 1 to 10000, got {batch_size!r}")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise InvalidArgument(f"limit must be a positive int or None, got {limit!r}")
        self.window: timedelta | None = None
        if active_within is not None:
            try:
                interval = parse_interval(active_within)
            except ValueError as exc:
                raise InvalidArgument(f"active_within: {exc}") from exc
            if interval.months:
                raise InvalidArgument(
                    "active_within must be a fixed duration such as '30d', not months"
                )
            self.window = interval.delta
        self.refiller = refiller
        self.store = refiller._store
        self.tiers = refiller.tiers
        self.batch_size = batch_size
        self.dry_run = dry_run
        self.limit = limit
        self.progress = progress
        self.lease_ttl = lease_ttl

    # -- the queries ------------------------------------------------------------------

    def _time_due(self, now: datetime) -> dict[str, Any]:
        """lastRefill old enough to be due in at least one tier, or missing."""
        cutoff = max(due_cutoff(p.period, now) for p in self.tiers.tiers.values())
        # One index range, [MinKey, cutoff], in (lastRefill, _id) order: it also
        # matches a missing or null lastRefill.
        return {D.LAST_REFILL: {"$not": {"$gt": cutoff}}}

    def _active(self, now: datetime) -> dict[str, Any] | None:
        if self.window is None:
            return None
        since = now - self.window
        return {"$or": [{D.LAST_SEEN: {"$gte": since}}, {D.LAST_REFILL: {"$gte": since}}]}

    def _inactive(self, now: datetime) -> dict[str, Any]:
        since = now - self.window if self.window is not None else now
        return {
            "$and": [
                {"$or": [{D.LAST_SEEN: {"$lt": since}}, {D.LAST_SEEN: None}]},
                {"$or": [{D.LAST_REFILL: {"$lt": since}}, {D.LAST_REFILL: None}]},
            ]
        }

    def _below(self) -> dict[str, Any]:
        """Possibly below the highest threshold: under it, missing, or holding credits
        reserved by LibreChat (whose available balance is decided in Python)."""
        top = max(p.effective_threshold for p in self.tiers.tiers.values())
        return {"$or": [{D.CREDITS: {"$lt": top}}, {D.CREDITS: None}, {D.RESERVED: {"$gt": 0}}]}

    def candidates(self, now: datetime) -> dict[str, Any]:
        """Users that may be due: the one query whose results are read."""
        clauses = [self._time_due(now), {D.PAUSED: {"$ne": True}}, self._below()]
        active = self._active(now)
        if active is not None:
            clauses.append(active)
        return {"$and": clauses}

    async def _count_skips(self, now: datetime, tally: _Tally) -> None:
        """Count, on the server, the time-due users the candidate query leaves out."""
        base = self._time_due(now)
        tally.skipped["paused"] += await self.store.count(
            self.store.balances, {"$and": [base, {D.PAUSED: True}]}
        )
        rest = [base, {D.PAUSED: {"$ne": True}}]
        active = self._active(now)
        if active is not None:
            tally.skipped["inactive"] += await self.store.count(
                self.store.balances, {"$and": [*rest, self._inactive(now)]}
            )
            rest.append(active)
        top = max(p.effective_threshold for p in self.tiers.tiers.values())
        tally.skipped["above_threshold"] += await self.store.count(
            self.store.balances,
            {"$and": [*rest, {D.CREDITS: {"$gte": top}}, {D.RESERVED: {"$not": {"$gt": 0}}}]},
        )

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> SweepReport:
        now = self.refiller.now()
        started = time.monotonic()
        tally = _Tally()
        settled = 0
        lease: _Lease | None = None
        if not self.dry_run:
            collection = self.refiller.leases_collection()
            lease = _Lease(
                self.refiller, collection, f"sweep:{self.store.balances.name}", self.lease_ttl
            )
            await lease.acquire()
        try:
            if not self.dry_run:
                settled = await self.refiller.flush_pending(batch_size=self.batch_size)
            await self._count_skips(now, tally)
            total = await self.store.count(self.store.balances, self.candidates(now))
            if self.limit is not None:
                total = min(total, self.limit)
            await self._batches(now, tally, total, lease)
        finally:
            if lease is not None:
                await lease.release()
        return SweepReport(
            scanned=tally.scanned,
            refilled=tally.refilled,
            granted=tally.granted,
            skipped={reason: tally.skipped[reason] for reason in SKIP_REASONS},
            errors=tally.errors,
            tiers=dict(tally.tiers),
            started_at=now,
            duration=timedelta(seconds=time.monotonic() - started),
            dry_run=self.dry_run,
            settled_pending=settled,
            batches=tally.batches,
        )

    async def _batches(
        self, now: datetime, tally: _Tally, total: int, lease: _Lease | None
    ) -> None:
        query = self.candidates(now)
        after: tuple[Any, Any] | None = None  # keyset position (lastRefill, _id)
        while self.limit is None or tally.scanned < self.limit:
            size = (
                self.batch_size
                if self.limit is None
                else min(self.batch_size, self.limit - tally.scanned)
            )
            page = query if after is None else {"$and": [query, _after(*after)]}
            docs = await self.store.iterate(
                self.store.balances,
                page,
                sort=[(D.LAST_REFILL, 1), ("_id", 1)],
                limit=size,
                projection={D.RECENT: 0},
            )
            if not docs:
                return
            last = docs[-1]
            after = (last.get(D.LAST_REFILL), last["_id"])
            await self._process(docs, now, tally)
            tally.batches += 1
            if lease is not None:
                await lease.renew()
            if self.progress is not None:
                self.progress(tally.scanned, total)
            log.info("sweep: %d/%d scanned, %d refilled", tally.scanned, total, tally.refilled)
            if len(docs) < size:
                return

    async def _process(self, raw_docs: list[Any], now: datetime, tally: _Tally) -> None:
        ops: list[tuple[dict[str, Any], dict[str, Any]]] = []
        planned: list[tuple[D.BalanceDoc, Any, ObjectId, dict[str, Any]]] = []
        for raw in raw_docs:
            tally.scanned += 1
            doc = D.parse(raw)
            if doc.pending is not None:  # a lazy refill is finishing its row right now
                tally.skipped["raced"] += 1
                continue
            plan = plan_refill(self.tiers, doc, now)
            if plan is None:
                tally.skipped[self._reason(doc, now)] += 1
                continue
            op_id = ObjectId()
            row = refill_row(op_id, doc.user, now, plan)
            row["trigger"] = "sweep"
            update = self.refiller._refill_update(plan, now, op_id, charge=0)
            if self.refiller.has_ledger:
                update["$set"][D.PENDING] = row
            ops.append((self.refiller._cas_filter(doc), update))
            planned.append((doc, plan, op_id, row))
        if self.dry_run or not ops:
            for _, plan, _, _ in planned:
                self._count_refill(tally, plan)
            return
        matched, failed = await self.store.bulk_update("sweep refills", ops)
        tally.errors += failed
        applied = planned
        if matched < len(ops):  # some documents changed since they were read: find which
            ids = await self.store.iterate(
                self.store.balances,
                {
                    "_id": {"$in": [doc.id for doc, *_ in planned]},
                    D.OP_ID: {"$in": [p[2] for p in planned]},
                },
                projection={"_id": 1},
            )
            landed = {d["_id"] for d in ids}
            applied = [p for p in planned if p[0].id in landed]
            tally.skipped["raced"] += len(planned) - len(applied) - failed
        for _, plan, _, _ in applied:
            self._count_refill(tally, plan)
        if self.refiller.has_ledger and applied:
            await self.store.insert_rows([row for *_, row in applied])
            await self.store.update_many(
                "clear sweep markers",
                {
                    "$or": [
                        D.clear_pending_filter(doc.id, doc.user, op_id)
                        for doc, _, op_id, _ in applied
                    ]
                },
                D.CLEAR_PENDING,
            )

    @staticmethod
    def _count_refill(tally: _Tally, plan: Any) -> None:
        tally.refilled += 1
        tally.granted += plan.granted
        tally.tiers[plan.tier] += 1

    def _reason(self, doc: D.BalanceDoc, now: datetime) -> str:
        if doc.pending_refill:
            return "raced"  # LibreChat's own refill is settling
        if not auto_refill_on(self.tiers, doc):
            return "paused"
        if not period_elapsed(self.tiers, doc, now):
            return "not_due"
        return "above_threshold"


def _after(last_refill: Any, doc_id: Any) -> dict[str, Any]:
    """Keyset condition: strictly after (last_refill, _id) in (lastRefill, _id) order,
    where a missing lastRefill sorts first."""
    if last_refill is None:
        return {
            "$or": [{D.LAST_REFILL: None, "_id": {"$gt": doc_id}}, {D.LAST_REFILL: {"$ne": None}}]
        }
    return {
        "$or": [
            {D.LAST_REFILL: {"$gt": last_refill}},
            {D.LAST_REFILL: last_refill, "_id": {"$gt": doc_id}},
        ]
    }
