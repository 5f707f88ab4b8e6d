"""The admin app: its routes, over the pages (`_pages`) and the change flow (`_actions`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from balance_refill import BalanceRefiller
from balance_refill.directory import USERS
from balance_refill.policy_store import PolicyStore

from ._policy_pages import PolicyPages
from ._render import Authorize, Binding, actor_binding
from ._security import SecurityHeaders, UsedForms

PAGE_SIZE = 25
FORMS = "balance_refill_web_forms"


def admin_app(
    refiller: BalanceRefiller,
    *,
    authorize: Authorize,
    balances: Any | None = None,
    ledger: Any | None = None,
    forms: Any | None = None,
    users: Any | None = USERS,
    banner: str | None = None,
    login_url: str | None = None,
    logout_url: str | None = None,
    page_size: int = PAGE_SIZE,
    clock: Callable[[], datetime] | None = None,
    csrf_binding: Binding | None = None,
    policy_store: PolicyStore | None = None,
) -> Starlette:
    """The admin pages as an ASGI app, to mount in the host's app:

        app.mount("/admin/credits", admin_app(refiller, authorize=check))

    `authorize(request)` (sync or async) returns the signed-in actor's name, recorded on
    every change, or None (401). There is no default: pass your own check.

    Every read goes through the refiller (`refiller.directory`). `users` is LibreChat's
    users collection, for finding people by email or name: a name in the balances'
    database (default `users`), a collection, or None. `forms` is the collection that
    remembers applied changes (default: `balance_refill_web_forms` in the database of
    `balances` when given, else a bounded in-process map). `ledger` is the
    LibreChat transactions collection the policy preview replays. `banner` is shown on
    every page; `login_url` and `logout_url` link the standalone server's sign-in.
    `clock` (default: the system's UTC time) dates the overview's windows.
    `csrf_binding(request, actor)` is what form tokens are bound to: your session's id if
    you have one (default: the actor's name).

    `policy_store` (a `PolicyStore`) turns on the policy page's editing: the versions,
    the editor, the preview (a replay of `ledger`'s usage, default: `transactions`
    beside the balances), apply and roll back. Build the refiller on the same store so
    this process serves the active version; without a store the policy is read only.
    History and reads use the refiller's own ledger.
    """
    if not callable(authorize):
        raise TypeError("admin_app needs authorize=callable(request) -> actor name or None")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 5 <= page_size <= 200:
        raise ValueError("page_size must be an int from 5 to 200")
    if forms is None and balances is not None:
        database = getattr(balances, "database", None)
        if database is not None:
            forms = database[FORMS]
    if policy_store is not None and not isinstance(policy_store, PolicyStore):
        raise TypeError("policy_store must be a balance_refill.PolicyStore")
    if ledger is None and balances is not None:
        database = getattr(balances, "database", None)
        if database is not None:
            ledger = database["transactions"]
    pages = PolicyPages(
        refiller,
        authorize,
        directory=refiller.directory.with_users(users),
        forms=UsedForms(forms),
        banner=banner,
        login_url=login_url,
        logout_url=logout_url,
        page_size=page_size,
        clock=clock or (lambda: datetime.now(UTC)),
        binding=csrf_binding or actor_binding,
        policy_store=policy_store,
        transactions=ledger,
    )
    app = Starlette(
        routes=[
            Route("/", pages.overview, methods=["GET"], name="overview"),
            Route("/users", pages.users, methods=["GET"], name="users"),
            Route("/users/{action}", pages.action, methods=["POST"], name="action"),
            Route("/lists", pages.lists, methods=["GET"], name="lists"),
            Route("/policy", pages.policy, methods=["GET"], name="policy"),
            Route("/policy/edit", pages.policy_edit, methods=["GET"], name="policy_edit"),
            Route("/policy/edit", pages.policy_change, methods=["POST"], name="policy_change"),
            Route(
                "/policy/activate", pages.policy_activate, methods=["POST"], name="policy_activate"
            ),
            Mount(
                "/static",
                app=StaticFiles(packages=[("balance_refill.web", "static")]),
                name="static",
            ),
        ],
    )
    app.add_middleware(SecurityHeaders)
    return app
