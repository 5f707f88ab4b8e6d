"""Admin operations: grants, corrections, tiers, pauses, refills by hand, the ledger.

Each operation reads the user's document, decides, and writes the change with its ledger
row through the same commit loop as the hot path (`_engine.Engine.commit`), so it changes
the balance once and writes exactly one row, even when raced or retried after a lost
reply.
"""

from __future__ import annotations

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
from .decide import assigned_tier, period_tier, plan_refill
from .errors import ConfigurationError, UnknownTier
from .state import BalanceState

LedgerRow = dict[str, object]
"""A ledger row as stored (LibreChat's transaction shape plus our fields)."""


class Admin:
    """The admin operations of one refiller (`refiller.admin`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def _change(
        self,
        what: str,
        user_id: UserId,
        decide: Callable[[S.Record, datetime], Change | None],
        *,
        create: bool,
    ) -> BalanceState:
        engine = self._engine
        user = engine.user(user_id)
        now = engine.now()

        async def read() -> S.Record:
            if create:
                return await engine.read_or_create(user, now)
            return await engine.settled(await engine.find(user))

        done = await engine.commit(what, read, lambda record: decide(record, now))
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
    ) -> BalanceState:
        """Set the balance to `target(record, now)`, with a row recording the difference."""

        def decide(record: S.Record, now: datetime) -> Change:
            before = record.state.balance
            after = target(record, now)
            row = L.row(
                record.user, now, context=context, before=before, after=after,
                actor=actor, reason=reason,
            )  # fmt: skip
            return Change(S.set_fields({S.CREDITS: after}), row)

        return await self._change(what, user_id, decide, create=create)

    async def grant(
        self,
        user_id: UserId,
        amount: Credits,
        *,
        actor: str,
        reason: str,
        allow_negative: bool = False,
        create: bool = False,
    ) -> BalanceState:
        """Add `amount` credits by hand (negative: a correction), with a ledger row
        (`context: "admin"`). A correction never takes the balance below 0 unless
        `allow_negative`; then `InsufficientCredits` is raised and nothing changes.
        An unknown user is `UserNotFound` (nothing written) unless `create=True`, which
        creates the user with the policy's `start_balance` first."""
        amount = check_amount(amount, what="amount", allow_negative=True)
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        create = check_flag(create, what="create")

        def target(record: S.Record, now: datetime) -> Credits:
            after = record.state.balance + amount
            if after < 0 and not allow_negative:
                raise self._engine.refused(record, -amount, now)
            return check_amount(
                after, what="resulting balance", allow_zero=True, allow_negative=True
            )

        return await self._set_credits(
            "grant", L.ADMIN, user_id, target, actor=actor, reason=reason, create=create
        )

    async def set_balance(
        self, user_id: UserId, amount: Credits, *, actor: str, reason: str, create: bool = False
    ) -> BalanceState:
        """Set the balance to `amount`; the ledger row (`context: "setBalance"`) records
        the difference. An unknown user is `UserNotFound` unless `create=True`."""
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
        )

    async def _set_fields(
        self,
        what: str,
        context: str,
        user_id: UserId,
        fields: Callable[[S.Record], tuple[Mapping[str, object], Mapping[str, object]]],
        *,
        actor: str,
    ) -> BalanceState:
        """Set per-user fields (not the balance) of an existing user, with a ledger row of
        amount 0 recording what changed."""

        def decide(record: S.Record, now: datetime) -> Change:
            sets, recorded = fields(record)
            balance = record.state.balance
            row = L.row(
                record.user, now, context=context, before=balance, after=balance,
                actor=actor, **recorded,
            )  # fmt: skip
            return Change(S.set_fields(sets), row)

        return await self._change(what, user_id, decide, create=False)

    async def set_tier(
        self, user_id: UserId, tier: str, *, actor: str, pinned: bool | None = None
    ) -> BalanceState:
        """Assign `tier` (it takes effect at the user's next refill: the current period
        keeps the period of the tier it started under). `pinned=True` keeps activity
        rules from moving the user; `pinned=False` releases them; None leaves it."""
        tiers = self._engine.tiers
        if not isinstance(tier, str) or tier not in tiers.tiers:
            raise UnknownTier(
                f"unknown tier {describe(tier)}; known tiers: {', '.join(tiers.tiers)}"
            )
        actor = check_text(actor, what="actor")
        if pinned is not None:
            pinned = check_flag(pinned, what="pinned")

        def fields(record: S.Record) -> tuple[dict[str, object], dict[str, object]]:
            state = record.state
            sets: dict[str, object] = {S.TIER: tier, S.REFILL_TIER: period_tier(tiers, state)}
            if pinned is not None:
                sets[S.PINNED] = pinned
            recorded: dict[str, object] = {
                "tier": tier,
                "previousTier": assigned_tier(tiers, state),
                "tierPinned": state.pinned if pinned is None else pinned,
            }
            return sets, recorded

        return await self._set_fields("set_tier", L.SET_TIER, user_id, fields, actor=actor)

    async def set_auto_refill(self, user_id: UserId, enabled: bool, *, actor: str) -> BalanceState:
        """Pause (`False`) or resume (`True`) automatic refills for one user (the
        library's own `refillPaused` field; LibreChat's `autoRefillEnabled` stays false)."""
        enabled = check_flag(enabled, what="enabled")
        actor = check_text(actor, what="actor")
        return await self._set_fields(
            "set_auto_refill",
            L.SET_AUTO_REFILL,
            user_id,
            lambda record: ({S.PAUSED: not enabled}, {"autoRefillEnabled": enabled}),
            actor=actor,
        )

    async def refill_now(
        self, user_id: UserId, *, actor: str, reason: str, create: bool = False
    ) -> BalanceState:
        """Refill immediately, ignoring the period and the threshold (not the pause's
        absence: a paused user can be refilled by hand). The ledger row has
        `context: "refillNow"`. One refill per call, even when retried after a lost reply.
        A refill that would not change the balance (a top-up already at the amount, a cap
        reached) or one while LibreChat's own refill is settling changes nothing and
        returns `refilled=False`. An unknown user is `UserNotFound` unless `create=True`."""
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        create = check_flag(create, what="create")
        engine = self._engine

        def decide(record: S.Record, now: datetime) -> Change | None:
            plan = plan_refill(engine.tiers, record.state, now, force=True)
            if plan is None or plan.after == plan.before:
                return None
            return Change(
                S.refill_update(plan, now, charge=0, mirrored=engine.mirrored(plan.tier)),
                engine.refill_row(
                    record, now, plan, context=L.REFILL_NOW, actor=actor, reason=reason
                ),
                granted=plan.granted,
                refilled=True,
            )

        return await self._change("refill_now", user_id, decide, create=create)

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
