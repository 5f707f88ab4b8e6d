"""The admin page mounted in a host app: FastAPI and plain Starlette.

Run it from the repository root with `uvicorn examples.web_mount:app` (`pip install
'balance_refill[web]' fastapi`), then open http://127.0.0.1:8000/admin/credits/ with the
header `X-Admin-User: alice` (a stand-in for your own sign-in: replace `authorize`).
Without `MONGODB_URI` it uses an in-memory mock (`pip install mongomock-motor`).

`authorize(request)` is the only thing the host must supply: return the signed-in
operator's name (recorded as the actor of every change) or None (the page answers 401).
Tests build the app on their own database: `create_app(db)` (tests/test_web.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.web import admin_app

POLICY = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)
OPERATORS = {"alice", "bob"}


def authorize(request: Request) -> str | None:
    """Your sign-in goes here (a session, an SSO header set by your proxy, ...)."""
    user = request.headers.get("x-admin-user", "")
    return f"web:{user}" if user in OPERATORS else None


def create_app(db: Any) -> FastAPI:
    """A FastAPI app with the admin page at /admin/credits."""
    balances, ledger = db["balances"], db["transactions"]
    refiller = BalanceRefiller(balances, POLICY, ledger=ledger)
    app = FastAPI()
    app.mount(
        "/admin/credits",
        admin_app(
            refiller,
            authorize=authorize,
            balances=balances,  # for the overview's counts and the spend chart
            ledger=ledger,
            forms=db["balance_refill_web_forms"],  # replayed forms apply once
        ),
    )
    return app


def create_starlette_app(db: Any) -> Starlette:
    """The same in plain Starlette."""
    refiller = BalanceRefiller(db["balances"], POLICY, ledger=db["transactions"])
    pages = admin_app(
        refiller, authorize=authorize, balances=db["balances"], ledger=db["transactions"]
    )
    return Starlette(routes=[Mount("/admin/credits", app=pages)])


def _database() -> Any:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
        return client.get_default_database("LibreChat")
    from mongomock_motor import AsyncMongoMockClient

    return AsyncMongoMockClient(tz_aware=True)["LibreChat"]


@asynccontextmanager
async def _seed(app: FastAPI) -> AsyncIterator[None]:
    """Give the in-memory mock one user to look at."""
    if not os.environ.get("MONGODB_URI"):
        db = app.state.db
        await BalanceRefiller(db["balances"], POLICY, ledger=db["transactions"]).ensure_balance(
            "alice"
        )
    yield


if __name__ != "__main__":  # `uvicorn examples.web_mount:app`
    _db = _database()
    app = create_app(_db)
    app.state.db = _db
    app.router.lifespan_context = _seed
