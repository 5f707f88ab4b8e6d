"""Admin operations: grants, corrections, tiers, pauses, refills by hand, the ledger.

Each operation reads the user's document, decides, and writes the change with its ledger
row through the same commit loop as the hot path (`_engine.Engine.commit`), so it changes
the balance once and writes exactly one row, even when raced or retried after a lost
reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime

from . import _ledger as L
from . import _schema as S
from ._engine import Change, Engine
from ._validate import (
    Credits,
    UserId,
    check_amount,
    check_flag,
    check_limit,
    check_text,
    describe,
)
from .decide import UserState, assigned_tier, period_tier, plan_refill, request_key
from .errors import ConfigurationError, IdempotencyConflict, UnknownTier
from .state import BalanceState

LedgerRow = dict[str, object]
"""A ledger row as stored (LibreChat's transaction shape plus our fields)."""


class Admin:
    """The admin operations of one refiller (`refiller.admin`).

    Each takes an optional `request_id` (an idempotency key, like `spend`'s): a retry
    with the same key, after any error, applies the operation at most once and returns
    the state that one application left; the same key with different arguments raises
    `IdempotencyConflict` and changes nothing. The last 32 keyed operations are kept per
    user (`recentAdmin` on the balance document).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def _change(
        self,
        what: str,
        user_id: UserId,
        decide: Callable[[S.Record, datetime], Change | None],
        *,
        create: bool,
        request_id: str | None,
        intent: object,
    ) -> BalanceState:
        """Commit `decide`'s change for `user_id`. With `request_id`, the change carries
        the key, a fingerprint of `intent` (the arguments that decide the effect) and its
        result, so a retry finds it instead of applying it again."""
        engine = self._engine
        user = engine.user(user_id)
        key = fingerprint = None
        if request_id is not None:
            request_id = check_text(request_id, what="request_id", max_length=256)
            key = request_key(request_id)
            fingerprint = request_key(repr((what, intent)))
        now = engine.now()
        replayed: list[S.Document] = []

        async def read() -> S.Record:
            if create:
                return await engine.read_or_create(user, now)
            return await engine.settled(await engine.find(user))

        def keyed(record: S.Record) -> Change | None:
            if key is not None:
                entry = record.admin_entry(key)
                if entry is not None:
                    if entry.get("f") != fingerprint:
                        raise IdempotencyConflict(
                            str(request_id), operation=what, original=entry.get("a"), given=intent
                        )
                    replayed.append(entry)
                    return None  # applied before: nothing to write
            change = decide(record, now)
            if change is None or key is None or change.after is None:
                return change
            entry = {
                "k": key,
                "f": fingerprint,
                "a": _stored(intent),
                "g": change.granted,
                "b": change.after.balance,
                "r": change.refilled,
            }
            return dataclasses.replace(change, admin=entry)

        done = await engine.commit(what, read, keyed)
        if replayed:
            entry = replayed[0]
            record = done.record
            balance = entry.get("b")
            if isinstance(balance, int | float) and not isinstance(balance, bool):
                record = record._replace(state=record.state._replace(balance=balance))
            state = engine.state(record, now)
            granted = entry.get("g")
            return dataclasses.replace(
                state,
                granted=granted if isinstance(granted, int | float) else 0,
                refilled=entry.get("r") is True,
            )
        return engine.state(done.record, now, done.change)

    async def _set_credits(
        self,
        what: str,
        context: str,
        user_id: UserId,
        target: Callable[[S.Record, datetime], Credits],
        *,
        actor: str,
        reason: str,
        create: bool,
        request_id: str | None,
        intent: object,
    ) -> BalanceState:
        """Set the balance to `target(record, now)`, with a row recording the difference."""

        def decide(record: S.Record, now: datetime) -> Change:
            before = record.state.balance
            after = target(record, now)
            row = L.row(
                record.user, now, context=context, before=before, after=after,
                actor=actor, reason=reason,
            )  # fmt: skip
            return Change(
                S.set_fields({S.CREDITS: after}),
                row,
                granted=after - before,
                after=record.state._replace(balance=after),
            )

        return await self._change(
            what, user_id, decide, create=create, request_id=request_id, intent=intent
        )

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
        """Add `amount` credits by hand (negative: a correction), with a ledger row
        (`context: "admin"`). A correction never takes the balance below 0 unless
        `allow_negative`; then `InsufficientCredits` is raised and nothing changes.
        An unknown user is `UserNotFound` (nothing written) unless `create=True`, which
        creates the user with the policy's `start_balance` first. `granted` in the result
        is `amount`. `request_id`: see the class."""
        amount = check_amount(amount, what="amount", allow_negative=True)
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        create = check_flag(create, what="create")
        allow_negative = check_flag(allow_negative, what="allow_negative")

        def target(record: S.Record, now: datetime) -> Credits:
            after = record.state.balance + amount
            if after < 0 and not allow_negative:
                raise self._engine.refused(record, -amount, now)
            return check_amount(
                after, what="resulting balance", allow_zero=True, allow_negative=True
            )

        return await self._set_credits(
            "grant", L.ADMIN, user_id, target, actor=actor, reason=reason, create=create,
            request_id=request_id, intent=amount if not allow_negative else (amount, True),
        )  # fmt: skip

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
        """Set the balance to `amount`; the ledger row (`context: "setBalance"`) records
        the difference, and so does `granted` (negative when the balance went down). An
        unknown user is `UserNotFound` unless `create=True`. `request_id`: see the class."""
        amount = check_amount(amount, what="amount", allow_zero=True)
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        create = check_flag(create, what="create")
        return await self._set_credits(
            "set_balance",
            L.SET_BALANCE,
            user_id,
            lambda r, n: amount,
            actor=actor,
            reason=reason,
            create=create,
            request_id=request_id,
            intent=amount,
        )

    async def _set_fields(
        self,
        what: str,
        context: str,
        user_id: UserId,
        fields: Callable[[S.Record], tuple[Mapping[str, object], Mapping[str, object], UserState]],
        *,
        actor: str,
        reason: str | None,
        request_id: str | None,
        intent: object,
    ) -> BalanceState:
        """Set per-user fields (not the balance) of an existing user, with a ledger row of
        amount 0 recording what changed."""

        def decide(record: S.Record, now: datetime) -> Change:
            sets, recorded, after = fields(record)
            balance = record.state.balance
            row = L.row(
                record.user, now, context=context, before=balance, after=balance,
                actor=actor, reason=reason, **recorded,
            )  # fmt: skip
            return Change(S.set_fields(sets), row, after=after)

        return await self._change(
            what, user_id, decide, create=False, request_id=request_id, intent=intent
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
        """Assign `tier` (it takes effect at the user's next refill: the current period
        keeps the period of the tier it started under). `pinned=True` keeps activity
        rules from moving the user; `pinned=False` releases them; None leaves it.
        `reason` is recorded in the ledger row. `request_id`: see the class."""
        tiers = self._engine.tiers
        if not isinstance(tier, str) or tier not in tiers.tiers:
            raise UnknownTier(
                f"unknown tier {describe(tier)}; known tiers: {', '.join(tiers.tiers)}"
            )
        actor = check_text(actor, what="actor")
        if reason is not None:
            reason = check_text(reason, what="reason")
        if pinned is not None:
            pinned = check_flag(pinned, what="pinned")

        def fields(record: S.Record) -> tuple[dict[str, object], dict[str, object], UserState]:
            state = record.state
            governing = period_tier(tiers, state)
            sets: dict[str, object] = {S.TIER: tier, S.REFILL_TIER: governing}
            if pinned is not None:
                sets[S.PINNED] = pinned
            now_pinned = state.pinned if pinned is None else pinned
            recorded: dict[str, object] = {
                "tier": tier,
                "previousTier": assigned_tier(tiers, state),
                "tierPinned": now_pinned,
            }
            after = state._replace(tier=tier, refill_tier=governing, pinned=now_pinned)
            return sets, recorded, after

        return await self._set_fields(
            "set_tier", L.SET_TIER, user_id, fields, actor=actor, reason=reason,
            request_id=request_id, intent=(tier, pinned),
        )  # fmt: skip

    async def set_auto_refill(
        self,
        user_id: UserId,
        enabled: bool,
        *,
        actor: str,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> BalanceState:
        """Pause (`False`) or resume (`True`) automatic refills for one user (the
        library's own `refillPaused` field; LibreChat's `autoRefillEnabled` stays false).
        The ledger row says `change: "pause"` or `"resume"`, with `reason` if given.
        `request_id`: see the class."""
        enabled = check_flag(enabled, what="enabled")
        actor = check_text(actor, what="actor")
        if reason is not None:
            reason = check_text(reason, what="reason")

        def fields(record: S.Record) -> tuple[dict[str, object], dict[str, object], UserState]:
            recorded: dict[str, object] = {
                "autoRefillEnabled": enabled,
                "change": "resume" if enabled else "pause",
            }
            return {S.PAUSED: not enabled}, recorded, record.state._replace(paused=not enabled)

        return await self._set_fields(
            "set_auto_refill", L.SET_AUTO_REFILL, user_id, fields, actor=actor, reason=reason,
            request_id=request_id, intent=enabled,
        )  # fmt: skip

    async def refill_now(
        self,
        user_id: UserId,
        *,
        actor: str,
        reason: str,
        create: bool = False,
        request_id: str | None = None,
    ) -> BalanceState:
        """Refill immediately, ignoring the period and the threshold (not the pause's
        absence: a paused user can be refilled by hand). The ledger row has
        `context: "refillNow"`. One refill per call, even when retried after a lost reply.
        A refill that would not change the balance (a top-up already at the amount, a cap
        reached) or one while LibreChat's own refill is settling changes nothing and
        returns `refilled=False`. An unknown user is `UserNotFound` unless `create=True`.
        `request_id`: see the class."""
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        create = check_flag(create, what="create")
        engine = self._engine

        def decide(record: S.Record, now: datetime) -> Change | None:
            plan = plan_refill(engine.tiers, record.state, now, force=True)
            if plan is None or plan.after == plan.before:
                return None
            return engine.plan_change(
                record, now, plan, context=L.REFILL_NOW, actor=actor, reason=reason
            )

        return await self._change(
            "refill_now", user_id, decide, create=create, request_id=request_id, intent=()
        )

    async def history(self, user_id: UserId, limit: int = 50) -> list[LedgerRow]:
        """The user's ledger rows, newest first (at most `limit`, 1 to 1000)."""
        engine = self._engine
        user = engine.user(user_id)
        limit = check_limit(limit, what="limit", low=1, high=1000)
        if engine.ledger is None:
            raise ConfigurationError("history needs a ledger collection")
        rows = await engine.store.iterate(
            engine.ledger, S.by_user(user), sort=S.LEDGER_ORDER, limit=limit
        )
        return [dict(r) for r in rows]


def _stored(intent: object) -> object:
    """An operation's arguments as BSON can store them (tuples become lists)."""
    if isinstance(intent, tuple):
        return [_stored(x) for x in intent]
    return intent
