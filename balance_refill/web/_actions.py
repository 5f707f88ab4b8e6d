"""The POST flow of a change: CSRF and Origin, parse and plan, review, confirm.

One intent is applied once. Each action form carries `seen`, the version of the user's
document when the page was shown (`Directory.snapshot`). The intent key hashes the user,
the operation, its values and `seen`. A review or confirmation whose `seen` is no longer
the document's version is refused (409): "already applied", with a link, when the same
intent was applied, else "changed since you reviewed". The key is claimed in the
used-forms store before the operation runs, so two confirmations racing on the same
review apply once; it is also passed to the core as `request_id` when the core takes one.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from balance_refill import BalanceState, errors
from balance_refill.errors import (
    BalanceRefillError,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    InvalidUserId,
    UnknownTier,
    UserNotFound,
)
from balance_refill.policy import as_tiered

from ._forms import ACTIONS, FieldErrors, Planned, UserId, intent_key, parse_user, plan, user_param
from ._pages import Pages
from ._security import new_form_id

MAX_SEEN = 64


def idempotent(method: Callable[..., Awaitable[BalanceState]], key: str) -> dict[str, Any]:
    """`request_id=key` when the admin operation takes an idempotency key, else nothing."""
    return {"request_id": key} if "request_id" in inspect.signature(method).parameters else {}


def with_reason(method: Callable[..., Awaitable[BalanceState]], reason: str) -> dict[str, Any]:
    """`reason=` for operations that record one (tier and pause changes may not yet)."""
    return {"reason": reason} if "reason" in inspect.signature(method).parameters else {}


class AdminPages(Pages):
    async def action(self, request: Request) -> Response:
        signed = await self.signed_form(request)
        if isinstance(signed, Response):
            return signed
        actor, form = signed
        action = request.path_params["action"]
        if action not in ACTIONS:
            return self.render(request, "error.html", 404, actor=actor, title="No such action",
                               message="That action does not exist.")  # fmt: skip
        raw_user = form.get("user")
        try:
            state = await self.refiller.get_state(parse_user(raw_user, form.get("as")))
        except FieldErrors as exc:
            return self.render(request, "find.html", 400, actor=actor, query=str(raw_user or ""),
                               errors=exc.errors, found=None)  # fmt: skip
        except InvalidUserId as exc:
            return self.render(request, "find.html", 400, actor=actor, query=str(raw_user),
                               errors={"user": str(exc)}, found=None)  # fmt: skip
        except UserNotFound:
            return self.not_found(request, actor, raw_user)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            planned = plan(action, fields, state, as_tiered(await self.refiller.refresh_policy()))
        except FieldErrors as exc:
            return await self.user_page(request, actor, state, errors=exc.errors, form=fields,
                                        open_action=action, status=400)  # fmt: skip
        seen = fields.get("seen", "")
        if not 0 < len(seen) <= MAX_SEEN:
            return await self.user_page(
                request, actor, state, form=fields, open_action=action, status=400,
                errors={"form": "The form was incomplete; review the change again."},
            )  # fmt: skip
        key = intent_key(state.user_id, planned, seen)
        current = (await self.directory.snapshot(state.user_id)).version
        if current != seen:
            return await self.stale(request, actor, state, action, await self.forms.get(key))
        if fields.get("step") != "confirm":
            return self.render(
                request, "confirm.html", actor=actor, state=state, planned=planned, seen=seen,
                title=ACTIONS[action], uid=user_param(state.user_id), form_id=new_form_id(),
            )  # fmt: skip
        info = {"action": action, "user": state.user_id, "actor": actor,
                "reason": planned.values["reason"], "values": planned.hidden}  # fmt: skip
        prior = await self.forms.claim(key, info)
        if prior is not None:
            return self.done(state.user_id, action, prior.get("row"), replayed=True)
        try:
            after = await self.apply(planned, state.user_id, actor, key)
        except BalanceRefillError as exc:
            await self.forms.release(key)
            if type(exc) is getattr(errors, "IdempotencyConflict", None):
                return await self.stale(request, actor, state, action, None)
            return await self.user_page(request, actor, state, form=fields, open_action=action,
                                        errors=self.field_error(exc), status=400)  # fmt: skip
        row_id = await self.new_row(after, actor, action)
        await self.forms.finish(key, {"row": row_id})
        return self.done(after.user_id, action, row_id)

    async def stale(
        self,
        request: Request,
        actor: str,
        state: BalanceState,
        action: str,
        prior: dict[str, object] | None,
    ) -> Response:
        """409: the form was shown before the user's last change."""
        return self.render(
            request, "stale.html", 409, actor=actor, state=state, title=ACTIONS[action],
            prior=prior, uid=user_param(state.user_id),
        )  # fmt: skip

    async def apply(self, planned: Planned, user_id: UserId, actor: str, key: str) -> BalanceState:
        v = planned.values
        reason = str(v["reason"])
        admin = self.admin
        if planned.action == "grant":
            amount = v["amount"]
            assert isinstance(amount, int | float)  # noqa: S101 - parsed by plan()
            return await admin.grant(user_id, amount, actor=actor, reason=reason,
                                     allow_negative=bool(v["allow_negative"]),
                                     **idempotent(admin.grant, key))  # fmt: skip
        if planned.action == "set-balance":
            amount = v["amount"]
            assert isinstance(amount, int | float)  # noqa: S101 - parsed by plan()
            return await admin.set_balance(user_id, amount, actor=actor, reason=reason,
                                           **idempotent(admin.set_balance, key))  # fmt: skip
        if planned.action == "set-tier":
            pinned = {"keep": None, "pin": True, "unpin": False}[str(v["pin"])]
            return await admin.set_tier(user_id, str(v["tier"]), actor=actor, pinned=pinned,
                                        **with_reason(admin.set_tier, reason),
                                        **idempotent(admin.set_tier, key))  # fmt: skip
        if planned.action == "auto-refill":
            return await admin.set_auto_refill(user_id, v["enabled"] == "on", actor=actor,
                                               **with_reason(admin.set_auto_refill, reason),
                                               **idempotent(admin.set_auto_refill, key))  # fmt: skip
        return await admin.refill_now(user_id, actor=actor, reason=reason,
                                      **idempotent(admin.refill_now, key))  # fmt: skip

    async def new_row(self, after: BalanceState, actor: str, action: str) -> str | None:
        """The ledger row the operation just wrote (the newest row by this actor)."""
        if action == "refill-now" and not after.refilled:
            return None
        history = await self.directory.history(after.user_id, 5)
        row = next((r for r in history.rows if r.get("actor") == actor), None)
        return None if row is None else str(row.get("_id"))

    @staticmethod
    def field_error(exc: BalanceRefillError) -> dict[str, str]:
        if isinstance(exc, InsufficientCredits):
            return {"amount": f"That would take the balance below zero ({exc}). "
                              "Tick “allow a negative balance” to do it anyway."}  # fmt: skip
        if isinstance(exc, InvalidAmount):
            return {"amount": str(exc)}
        if isinstance(exc, UnknownTier):
            return {"tier": str(exc)}
        if isinstance(exc, InvalidArgument):
            return {"reason": str(exc)}
        return {"form": f"The change was refused: {exc}"}

    @staticmethod
    def done(user_id: object, action: str, row: object, *, replayed: bool = False) -> Response:
        query = {**user_param(user_id), "done": action, "row": str(row or "")}
        if replayed:
            query["replayed"] = "1"
        # A relative redirect keeps the host's mount prefix: `users` from `users/grant`.
        return RedirectResponse("../users?" + urlencode(query), status_code=303)
