"""The one commit loop, and what every operation shares.

Every change the library makes to a balance (a lazy refill, a spend that needs a refill,
each admin operation, the sweep per user or in bulk) goes through `Engine.commit` or
`Engine.commit_many`:

    read -> decide -> compare-and-swap -> lost-reply check -> pending ledger row

The compare-and-swap matches the document only as it was read, so racing writers cannot
both apply a decision. The ledger row rides in the same atomic update as a pending
marker (`pendingLedger`) with a pre-chosen `_id`, is then inserted and the marker
cleared (`settle`); if anything fails in between, the next read of that user, or
`flush_pending`, settles it, and a duplicate row is impossible because the `_id` is
fixed. Each write also remembers its op id among the document's last `OPS_WINDOW`
(`recentOps`), so a caller whose reply was lost recognises its own write on the next
read, even when other writers changed the document in between, instead of applying it
twice; it then reports the state its own write produced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from bson import ObjectId

from . import _schema as S
from ._ledger import AUTO_REFILL, TIER_CHANGE, row
from ._store import RETRY_BUDGET, AsyncCollection, DuplicateKey, Store
from ._validate import (
    Credits,
    UserId,
    UserIdMode,
    check_limit,
    check_user_id_mode,
    stored_user_id,
)
from .decide import RefillPlan, UserState, next_refill, outlook, state_after
from .errors import (
    BalanceRefillError,
    ConfigurationError,
    ContentionError,
    InsufficientCredits,
    UserNotFound,
)
from .periods import as_utc
from .policy import AnyPolicy, RefillPolicy, TieredPolicy, as_tiered
from .state import BalanceState, new_state

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
DEFAULT_LEASES = "balance_refill_leases"


def utc_now() -> datetime:
    """The default clock: aware UTC, whole milliseconds (what MongoDB stores).

    Built from the integer milliseconds: as a float, a millisecond count over 1,000 is
    within 0.25 µs of the true instant until 2106, and `fromtimestamp` rounds to the
    nearest microsecond, so the result is exact (and twice as fast as `now()` then
    `replace`)."""
    return datetime.fromtimestamp(time.time_ns() // 1_000_000 / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Change:
    """What a decision writes: the update, its ledger row (whose `_id` is the op id),
    and what to report."""

    update: S.Update
    row: S.Update | None = None
    granted: Credits = 0
    refilled: bool = False
    charged: bool = False
    after: UserState | None = None
    """The user's state this write leaves (reported when its reply was lost)."""
    admin: S.Update | None = None
    """A keyed admin operation's entry, remembered in `recentAdmin` by the same write."""
    tier_changed: bool = False
    policy_version: int | None = None
    """The version of the stored policy that decided this change (None: a fixed policy)."""


@dataclass(frozen=True, slots=True)
class Committed:
    """The record after the loop, and the change that landed (None: nothing written)."""

    record: S.Record
    change: Change | None


Decide = Callable[[S.Record], Change | None]
"""Given the record as read, the change to make, or None (nothing to write)."""


class PolicySource(Protocol):
    """Where a refiller reads its policy from at run time (a `PolicyStore`): the active
    version number and policy."""

    async def active(self) -> tuple[int, AnyPolicy]: ...


DEFAULT_POLICY_REFRESH = timedelta(seconds=30)


class Observer(Protocol):
    """Told of each committed change, once, and of each lost compare-and-swap
    (`_observe.Observer` turns them into events and metrics)."""

    def committed(
        self,
        tiers: TieredPolicy,
        what: str,
        record: S.Record,
        change: Change,
        row_id: ObjectId | None,
    ) -> None: ...

    def retried(self, what: str, user: UserId, attempt: int) -> None: ...

    def charged(
        self, tiers: TieredPolicy, record: S.Record, amount: Credits, at: datetime
    ) -> None: ...

    def policy_activated(
        self, version: int, *, previous: int | None, actor: str, reason: str, at: datetime
    ) -> None: ...


