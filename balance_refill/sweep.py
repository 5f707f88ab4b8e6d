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

"Seen" (for `active_within`) is any of: `lastSeen` (written by this library at every
call) or `lastRefill` within the window, credits held by LibreChat's in-flight
reservations, or, when the refiller has a ledger, a row of the user's in the ledger
collection within the window (LibreChat records each message as spend rows in its
`transactions`, and its `balances` documents carry no timestamps). The ledger is read
per batch of candidates with one aggregation on the `user_1_createdAt_-1` index (see
`ensure_indexes`): one round trip, about one index seek per candidate not already seen.
A user with no evidence is skipped as inactive: the safe side, since they still get their
refill lazily the next time they show up.

With activity rules in the policy, every time-due user is read whatever the balance, so
that the rules can move users who were away (their quiet periods count as zero spend);
a move that adds no credits is a tier-only change (`tier_changes` in the report).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bson import ObjectId

from . import _schema as S
from ._engine import Change, Engine
from ._lease import Lease
from ._validate import Credits, check_limit
from .decide import SKIP_REASONS, RefillPlan, plan_refill, skip_reason
from .errors import InvalidArgument
from .periods import due_cutoff, parse_interval

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
"""Called after every batch with (users scanned so far, candidates expected or None)."""

LEASE_TTL = timedelta(minutes=5)
SWEEP_BATCH = 2_000
"""Default users per batch: five round trips a batch (read, bulk compare-and-swap, ledger
rows, marker clear, lease renewal), so with everyone due 10,000 users cost about 33 round
trips against 21 for a classic script's bulk writes of 500; a batch of documents without
their request window is about 1 MB in memory."""


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep did (or, with `dry_run`, would do).

    The report adds up: `scanned == refilled + tier_changes + sum(skipped.values()) +
    errors`. `tier_changes` counts users the activity rules moved without adding credits
    (tier-only changes, written with a `tierChange` ledger row). `scanned`
    counts every balance document the sweep accounted for: the candidates it read (at
    most `limit`) and the users it counted on the server without reading them (not yet
    due, paused, inactive, above the threshold). `read` is the candidates read.
    """

    scanned: int
    refilled: int
    granted: Credits
    skipped: Mapping[str, int]
    errors: int
    tiers: Mapping[str, int]
    started_at: datetime
    duration: timedelta
    dry_run: bool = False
    settled_pending: int = 0
    batches: int = 0
    read: int = 0
    tier_changes: int = 0

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def as_dict(self) -> dict[str, object]:
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
            "read": self.read,
            "tier_changes": self.tier_changes,
        }


@dataclass
class _Tally:
    scanned: int = 0  # candidates read
    counted: int = 0  # users counted on the server without being read
    refilled: int = 0
    granted: Credits = 0
    errors: int = 0
    batches: int = 0
    tier_changes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)

    def refill(self, plan: RefillPlan) -> None:
        if plan.tier_only:
            self.tier_changes += 1
            return
        self.refilled += 1
        self.granted += plan.granted
        self.tiers[plan.tier] += 1


class Sweep:
    """One run of the sweep over a refiller's balances."""

    def __init__(
        self,
        engine: Engine,
        *,
        active_within: timedelta | str | None,
        batch_size: int,
        dry_run: bool,
        limit: int | None,
        progress: Progress | None,
        lease_ttl: timedelta,
    ) -> None:
        self.batch_size = check_limit(batch_size, what="batch_size", low=1, high=10_000)
        if limit is not None:
            limit = check_limit(limit, what="limit", low=1, high=2**62)
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
        self.engine = engine
        self.store = engine.store
        self.tiers = engine.tiers
        self.dry_run = dry_run
        self.limit = limit
        self.progress = progress
        self.lease_ttl = lease_ttl

    # -- the queries ------------------------------------------------------------------

    def _cutoff(self, now: datetime) -> datetime:
        return max(due_cutoff(p.period, now) for p in self.tiers.tiers.values())

    def _time_due(self, now: datetime) -> S.Update:
        """lastRefill old enough to be due in at least one tier, or missing."""
        return S.due_by(self._cutoff(now))

    def _top(self) -> float | None:
        """The balance at or above which no due user is refilled, or None when none can
        be left out on its balance (a `reset` tier without a threshold refills every due
        user; activity rules must see every due user)."""
        if self.tiers.rules:
            return None
        top = max(p.effective_threshold for p in self.tiers.tiers.values())
        return None if top == math.inf else top

    @property
    def ledger_activity(self) -> bool:
        """Activity is also read from the ledger (LibreChat's spend rows), per batch."""
        return self.window is not None and self.engine.ledger is not None

    def candidates(self, now: datetime) -> S.Update:
        """Users that may be due: the one query whose results are read."""
        clauses = [self._time_due(now), S.NOT_PAUSED]
        top = self._top()
        if top is not None:
            clauses.append(S.maybe_below(top))
        if self.window is not None and not self.ledger_activity:
            clauses.append(S.seen_since(now - self.window))
        return {"$and": clauses}

    async def _count_skips(self, now: datetime, tally: _Tally) -> None:
        """Count, on the server, the users the candidate query leaves out: those refilled
        too recently to be due in any tier, and the time-due ones paused, inactive or
        surely above the threshold."""
        base = self._time_due(now)
        balances = self.store.balances

        async def skip(reason: str, query: S.Update) -> None:
            n = await self.store.count(balances, query)
            tally.skipped[reason] += n
            tally.counted += n

        await skip("not_due", S.refilled_after(self._cutoff(now)))
        await skip("paused", {"$and": [base, S.IS_PAUSED]})
        rest = [base, S.NOT_PAUSED]
        if self.window is not None and not self.ledger_activity:
            since = now - self.window
            await skip("inactive", {"$and": [*rest, S.unseen_since(since)]})
            rest.append(S.seen_since(since))
        top = self._top()
        if top is not None:
            await skip("above_threshold", {"$and": [*rest, S.surely_above(top)]})

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> SweepReport:
        now = self.engine.now()
        started = time.monotonic()
        tally = _Tally()
        settled = 0
        lease: Lease | None = None
        if not self.dry_run:
            lease = Lease(
                self.store,
                self.engine.leases(),
                f"sweep:{self.store.balances.name}",
                self.lease_ttl,
                self.engine.now,
            )
            await lease.acquire()
        try:
            if not self.dry_run:
                settled = await self.engine.flush_pending(self.batch_size)
            await self._count_skips(now, tally)
            total = await self.store.count(self.store.balances, self.candidates(now))
            if self.limit is not None:
                total = min(total, self.limit)
            await self._batches(now, tally, total, lease)
        finally:
            if lease is not None:
                await lease.release()
        return SweepReport(
            scanned=tally.scanned + tally.counted,
            refilled=tally.refilled,
            granted=tally.granted,
            skipped={reason: tally.skipped[reason] for reason in SKIP_REASONS},
            errors=tally.errors,
            tiers=dict(tally.tiers),
            tier_changes=tally.tier_changes,
            started_at=now,
            duration=timedelta(seconds=time.monotonic() - started),
            dry_run=self.dry_run,
            settled_pending=settled,
            batches=tally.batches,
            read=tally.scanned,
        )

    async def _batches(self, now: datetime, tally: _Tally, total: int, lease: Lease | None) -> None:
        query = self.candidates(now)
        after: tuple[object, object] | None = None  # keyset position (lastRefill, _id)
        while self.limit is None or tally.scanned < self.limit:
            size = (
                self.batch_size
                if self.limit is None
                else min(self.batch_size, self.limit - tally.scanned)
            )
            page = query if after is None else {"$and": [query, S.after_key(*after)]}
            docs = await self.store.iterate(
                self.store.balances,
                page,
                sort=S.SWEEP_ORDER,
                limit=size,
                projection=S.SWEEP_PROJECTION,
            )
            if not docs:
                return
            last = docs[-1]
            after = (last.get(S.LAST_REFILL), last["_id"])
            await self._process([S.parse(d) for d in docs], now, tally)
            tally.batches += 1
            if lease is not None:
                await lease.renew()
            if self.progress is not None:
                self.progress(tally.scanned, total)
            log.info(
                "sweep: %d/%d scanned, %d refilled", tally.scanned, total, tally.refilled,
                extra={"operation": "sweep"},
            )  # fmt: skip
            if len(docs) < size:
                return

    async def _active(self, records: list[S.Record], now: datetime) -> set[object]:
        """The ids of `records` seen within the window (see the module doc): one
        aggregation over the ledger for those not already seen on their document."""
        assert self.window is not None  # noqa: S101 - only called with a window
        since = now - self.window
        active: set[object] = set()
        unseen: list[S.Record] = []
        for r in records:
            seen = (r.last_seen is not None and r.last_seen >= since) or (
                r.state.last_refill is not None and r.state.last_refill >= since
            )
            if seen or r.state.reserved > 0:
                active.add(r.id)
            else:
                unseen.append(r)
        if unseen and self.engine.ledger is not None:
            rows = await self.store.aggregate(
                self.engine.ledger, S.latest_rows_since([r.user for r in unseen], since)
            )
            users = {row["_id"] for row in rows}
            active.update(r.id for r in unseen if r.user in users)
        return active

    async def _process(self, records: list[S.Record], now: datetime, tally: _Tally) -> None:
        engine = self.engine
        self.tiers = engine.tiers  # the policy version read last (a stored policy may change)
        planned: list[tuple[S.Record, Change, ObjectId]] = []
        plans: dict[ObjectId, RefillPlan] = {}
        active = await self._active(records, now) if self.ledger_activity else None
        for record in records:
            tally.scanned += 1
            if active is not None and record.id not in active:
                tally.skipped["inactive"] += 1
                continue
            if record.pending is not None:  # a lazy refill is finishing its row right now
                tally.skipped["raced"] += 1
                continue
            plan = plan_refill(self.tiers, record.state, now)
            if plan is None:
                tally.skipped[skip_reason(self.tiers, record.state, now)] += 1
                continue
            op_id = ObjectId()
            planned.append((record, engine.plan_change(record, now, plan, trigger="sweep"), op_id))
            plans[op_id] = plan
        if self.dry_run or not planned:
            for plan in plans.values():
                tally.refill(plan)
            return
        applied, failed = await engine.commit_many("sweep refills", planned)
        tally.errors += failed
        tally.skipped["raced"] += len(planned) - len(applied) - failed
        for _, _, op_id in applied:
            tally.refill(plans[op_id])
