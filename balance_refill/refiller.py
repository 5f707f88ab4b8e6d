"""`BalanceRefiller`: lazy, atomic, exactly-once refills on LibreChat's documents.

Every write that a decision rests on is a compare-and-swap on the document as it was
read (`_docs.cas_filter`), so racing calls cannot both refill. A refill that has a ledger
row to write leaves the row in the balance document (`pendingLedger`) in the same atomic
update; the row is inserted under its pre-chosen `_id` and the marker cleared. If anything
fails in between, the next call for that user, or `flush_pending()`, finishes the job,
and a duplicate row is impossible because the `_id` is fixed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from . import _docs as D
from ._ids import (
    Credits,
    UserId,
    UserIdMode,
    check_amount,
    check_text,
    check_user_id_mode,
    describe,
    stored_user_id,
)
from ._store import AsyncCollection, DuplicateKey, Store
from .decisions import RefillPlan, assigned_tier, next_refill, period_tier, plan_refill
from .errors import (
    ContentionError,
    DuplicateBalances,
    InsufficientCredits,
    InvalidArgument,
    UnknownTier,
    UserNotFound,
)
from .ledger import (
    ADMIN,
    REFILL_NOW,
    SET_AUTO_REFILL,
    SET_BALANCE,
    SET_TIER,
    change_row,
    refill_row,
)
from .periods import as_utc
from .policy import AnyPolicy, TieredPolicy, as_tiered
from .state import BalanceState
from .sweep import LEASE_TTL, Progress, Sweep, SweepReport

DEFAULT_LEASES = "balance_refill_leases"

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class BalanceRefiller:
    """Keeps users' `tokenCredits` topped up according to a policy.

    `balances` and `ledger` are async collections (pymongo's AsyncCollection, Motor or
    mongomock-motor). `clock` returns an aware UTC datetime; it is read once per operation.
    `user_ids` says how ids are stored (`"auto"`: a 24-hex string is an ObjectId, as
    LibreChat's Mongoose schema casts it; other strings and ints are kept).
    """

    def __init__(
        self,
        balances: AsyncCollection,
        policy: AnyPolicy,
        *,
        ledger: AsyncCollection | None = None,
        leases: AsyncCollection | None = None,
        clock: Clock | None = None,
        max_attempts: int = 16,
        retry_attempts: int = 3,
        retry_delay: float = 0.05,
        user_ids: UserIdMode = "auto",
    ) -> None:
        self.policy = policy
        self._user_ids: UserIdMode = check_user_id_mode(user_ids)
        self._tiers: TieredPolicy = as_tiered(policy)
        self._store = Store(balances, ledger, attempts=retry_attempts, retry_delay=retry_delay)
        self._clock: Clock = clock or utc_now
        self._max_attempts = max(1, max_attempts)
        self._leases = leases
        self._mirrored: dict[str, dict[str, Any]] = {}
        for name, tier_policy in self._tiers.tiers.items():
            value, unit = tier_policy.period.librechat_fields()
            self._mirrored[name] = {
                D.REFILL_AMOUNT: tier_policy.amount,
                D.INTERVAL_VALUE: value,
                D.INTERVAL_UNIT: unit,
            }

    @property
    def tiers(self) -> TieredPolicy:
        """The policy seen as tiers (a plain policy is one tier named "default")."""
        return self._tiers

    @property
    def has_ledger(self) -> bool:
        return self._store.ledger is not None

    def leases_collection(self) -> AsyncCollection:
        """Where the sweep keeps its lease: the `leases` collection given, else
        `balance_refill_leases` in the balances collection's database."""
        if self._leases is not None:
            return self._leases
        database = getattr(self._store.balances, "database", None)
        if database is None:
            raise InvalidArgument(
                "the sweep needs a leases collection: pass leases=... to BalanceRefiller"
            )
        leases: AsyncCollection = database[DEFAULT_LEASES]
        return leases

    # -- helpers --------------------------------------------------------------------

    def _user(self, user_id: object) -> UserId:
        """The user id as stored (validated; a 24-hex string becomes an ObjectId)."""
        return stored_user_id(user_id, self._user_ids)

    def now(self) -> datetime:
        """Read the clock once: aware UTC, millisecond precision (what MongoDB stores)."""
        value = self._clock()
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidArgument(f"the clock must return an aware datetime, got {value!r}")
        return as_utc(value)

    def _state(
        self,
        doc: D.BalanceDoc,
        now: datetime,
        *,
        refilled: bool = False,
        granted: Credits = 0,
    ) -> BalanceState:
        return BalanceState(
            user_id=doc.user,
            balance=doc.balance,
            refilled=refilled,
            granted=granted,
            last_refill=doc.last_refill,
            next_refill_at=next_refill(self._tiers, doc, now),
            tier=assigned_tier(self._tiers, doc),
            auto_refill=doc.auto_refill,
            pinned=doc.pinned,
            spent_since_refill=doc.spent,
            last_seen=doc.last_seen,
        )

    def _librechat_fields(self, tier: str) -> dict[str, Any]:
        """LibreChat's per-user refill fields for `tier` (mirrored, not obeyed)."""
        return self._mirrored[tier]

    async def _read_or_create(self, user: UserId, now: datetime) -> D.BalanceDoc:
        """One call: the user's oldest document, created first if the user is new.

        The call returns the document as it was before (None when it created it) and the
        document after is derived here, so a LibreChat refill switch found on is logged."""
        default = self._tiers.tiers[self._tiers.default_tier]
        insert = D.first_seen_insert(
            user,
            now,
            start_balance=default.start_balance,
            librechat_fields=self._librechat_fields(self._tiers.default_tier),
        )
        update = D.first_seen_update(insert, now)
        for _ in range(3):
            try:
                before = await self._store.upsert_read(D.by_user(user), update)
            except DuplicateKey:
                # Two first requests raced: the other one created the document.
                log.debug("first-seen race for %r; reading again", user)
                continue
            if before is not None and before.get(D.AUTO) is True:
                _switched_off(user)
            return await self._settled(D.parse(D.after_first_seen(before, insert, user, now)))
        raise ContentionError(f"could not read or create the balance of user {user!r}")

    async def _settled(self, doc: D.BalanceDoc) -> D.BalanceDoc:
        """`doc` with any pending ledger row written and its marker cleared."""
        if doc.pending is None or not self.has_ledger:
            return doc
        await self._finish_pending(doc.id, doc.pending)
        return dataclasses.replace(doc, pending=None)

    async def _finish_pending(self, doc_id: Any, row: Mapping[str, Any]) -> None:
        inserted = await self._store.insert_row(row)
        if not inserted:
            log.info("ledger row %s already existed; clearing its marker", row.get("_id"))
        await self._store.update_balance(
            "clear pending ledger marker",
            D.clear_pending_filter(doc_id, row.get("user"), row["_id"]),
            D.CLEAR_PENDING,
        )

    def _cas_filter(self, doc: D.BalanceDoc) -> dict[str, Any]:
        cas = D.cas_filter(doc)
        if not self.has_ledger:
            del cas[D.PENDING]  # markers left for a ledger-configured process to flush
        return cas

    async def _commit(
        self,
        what: str,
        doc: D.BalanceDoc,
        update: dict[str, Any],
        row: dict[str, Any] | None,
    ) -> D.BalanceDoc | None:
        """Compare-and-swap `update` onto `doc`, with `row` as the pending ledger marker.

        Returns the document after the change, or None if `doc` changed meanwhile.
        The op id stored in the document lets a caller whose reply was lost recognise
        its own write on the next read.
        """
        sets = update.setdefault("$set", {})
        sets.update(D.OWNED)
        if doc.librechat_auto:
            _switched_off(doc.user)
        if row is not None and self.has_ledger:
            sets[D.PENDING] = row
        raw = await self._store.modify(what, self._cas_filter(doc), update)
        if raw is None:
            return None
        after = D.parse(raw)
        if after.pending is not None and self.has_ledger:
            await self._finish_pending(after.id, after.pending)
            after = dataclasses.replace(after, pending=None)
        return after

    def _refill_update(
        self, plan: RefillPlan, now: datetime, op_id: ObjectId, charge: Credits
    ) -> dict[str, Any]:
        sets: dict[str, Any] = {
            **D.OWNED,
            D.CREDITS: plan.after - charge,
            D.LAST_REFILL: now,
            D.REFILL_TIER: plan.tier,
            D.SPENT: charge,
            D.HISTORY: list(plan.history),
            D.OP_ID: op_id,
            **self._librechat_fields(plan.tier),
        }
        if plan.previous_tier is not None:
            sets[D.TIER] = plan.tier
        return {"$set": sets, "$max": {D.LAST_SEEN: now}}

    async def _refill(
        self,
        doc: D.BalanceDoc,
        plan: RefillPlan,
        now: datetime,
        *,
        charge: Credits = 0,
        request_key: int | None = None,
    ) -> tuple[D.BalanceDoc | None, ObjectId]:
        """An automatic refill (charging `charge` in the same write, recording
        `request_key` as spent); returns the document after it, or None if raced."""
        op_id = ObjectId()
        update = self._refill_update(plan, now, op_id, charge)
        if request_key is not None:
            update["$push"] = {D.RECENT: {"$each": [request_key], "$slice": -D.RECENT_WINDOW}}
        row = refill_row(op_id, doc.user, now, plan)
        return await self._commit("refill", doc, update, row), op_id

    # -- public API -----------------------------------------------------------------

    async def ensure_balance(self, user_id: object, needed: Credits = 0) -> BalanceState:
        """Refill `user_id` if due, and return the state afterwards.

        Refills if and only if auto refill is on for the user, the period has elapsed,
        and the available balance is below max(threshold, needed). One database call when
        no refill happens; a refill with its ledger row takes at most four.
        """
        user = self._user(user_id)
        needed = check_amount(needed, what="needed", allow_zero=True)
        now = self.now()
        mine: tuple[ObjectId, RefillPlan] | None = None
        for _ in range(self._max_attempts):
            doc = await self._read_or_create(user, now)
            if mine is not None and doc.op_id == mine[0]:
                # Our refill landed but its reply was lost.
                return self._state(doc, now, refilled=True, granted=mine[1].granted)
            plan = plan_refill(self._tiers, doc, now, needed)
            if plan is None:
                return self._state(doc, now)
            after, op_id = await self._refill(doc, plan, now)
            mine = (op_id, plan)
            if after is not None:
                return self._state(after, now, refilled=True, granted=plan.granted)
        raise ContentionError(
            f"ensure_balance for {user!r} lost {self._max_attempts} races in a row"
        )

    async def spend(
        self, user_id: object, amount: Credits, *, request_id: str | None = None
    ) -> BalanceState:
        """Deduct `amount` atomically if the balance covers it.

        If it does not and a refill is due, refill and try once more; otherwise raise
        `InsufficientCredits` and change nothing. With `request_id`, a retried request
        is charged once (the last 32 ids are kept on the document). Credits reserved by
        LibreChat's in-flight requests are not spendable.
        """
        user = self._user(user_id)
        amount = check_amount(amount, what="amount")
        key = (
            D.random_request_key()
            if request_id is None
            else D.request_key(check_text(request_id, what="request_id", max_length=256))
        )
        now = self.now()
        pipeline = D.spend_pipeline(amount, key, now)
        mine: tuple[ObjectId, RefillPlan] | None = None
        for _ in range(self._max_attempts):
            raw = await self._store.modify("spend", D.by_user(user), pipeline, before=True)
            if raw is None:
                await self._read_or_create(user, now)  # first seen: create, then charge
                continue
            doc = await self._settled(D.parse(raw))
            if doc.librechat_auto:
                _switched_off(user)
            outcome = D.spend_outcome(doc, amount, key)
            if outcome == "charged":
                doc.balance -= amount
                doc.spent += amount
                return self._state(doc, now)
            if outcome == "duplicate":
                if mine is not None and doc.op_id == mine[0]:  # our refill's reply was lost
                    return self._state(doc, now, refilled=True, granted=mine[1].granted)
                return self._state(doc, now)
            doc = D.after_uncharged_spend(doc)
            plan = plan_refill(self._tiers, doc, now, needed=amount)
            if plan is None:
                raise InsufficientCredits(
                    user,
                    balance=doc.available,
                    amount=amount,
                    next_refill_at=next_refill(self._tiers, doc, now),
                )
            charge = amount if plan.available_after >= amount else 0
            after, op_id = await self._refill(
                doc, plan, now, charge=charge, request_key=key if charge else None
            )
            mine = (op_id, plan)
            if after is None:
                continue  # lost a race: charge again from the fresh state
            if not charge:
                raise InsufficientCredits(
                    user,
                    balance=after.available,
                    amount=amount,
                    next_refill_at=next_refill(self._tiers, after, now),
                )
            return self._state(after, now, refilled=True, granted=plan.granted)
        raise ContentionError(f"spend for {user!r} lost {self._max_attempts} races in a row")

    # -- admin operations -------------------------------------------------------------

    async def _change(
        self,
        what: str,
        user_id: object,
        change: Callable[
            [D.BalanceDoc, datetime, ObjectId], tuple[dict[str, Any], dict[str, Any]] | None
        ],
        *,
        create: bool,
    ) -> tuple[D.BalanceDoc, dict[str, Any] | None, datetime]:
        """Read the user's document, apply `change` (returning the update and its ledger
        row, or None for "nothing to do") with a compare-and-swap, retrying lost races. A
        retry after a lost reply recognises its own write by the op id, so each call
        changes the balance once. The row is None when nothing was written."""
        user = self._user(user_id)
        now = self.now()
        mine: tuple[ObjectId, dict[str, Any]] | None = None
        for _ in range(self._max_attempts):
            doc = await (self._read_or_create(user, now) if create else self._find(user))
            if mine is not None and doc.op_id == mine[0]:
                return doc, mine[1], now
            op_id = ObjectId()
            planned = change(doc, now, op_id)
            if planned is None:
                return doc, None, now
            update, row = planned
            update.setdefault("$set", {})[D.OP_ID] = op_id
            after = await self._commit(what, doc, update, row)
            if after is not None:
                return after, row, now
            mine = (op_id, row)
        raise ContentionError(f"{what} for {user!r} lost {self._max_attempts} races in a row")

    async def _find(self, user: UserId) -> D.BalanceDoc:
        raw = await self._store.find_balance(D.by_user(user))
        if raw is None:
            raise UserNotFound(f"user {user!r} has no balance document")
        return await self._settled(D.parse(raw))

    async def get_state(self, user_id: object) -> BalanceState:
        """The user's state, read only: creates nothing, changes nothing (one call)."""
        user = self._user(user_id)
        now = self.now()
        raw = await self._store.find_balance(D.by_user(user))
        if raw is None:
            raise UserNotFound(f"user {user!r} has no balance document")
        return self._state(D.parse(raw), now)

    async def _set_credits(
        self,
        what: str,
        context: str,
        user_id: object,
        target: Callable[[D.BalanceDoc, datetime], Credits],
        *,
        actor: str,
        reason: str,
    ) -> BalanceState:
        """Set the balance to `target(doc, now)` with a ledger row recording the change."""

        def change(
            doc: D.BalanceDoc, now: datetime, op_id: ObjectId
        ) -> tuple[dict[str, Any], dict[str, Any]]:
            after = target(doc, now)
            row = change_row(
                op_id,
                doc.user,
                now,
                context=context,
                before=doc.balance,
                after=after,
                actor=actor,
                reason=reason,
            )
            return {"$set": {D.CREDITS: after}}, row

        doc, _, now = await self._change(what, user_id, change, create=True)
        return self._state(doc, now)

    async def grant(
        self,
        user_id: object,
        amount: Credits,
        *,
        actor: str,
        reason: str,
        allow_negative: bool = False,
    ) -> BalanceState:
        """Add `amount` credits by hand (negative: a correction), with a ledger row
        (`context: "admin"`). A correction never takes the balance below 0 unless
        `allow_negative`; then `InsufficientCredits` is raised and nothing changes."""
        amount = check_amount(amount, what="amount", allow_negative=True)

        def target(doc: D.BalanceDoc, now: datetime) -> Credits:
            after = doc.balance + amount
            if after < 0 and not allow_negative:
                raise InsufficientCredits(
                    doc.user,
                    balance=doc.balance,
                    amount=-amount,
                    next_refill_at=next_refill(self._tiers, doc, now),
                )
            return check_amount(
                after, what="resulting balance", allow_zero=True, allow_negative=True
            )

        return await self._set_credits(
            "grant",
            ADMIN,
            user_id,
            target,
            actor=check_text(actor, what="actor"),
            reason=check_text(reason, what="reason"),
        )

    async def set_balance(
        self, user_id: object, amount: Credits, *, actor: str, reason: str
    ) -> BalanceState:
        """Set the balance to `amount`; the ledger row (`context: "setBalance"`) records
        the difference."""
        amount = check_amount(amount, what="amount", allow_zero=True)
        return await self._set_credits(
            "set_balance",
            SET_BALANCE,
            user_id,
            lambda doc, now: amount,
            actor=check_text(actor, what="actor"),
            reason=check_text(reason, what="reason"),
        )

    async def set_tier(
        self, user_id: object, tier: str, *, actor: str, pinned: bool | None = None
    ) -> BalanceState:
        """Assign `tier` (it takes effect at the user's next refill: the current period
        keeps the period of the tier it started under). `pinned=True` keeps activity
        rules from moving the user; `pinned=False` releases them; None leaves it."""
        if not isinstance(tier, str) or tier not in self._tiers.tiers:
            raise UnknownTier(
                f"unknown tier {describe(tier)}; known tiers: {', '.join(self._tiers.tiers)}"
            )
        actor = check_text(actor, what="actor")
        if pinned is not None and not isinstance(pinned, bool):
            raise InvalidArgument(f"pinned must be True, False or None, got {describe(pinned)}")

        def fields(doc: D.BalanceDoc) -> tuple[dict[str, Any], dict[str, Any]]:
            sets: dict[str, Any] = {D.TIER: tier, D.REFILL_TIER: period_tier(self._tiers, doc)}
            if pinned is not None:
                sets[D.PINNED] = pinned
            recorded = {
                "tier": tier,
                "previousTier": assigned_tier(self._tiers, doc),
                "tierPinned": doc.pinned if pinned is None else pinned,
            }
            return sets, recorded

        return await self._set_fields("set_tier", SET_TIER, user_id, fields, actor=actor)

    async def set_auto_refill(self, user_id: object, enabled: bool, *, actor: str) -> BalanceState:
        """Pause (`False`) or resume (`True`) automatic refills for one user."""
        if not isinstance(enabled, bool):
            raise InvalidArgument(f"enabled must be True or False, got {describe(enabled)}")
        actor = check_text(actor, what="actor")
        return await self._set_fields(
            "set_auto_refill",
            SET_AUTO_REFILL,
            user_id,
            lambda doc: ({D.PAUSED: not enabled}, {"autoRefillEnabled": enabled}),
            actor=actor,
        )

    async def _set_fields(
        self,
        what: str,
        context: str,
        user_id: object,
        fields: Callable[[D.BalanceDoc], tuple[dict[str, Any], dict[str, Any]]],
        *,
        actor: str,
    ) -> BalanceState:
        """Set per-user fields (not the balance) of an existing user, with a ledger row of
        amount 0 recording what changed."""

        def change(
            doc: D.BalanceDoc, now: datetime, op_id: ObjectId
        ) -> tuple[dict[str, Any], dict[str, Any]]:
            sets, recorded = fields(doc)
            row = change_row(
                op_id,
                doc.user,
                now,
                context=context,
                before=doc.balance,
                after=doc.balance,
                actor=actor,
                extra=recorded,
            )
            return {"$set": sets}, row

        doc, _, now = await self._change(what, user_id, change, create=False)
        return self._state(doc, now)

    async def refill_now(self, user_id: object, *, actor: str, reason: str) -> BalanceState:
        """Refill immediately, ignoring the period and the threshold (not the pause's
        absence: a paused user can be refilled by hand). The ledger row has
        `context: "refillNow"`. One refill per call, even when retried after a lost reply.
        A refill that would not change the balance (a top-up already at the amount, a cap
        reached) or one while LibreChat's own refill is settling changes nothing and
        returns `refilled=False`."""
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")

        def change(
            doc: D.BalanceDoc, now: datetime, op_id: ObjectId
        ) -> tuple[dict[str, Any], dict[str, Any]] | None:
            plan = plan_refill(self._tiers, doc, now, force=True)
            if plan is None or plan.after == plan.before:
                return None
            update = self._refill_update(plan, now, op_id, charge=0)
            row = refill_row(
                op_id, doc.user, now, plan, context=REFILL_NOW, actor=actor, reason=reason
            )
            return update, row

        doc, row, now = await self._change("refill_now", user_id, change, create=True)
        if row is None:
            return self._state(doc, now)
        return self._state(doc, now, refilled=True, granted=row["rawAmount"])

    async def history(self, user_id: object, limit: int = 50) -> list[dict[str, Any]]:
        """The user's ledger rows, newest first (at most `limit`, 1 to 1000)."""
        user = self._user(user_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be an int from 1 to 1000, got {describe(limit)}")
        if self._store.ledger is None:
            raise InvalidArgument("history needs a ledger collection")
        return await self._store.iterate(
            self._store.ledger, {D.USER: user}, sort=[("createdAt", -1), ("_id", -1)], limit=limit
        )

    async def sweep(
        self,
        *,
        active_within: timedelta | str | None = None,
        batch_size: int = 500,
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
        return await Sweep(
            self,
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
        if not self.has_ledger:
            return 0
        settled = 0
        while True:
            docs = await self._store.iterate(
                self._store.balances,
                {f"{D.PENDING}._id": {"$exists": True}},  # served by the sparse index
                sort=[("_id", 1)],
                limit=batch_size,
                projection={D.PENDING: 1},
            )
            rows = [d[D.PENDING] for d in docs if isinstance(d.get(D.PENDING), Mapping)]
            if not rows:
                return settled
            await self._store.insert_rows(rows)
            for doc in docs:
                row = doc.get(D.PENDING)
                if isinstance(row, Mapping):
                    await self._store.update_balance(
                        "clear pending ledger marker",
                        D.clear_pending_filter(doc["_id"], row.get("user"), row["_id"]),
                        D.CLEAR_PENDING,
                    )
                    settled += 1
            if len(docs) < batch_size:
                return settled

    async def _adopt_hex_users(self, collection: AsyncCollection) -> int:
        """Store `user` values that are 24-hex strings as ObjectIds, as LibreChat's schema
        (and `user_ids="auto"`) reads them; returns how many documents changed."""
        adopted = 0
        while True:
            docs = await self._store.iterate(
                collection, D.HEX_STRING_USERS, limit=500, projection={D.USER: 1}
            )
            if not docs:
                break
            for doc in docs:
                adopted += await self._store.update_one(
                    collection,
                    {"_id": doc["_id"], D.USER: doc[D.USER]},
                    {"$set": {D.USER: ObjectId(doc[D.USER])}},
                )
        if adopted:
            log.warning(
                "%s: %d document(s) named their user by a 24-hex string; now stored as ObjectIds",
                collection.name,
                adopted,
            )
        return adopted

    async def ensure_indexes(self) -> list[str]:
        """Create the indexes the library needs; report users with duplicate documents.

        Unless `user_ids="str"`, balance documents whose `user` is a 24-hex string
        (written by an earlier version of this library, or by a script) are switched to
        the ObjectId that LibreChat and the library look them up by. Ledger rows are never
        rewritten (the ledger is append-only): such old rows keep their string `user`.

        Raises `DuplicateBalances` (after creating the indexes) when some users own more
        than one balance document; the library still works on such data, using the oldest.
        """
        store = self._store
        names = [
            await store.create_index(
                store.balances, [(D.USER, 1), ("_id", 1)], name="user_1__id_1"
            ),
            await store.create_index(
                store.balances, [(f"{D.PENDING}._id", 1)], name="pendingLedger_id", sparse=True
            ),
            await store.create_index(
                store.balances, [(D.LAST_REFILL, 1), ("_id", 1)], name="lastRefill_1__id_1"
            ),
        ]
        if store.ledger is not None:
            names.append(
                await store.create_index(
                    store.ledger, [(D.USER, 1), ("createdAt", -1)], name="user_1_createdAt_-1"
                )
            )
        if self._user_ids != "str":
            await self._adopt_hex_users(store.balances)
        duplicates = await store.aggregate(
            store.balances,
            [
                {"$group": {"_id": "$" + D.USER, "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
                {"$sort": {"n": -1}},
                {"$limit": 1000},
            ],
        )
        if duplicates:
            raise DuplicateBalances({d["_id"]: int(d["n"]) for d in duplicates})
        return names


def _switched_off(user: object) -> None:
    log.warning(
        "user %r: LibreChat's autoRefillEnabled was true on a document this library manages; "
        "switched it off (set balance.autoRefillEnabled: false in librechat.yaml)",
        user,
    )
