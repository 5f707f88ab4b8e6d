"""`BalanceRefiller`: lazy, atomic, exactly-once refills on LibreChat's documents.

The hot path lives here (`ensure_balance`, `spend`, `get_state`). The admin operations
are in `admin.py` (reached as `refiller.admin`, and under their old names on the
refiller itself), the scheduled sweep in `sweep.py`; all of them write through the one
commit loop in `_engine.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from . import _schema as S
from ._engine import DEFAULT_POLICY_REFRESH, Change, Clock, Engine, PolicySource
from ._observe import EVENT_TIMEOUT, MAX_PENDING, Dispatcher, Observer
from ._store import RETRY_BUDGET, AsyncCollection, Store
from ._validate import Credits, UserId, UserIdMode, check_amount, check_limit, check_text
from .admin import Admin, LedgerRow
from .decide import (
    SpendOutcome,
    outlook,
    plan_refill,
    random_request_key,
    request_key,
    spend_outcome,
)
from .directory import Directory
from .errors import ConfigurationError, DuplicateBalances, IdempotencyConflict
from .events import OnEvent
from .policy import AnyPolicy
from .state import BalanceState
from .sweep import LEASE_TTL, SWEEP_BATCH, Progress, Sweep, SweepReport

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

KNOWN_USERS = 100_000
"""Users whose balance document a refiller remembers (then it starts afresh)."""


class BalanceRefiller:
    """Keeps users' `tokenCredits` topped up according to a policy.

    `balances` and `ledger` are async collections (pymongo's AsyncCollection, Motor or
    mongomock-motor). `clock` returns an aware UTC datetime; it is read once per operation.
    `user_ids` says how ids are stored (`"auto"`: a 24-hex string is an ObjectId, as
    LibreChat's Mongoose schema casts it; other strings and ints are kept).

    `policy` is a `RefillPolicy` or `TieredPolicy`, or a `PolicyStore` (any object with
    an async `active() -> (version, policy)`): then the active version is read at most
    once per `policy_refresh` (30 s by default, measured on `clock`), every decision uses
    the version last read and every ledger row records it as `policyVersion`. If the
    store cannot be read the refiller keeps deciding with its last good version (and logs
    once); with none read yet, the operation raises the store's error.

    `request_window` is how many spend request ids (with their amounts) each balance
    document remembers for idempotency (128 by default: a retry within the user's last
    128 spends is recognised). Transient driver errors (a lost connection, a paused
    connection pool) are retried with exponential backoff from `retry_delay` seconds
    and jitter (a random wait of half to all of each step) for up to `retry_budget`
    seconds per call (`retry_attempts` caps the tries too); then the call raises
    `StorageError`. While one call retries, the client's other calls wait for it.

    `on_event` is a sync or async callable, or a list of them, given each event of
    `balance_refill.events` after its write committed (`refiller.events` delivers them:
    async callbacks run as tasks, cancelled after `event_timeout` seconds, at most
    `max_pending` at once). `metrics` (`balance_refill.metrics.Metrics`, the `otel`
    extra) records OpenTelemetry metrics. Without either the hot path pays nothing.
    """

    def __init__(
        self,
        balances: AsyncCollection,
        policy: AnyPolicy | PolicySource,
        *,
        ledger: AsyncCollection | None = None,
        leases: AsyncCollection | None = None,
        clock: Clock | None = None,
        max_attempts: int = 16,
        retry_attempts: int | None = None,
        retry_delay: float = 0.05,
        retry_budget: float = RETRY_BUDGET,
        request_window: int = S.RECENT_WINDOW,
        user_ids: UserIdMode = "auto",
        policy_refresh: timedelta = DEFAULT_POLICY_REFRESH,
        on_event: OnEvent | None = None,
        metrics: Metrics | None = None,
        event_timeout: float = EVENT_TIMEOUT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.events = Dispatcher(on_event, timeout=event_timeout, max_pending=max_pending)
        """Delivers events to `on_event` (`stats`; `await drain()` before shutting down)."""
        self.observer = observer = Observer.build(self.events, metrics)
        """Turns commits into events and metrics (None without `on_event` and `metrics`);
        its `policy_activated` is the policy store's hook."""
        self._engine = Engine(
            balances,
            policy,
            ledger=ledger,
            leases=leases,
            clock=clock,
            max_attempts=max_attempts,
            retry_attempts=retry_attempts,
            retry_delay=retry_delay,
            retry_budget=retry_budget,
            request_window=request_window,
            user_ids=user_ids,
            policy_refresh=policy_refresh,
            observer=observer,
        )
        if observer is not None:
            if metrics is not None:
                self._engine.store.observer = observer
            observer.instrument(self)
        self.admin = Admin(self._engine)
        """The admin operations (`grant`, `set_balance`, `set_tier`, `set_auto_refill`,
        `refill_now`, `history`); also callable on the refiller itself."""
        self.directory = Directory(self._engine)
        """Read-only lookups for admin tools (find users, lists, history, overview)."""
        self._known: dict[UserId, list[Any]] = {}
        """User -> [`_id` of the user's oldest balance document, the credits the plain
        spend could charge there when last seen, its reserved credits as the plain
        filter names them, when the plain spend next writes `lastSeen`] (see `_learn`),
        learned from this refiller's reads and bounded: the steady-state spend names the
        document by it, and is not tried when it would surely miss (a refill due,
        credits reserved)."""

    @property
    def policy(self) -> AnyPolicy:
        """The policy decisions use now (with a store: the version read last; call an
        operation, or `await refresh_policy()`, to read it first)."""
        engine = self._engine
        if not hasattr(engine, "policy"):
            raise ConfigurationError("no policy read yet: await refiller.refresh_policy() first")
        return engine.policy

    @property
    def policy_version(self) -> int | None:
        """The stored policy's version in use (None: a fixed policy, or none read yet)."""
        return self._engine.policy_version

    async def refresh_policy(self) -> AnyPolicy:
        """Read the store's active version now if the last read is older than
        `policy_refresh`; returns the policy in use."""
        await self._engine.refresh()
        return self.policy

    def _learn(self, record: S.Record, balance: Credits) -> None:
        """Remember `record`'s document for the plain spend: its `_id`, `balance` as
        what it can charge (nothing while LibreChat holds reserved credits on it), the
        reserved credits as its filter names them, and when the spend next writes
        `lastSeen` (a minute after the value stored; None: at once)."""
        known = self._known
        if len(known) >= KNOWN_USERS and record.user not in known:
            known.clear()
        plain, reserved = S.plain_reserved(record.doc)
        seen = record.last_seen
        touch_at = None if seen is None else seen + S.LAST_SEEN_STEP
        known[record.user] = [record.id, balance if plain else -1, reserved, touch_at]

    # -- the hot path ---------------------------------------------------------------------

    async def ensure_balance(self, user_id: UserId, needed: Credits = 0) -> BalanceState:
        """Refill `user_id` if due, and return the state afterwards.

        Refills if and only if auto refill is on for the user, the period has elapsed,
        and the available balance is below max(threshold, needed). One database call when
        no refill happens (it does not read the request window back); a refill with its
        ledger row takes at most four.
        """
        engine = self._engine
        if engine.source is not None:
            await engine.refresh()
        user = engine.user(user_id)
        needed = check_amount(needed, what="needed", allow_zero=True)
        now = engine.now()

        record = await engine.read_or_create(user, now, S.READ_PROJECTION)
        view = outlook(engine.tiers, record.state, now)
        next_at = view[2]  # None: refills are off for the user
        if (  # nothing due: the first tests of `plan_refill`, read from the outlook
            next_at is None
            or next_at > now
            or record.state.refill_pending
            or plan_refill(engine.tiers, record.state, now, needed) is None
        ):
            state = engine.state(record, now, view=view)
            self._learn(record, state.balance)
            return state
        return await self._refill(user, record, now, needed)

    async def _refill(
        self, user: UserId, record: S.Record, now: datetime, needed: Credits
    ) -> BalanceState:
        """`ensure_balance` once `record` (read at `now`) shows a refill due: the commit
        loop, starting from that read (a method of its own, so that the path with nothing
        due builds none of these closures)."""
        engine = self._engine
        first: S.Record | None = record

        async def read() -> S.Record:
            nonlocal first
            if first is not None:  # the read already made, then fresh ones on a lost race
                made, first = first, None
                return made
            return await engine.read_or_create(user, now, S.READ_PROJECTION)

        def decide(record: S.Record) -> Change | None:
            plan = plan_refill(engine.tiers, record.state, now, needed)
            return None if plan is None else engine.plan_change(record, now, plan)

        done = await engine.commit("refill", read, decide)
        state = engine.state(done.record, now, done.change)
        self._learn(done.record, state.balance)
        return state

    async def spend(
        self, user_id: UserId, amount: Credits, *, request_id: str | None = None
    ) -> BalanceState:
        """Deduct `amount` atomically if the available balance covers it.

        If it does not and a refill is due, refill and charge in the same write;
        otherwise raise `InsufficientCredits` and change nothing. With `request_id`, a
        retried request is charged once (the last `request_window` ids, 128 by default,
        are kept on the document with their amounts); reusing an id with a different
        amount raises `IdempotencyConflict` and changes nothing. Credits reserved by
        LibreChat's in-flight requests are not spendable.

        In the steady state (covered, a new id, a user this refiller has read) the spend
        is one plain conditional update of the user's oldest document; when that does not
        match, the one-call pipeline reads and decides (the README lists the calls of
        each case).
        """
        engine = self._engine
        if engine.source is not None:
            await engine.refresh()
        user = engine.user(user_id)
        amount = check_amount(amount, what="amount")
        if request_id is None:
            key = random_request_key()
        else:
            request_id = check_text(request_id, what="request_id", max_length=256)
            key = request_key(request_id)
        now = engine.now()
        known = self._known.get(user)
        if known is not None and known[1] >= amount:  # the steady state: one plain update
            charged = await self._plain_spend(user, known, amount, key, now)
            if charged is not None:
                return charged
        return await self._decided_spend(user, amount, request_id, key, now)

    async def _decided_spend(
        self, user: UserId, amount: Credits, request_id: str | None, key: int, now: datetime
    ) -> BalanceState:
        """`spend` through the pipeline, which decides on the server, and the commit loop
        when it finds a refill due (a method of its own, so that the plain update's path
        builds none of these closures)."""
        engine = self._engine
        pipeline = S.spend_pipeline(amount, key, now, engine.request_window)
        outcome = SpendOutcome.INSUFFICIENT

        async def read() -> S.Record:
            """The spend itself: one call that charges if it can, returning the record."""
            nonlocal outcome
            for _ in range(3):
                raw = await engine.store.modify("spend", S.by_user(user), pipeline, before=True)
                if raw is not None:
                    record = await engine.settled(S.parse(raw))
                    self._learn(record, record.state.balance)
                    seen = key in record.recent
                    if seen and request_id is not None:
                        original = record.spent_amount(key)
                        if original is not S.UNKNOWN and original != amount:
                            raise IdempotencyConflict(
                                request_id, operation="spend", original=original, given=amount
                            )
                    outcome = spend_outcome(record.state, amount, seen=seen)
                    if outcome is SpendOutcome.INSUFFICIENT:
                        return S.after_uncharged_spend(record)
                    return record  # as it was before the charge (see `charged` below)
                await engine.read_or_create(user, now)  # first seen: create, then charge
            return await engine.find(user)  # pragma: no cover - the document exists by now

        def decide(record: S.Record) -> Change | None:
            if outcome is not SpendOutcome.INSUFFICIENT:
                return None
            plan = plan_refill(engine.tiers, record.state, now, needed=amount)
            if plan is None:
                raise engine.refused(record, amount, now)
            charge = amount if not plan.tier_only and plan.available_after >= amount else 0
            return engine.plan_change(record, now, plan, charge=charge, request_key=key)

        done = await engine.commit("refill", read, decide)
        if outcome is SpendOutcome.CHARGED:  # the one call charged: the record is from before
            if engine.observer is not None:
                engine.observer.charged(engine.tiers, done.record, amount, now)
            state = engine.state(done.record, now, done.change, charged=amount)
        elif outcome is SpendOutcome.INSUFFICIENT and not (done.change and done.change.charged):
            raise engine.refused(done.record, amount, now)
        else:
            state = engine.state(done.record, now, done.change)
        self._learn(done.record, state.balance)
        return state

    async def _plain_spend(
        self, user: UserId, known: list[Any], amount: Credits, key: int, now: datetime
    ) -> BalanceState | None:
        """The steady-state spend: one plain conditional update of the user's known
        document (`known`, see `_learn`, updated here); covered, the request key new.
        None when it did not match."""
        engine = self._engine
        doc_id, _, reserved, touch_at = known
        touch = touch_at is None or now >= touch_at
        raw = await engine.store.modify_by_id(
            "spend",
            S.fast_spend_filter(doc_id, user, amount, key, reserved),
            S.fast_spend_update(amount, key, now if touch else None, engine.request_window),
            S.FAST_PROJECTION,
        )
        if raw is None:
            return None
        record = S.parse(raw)  # as it was before the charge
        if record.pending is not None:
            record = await engine.settled(record)
        if engine.observer is not None:
            engine.observer.charged(engine.tiers, record, amount, now)
        state = engine.state(record, now, charged=amount)
        known[1] = state.balance
        if touch:  # lastSeen is now `now` (or later, if another writer's clock is ahead)
            seen = record.last_seen
            known[3] = (now if seen is None or seen < now else seen) + S.LAST_SEEN_STEP
        return state

    async def get_state(self, user_id: UserId) -> BalanceState:
        """The user's state, read only: creates nothing, changes nothing (one call)."""
        engine = self._engine
        if engine.source is not None:
            await engine.refresh()
        user = engine.user(user_id)
        now = engine.now()
        return engine.state(await engine.find(user), now)

    # -- admin operations, under their historical names --------------------------------------

    async def grant(
        self,
        user_id: UserId,
        amount: Credits,
        *,
        actor: str,
        reason: str,
        allow_negative: bool = False,
        create: bool = False,
        request_id: str | None = None,
    ) -> BalanceState:
        """See `Admin.grant`."""
        return await self.admin.grant(
            user_id,
            amount,
            actor=actor,
            reason=reason,
            allow_negative=allow_negative,
            create=create,
            request_id=request_id,
        )

    async def set_balance(
        self,
        user_id: UserId,
        amount: Credits,
        *,
        actor: str,
        reason: str,
        create: bool = False,
        request_id: str | None = None,
    ) -> BalanceState:
        """See `Admin.set_balance`."""
        return await self.admin.set_balance(
            user_id, amount, actor=actor, reason=reason, create=create, request_id=request_id
        )

    async def set_tier(
        self,
        user_id: UserId,
        tier: str,
        *,
        actor: str,
        pinned: bool | None = None,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> BalanceState:
        """See `Admin.set_tier`."""
        return await self.admin.set_tier(
            user_id, tier, actor=actor, pinned=pinned, reason=reason, request_id=request_id
        )

    async def set_auto_refill(
        self,
        user_id: UserId,
        enabled: bool,
        *,
        actor: str,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> BalanceState:
        """See `Admin.set_auto_refill`."""
        return await self.admin.set_auto_refill(
            user_id, enabled, actor=actor, reason=reason, request_id=request_id
        )

    async def refill_now(
        self,
        user_id: UserId,
        *,
        actor: str,
        reason: str,
        create: bool = False,
        request_id: str | None = None,
    ) -> BalanceState:
        """See `Admin.refill_now`."""
        return await self.admin.refill_now(
            user_id, actor=actor, reason=reason, create=create, request_id=request_id
        )

    async def history(self, user_id: UserId, limit: int = 50) -> list[LedgerRow]:
        """See `Admin.history`."""
        return await self.admin.history(user_id, limit)

    # -- the sweep and maintenance ------------------------------------------------------------

    async def sweep(
        self,
        *,
        active_within: timedelta | str | None = None,
        batch_size: int = SWEEP_BATCH,
        dry_run: bool = False,
        limit: int | None = None,
        progress: Progress | None = None,
        lease_ttl: timedelta = LEASE_TTL,
    ) -> SweepReport:
        """Refill every due user in batches: the scheduled (cron) mode.

        Same policy, decisions and compare-and-swap as `ensure_balance`, so it can run
        beside lazy refills without double refills. Only one sweep runs at a time (a
        second raises `SweepLocked`). `active_within` (e.g. "30d") skips users not seen
        in that window; `dry_run` writes nothing and takes no lease; `limit` caps the
        users scanned; `progress(scanned, total)` is called after each batch.
        """
        await self._engine.refresh()
        return await Sweep(
            self._engine,
            active_within=active_within,
            batch_size=batch_size,
            dry_run=dry_run,
            limit=limit,
            progress=progress,
            lease_ttl=lease_ttl,
        ).run()

    async def flush_pending(self, *, batch_size: int = 500) -> int:
        """Write every ledger row still pending in a balance document; returns how many
        markers were settled (rows already present are not written twice)."""
        batch_size = check_limit(batch_size, what="batch_size", low=1, high=10_000)
        return await self._engine.flush_pending(batch_size)

    async def ensure_indexes(self) -> IndexReport:
        """Create the indexes the library needs, and report what needs the operator.

        Unless `user_ids="str"`, balance documents whose `user` is a 24-hex string
        (written by an earlier version of this library, or by a script) are switched to
        the ObjectId that LibreChat and the library look them up by; the report counts
        them. Ledger rows are never rewritten (the ledger is append-only).

        It never raises after changing something (only a driver failure raises,
        `StorageError`): users who own more than one balance document (old LibreChat
        databases) are listed in `IndexReport.duplicates`; the library works on such
        data, reading and writing only the oldest document of each. Calls: one per
        index (three on `balances`, one on the ledger), one read per 500 hex-string
        documents plus one update per document converted, one aggregation.
        """
        engine = self._engine
        store = engine.store
        names = [
            await store.create_index(store.balances, keys, name=name, sparse=sparse)
            for name, keys, sparse in S.BALANCE_INDEXES
        ]
        if engine.ledger is not None:
            name, keys = S.LEDGER_INDEX
            names.append(await store.create_index(engine.ledger, keys, name=name))
        converted = 0 if engine.user_ids == "str" else await _adopt_hex_users(store)
        if converted:  # a converted document may now be some user's oldest
            self._known.clear()
        found = await store.aggregate(store.balances, S.DUPLICATE_USERS)
        duplicates = {d["_id"]: int(d["n"]) for d in found}
        if duplicates:
            log.warning("%s", DuplicateBalances(duplicates))
        return IndexReport(tuple(names), converted, duplicates)


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What `ensure_indexes` did and found.

    `indexes`: the names of the indexes ensured. `converted`: balance documents whose
    hex-string `user` became an ObjectId. `duplicates`: user -> number of balance
    documents, for users owning more than one (at most 1,000 listed, the most first).
    To clear duplicates, merge each user's extra documents into the oldest (lowest
    `_id`): add their `tokenCredits` to it if they hold credits that count, then delete
    them; `balance-refill` and LibreChat both read only the oldest.
    """

    indexes: tuple[str, ...]
    converted: int = 0
    duplicates: Mapping[object, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No duplicates left for the operator to merge."""
        return not self.duplicates


async def _adopt_hex_users(store: Store) -> int:
    """Store balance `user` values that are 24-hex strings as ObjectIds, as LibreChat's
    schema (and `user_ids="auto"`) reads them; returns how many documents changed."""
    adopted = 0
    while docs := await store.iterate(
        store.balances, S.HEX_STRING_USERS, limit=500, projection={S.USER: 1}
    ):
        for doc in docs:
            adopted += await store.update_one(
                store.balances,
                {"_id": doc["_id"], S.USER: doc[S.USER]},
                {"$set": {S.USER: ObjectId(doc[S.USER])}},
            )
    if adopted:
        log.warning(
            "%d balance document(s) named their user by a 24-hex string; now stored as ObjectIds",
            adopted,
        )
    return adopted


__all__: Sequence[str] = ["BalanceRefiller", "IndexReport"]
