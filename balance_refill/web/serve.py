"""The standalone admin server (`balance-refill serve`, or `python -m balance_refill.web.serve`).

Rules:

* The admin token comes from `BALANCE_REFILL_ADMIN_TOKEN` (at least 16 characters). It is
  posted once on the sign-in page and compared in constant time; sign-in attempts are
  rate-limited per address and in total (`_sessions`). A signed-in operator holds a
  server-side session (Secure, HttpOnly, SameSite=Strict cookie) that ends at sign-out,
  after 30 idle minutes, or 8 hours after sign-in.
* Without a token the server refuses to start, unless it is bound to 127.0.0.1 and
  started with `insecure_local=True` (`--insecure-local`): then everyone who can reach
  the loopback port is the actor "local", and every page says so.
* Plain http on an address other than loopback is refused at start: the token and the
  session would cross the network unencrypted, and browsers drop the Secure cookie.
  `--behind-tls-proxy` says a TLS-terminating reverse proxy is in front (its
  `X-Forwarded-*` headers are trusted from `--forwarded-allow-ips`).
* With no `uri` (no `MONGODB_URI`), it serves embedded demo data (an in-memory mock,
  seeded with a few users), labelled as demo data on every page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    RefillPolicy,
    TieredPolicy,
    load_policy_file,
)
from balance_refill.policy import AnyPolicy

from ._app import admin_app
from ._demo import DEMO_BANNER, DEMO_POLICY, seed_demo
from ._render import Base
from ._security import CSRF_FIELD, SecurityHeaders, UsedForms, csrf_ok, loopback
from ._sessions import (
    SESSION_COOKIE,
    SESSION_IDLE,
    SESSION_TTL,
    Sessions,
    SignInLimits,
    token_matches,
)

TOKEN_ENV = "BALANCE_REFILL_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
MIN_TOKEN_LENGTH = 16
NAME = re.compile(r"[\w.@+-]{1,64}", re.ASCII)
LOOPBACK = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
INSECURE_BANNER = "Insecure local mode: no sign-in; anyone who can reach 127.0.0.1 on this machine can change balances."
PLAIN_HTTP = (
    "This page was reached over plain http from another address, so your browser refuses "
    "the Secure session cookie and you cannot stay signed in. Open it through https (the "
    "TLS proxy's address); nothing was changed."
)

__all__ = ["SESSION_COOKIE", "SESSION_IDLE", "SESSION_TTL", "TOKEN_ENV", "main", "serve",
           "standalone_app"]  # fmt: skip


def standalone_app(
    refiller: BalanceRefiller,
    *,
    token: str | None,
    balances: Any | None = None,
    ledger: Any | None = None,
    forms: Any | None = None,
    users: Any | None = "users",
    banner: str | None = None,
    lifespan: Any | None = None,
    sessions: Sessions | None = None,
    limits: SignInLimits | None = None,
) -> Starlette:
    """The admin pages behind a token sign-in (or, with `token=None`, open: only for
    `--insecure-local`, which `serve` checks)."""
    if token is None:
        banner = f"{INSECURE_BANNER} {banner or ''}".strip()
    live = sessions or Sessions()
    limit = limits or SignInLimits()

    def authorize(request: Request) -> str | None:
        if token is None:
            return "local"
        return live.actor(request.cookies.get(SESSION_COOKIE))

    def binding(request: Request, actor: str | None) -> str:
        return "local" if token is None else live.binding(request.cookies.get(SESSION_COOKIE))

    page = Base(
        refiller, authorize, directory=refiller.directory, forms=UsedForms(None), banner=banner,
        login_url=None, logout_url=None, page_size=25, clock=lambda: datetime.now(UTC), binding=binding,
    )  # fmt: skip

    def login_page(
        request: Request,
        status: int = 200,
        errors: dict[str, str] | None = None,
        name: str = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        return page.render(request, "login.html", status, errors=errors or {}, name=name,
                           headers=headers)  # fmt: skip

    async def login_form(request: Request) -> Response:
        return login_page(request)

    async def login(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request, form.get(CSRF_FIELD), binding(request, None)):
            return login_page(request, 403, {"token": "The form expired: sign in again."})
        address = request.client.host if request.client else "unknown"
        wait = limit.attempt(address)
        if wait:
            message = f"Too many sign-in attempts: try again in {wait} seconds."
            return login_page(request, 429, {"token": message}, headers={"Retry-After": str(wait)})
        name = str(form.get("name") or "").strip()
        right = token is not None and token_matches(str(form.get("token") or ""), token)
        errors: dict[str, str] = {}
        if not NAME.fullmatch(name):
            errors["name"] = "Letters, digits and . @ + - _ only, 1 to 64 characters."
        if not right:
            errors["token"] = "That is not the admin token."  # noqa: S105 - a message
        if errors:
            return login_page(request, 401 if "token" in errors else 400, errors, name)
        limit.succeeded(address)
        if request.url.scheme != "https" and not loopback(request):
            return login_page(request, 400, {"token": PLAIN_HTTP}, name)
        live.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, live.start(name), max_age=int(SESSION_TTL), path="/", secure=True,
            httponly=True, samesite="strict",
        )  # fmt: skip
        return response

    async def logout(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request, form.get(CSRF_FIELD), binding(request, None)):
            return login_page(request, 403, {"token": "The form expired."})
        live.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                               samesite="strict")  # fmt: skip
        return response

    pages = admin_app(
        refiller,
        authorize=authorize,
        balances=balances,
        ledger=ledger,
        forms=forms,
        users=users,
        banner=banner,
        login_url=None if token is None else "/login",
        logout_url=None if token is None else "/logout",
        csrf_binding=binding,
    )
    app = Starlette(
        routes=[
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/", app=pages),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(SecurityHeaders)
    return app


def _fail(out: TextIO, message: str) -> int:
    out.write(f"balance-refill serve: {message}\n")
    return 2


def serve(
    *,
    host: str = LOOPBACK,
    port: int = 8080,
    insecure_local: bool = False,
    uri: str | None = None,
    database: str | None = None,
    policy: AnyPolicy | str | Path | None = None,
    balances_collection: str = "balances",
    transactions_collection: str = "transactions",
    user_ids: Any = "auto",
    users_collection: str = "users",
    behind_tls_proxy: bool = False,
    forwarded_allow_ips: str = LOOPBACK,
    create_lookup_indexes: bool = False,
    log_level: str = "info",
    out: TextIO | None = None,
) -> int:
    """Run the admin pages with uvicorn until interrupted; returns an exit code (2: refused
    to start). `uri=None` serves the embedded demo data; otherwise `policy` (a policy or
    a policy file) is required."""
    err = out or sys.stderr
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if insecure_local and host != LOOPBACK:
        return _fail(err, f"--insecure-local only binds to {LOOPBACK}, not {host}")
    if token is None and not insecure_local:
        return _fail(
            err,
            f"set {TOKEN_ENV} (at least {MIN_TOKEN_LENGTH} characters) to start; "
            f"for a local look without sign-in, use --host {LOOPBACK} --insecure-local",
        )
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return _fail(err, f"{TOKEN_ENV} is too short (at least {MIN_TOKEN_LENGTH} characters)")
    if token is not None and insecure_local:
        return _fail(err, f"--insecure-local and {TOKEN_ENV} exclude each other")
    if host not in LOOPBACK_HOSTS and not behind_tls_proxy:
        return _fail(
            err,
            f"refusing plain http on {host}: the admin token and session would cross the "
            "network unencrypted (and browsers drop the Secure cookie); bind to "
            f"{LOOPBACK}, or put a TLS-terminating reverse proxy in front and pass "
            "--behind-tls-proxy",
        )
    if not 0 < port < 65536:
        return _fail(err, f"port must be 1-65535, got {port}")
    try:
        import uvicorn  # noqa: PLC0415 - the `web` extra, only needed to serve

        from balance_refill._connect import connect  # noqa: PLC0415
    except ImportError as exc:
        return _fail(err, f"needs the web extra: pip install 'balance_refill[web]' ({exc.name})")
    demo = uri is None
    if demo:
        chosen: AnyPolicy = DEMO_POLICY
        try:
            conn = connect(None, "demo")
        except ImportError:
            return _fail(err, "demo data needs mongomock-motor: pip install 'balance_refill[cli]'")
    else:
        if policy is None:
            return _fail(err, "pass a policy (--policy FILE or BALANCE_REFILL_POLICY)")
        try:
            chosen = (
                policy
                if isinstance(policy, RefillPolicy | TieredPolicy)
                else load_policy_file(policy)
            )
            conn = connect(uri, database or "LibreChat")
        except BalanceRefillError as exc:
            return _fail(err, str(exc))
    balances = conn.collection(balances_collection)
    ledger = conn.collection(transactions_collection)
    users = conn.collection(users_collection)

    def make(clock: Any = None) -> BalanceRefiller:
        return BalanceRefiller(balances, chosen, ledger=ledger, clock=clock, user_ids=user_ids)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if demo:
            await make().ensure_indexes()
            await seed_demo(make, balances, ledger, users)
        if create_lookup_indexes:
            made = await make().directory.with_users(users).create_lookup_indexes()
            err.write(
                f"balance-refill serve: created indexes: {', '.join(made) or 'none missing'}\n"
            )
        try:
            yield
        finally:
            await conn.close()

    app = standalone_app(
        make(),
        token=token,
        balances=balances,
        ledger=ledger,
        users=users,
        banner=DEMO_BANNER if demo else None,
        lifespan=lifespan,
    )
    where = "demo data (in memory)" if demo else "the database at MONGODB_URI"
    scheme = "https (through the proxy)" if behind_tls_proxy else "http"
    err.write(f"balance-refill serve: {scheme} {host}:{port} on {where}\n")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, lifespan="on",
        proxy_headers=behind_tls_proxy, forwarded_allow_ips=forwarded_allow_ips,
    )  # fmt: skip
    asyncio.run(uvicorn.Server(config).serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m balance_refill.web.serve [--host H] [--port P] [--insecure-local]`."""
    parser = argparse.ArgumentParser(
        prog="balance-refill serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--insecure-local", action="store_true")
    parser.add_argument(
        "--behind-tls-proxy",
        action="store_true",
        help="a TLS-terminating reverse proxy is in front: allow a non-loopback --host",
    )
    parser.add_argument("--forwarded-allow-ips", default=LOOPBACK)
    parser.add_argument(
        "--create-lookup-indexes",
        action="store_true",
        help="create the indexes the find and list pages use (a pass over each collection)",
    )
    parser.add_argument("--users-collection", default="users")
    parser.add_argument("--policy", default=os.environ.get("BALANCE_REFILL_POLICY"))
    parser.add_argument("--database", default=os.environ.get("BALANCE_REFILL_DATABASE"))
    args = parser.parse_args(argv)
    return serve(
        host=args.host,
        port=args.port,
        insecure_local=args.insecure_local,
        behind_tls_proxy=args.behind_tls_proxy,
        forwarded_allow_ips=args.forwarded_allow_ips,
        create_lookup_indexes=args.create_lookup_indexes,
        users_collection=args.users_collection,
        uri=os.environ.get("MONGODB_URI") or None,
        database=args.database,
        policy=args.policy,
    )


if __name__ == "__main__":
    sys.exit(main())
