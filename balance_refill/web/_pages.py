"""The pages that only read: the overview, finding users, the lists, a user's page and
the policy. Every read goes through the library (`refiller.directory`, `get_state`,
`sweep(dry_run=True)`)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from balance_refill import BalanceState
from balance_refill.directory import Listing
from balance_refill.errors import BalanceRefillError, InvalidArgument, InvalidUserId, UserNotFound
from balance_refill.policy import as_tiered

from ._charts import balance_line, spend_bars
from ._forms import ACTIONS, FieldErrors, parse_user, user_param
from ._render import Base
from ._rows import points, with_balances

HISTORY_CAP = 1000  # the directory returns at most 1,000 rows: the table pages within them
CHART_ROWS = 200  # the balance chart shows the newest 200 rows
LISTS = {"zero": "Users at zero", "paused": "Paused users", "tier": "Users in tier"}
SKIP_WORDS = {
    "not_due": "refilled recently: their period has not elapsed",
    "paused": "auto refill paused by an admin (or off in their tier)",
    "inactive": "not seen within the active window",
    "above_threshold": "balance at or above the threshold",
    "raced": "a refill was already settling",
}


class Pages(Base):
    async def overview(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        stats = await self.directory.overview(self.clock())
        tiers = list(as_tiered(await self.refiller.refresh_policy()).tiers)
        return self.render(request, "overview.html", actor=actor, stats=stats, tiers=tiers)

    async def users(self, request: Request) -> Response:
        """`?q=`: find by email, name or id; `?id=`: the user's page."""
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        query = request.query_params
        if query.get("q") is not None:
            return await self.search(request, actor, query.get("q", ""))
        raw = query.get("id")
        if raw is None:
            return self.render(request, "find.html", actor=actor, query="", errors={}, found=None)
        try:
            user_id = parse_user(raw, query.get("as"))
        except FieldErrors as exc:
            return self.render(request, "find.html", 400, actor=actor, query=raw,
                               errors=exc.errors, found=None)  # fmt: skip
        page = int(query["page"]) if query.get("page", "").isdigit() else 1
        try:
            state = await self.refiller.get_state(user_id)
        except InvalidUserId as exc:
            return self.render(request, "find.html", 400, actor=actor, query=raw,
                               errors={"user": str(exc)}, found=None)  # fmt: skip
        except UserNotFound:
            return self.not_found(request, actor, raw)
        notice = {k: query[k] for k in ("done", "row", "replayed", "stale") if k in query}
        if "done" in notice:
            notice["action"] = ACTIONS.get(notice["done"], notice["done"])
        return await self.user_page(request, actor, state, page=page, notice=notice or None)

    async def search(self, request: Request, actor: str, text: str) -> Response:
        try:
            found = await self.directory.find(text, limit=self.page_size)
        except InvalidArgument as exc:
            return self.render(request, "find.html", 400, actor=actor, query=text,
                               errors={"user": str(exc)}, found=None)  # fmt: skip
        exact = [p for p in found.people if str(p.user) == text.strip() and p.balance is not None]
        if len(exact) == 1 or (len(found.people) == 1 and found.people[0].balance is not None):
            person = exact[0] if exact else found.people[0]
            return RedirectResponse("users?" + urlencode(user_param(person.user)), status_code=303)
        status = 200 if found.people else 404
        return self.render(request, "find.html", status, actor=actor, query=text, errors={},
                           found=found, user_param=user_param)  # fmt: skip

    async def lists(self, request: Request) -> Response:
        """A page of users at zero, paused, or in a tier (`?kind=&tier=&after=`)."""
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        q = request.query_params
        tier, after = q.get("tier"), q.get("after") or None
        kind: Listing = (
            "paused" if q.get("kind") == "paused" else "tier" if q.get("kind") == "tier" else "zero"
        )
        title = LISTS[kind] + (f" {tier}" if kind == "tier" and tier else "")
        try:
            page = await self.directory.listing(
                kind, tier=tier, after=after, limit=self.page_size,
            )  # fmt: skip
        except BalanceRefillError as exc:
            return self.render(request, "list.html", 400, actor=actor, title=title,
                               page=None, error=str(exc), kind=kind, tier=tier)  # fmt: skip
        return self.render(request, "list.html", actor=actor, title=title, page=page, error=None,
                           kind=kind, tier=tier, user_param=user_param)  # fmt: skip

    async def user_page(
        self,
        request: Request,
        actor: str,
        state: BalanceState,
        *,
        page: int = 1,
        notice: Mapping[str, str] | None = None,
        errors: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        open_action: str | None = None,
        status: int = 200,
    ) -> Response:
        per = self.page_size
        max_page = max(1, HISTORY_CAP // per)
        page = min(max(page, 1), max_page)
        limit = min(HISTORY_CAP, max(CHART_ROWS, page * per + 1))
        history = await self.directory.history(state.user_id, limit)
        snapshot = await self.directory.snapshot(state.user_id)
        person = await self.directory.person(state.user_id)
        rows = with_balances(history.rows, state.balance)
        reasons = await self.forms.reasons([r.id for r in rows[(page - 1) * per : page * per]])
        for row in rows:
            row.reason = row.reason or reasons.get(row.id, "")
        shown = rows[(page - 1) * per : page * per]
        more = len(rows) > page * per and page < max_page
        new_row = None
        if notice and notice.get("row"):
            new_row = next((r for r in rows if r.id == notice["row"]), None)
        rebuilt = any(r.rebuilt for r in rows[:CHART_ROWS])
        title = "Balance over time" + (
            " (rebuilt from the rows' amounts where a row has no balanceAfter)" if rebuilt else ""
        )
        series = points(rows[:CHART_ROWS], self.clock(), state.balance)
        return self.render(
            request,
            "user.html",
            status,
            actor=actor,
            state=state,
            person=person,
            uid=user_param(state.user_id),
            id_kind=type(state.user_id).__name__,
            rows=shown,
            has_ledger=history.ledger,
            page=page,
            more=more,
            notice=notice,
            new_row=new_row,
            balance_chart=balance_line(series, title) if series else None,
            balance_rebuilt=rebuilt,
            spend_chart=spend_bars(snapshot.spend_history, state.spent_since_refill),
            tiers=list(as_tiered(await self.refiller.refresh_policy()).tiers),
            errors=dict(errors or {}),
            form=dict(form or {}),
            open_action=open_action,
            actions=ACTIONS,
            history_cap=HISTORY_CAP,
            per=per,
            seen=snapshot.version,
        )
