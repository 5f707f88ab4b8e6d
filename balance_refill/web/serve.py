"""The standalone admin server (`balance-refill serve`, or `python -m balance_refill.web.serve`).

Rules:

* The admin token comes from `BALANCE_REFILL_ADMIN_TOKEN` (at least 16 characters). It is
  posted once on the sign-in page, compared in constant time, and then kept as a signed
  session cookie (Secure, HttpOnly, SameSite=Strict, 12 hours) naming the actor.
* Without a token the server refuses to start, unless it is bound to 127.0.0.1 and
  started with `insecure_local=True` (`--insecure-local`): then everyone who can reach
  the loopback port is the actor "local", and every page says so.
* With no `uri` (no `MONGODB_URI`), it serves embedded demo data (an in-memory mock,
  seeded with a few users), labelled as demo data on every page.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from bson import ObjectId
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    InsufficientCredits,
    RefillPolicy,
    TieredPolicy,
    TierRule,
    load_policy_file,
)
from balance_refill.policy import AnyPolicy

from ._app import admin_app
from ._security import (
    CSRF_FIELD,
    SecurityHeaders,
    csrf_ok,
    csrf_token,
    set_csrf_cookie,
)

TOKEN_ENV = "BALANCE_REFILL_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "br_session"
SESSION_TTL = timedelta(hours=12)
NAME = re.compile(r"[\w.@+-]{1,64}")
LOOPBACK = "127.0.0.1"
DEMO_BANNER = "Demo data: an in-memory database seeded with example users; nothing here is real and it is gone when the server stops."
INSECURE_BANNER = "Insecure local mode: no sign-in; anyone who can reach 127.0.0.1 on this machine can change balances."

DEMO_POLICY = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
        "pro": RefillPolicy(
            amount=50_000,
            interval="30d",
            mode="add",
            threshold=25_000,
            max_balance=100_000,
            start_balance=50_000,
        ),
    },
    default_tier="free",
    rules=(
        TierRule(from_tier="free", to_tier="pro", min_usage=0.8, periods=2, of_last=3),
        TierRule(from_tier="pro", to_tier="free", max_usage=0.1, periods=3, of_last=3),
    ),
)
DEMO_USERS: tuple[tuple[object, int], ...] = (
    (ObjectId("65f1c0ffee0000000000a11c"), 420),  # a LibreChat user id
    ("ben@example.com", 1_900),
    (42, 90),
    (ObjectId("65f1c0ffee0000000000b0b0"), 0),
)


def _key(token: str) -> bytes:
    return hashlib.sha256(b"balance_refill session\x00" + token.encode()).digest()


def session_cookie(token: str, name: str, issued: int) -> str:
    """A signed session naming the actor: `name.issued.mac` (name base64url-encoded)."""
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    payload = f"{encoded}.{issued}"
    mac = hmac.new(_key(token), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def session_actor(token: str, cookie: str | None, now: float) -> str | None:
    """The actor a session cookie names, if its MAC is right and it has not expired."""
    if not cookie or cookie.count(".") != 2:
        return None
    encoded, issued, mac = cookie.split(".")
    expected = hmac.new(_key(token), f"{encoded}.{issued}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        return None
    if not issued.isdigit() or not 0 <= now - int(issued) <= SESSION_TTL.total_seconds():
        return None
    try:
        name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name if NAME.fullmatch(name) else None


def standalone_app(
    refiller: BalanceRefiller,
    *,
    token: str | None,
    balances: Any | None = None,
    ledger: Any | None = None,
    forms: Any | None = None,
    banner: str | None = None,
    lifespan: Any | None = None,
) -> Starlette:
    """The admin pages behind a token sign-in (or, with `token=None`, open: only for
    `--insecure-local`, which `serve` checks)."""
    env = Environment(loader=PackageLoader("balance_refill.web", "templates"), autoescape=True)
    if token is None:
        banner = f"{INSECURE_BANNER} {banner or ''}".strip()

    def authorize(request: Request) -> str | None:
        if token is None:
            return "local"
        return session_actor(token, request.cookies.get(SESSION_COOKIE), time.time())

    def login_page(
        request: Request, status: int = 200, errors: dict[str, str] | None = None, name: str = ""
    ) -> Response:
        csrf, new = csrf_token(request)
        html = env.get_template("login.html").render(
            base="", csrf=csrf, csrf_field=CSRF_FIELD, banner=banner, actor=None,
            logout_url=None, login_url=None, errors=errors or {}, name=name,
        )  # fmt: skip
        response = HTMLResponse(html, status_code=status)
        if new:
            set_csrf_cookie(response, request, csrf)
        return response

    async def login_form(request: Request) -> Response:
        return login_page(request)

    async def login(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request, form.get(CSRF_FIELD)):
            return login_page(request, 403, {"token": "The form expired: sign in again."})
        name = str(form.get("name") or "").strip()
        given = str(form.get("token") or "")
        errors: dict[str, str] = {}
        if not NAME.fullmatch(name):
            errors["name"] = "Letters, digits and . @ + - _ only, 1 to 64 characters."
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            errors["token"] = "That is not the admin token."  # noqa: S105 - a message
        if errors:
            status = 401 if "token" in errors else 400
            return login_page(request, status, errors, name)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_cookie(token or "", name, int(time.time())),
            max_age=int(SESSION_TTL.total_seconds()),
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request, form.get(CSRF_FIELD)):
            return login_page(request, 403, {"token": "The form expired."})
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
        banner=banner,
        login_url=None if token is None else "/login",
        logout_url=None if token is None else "/logout",
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


async def seed_demo(refiller_for: Any, balances: Any, ledger: Any) -> None:
    """Fill the demo database: four users, about 95 days of spending, refills and grants."""
    now = datetime.now(UTC).replace(microsecond=0)
    clock_now = [now - timedelta(days=95)]
    sim = refiller_for(lambda: clock_now[0])
    for day in range(95):
        clock_now[0] = now - timedelta(days=95 - day, hours=-9)
        for i, (user, cost) in enumerate(DEMO_USERS):
            if cost == 0:  # a user who ran out: created, then set to zero by hand
                if day == 0:
                    await sim.ensure_balance(user)
                    await sim.admin.set_balance(user, 0, actor="demo-admin", reason="trial ended")
                continue
            if (day + i) % (1 + i) != 0:
                continue
            await sim.ensure_balance(user)
            for _ in range(3):
                clock_now[0] += timedelta(minutes=17)
                with contextlib.suppress(InsufficientCredits):
                    await sim.spend(user, cost)
        if day == 40:
            await sim.admin.grant(
                "ben@example.com", 5_000, actor="demo-admin", reason="goodwill: outage on Oct 2"
            )
            await sim.admin.set_tier(DEMO_USERS[0][0], "pro", actor="demo-admin", pinned=True)
        if day == 60:
            await sim.admin.set_auto_refill(42, False, actor="demo-admin")


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

    def make(clock: Any = None) -> BalanceRefiller:
        return BalanceRefiller(balances, chosen, ledger=ledger, clock=clock, user_ids=user_ids)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if demo:
            await make().ensure_indexes()
            await seed_demo(make, balances, ledger)
        try:
            yield
        finally:
            await conn.close()

    app = standalone_app(
        make(),
        token=token,
        balances=balances,
        ledger=ledger,
        banner=DEMO_BANNER if demo else None,
        lifespan=lifespan,
    )
    where = "demo data (in memory)" if demo else "the database at MONGODB_URI"
    err.write(f"balance-refill serve: http://{host}:{port}/ on {where}\n")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, lifespan="on"
    )
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
    parser.add_argument("--policy", default=os.environ.get("BALANCE_REFILL_POLICY"))
    parser.add_argument("--database", default=os.environ.get("BALANCE_REFILL_DATABASE"))
    args = parser.parse_args(argv)
    return serve(
        host=args.host,
        port=args.port,
        insecure_local=args.insecure_local,
        uri=os.environ.get("MONGODB_URI") or None,
        database=args.database,
        policy=args.policy,
    )


if __name__ == "__main__":
    sys.exit(main())