class Engine:
    """The store, the policy as tiers, the clock and the id rule, shared by the hot path,
    the admin operations and the sweep; and the commit loop they all use.

    The policy is either fixed (a `RefillPolicy` or `TieredPolicy`) or read from a
    `PolicySource` at most once per `policy_refresh` (`refresh`, awaited at the start of
    every operation): every decision uses the version last read, and every ledger row
    records it (`policyVersion`). A source that cannot be read keeps the last good
    version (logged once); with none read yet, the operation fails with the source's
    error."""

    def __init__(
        self,
        balances: AsyncCollection,
        policy: AnyPolicy | PolicySource,
        *,
        ledger: AsyncCollection | None,
        leases: AsyncCollection | None,
        clock: Clock | None,
        max_attempts: int,
        retry_attempts: int | None,
        retry_delay: float,
        user_ids: UserIdMode,
        request_window: int = S.RECENT_WINDOW,
        retry_budget: float = RETRY_BUDGET,
        policy_refresh: timedelta = DEFAULT_POLICY_REFRESH,
        observer: Observer | None = None,
    ) -> None:
        self.observer = observer
        """Events and metrics (None: the host asked for neither)."""
        self.tiers: TieredPolicy
        self.policy: AnyPolicy
        self.policy_version: int | None = None
        self._mirrored: dict[str, dict[str, object]] = {}
        self._first_seen: tuple[Credits, Mapping[str, object]]  # set with the policy
        self.source: PolicySource | None = None
        self._loaded_at: datetime | None = None
        self._refresh = policy_refresh
        self._lock = asyncio.Lock()
        self._stale_logged = False
        if isinstance(policy, RefillPolicy | TieredPolicy):
            self.use(policy, None)
        elif callable(getattr(policy, "active", None)):
            if not isinstance(policy_refresh, timedelta) or policy_refresh < timedelta(0):
                raise ConfigurationError(
                    f"policy_refresh must be a non-negative timedelta, got {policy_refresh!r}"
                )
            self.source = policy
        else:
            as_tiered(policy)  # raises the ConfigurationError naming the type
        self.request_window = check_limit(request_window, what="request_window", low=1, high=10_000)
        self.store = Store(
            balances, attempts=retry_attempts, retry_delay=retry_delay, retry_budget=retry_budget
        )
        self.ledger = ledger
        self._leases = leases
        self._clock: Clock = clock or utc_now
        self.max_attempts = max(1, max_attempts)
        self.user_ids: UserIdMode = check_user_id_mode(user_ids)

    # -- the policy -------------------------------------------------------------------------

    def use(self, policy: AnyPolicy, version: int | None) -> None:
        """Decide with `policy` (version `version` of the source) from now on."""
        tiers = as_tiered(policy)
        mirrored = {name: _librechat_fields(p) for name, p in tiers.tiers.items()}
        self.tiers, self._mirrored, self.policy = tiers, mirrored, policy
        self.policy_version = version
        default = tiers.default_tier
        self._first_seen = (tiers.tiers[default].start_balance, mirrored[default])

    async def refresh(self) -> None:
        """With a policy source, read its active version if the last read is older than
        `policy_refresh` (one call, at most once per refresh interval per process)."""
        if self.source is None:
            return
        async with self._lock:
            now = self.now()
            if self._loaded_at is not None and now - self._loaded_at < self._refresh:
                return
            first = self._loaded_at is None
            try:
                version, policy = await self.source.active()
            except BalanceRefillError as exc:
                if first:
                    raise
                self._loaded_at = now  # try again after another refresh interval
                if not self._stale_logged:
                    self._stale_logged = True
                    log.warning(
                        "cannot read the active policy (%s); still deciding with version %s",
                        exc,
                        self.policy_version,
                        extra={"policy_version": self.policy_version},
                    )
                return
            self._loaded_at = now
            self._stale_logged = False
            if version != self.policy_version:
                previous = self.policy_version
                self.use(policy, version)
                if not first:
                    log.info(
                        "policy version %s is now active (was %s)",
                        version,
                        previous,
                        extra={"policy_version": version},
                    )
                    await self._activated(version, previous, now)

    async def _activated(self, version: int, previous: int | None, now: datetime) -> None:
        """Tell the observer this process now decides with `version`, with who activated
        it and why when the source keeps an activation history (one more read, only on a
        change and only with an observer)."""
        if self.observer is None:
            return
        actor, reason, at = "unknown", "", now
        history = getattr(self.source, "activations", None)
        if callable(history):
            try:
                for activation in await history(10):
                    if getattr(activation, "version", None) == version:
                        actor = str(getattr(activation, "actor", actor))
                        reason = str(getattr(activation, "reason", reason))
                        when = getattr(activation, "at", None)
                        at = when if isinstance(when, datetime) else now
                        break
            except BalanceRefillError as exc:
                log.info("cannot read who activated policy version %s: %s", version, exc)
        self.observer.policy_activated(
            version, previous=previous, actor=actor, reason=reason, at=at
        )

    # -- shared helpers -------------------------------------------------------------------

    def now(self) -> datetime:
        """Read the clock once: aware UTC, millisecond precision (what MongoDB stores)."""
        value = self._clock()
        if value.__class__ is datetime and value.tzinfo is UTC and not value.microsecond % 1000:
            return value  # the default clock's, as it is
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ConfigurationError(f"the clock must return an aware datetime, got {value!r}")
        return as_utc(value)

    def user(self, user_id: object) -> UserId:
        """The user id as stored (validated; a 24-hex string becomes an ObjectId)."""
        return stored_user_id(user_id, self.user_ids)

    def mirrored(self, tier: str) -> Mapping[str, object]:
        """LibreChat's per-user refill fields for `tier` (mirrored for its UI, not obeyed)."""
        fields = self._mirrored.get(tier)
        if fields is None:  # a tier of a policy replaced since the decision was made
            fields = self._mirrored[self.tiers.default_tier]
        return fields

    def leases(self) -> AsyncCollection:
        """Where the sweep keeps its lease: the `leases` collection given, else
        `balance_refill_leases` in the balances collection's database."""
        if self._leases is not None:
            return self._leases
        database = getattr(self.store.balances, "database", None)
        if database is None:
            raise ConfigurationError(
                "the sweep needs a leases collection: pass leases=... to BalanceRefiller"
            )
        leases: AsyncCollection = database[DEFAULT_LEASES]
        return leases

    def state(
        self,
        record: S.Record,
        now: datetime,
        change: Change | None = None,
        *,
        charged: Credits = 0,
        view: tuple[str, bool, datetime | None] | None = None,
    ) -> BalanceState:
        """The state to report; `charged`: a spend that `record` (read before it) misses;
        `view`: `outlook(self.tiers, record.state, now)` if the caller has it already."""
        s = record.state
        tier, auto, next_at = outlook(self.tiers, s, now) if view is None else view
        return new_state(
            record.user,
            s.balance - charged if charged else s.balance,
            change is not None and change.refilled,
            0 if change is None else change.granted,
            s.last_refill,
            next_at,
            tier,
            auto,
            s.pinned,
            s.spent + charged if charged else s.spent,
            record.last_seen,
        )

    def refill_row(
        self,
        record: S.Record,
        now: datetime,
        plan: RefillPlan,
        *,
        context: str = AUTO_REFILL,
        **extra: object,
    ) -> S.Update:
        """The ledger row of a refill (an automatic one unless `context` says otherwise)."""
        return row(
            record.user,
            now,
            context=context,
            before=plan.before,
            after=plan.after,
            mode=plan.policy.mode,
            tier=plan.tier,
            previousTier=plan.previous_tier,
            **extra,
        )

    def plan_change(
        self,
        record: S.Record,
        now: datetime,
        plan: RefillPlan,
        *,
        charge: Credits = 0,
        request_key: int | None = None,
        context: str = AUTO_REFILL,
        **extra: object,
    ) -> Change:
        """The write of a planned refill (charging `charge`, remembering `request_key`),
        or of a tier-only change: the tier alone, with a `tierChange` row."""
        update = S.refill_update(
            plan,
            now,
            charge=charge,
            mirrored=self.mirrored(plan.tier),
            request_key=request_key if charge else None,
            window=self.request_window,
        )
        after = state_after(record.state, plan, now, charge=charge)
        if plan.tier_only:
            tier_row = row(
                record.user,
                now,
                context=TIER_CHANGE,
                before=plan.before,
                after=plan.after,
                tier=plan.tier,
                previousTier=plan.previous_tier,
                **extra,
            )
            return Change(
                update,
                tier_row,
                after=after,
                tier_changed=True,
                policy_version=self.policy_version,
            )
        return Change(
            update,
            self.refill_row(record, now, plan, context=context, **extra),
            granted=plan.granted,
            refilled=True,
            charged=bool(charge),
            after=after,
            tier_changed=plan.previous_tier is not None,
            policy_version=self.policy_version,
        )

    def refused(self, record: S.Record, amount: Credits, now: datetime) -> InsufficientCredits:
        """The error for a spend the available balance does not cover."""
        log.debug(
            "user %r: refused, the available balance does not cover the amount", record.user,
            extra={"user": record.user, "operation": "refuse"},
        )  # fmt: skip
        return InsufficientCredits(
            record.user,
            balance=record.state.available,
            amount=amount,
            next_refill_at=next_refill(self.tiers, record.state, now),
        )

    # -- reads ----------------------------------------------------------------------------

    async def read_or_create(
        self, user: UserId, now: datetime, projection: S.Update | None = None
    ) -> S.Record:
        """One call: the user's oldest document, created first if the user is new.

        The call returns the document as it was before (None when it created it) and the
        document after is derived here, so a LibreChat refill switch found on is logged.
        `projection` leaves out fields the caller does not need (the record then lacks
        them)."""
        start_balance, mirrored = self._first_seen  # the default tier's
        insert = S.first_seen_insert(user, now, start_balance=start_balance, mirrored=mirrored)
        update = S.first_seen_update(insert, now)
        for _ in range(3):
            try:
                before = await self.store.upsert_before(S.by_user(user), update, projection)
            except DuplicateKey:
                # Two first requests raced: the other one created the document.
                log.debug(
                    "first-seen race for %r; reading again", user,
                    extra={"user": user, "operation": "read-or-create"},
                )  # fmt: skip
                continue
            if before is not None and before.get(S.AUTO) is True:
                switched_off(user)
            if before is None:  # created it
                return S.parse(S.after_first_seen(None, insert, user, now))
            record = S.parse(before, seen=now)
            return record if record.pending is None else await self.settled(record)
        raise ContentionError(f"could not read or create the balance of user {user!r}")

    async def find(self, user: UserId) -> S.Record:
        """The user's document, read only (`UserNotFound` if there is none)."""
        raw = await self.store.find_balance(S.by_user(user))
        if raw is None:
            raise UserNotFound(f"user {user!r} has no balance document")
        return S.parse(raw)

    async def settled(self, record: S.Record) -> S.Record:
        """`record` with its pending ledger row written and the marker cleared."""
        if record.pending is None or self.ledger is None:
            return record
        await self.settle([(record.id, record.user, dict(record.pending))])
        return record._replace(pending=None)

    # -- the commit loop ------------------------------------------------------------------

    async def commit(
        self, what: str, read: Callable[[], Awaitable[S.Record]], decide: Decide
    ) -> Committed:
        """read -> decide -> compare-and-swap, retried on lost races; see the module doc."""
        mine: list[tuple[ObjectId, Change, S.Record]] = []
        for _ in range(self.max_attempts):
            record = await read()
            for op_id, landed, decided_on in mine:
                if op_id in record.recent_ops:  # ours landed; its reply was lost
                    self._committed(what, decided_on, landed, op_id)
                    return Committed(self.as_left(record, landed), landed)
            change = decide(record)
            if change is None:
                return Committed(record, None)
            if self.policy_version is not None and change.policy_version is None:
                change = dataclasses.replace(change, policy_version=self.policy_version)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s for user %r: writing (refill %s, tier change %s)",
                    what, record.user, change.refilled, change.tier_changed,
                    extra={"user": record.user, "operation": what,
                           "policy_version": change.policy_version},
                )  # fmt: skip
            op_id = ObjectId()  # made only for a write: the hot path without one skips it
            after = await self._swap(what, record, change, op_id)
            if after is not None:
                return Committed(after, change)
            mine.append((op_id, change, record))
            if self.observer is not None:
                self.observer.retried(what, record.user, len(mine))
        raise ContentionError(f"{what} lost {self.max_attempts} races in a row")

    @staticmethod
    def as_left(record: S.Record, change: Change) -> S.Record:
        """`record` (read after `change` landed, perhaps after other writers too) showing
        the state `change` itself left."""
        return record if change.after is None else record._replace(state=change.after)

    def _marked(self, record: S.Record, change: Change, op_id: ObjectId) -> S.Update:
        if record.librechat_auto:
            switched_off(record.user)
        row = self._row(change) if self.ledger is not None else None
        return S.with_marker(change.update, op_id, row, admin=change.admin)

    @staticmethod
    def _row(change: Change) -> S.Update | None:
        """The ledger row a change writes, with the policy version that decided it."""
        if change.row is None or change.policy_version is None:
            return change.row
        return {**change.row, "policyVersion": change.policy_version}

    async def _swap(
        self, what: str, record: S.Record, change: Change, op_id: ObjectId
    ) -> S.Record | None:
        raw = await self.store.modify(
            what,
            S.cas_filter(record, with_pending=self.ledger is not None),
            self._marked(record, change, op_id),
        )
        if raw is None:
            return None
        self._committed(what, record, change, op_id)  # before its row: that can be settled later
        return await self.settled(S.parse(raw))

    def _committed(self, what: str, record: S.Record, change: Change, op_id: ObjectId) -> None:
        """Tell the observer, once per committed change."""
        if self.observer is not None:
            row_id = op_id if self.ledger is not None and change.row is not None else None
            self.observer.committed(self.tiers, what, record, change, row_id)

    async def commit_many(
        self, what: str, planned: Sequence[tuple[S.Record, Change, ObjectId]]
    ) -> tuple[list[tuple[S.Record, Change, ObjectId]], int]:
        """The same compare-and-swap for many records in one bulk write, then their rows
        in one insert and one marker clear. Returns the changes that landed and how many
        the server refused; the rest lost a race and are left to their next read."""
        ops = [
            (S.cas_filter(rec, with_pending=self.ledger is not None), self._marked(rec, ch, op))
            for rec, ch, op in planned
        ]
        matched, failed = await self.store.bulk_update(what, ops)
        applied = list(planned)
        if matched < len(ops):  # some documents changed since they were read: find which
            landed = await self.store.iterate(
                self.store.balances,
                {
                    "_id": {"$in": [rec.id for rec, *_ in planned]},
                    S.RECENT_OPS: {"$in": [p[2] for p in planned]},
                },
                projection={"_id": 1, S.RECENT_OPS: 1},
            )
            landed_ops = {op for d in landed for op in d.get(S.RECENT_OPS) or ()}
            applied = [p for p in planned if p[2] in landed_ops]
        for rec, ch, op in applied:
            self._committed(what, rec, ch, op)
        rows = [(rec, self._row(ch), op) for rec, ch, op in applied]
        await self.settle([(rec.id, rec.user, {"_id": op, **row}) for rec, row, op in rows if row])
        return applied, failed

    async def settle(self, pending: Sequence[tuple[object, object, S.Update]]) -> int:
        """Insert pending ledger rows (rows already there are skipped) and clear their
        markers: one row in two calls, any number in two calls."""
        if not pending or self.ledger is None:
            return 0
        store = self.store
        if len(pending) == 1:
            doc_id, user, row = pending[0]
            if not await store.insert_row(self.ledger, row):
                log.info(
                    "ledger row %s already existed; clearing its marker", row["_id"],
                    extra={"user": user, "operation": "settle"},
                )  # fmt: skip
            await store.update_balance(
                "clear pending ledger marker",
                S.clear_pending_filter(doc_id, user, row["_id"]),
                S.CLEAR_PENDING,
            )
            return 1
        await store.insert_rows(self.ledger, [row for *_, row in pending])
        await store.update_many(
            "clear pending ledger markers",
            S.clear_pending_many([row["_id"] for *_, row in pending]),
            S.CLEAR_PENDING,
        )
        return len(pending)

    async def flush_pending(self, batch_size: int) -> int:
        """Settle every pending ledger row, `batch_size` documents per read."""
        if self.ledger is None:
            return 0
        settled = 0
        while True:
            docs = await self.store.iterate(
                self.store.balances,
                S.PENDING_ROWS,
                sort=S.OLDEST_FIRST,
                limit=batch_size,
                projection={S.PENDING: 1, S.USER: 1},
            )
            pending = [
                (d["_id"], d.get(S.USER), dict(d[S.PENDING]))
                for d in docs
                if isinstance(d.get(S.PENDING), Mapping)
            ]
            settled += await self.settle(pending)
            if len(docs) < batch_size:
                return settled


def _librechat_fields(policy: RefillPolicy) -> dict[str, object]:
    value, unit = policy.period.librechat_fields()
    return {S.REFILL_AMOUNT: policy.amount, S.INTERVAL_VALUE: value, S.INTERVAL_UNIT: unit}


def switched_off(user: object) -> None:
    log.warning(
        "user %r: LibreChat's autoRefillEnabled was true on a document this library manages; "
        "switched it off (set balance.autoRefillEnabled: false in librechat.yaml)",
        user,
        extra={"user": user, "operation": "switch off LibreChat refill"},
    )
