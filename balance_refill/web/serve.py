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
  seeded with a few users, and a policy store holding version 1 so that the policy can
  be edited), labelled as demo data on every page.
* The policy: `--policy FILE` serves that fixed policy (the policy page is read only).
  Without it, the database's policy store (`balance_refill_policies`) must have an
  active version: the refiller is built on the store (it reads the active version at
  most once per `--policy-refresh` seconds) and the policy page can edit, preview,
  apply and roll back.
* `--metrics` mounts `/metrics` (Prometheus' text format) behind the admin token, sent
  as `Authorization: Bearer <token>`. It needs `opentelemetry-sdk` and
  `opentelemetry-exporter-prometheus`, and is refused with `--insecure-local`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    NoActivePolicy,
    PolicyStore,
    RefillPolicy,
    TieredPolicy,
    load_policy_file,
)
from balance_refill.policy import AnyPolicy
from balance_refill.policy_store import DEFAULT_COLLECTION

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
    policy_store: PolicyStore | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The admin pages behind a token sign-in (or, with `token=None`, open: only for
    `--insecure-local`, which `serve` checks). `policy_store` turns on the policy
    page's editing (see `admin_app`); `routes` are served beside the pages (`/metrics`)."""
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
        policy_store=policy_store,
    )
    app = Starlette(
        routes=[
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            *routes,
            Mount("/", app=pages),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(SecurityHeaders)
    return app


def _fail(out: TextIO, message: str) -> int:
    out.write(f"balance-refill serve: {message}\n")
    return 2


def _refusal(
    *,
    host: str,
    port: int,
    token: str | None,
    insecure_local: bool,
    behind_tls_proxy: bool,
    metrics: bool,
    policy_refresh: float,
) -> str | None:
    """Why `serve` must not start with these settings, or None."""
    if metrics and insecure_local:
        return (
            "--metrics and --insecure-local exclude each other: /metrics is served "
            f"behind the admin token ({TOKEN_ENV}) as a bearer token"
        )
    if not 1 <= policy_refresh <= 3600:
        return f"--policy-refresh must be 1 to 3600 seconds, got {policy_refresh:g}"
    if insecure_local and host != LOOPBACK:
        return f"--insecure-local only binds to {LOOPBACK}, not {host}"
    if token is None and not insecure_local:
        return (
            f"set {TOKEN_ENV} (at least {MIN_TOKEN_LENGTH} characters) to start; "
            f"for a local look without sign-in, use --host {LOOPBACK} --insecure-local"
        )
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return f"{TOKEN_ENV} is too short (at least {MIN_TOKEN_LENGTH} characters)"
    if token is not None and insecure_local:
        return f"--insecure-local and {TOKEN_ENV} exclude each other"
    if host not in LOOPBACK_HOSTS and not behind_tls_proxy:
        return (
            f"refusing plain http on {host}: the admin token and session would cross the "
            "network unencrypted (and browsers drop the Secure cookie); bind to "
            f"{LOOPBACK}, or put a TLS-terminating reverse proxy in front and pass "
            "--behind-tls-proxy"
        )
    if not 0 < port < 65536:
        return f"port must be 1-65535, got {port}"
    return None


def serve(  # noqa: PLR0912, PLR0915 - the start in order: refusals, connection, app
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
    policies_collection: str = DEFAULT_COLLECTION,
    policy_refresh: float = 30.0,
    metrics: bool = False,
) -> int:
    """Run the admin pages with uvicorn until interrupted; returns an exit code (2: refused
    to start). `uri=None` serves the embedded demo data (its policy in a policy store);
    otherwise `policy` (a policy or a policy file), or an active version in the
    database's policy store, is required. `metrics` mounts `/metrics` behind the token."""
    err = out or sys.stderr
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    refused = _refusal(
        host=host, port=port, token=token, insecure_local=insecure_local,
        behind_tls_proxy=behind_tls_proxy, metrics=metrics, policy_refresh=policy_refresh,
    )  # fmt: skip
    if refused is not None:
        return _fail(err, refused)
    try:
        import uvicorn  # noqa: PLC0415 - the `web` extra, only needed to serve

        from balance_refill._connect import connect  # noqa: PLC0415
    except ImportError as exc:
        return _fail(err, f"needs the web extra: pip install 'balance_refill[web]' ({exc.name})")
    endpoint: Any = None
    if metrics:
        try:
            from ._metrics import PrometheusEndpoint, bearer_token  # noqa: PLC0415 - optional
        except ImportError:
            return _fail(
                err, "--metrics needs opentelemetry-sdk and opentelemetry-exporter-prometheus: "
                "pip install opentelemetry-sdk opentelemetry-exporter-prometheus",
            )  # fmt: skip
    demo = uri is None
    source: AnyPolicy | PolicyStore
    if demo:
        try:
            conn = connect(None, "demo")
        except ImportError:
            return _fail(err, "demo data needs mongomock-motor: pip install 'balance_refill[cli]'")
    else:
        try:
            problem = None
            if policy is None:
                problem = asyncio.run(
                    _stored_policy_problem(connect, uri, database, policies_collection)
                )
            if problem is not None:
                return _fail(err, problem)
            fixed = _fixed(policy)
            conn = connect(uri, database or "LibreChat")
        except BalanceRefillError as exc:
            return _fail(err, str(exc))
    balances = conn.collection(balances_collection)
    ledger = conn.collection(transactions_collection)
    users = conn.collection(users_collection)
    store = None
    if demo or fixed is None:
        store = PolicyStore(conn.collection(policies_collection))
        source = store
    else:
        source = fixed
    if endpoint is None and metrics:
        endpoint = PrometheusEndpoint()
    refresh = timedelta(seconds=policy_refresh)

    def make(clock: Any = None, every: timedelta = refresh, **extra: Any) -> BalanceRefiller:
        return BalanceRefiller(balances, source, ledger=ledger, clock=clock, user_ids=user_ids,
                               policy_refresh=every, **extra)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            if demo:
                assert store is not None  # noqa: S101 - the demo always has one
                version = await store.push(DEMO_POLICY, actor="demo", reason="the demo's policy")
                await store.activate(version, actor="demo", reason="the demo's policy")
                await make().ensure_indexes()
                await seed_demo(lambda clock: make(clock, timedelta(days=3650)), balances,
                                ledger, users)  # fmt: skip
            if create_lookup_indexes:
                made = await make().directory.with_users(users).create_lookup_indexes()
                err.write(
                    f"balance-refill serve: created indexes: {', '.join(made) or 'none missing'}\n"
                )
            yield
        finally:
            if endpoint is not None:
                endpoint.shutdown()
            await conn.close()

    extra = {} if endpoint is None else {"metrics": endpoint.metrics}
    app = standalone_app(
        make(**extra),
        token=token,
        balances=balances,
        ledger=ledger,
        users=users,
        banner=DEMO_BANNER if demo else None,
        lifespan=lifespan,
        policy_store=store,
        routes=[] if endpoint is None else [endpoint.route(authorize=bearer_token(token or ""))],
    )
    where = "demo data (in memory)" if demo else "the database at MONGODB_URI"
    where += ", policy " + ("from the policy store" if store is not None else "fixed (--policy)")
    if endpoint is not None:
        where += ", /metrics behind the token"
    scheme = "https (through the proxy)" if behind_tls_proxy else "http"
    err.write(f"balance-refill serve: {scheme} {host}:{port} on {where}\n")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, lifespan="on",
        proxy_headers=behind_tls_proxy, forwarded_allow_ips=forwarded_allow_ips,
    )  # fmt: skip
    asyncio.run(uvicorn.Server(config).serve())
    return 0


def _fixed(policy: AnyPolicy | str | Path | None) -> AnyPolicy | None:
    if policy is None or isinstance(policy, RefillPolicy | TieredPolicy):
        return policy
    return load_policy_file(policy)


async def _stored_policy_problem(
    connect: Any, uri: str | None, database: str | None, collection: str
) -> str | None:
    """None when the database's policy store has an active version, else why `serve`
    cannot start without --policy (one short-lived connection)."""
    conn = connect(uri, database or "LibreChat")
    try:
        await PolicyStore(conn.collection(collection)).active()
    except NoActivePolicy:
        return (
            f"pass a policy (--policy FILE or BALANCE_REFILL_POLICY): the policy store "
            f"({collection}) has no active version (balance-refill policy push FILE "
            "--reason ..., then policy activate 1 --reason ...)"
        )
    except BalanceRefillError as exc:
        return (
            f"pass a policy (--policy FILE or BALANCE_REFILL_POLICY): the policy store "
            f"({collection}) could not be read: {exc}"
        )
    finally:
        await conn.close()
    return None


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
    parser.add_argument(
        "--policy",
        default=os.environ.get("BALANCE_REFILL_POLICY"),
        help="serve this fixed policy (default: the active version of the policy store)",
    )
    parser.add_argument("--policies-collection", default=DEFAULT_COLLECTION)
    parser.add_argument(
        "--policy-refresh",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="read the store's active version at most this often (30)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="serve /metrics behind the admin token as a bearer token (needs the "
        "opentelemetry-sdk and opentelemetry-exporter-prometheus packages)",
    )
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
        policies_collection=args.policies_collection,
        policy_refresh=args.policy_refresh,
        metrics=args.metrics,
    )


if __name__ == "__main__":
    sys.exit(main())
