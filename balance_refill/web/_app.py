"""The admin pages: a Starlette app over `refiller.admin` and the refiller's public API.

Every state change is a POST carrying the CSRF token, a required reason and a
confirmation step; the confirmed form's (CSRF token, form id) pair is claimed in the
used-forms store before the operation runs, so a replayed form applies once.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from bson import ObjectId
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from balance_refill import BalanceRefiller, BalanceState
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

from ._charts import balance_line, number, spend_bars
from ._security import (
    CSRF_FIELD,
    SecurityHeaders,
    UsedForms,
    csrf_ok,
    csrf_token,
    new_form_id,
    replay_key,
    set_csrf_cookie,
)

UserId = str | int | ObjectId
"""A user id as the library accepts and returns it."""

Authorize = Callable[[Request], "Awaitable[str | None] | str | None"]
"""The host's check: the signed-in actor's name, or None (the page answers 401)."""

PAGE_SIZE = 25
HISTORY_CAP = 1000  # `Admin.history` returns at most 1,000 rows: the table pages within them
CHART_ROWS = 200  # the balance chart shows the newest 200 rows
EXACT_COUNT_BELOW = 20_000  # users at zero: an exact count below this many users, else a sample
SAMPLE_SIZE = 2_000
LEDGER_SCAN_CAP = 200_000  # the overview reads at most this many ledger rows per window
REFILL_CONTEXTS = ("autoRefill", "refillReset", "refillNow")
ADMIN_CONTEXTS = ("admin", "setBalance")
AMOUNT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
MAX_REASON = 500
MAX_SAFE = 2**53

ACTIONS: dict[str, str] = {
    "grant": "Grant credits",
    "set-balance": "Set balance",
    "set-tier": "Set tier",
    "auto-refill": "Pause or resume auto refill",
    "refill-now": "Refill now",
}

SKIP_WORDS = {
    "not_due": "refilled recently: their period has not elapsed",
    "paused": "auto refill paused by an admin (or off in their tier)",
    "inactive": "not seen within the active window",
    "above_threshold": "balance at or above the threshold",
    "raced": "a refill was already settling",
}


class FieldErrors(Exception):
    """Messages for form fields (field name -> message)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__(dict(errors))
        self.errors = dict(errors)


def user_param(user_id: object) -> dict[str, str]:
    """The query parameters naming a user (ints are marked, strings and ObjectIds are text)."""
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        return {"id": str(user_id), "as": "int"}
    return {"id": str(user_id)}


def parse_user(raw: object, kind: object) -> str | int:
    """A user id from a form or query: text (a 24-hex text is an ObjectId to the library)
    or, with `as=int`, a number."""
    if not isinstance(raw, str) or not raw.strip():
        raise FieldErrors({"user": "Enter a user id."})
    raw = raw.strip()
    if kind == "int":
        if not re.fullmatch(r"-?\d{1,19}", raw):
            raise FieldErrors({"user": "A numeric id is digits only, e.g. 42."})
        return int(raw)
    return raw


def parse_amount(raw: object, *, negative: bool, zero: bool) -> int | float:
    if not isinstance(raw, str) or not raw.strip():
        raise FieldErrors({"amount": "Enter an amount."})
    text = raw.strip().replace("_", "")
    if not AMOUNT.fullmatch(text):
        raise FieldErrors({"amount": "Write a number with digits only, e.g. 1500 or -250.5."})
    value: int | float = float(text) if "." in text else int(text)
    if not math.isfinite(value) or abs(value) > MAX_SAFE:
        raise FieldErrors({"amount": "That amount is out of range (at most 2^53)."})
    if value < 0 and not negative:
        raise FieldErrors({"amount": "The balance cannot be negative."})
    if value == 0 and not zero:
        raise FieldErrors({"amount": "A grant of 0 changes nothing."})
    return value


def parse_reason(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise FieldErrors({"reason": "A reason is required: it is kept with the change."})
    if len(raw.strip()) > MAX_REASON:
        raise FieldErrors({"reason": f"Keep the reason under {MAX_REASON} characters."})
    return raw.strip()


@dataclass
class Planned:
    """A validated action, ready to confirm or apply."""

    action: str
    values: dict[str, object]
    summary: str
    hidden: dict[str, str] = field(default_factory=dict)


async def aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a pipeline on pymongo's async API (the cursor is awaited) or Motor's (it is not)."""
    cursor = collection.aggregate(pipeline)
    if inspect.isawaitable(cursor):
        cursor = await cursor
    return list(await cursor.to_list(None))


def fmt_time(value: object) -> str:
    if not isinstance(value, datetime):
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def signed(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("+" if value > 0 else "") + number(value)
    return "—" if value is None else str(value)


class AdminPages:
    def __init__(
        self,
        refiller: BalanceRefiller,
        authorize: Authorize,
        *,
        balances: Any | None,
        ledger: Any | None,
        forms: UsedForms,
        banner: str | None,
        login_url: str | None,
        logout_url: str | None,
        page_size: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.clock = clock
        self.refiller = refiller
        self.admin = refiller.admin
        self.authorize = authorize
        self.balances = balances
        self.ledger = ledger
        self.forms = forms
        self.banner = banner
        self.login_url = login_url
        self.logout_url = logout_url
        self.page_size = page_size
        self.env = Environment(
            loader=PackageLoader("balance_refill.web", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(number=number, signed=signed, when=fmt_time)

    # -- plumbing --------------------------------------------------------------------

    async def actor(self, request: Request) -> str | None:
        result = self.authorize(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, str) and result.strip():
            return result.strip()
        return None

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        actor: str | None = None,
        **context: object,
    ) -> Response:
        token, new = csrf_token(request)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        html = self.env.get_template(template).render(
            base=base,
            csrf=token,
            csrf_field=CSRF_FIELD,
            banner=self.banner,
            actor=actor,
            logout_url=self.logout_url,
            login_url=self.login_url,
            url=lambda path, **q: base + path + ("?" + urlencode(q) if q else ""),
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        if new:
            set_csrf_cookie(response, request, token)
        return response

    def unauthorized(self, request: Request) -> Response:
        return self.render(request, "error.html", 401, title="Sign-in required",
                           message="You are not signed in, or your session has ended.")  # fmt: skip

    def forbidden(self, request: Request, actor: str) -> Response:
        return self.render(
            request, "error.html", 403, actor=actor, title="Form expired",
            message="The form's security token did not match. Nothing was changed. "
            "Reload the page and submit the form again.",
        )  # fmt: skip

    def not_found(self, request: Request, actor: str, shown: object) -> Response:
        return self.render(request, "find.html", 404, actor=actor, missing=str(shown),
                           query=str(shown), errors={})  # fmt: skip

    # -- pages -----------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        stats = await self.overview_stats()
        return self.render(request, "overview.html", actor=actor, stats=stats)

    async def overview_stats(self) -> dict[str, object]:
        stats: dict[str, object] = {"balances": self.balances is not None,
                                    "ledger": self.ledger is not None}  # fmt: skip
        if self.balances is not None:
            users = int(await self.balances.estimated_document_count())
            stats["users"] = users
            if users <= EXACT_COUNT_BELOW:
                stats["zero"] = await self.balances.count_documents({"tokenCredits": {"$lte": 0}})
                stats["zero_exact"] = True
            else:
                pipeline: list[dict[str, Any]] = [
                    {"$sample": {"size": SAMPLE_SIZE}},
                    {"$group": {"_id": None, "n": {"$sum": 1}, "zero": {
                        "$sum": {"$cond": [{"$lte": ["$tokenCredits", 0]}, 1, 0]}}}},
                ]  # fmt: skip
                rows = await aggregate(self.balances, pipeline)
                sampled = rows[0] if rows else {"n": 0, "zero": 0}
                share = sampled["zero"] / sampled["n"] if sampled["n"] else 0
                stats["zero"] = round(share * users)
                stats["zero_exact"] = False
                stats["sample"] = sampled["n"]
        if self.ledger is not None:
            now = self.clock()
            windows = []
            for label, delta in (("last 24 hours", timedelta(days=1)),
                                 ("last 30 days", timedelta(days=30))):  # fmt: skip
                windows.append({"label": label, **await self.ledger_window(now - delta)})
            stats["windows"] = windows
        stats["scan_cap"] = LEDGER_SCAN_CAP
        stats["exact_below"] = EXACT_COUNT_BELOW
        stats["sample_size"] = SAMPLE_SIZE
        return stats

    async def ledger_window(self, since: datetime) -> dict[str, object]:
        """Refill and grant rows written since `since`: a range on the `_id` index (an
        ObjectId holds its creation time), newest first, at most LEDGER_SCAN_CAP rows."""
        assert self.ledger is not None  # noqa: S101 - checked by the caller
        match = {"_id": {"$gte": ObjectId.from_datetime(since)}}
        scanned = await self.ledger.count_documents(match, limit=LEDGER_SCAN_CAP)
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$sort": {"_id": -1}},
            {"$limit": LEDGER_SCAN_CAP},
            {
                "$match": {
                    "context": {"$in": [*REFILL_CONTEXTS, *ADMIN_CONTEXTS]},
                    "createdAt": {"$gte": since},  # rows written with a clock behind the _id's
                }
            },
            {"$group": {"_id": "$context", "n": {"$sum": 1}, "credits": {"$sum": "$rawAmount"}}},
        ]
        by_context = {row["_id"]: row for row in await aggregate(self.ledger, pipeline)}
        refills = sum(by_context.get(c, {}).get("n", 0) for c in REFILL_CONTEXTS)
        refill_credits = sum(by_context.get(c, {}).get("credits", 0) for c in REFILL_CONTEXTS)
        admin_credits = sum(by_context.get(c, {}).get("credits", 0) for c in ADMIN_CONTEXTS)
        return {
            "refills": refills,
            "refill_credits": refill_credits,
            "admin_credits": admin_credits,
            "admin_rows": sum(by_context.get(c, {}).get("n", 0) for c in ADMIN_CONTEXTS),
            "partial": scanned >= LEDGER_SCAN_CAP,
        }

    async def users(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        query = request.query_params
        raw = query.get("id")
        if raw is None:
            return self.render(request, "find.html", actor=actor, query="", errors={})
        try:
            user_id = parse_user(raw, query.get("as"))
            page = int(query.get("page", "1") or "1")
        except FieldErrors as exc:
            return self.render(request, "find.html", 400, actor=actor, query=raw,
                               errors=exc.errors)  # fmt: skip
        except ValueError:
            page = 1
        try:
            state = await self.refiller.get_state(user_id)
        except InvalidUserId as exc:
            return self.render(request, "find.html", 400, actor=actor, query=raw,
                               errors={"user": str(exc)})  # fmt: skip
        except UserNotFound:
            return self.not_found(request, actor, raw)
        notice = self.notice(query)
        return await self.user_page(request, actor, state, page=page, notice=notice)

    def notice(self, query: Mapping[str, str]) -> dict[str, str] | None:
        action = query.get("done")
        if action not in ACTIONS:
            return None
        return {
            "action": ACTIONS[action],
            "row": query.get("row", ""),
            "replayed": "1" if query.get("replayed") == "1" else "",
        }

    async def user_page(
        self,
        request: Request,
        actor: str,
        state: BalanceState,
        *,
        page: int = 1,
        notice: dict[str, str] | None = None,
        errors: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        open_action: str | None = None,
        status: int = 200,
    ) -> Response:
        per = self.page_size
        max_page = HISTORY_CAP // per
        page = min(max(page, 1), max_page)
        limit = min(HISTORY_CAP, max(CHART_ROWS, page * per + 1))
        rows = await self.admin.history(state.user_id, limit)
        shown = rows[(page - 1) * per : page * per]
        more = len(rows) > page * per and page < max_page
        new_row = None
        if notice and notice.get("row"):
            new_row = next((r for r in rows if str(r.get("_id")) == notice["row"]), None)
        points: list[tuple[datetime, float]] = []
        for r in reversed(rows[:CHART_ROWS]):
            when, after = r.get("createdAt"), r.get("balanceAfter")
            if isinstance(when, datetime) and isinstance(after, int | float):
                points.append((when, after))
        history = await self.spend_history(state.user_id)
        tiers = as_tiered(self.refiller.policy)
        return self.render(
            request,
            "user.html",
            status,
            actor=actor,
            state=state,
            uid=user_param(state.user_id),
            id_kind=type(state.user_id).__name__,
            rows=shown,
            page=page,
            more=more,
            notice=notice,
            new_row=new_row,
            balance_chart=balance_line(points),
            spend_chart=None if history is None else spend_bars(history, state.spent_since_refill),
            tiers=list(tiers.tiers),
            errors=dict(errors or {}),
            form=dict(form or {}),
            open_action=open_action,
            actions=ACTIONS,
            history_cap=HISTORY_CAP,
            per=per,
        )

    async def spend_history(self, user_id: object) -> list[float] | None:
        """The stored spend per period (oldest first), read from the balances collection the
        host passed (one indexed `find_one` on `user`); None without it."""
        if self.balances is None:
            return None
        doc = await self.balances.find_one(
            {"user": user_id}, {"spendHistory": 1}, sort=[("_id", 1)]
        )
        values = (doc or {}).get("spendHistory") or []
        return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]

    async def policy(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        tiers = as_tiered(self.refiller.policy)
        preview = None
        preview_error = None
        if request.query_params.get("preview") == "1":
            try:
                report = await self.refiller.sweep(dry_run=True, limit=HISTORY_CAP)
                preview = report
            except BalanceRefillError as exc:
                preview_error = str(exc)
        return self.render(
            request,
            "policy.html",
            actor=actor,
            tiers={name: p.describe() for name, p in tiers.tiers.items()},
            default_tier=tiers.default_tier,
            rules=[rule.describe() for rule in tiers.rules],
            preview=preview,
            preview_error=preview_error,
            skip_words=SKIP_WORDS,
            preview_limit=HISTORY_CAP,
        )

    # -- actions ---------------------------------------------------------------------

    def plan(self, action: str, form: FormData, state: BalanceState) -> Planned:
        """Validate the form for `action` (every field's message at once)."""
        errors: dict[str, str] = {}
        values: dict[str, object] = {}
        hidden: dict[str, str] = {}

        def take(name: str, parse: Callable[[], object]) -> None:
            try:
                values[name] = parse()
            except FieldErrors as exc:
                errors.update(exc.errors)

        take("reason", lambda: parse_reason(form.get("reason")))
        if action == "grant":
            take("amount", lambda: parse_amount(form.get("amount"), negative=True, zero=False))
            values["allow_negative"] = form.get("allow_negative") == "on"
            amount = values.get("amount")
            if (
                isinstance(amount, int | float)
                and state.balance + amount < 0
                and not values["allow_negative"]
            ):
                errors["amount"] = (
                    f"That would take the balance below zero ({number(state.balance)} "
                    f"{number(amount)}). Tick “allow a negative balance” to do it anyway."
                )
        elif action == "set-balance":
            take("amount", lambda: parse_amount(form.get("amount"), negative=False, zero=True))
        elif action == "set-tier":
            tiers = as_tiered(self.refiller.policy).tiers
            tier = form.get("tier")
            if not isinstance(tier, str) or tier not in tiers:
                errors["tier"] = f"Choose one of the tiers: {', '.join(tiers)}."
            values["tier"] = tier
            pin = form.get("pin", "keep")
            if pin not in ("keep", "pin", "unpin"):
                errors["pin"] = "Choose keep, pin or unpin."
            values["pin"] = pin
        elif action == "auto-refill":
            enabled = form.get("enabled")
            if enabled not in ("on", "off"):
                errors["enabled"] = "Choose resume or pause."
            values["enabled"] = enabled
        if errors:
            raise FieldErrors(errors)
        for key, value in values.items():
            hidden[key] = "on" if value is True else "" if value is False else str(value)
        return Planned(action, values, self.summary(action, values, state), hidden)

    @staticmethod
    def summary(action: str, v: Mapping[str, object], state: BalanceState) -> str:
        balance = state.balance
        if action == "grant":
            amount = v["amount"]
            assert isinstance(amount, int | float)  # noqa: S101 - parsed above
            verb = "Grant" if amount > 0 else "Take back"
            return (
                f"{verb} {number(abs(amount))} credits: balance {number(balance)} → "
                f"{number(balance + amount)}"
                + (" (may go below zero)" if v.get("allow_negative") else "")
            )
        if action == "set-balance":
            amount = v["amount"]
            assert isinstance(amount, int | float)  # noqa: S101 - parsed above
            return f"Set the balance from {number(balance)} to {number(amount)} credits"
        if action == "set-tier":
            pin = {"keep": "pin unchanged", "pin": "and pin it", "unpin": "and unpin it"}
            return f"Move from tier {state.tier} to tier {v['tier']}, {pin[str(v['pin'])]}"
        if action == "auto-refill":
            return "Resume automatic refills" if v["enabled"] == "on" else "Pause automatic refills"
        return f"Refill now (balance {number(balance)}; the tier's amount and mode apply)"

    async def apply(self, planned: Planned, user_id: UserId, actor: str) -> BalanceState:
        v = planned.values
        reason = str(v["reason"])
        admin = self.admin
        if planned.action == "grant":
            amount = v["amount"]
            assert isinstance(amount, int | float)  # noqa: S101 - parsed by plan()
            return await admin.grant(user_id, amount, actor=actor, reason=reason,
                                     allow_negative=bool(v["allow_negative"]))  # fmt: skip
        if planned.action == "set-balance":
            amount = v["amount"]
            assert isinstance(amount, int | float)  # noqa: S101 - parsed by plan()
            return await admin.set_balance(user_id, amount, actor=actor, reason=reason)
        if planned.action == "set-tier":
            pinned = {"keep": None, "pin": True, "unpin": False}[str(v["pin"])]
            return await admin.set_tier(user_id, str(v["tier"]), actor=actor, pinned=pinned)
        if planned.action == "auto-refill":
            return await admin.set_auto_refill(user_id, v["enabled"] == "on", actor=actor)
        return await admin.refill_now(user_id, actor=actor, reason=reason)

    async def action(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        form = await request.form()
        if not csrf_ok(request, form.get(CSRF_FIELD)):
            return self.forbidden(request, actor)
        action = request.path_params["action"]
        if action not in ACTIONS:
            return self.render(request, "error.html", 404, actor=actor, title="No such action",
                               message="That action does not exist.")  # fmt: skip
        raw_user = form.get("user")
        try:
            user_id = parse_user(raw_user, form.get("as"))
            state = await self.refiller.get_state(user_id)
        except FieldErrors as exc:
            return self.render(request, "find.html", 400, actor=actor, query=str(raw_user or ""),
                               errors=exc.errors)  # fmt: skip
        except InvalidUserId as exc:
            return self.render(request, "find.html", 400, actor=actor, query=str(raw_user),
                               errors={"user": str(exc)})  # fmt: skip
        except UserNotFound:
            return self.not_found(request, actor, raw_user)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            planned = self.plan(action, form, state)
        except FieldErrors as exc:
            return await self.user_page(request, actor, state, errors=exc.errors, form=fields,
                                        open_action=action, status=400)  # fmt: skip
        if form.get("step") != "confirm":
            return self.render(
                request, "confirm.html", actor=actor, state=state, planned=planned,
                title=ACTIONS[action], uid=user_param(state.user_id), form_id=new_form_id(),
            )  # fmt: skip
        form_id = form.get("form_id")
        if not isinstance(form_id, str) or not 16 <= len(form_id) <= 64:
            return await self.user_page(
                request, actor, state, form=fields, open_action=action, status=400,
                errors={"form": "The confirmation was incomplete; review the change again."},
            )  # fmt: skip
        token = str(form.get(CSRF_FIELD))
        key = replay_key(token, form_id)
        prior = await self.forms.claim(
            key,
            {"action": action, "user": state.user_id, "actor": actor,
             "reason": planned.values["reason"], "values": planned.hidden},
        )  # fmt: skip
        if prior is not None:
            return self.done(state.user_id, action, prior.get("row"), replayed=True)
        try:
            after = await self.apply(planned, state.user_id, actor)
        except BalanceRefillError as exc:
            await self.forms.release(key)
            return await self.user_page(request, actor, state, form=fields, open_action=action,
                                        errors=self.field_error(exc), status=400)  # fmt: skip
        row_id = await self.new_row(after, actor, action)
        await self.forms.finish(key, {"row": row_id})
        return self.done(after.user_id, action, row_id)

    async def new_row(self, after: BalanceState, actor: str, action: str) -> str | None:
        """The ledger row the operation just wrote (the newest row by this actor)."""
        if action == "refill-now" and not after.refilled:
            return None
        rows = await self.admin.history(after.user_id, 5)
        row = next((r for r in rows if r.get("actor") == actor), None)
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

    def done(
        self, user_id: object, action: str, row: object, *, replayed: bool = False
    ) -> Response:
        query = {**user_param(user_id), "done": action, "row": str(row or "")}
        if replayed:
            query["replayed"] = "1"
        # A relative redirect keeps the host's mount prefix: `users` from `users/grant`.
        return RedirectResponse("../users?" + urlencode(query), status_code=303)


def admin_app(
    refiller: BalanceRefiller,
    *,
    authorize: Authorize,
    balances: Any | None = None,
    ledger: Any | None = None,
    forms: Any | None = None,
    banner: str | None = None,
    login_url: str | None = None,
    logout_url: str | None = None,
    page_size: int = PAGE_SIZE,
    clock: Callable[[], datetime] | None = None,
) -> Starlette:
    """The admin pages as an ASGI app, to mount in the host's app:

        app.mount("/admin/credits", admin_app(refiller, authorize=check))

    `authorize(request)` (sync or async) returns the signed-in actor's name, recorded on
    every change, or None (401). There is no default: pass your own check.

    `balances` and `ledger` (the collections the refiller uses) feed the overview's counts
    and the spend-history chart; without them those parts say so. `forms` is the
    collection that remembers applied forms (default: `balance_refill_web_forms` in the
    balances' database when `balances` is given, else a bounded in-process map).
    `banner` is shown on every page (e.g. "demo data"); `login_url` and `logout_url` link
    the standalone server's sign-in. `clock` (default: the system's UTC time) dates the
    overview's windows; pass the refiller's clock when it is not the system's.
    """
    if not callable(authorize):
        raise TypeError("admin_app needs authorize=callable(request) -> actor name or None")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 5 <= page_size <= 200:
        raise ValueError("page_size must be an int from 5 to 200")
    if forms is None and balances is not None:
        database = getattr(balances, "database", None)
        if database is not None:
            forms = database["balance_refill_web_forms"]
    pages = AdminPages(
        refiller,
        authorize,
        balances=balances,
        ledger=ledger,
        forms=UsedForms(forms),
        banner=banner,
        login_url=login_url,
        logout_url=logout_url,
        page_size=page_size,
        clock=clock or (lambda: datetime.now(UTC)),
    )
    app = Starlette(
        routes=[
            Route("/", pages.overview, methods=["GET"], name="overview"),
            Route("/users", pages.users, methods=["GET"], name="users"),
            Route("/users/{action}", pages.action, methods=["POST"], name="action"),
            Route("/policy", pages.policy, methods=["GET"], name="policy"),
            Mount(
                "/static",
                app=StaticFiles(packages=[("balance_refill.web", "static")]),
                name="static",
            ),
        ],
    )
    app.add_middleware(SecurityHeaders)
    return app
