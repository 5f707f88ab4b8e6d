"""The admin web page, in process through httpx's ASGI transport, on the test backend:
every route, every refusal (401, 403, 400 with nothing written, 404), a replayed form
applied once, each action's ledger row and actor, escaping, security headers, and the
standalone server's sign-in."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from balance_refill import BalanceRefiller, RefillPolicy, TieredPolicy, TierRule
from balance_refill.testing import FakeClock
from balance_refill.web import admin_app
from balance_refill.web.serve import SESSION_COOKIE, TOKEN_ENV, serve, standalone_app

ACTOR = "alice@ops"
TIERS = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
        "pro": RefillPolicy(amount=50_000, interval="30d", mode="add", max_balance=100_000),
    },
    default_tier="free",
    rules=(TierRule(from_tier="free", to_tier="pro", min_usage=0.8, periods=2, of_last=3),),
)
HEADERS = {
    "content-security-policy": "default-src 'self'",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}
COLLECTIONS = ("balances", "transactions", "balance_refill_web_forms")


def authorize(request: Request) -> str | None:
    """The host's check, for the tests: the actor named by a header."""
    return request.headers.get("x-test-actor") or None


class Web:
    """An httpx client on the admin app, signed in as ACTOR, holding the CSRF cookie."""

    def __init__(self, client: httpx.AsyncClient, db: Any, refiller: BalanceRefiller) -> None:
        self.client = client
        self.db = db
        self.refiller = refiller
        self.csrf = ""

    async def start(self) -> None:
        self.csrf = _field((await self.client.get("/users?id=u1")).text, "csrf")

    async def seen(self, user: str = "u1", kind: str | None = None) -> str:
        """The state version the user's page shows in its forms ("0" if it has none)."""
        params = {"id": user, **({"as": kind} if kind else {})}
        page = await self.client.get("/users", params=params)
        return _field(page.text, "seen") if page.status_code == 200 else "0"

    async def review(self, action: str, user: str = "u1", **fields: str) -> httpx.Response:
        seen = fields.pop("seen", None) or await self.seen(user, fields.get("as"))
        data = {"csrf": self.csrf, "user": user, "step": "review", "seen": seen, **fields}
        return await self.client.post(f"/users/{action}", data=data)

    async def confirm(self, action: str, user: str = "u1", **fields: str) -> httpx.Response:
        """Review, then post the confirmation page's form as a browser would."""
        page = await self.review(action, user, **fields)
        assert page.status_code == 200, page.text
        return await self.client.post(f"/users/{action}", data=_form(page.text, "confirm-form"))

    async def snapshot(self) -> dict[str, list[str]]:
        found = {}
        for name in COLLECTIONS:
            docs = await self.db[name].find({}).to_list(None)
            found[name] = sorted(repr(sorted(d.items())) for d in docs)
        return found


def _field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no field {name}"
    return match.group(1)


def _form(html: str, form_id: str) -> dict[str, str]:
    """The named form's hidden inputs and its submit button's value, as a browser sends."""
    body = html.split(f'id="{form_id}"', 1)[1].split("</form>", 1)[0]
    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))
    button = re.search(r'<button type="submit" name="([^"]+)" value="([^"]+)"', body)
    assert button
    data[button.group(1)] = button.group(2)
    return {k: v.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"').replace("&#39;", "'") for k, v in data.items()}  # fmt: skip


@pytest.fixture
async def web(
    db: Any, make_refiller: Callable[..., BalanceRefiller], clock: FakeClock
) -> AsyncIterator[Web]:
    refiller = make_refiller(policy=TIERS)
    await refiller.ensure_balance("u1")
    app = admin_app(
        refiller,
        authorize=authorize,
        balances=db["balances"],
        ledger=db["transactions"],
        forms=db["balance_refill_web_forms"],
        clock=clock,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://testserver", headers={"x-test-actor": ACTOR}
    ) as client:
        w = Web(client, db, refiller)
        await w.start()
        yield w


def _check_headers(response: httpx.Response) -> None:
    for name, value in HEADERS.items():
        assert value in response.headers.get(name, ""), name
    assert "script-src 'none'" in response.headers["content-security-policy"]


GETS = ["/", "/users", "/users?id=u1", "/users?id=u1&page=2", "/policy", "/policy?preview=1"]


@pytest.mark.parametrize("path", GETS)
async def test_every_page_renders_with_security_headers_and_writes_nothing(
    web: Web, path: str
) -> None:
    """Each GET page answers 200 with the security headers and no inline script, and
    leaves every collection as it was."""
    before = await web.snapshot()
    page = await web.client.get(path)
    assert page.status_code == 200
    _check_headers(page)
    assert "<script" not in page.text
    assert await web.snapshot() == before


async def test_static_css_is_served_with_headers(web: Web) -> None:
    """The stylesheet is package data, served by the app itself (no CDN)."""
    css = await web.client.get("/static/admin.css")
    assert css.status_code == 200
    assert "text/css" in css.headers["content-type"]
    _check_headers(css)


async def test_user_page_shows_state_charts_and_ledger(web: Web) -> None:
    """Balance, tier, auto refill, refill times, spend, both SVG charts, the ledger."""
    await web.refiller.spend("u1", 1_500)
    await web.refiller.admin.grant("u1", 1_000, actor="t", reason="r")
    page = await web.client.get("/users?id=u1")
    text = page.text
    assert 'id="balance">19,500<' in text
    assert "free" in text
    assert 'id="auto-refill">on<' in text
    assert text.count("<svg") == 2
    assert "Credits spent per period" in text
    assert "Balance over time" in text
    assert '<table class="ledger cards">' in text


async def test_overview_counts(web: Web) -> None:
    """Users, users at zero and refills in the last 24 hours come from bounded queries."""
    await web.refiller.admin.set_balance("u1", 0, actor="t", reason="zero")
    await web.refiller.ensure_balance("u2")
    await web.refiller.admin.refill_now("u1", actor="t", reason="r")
    page = await web.client.get("/")
    assert page.status_code == 200
    tiles = re.findall(r'class="k">([^<]+)</span>\s*<span class="v">([^<]+)<', page.text)
    found = {k.strip(): v.strip() for k, v in tiles}
    assert found["Users"] == "2"
    assert found["Users at zero"] == "0"  # u1 was refilled after being set to zero
    assert re.search(r'id="refills-1">\s*1<', page.text)  # the last 24 hours
    assert re.search(r'id="refills-2">\s*1<', page.text)  # the last 30 days
    assert "What these queries cost (at 10 million users)" in page.text


async def test_ledger_is_paginated_newest_first(web: Web) -> None:
    """30 rows: page 1 holds the newest 25, page 2 the rest; links go both ways."""
    for i in range(30):
        await web.refiller.admin.grant("u1", i + 1, actor="t", reason=f"row {i + 1}")
    first = (await web.client.get("/users?id=u1")).text
    assert first.count("<tr") - 1 == 25
    assert first.index("row 30") < first.index("row 29")
    assert "Older" in first
    second = (await web.client.get("/users?id=u1&page=2")).text
    assert "row 5<" in second
    assert "row 30" not in second
    assert "Newer" in second


# -- refusals ----------------------------------------------------------------------------

ROUTES = [("GET", p) for p in GETS] + [
    ("POST", f"/users/{a}")
    for a in ("grant", "set-balance", "set-tier", "auto-refill", "refill-now")
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_auth_every_route_is_401_and_writes_nothing(
    web: Web, method: str, path: str
) -> None:
    """authorize returning None: 401 on every route, before anything is read or written."""
    before = await web.snapshot()
    data = {"csrf": web.csrf, "user": "u1", "amount": "5", "reason": "x", "step": "confirm",
            "form_id": "f" * 20, "tier": "pro", "enabled": "off"}  # fmt: skip
    response = await web.client.request(
        method, path, headers={"x-test-actor": ""}, data=data if method == "POST" else None
    )
    assert response.status_code == 401
    _check_headers(response)
    assert await web.snapshot() == before


@pytest.mark.parametrize(
    "change",
    [
        {"csrf": None},
        {"csrf": "wrong-token-wrong-token-wrong"},
        {"origin": "https://evil.example"},
        {"cookie": False},
    ],
    ids=["missing", "wrong", "cross-origin", "no-cookie"],
)
async def test_a_failed_csrf_check_is_403_and_writes_nothing(
    web: Web, change: dict[str, Any]
) -> None:
    """A POST without the right token (or from another origin) is refused with 403."""
    page = await web.review("grant", amount="500", reason="r")
    data = _form(page.text, "confirm-form")
    if "csrf" in change:
        if change["csrf"] is None:
            del data["csrf"]
        else:
            data["csrf"] = change["csrf"]
    headers = {"origin": change["origin"]} if "origin" in change else {}
    if change.get("cookie") is False:
        web.client.cookies.clear()
    before = await web.snapshot()
    response = await web.client.post("/users/grant", data=data, headers=headers)
    assert response.status_code == 403
    assert await web.snapshot() == before


BAD_INPUT = [
    ("grant", {"amount": "lots", "reason": "r"}, "amount", "digits only"),
    ("grant", {"amount": "", "reason": "r"}, "amount", "Enter an amount"),
    ("grant", {"amount": "0", "reason": "r"}, "amount", "changes nothing"),
    ("grant", {"amount": "1e9", "reason": "r"}, "amount", "digits only"),
    ("grant", {"amount": "99999999999999999999", "reason": "r"}, "amount", "out of range"),
    ("grant", {"amount": "500", "reason": "   "}, "reason", "reason is required"),
    ("grant", {"amount": "500", "reason": "x" * 501}, "reason", "under 500"),
    ("grant", {"amount": "-50000", "reason": "r"}, "amount", "below zero"),  # the library's refusal
    ("set-balance", {"amount": "-5", "reason": "r"}, "amount", "cannot be negative"),
    ("set-tier", {"tier": "platinum", "pin": "keep", "reason": "r"}, "tier", "Choose one"),
    ("set-tier", {"tier": "pro", "pin": "glue", "reason": "r"}, "pin", "keep, pin or unpin"),
    ("auto-refill", {"enabled": "maybe", "reason": "r"}, "enabled", "resume or pause"),
    ("refill-now", {"reason": ""}, "reason", "reason is required"),
]


@pytest.mark.parametrize("step", ["review", "confirm"])
@pytest.mark.parametrize(("action", "fields", "field", "message"), BAD_INPUT)
async def test_bad_input_is_400_with_a_message_at_the_field_and_nothing_written(
    web: Web, action: str, fields: dict[str, str], field: str, message: str, step: str
) -> None:
    """At the review or the confirmation step, bad input returns the form (open) with the
    message next to its field, HTTP 400, and no document written or changed."""
    before = await web.snapshot()
    data = {"csrf": web.csrf, "user": "u1", "step": step, "form_id": "x" * 22, **fields}
    response = await web.client.post(f"/users/{action}", data=data)
    assert response.status_code == 400
    assert f'<p class="msg" id="{field}-error">' in response.text
    assert message in response.text.split(f'id="{field}-error">', 1)[1].split("</p>")[0]
    assert '<details class="card" open>' in response.text
    assert await web.snapshot() == before


@pytest.mark.parametrize(
    ("query", "message"),
    [("?id=%20%20", "Enter a user id"), ("?id=abc&as=int", "digits only"),
     ("?id=" + "x" * 1100, "characters long")],
)  # fmt: skip
async def test_a_bad_user_id_is_400_on_the_find_form(web: Web, query: str, message: str) -> None:
    """Ids go through the library's validation; a bad one gets the find form back."""
    response = await web.client.get("/users" + query)
    assert response.status_code == 400
    assert message in response.text


async def test_unknown_users_are_404_and_nothing_is_created(web: Web) -> None:
    """GET and POST for a user with no balance document: 404, and no document appears."""
    before = await web.snapshot()
    page = await web.client.get("/users?id=nobody")
    assert page.status_code == 404
    assert "No such user" in page.text
    assert (await web.client.get("/users?id=7&as=int")).status_code == 404
    posted = await web.client.post(
        "/users/grant",
        data={"csrf": web.csrf, "user": "nobody", "amount": "5", "reason": "r", "step": "confirm"},
    )
    assert posted.status_code == 404
    unknown = await web.client.post("/users/delete-everything", data={"csrf": web.csrf})
    assert unknown.status_code == 404
    assert await web.snapshot() == before


# -- actions -----------------------------------------------------------------------------


async def test_a_double_submitted_grant_is_applied_once(web: Web) -> None:
    """The same confirmed form posted twice (and three times at once) grants once: one
    row each; the later posts answer "already applied" with a link to the row."""
    page = await web.review("grant", amount="500", reason="double click")
    data = _form(page.text, "confirm-form")
    first = await web.client.post("/users/grant", data=data)
    second = await web.client.post("/users/grant", data=data)
    assert first.status_code == 303
    assert second.status_code == 409
    assert "Already applied" in second.text
    assert first.headers["location"].split("&row=")[1] in second.text
    page2 = await web.review("grant", amount="7", reason="racing tabs")
    data2 = _form(page2.text, "confirm-form")
    racing = await asyncio.gather(*(web.client.post("/users/grant", data=data2) for _ in range(3)))
    assert sorted(r.status_code for r in racing)[0] == 303
    state = await web.refiller.get_state("u1")
    assert state.balance == 20_000 + 500 + 7
    rows = await web.refiller.admin.history("u1", 10)
    assert [r["rawAmount"] for r in rows if r["context"] == "admin"] == [7, 500]
    for response in racing:
        if response.status_code == 303 and "replayed=1" in response.headers["location"]:
            replay = await web.client.get("/users?" + response.headers["location"].split("?")[1])
            assert "already been applied" in replay.text
            assert "no ledger row was written" not in replay.text.lower()  # one message


ACTION_CASES = [
    ("grant", {"amount": "-250.5", "reason": "refund <b>"}, "admin", 19_749.5),
    ("set-balance", {"amount": "1234.5", "reason": "fix"}, "setBalance", 1_234.5),
    ("set-tier", {"tier": "pro", "pin": "pin", "reason": "upgrade"}, "setTier", 20_000),
    ("auto-refill", {"enabled": "off", "reason": "abuse"}, "setAutoRefill", 20_000),
    ("refill-now", {"reason": "goodwill"}, "refillNow", 20_000),
]


@pytest.mark.parametrize(("action", "fields", "context", "balance"), ACTION_CASES)
async def test_each_action_writes_one_row_with_the_actor_and_shows_it(
    web: Web, action: str, fields: dict[str, str], context: str, balance: float
) -> None:
    """Review, confirm: one new ledger row with the signed-in actor; the redirect shows the
    resulting state and that row."""
    if action == "refill-now":
        await web.refiller.spend("u1", 15_000)  # 5,000 left: below the threshold
        balance = 10_000
    before = await web.refiller.admin.history("u1", 100)
    review = await web.review(action, **fields)
    assert review.status_code == 200
    assert "Confirm" in review.text
    assert await web.refiller.admin.history("u1", 100) == before  # the review wrote nothing
    done = await web.client.post(f"/users/{action}", data=_form(review.text, "confirm-form"))
    assert done.status_code == 303
    rows = await web.refiller.admin.history("u1", 100)
    assert len(rows) == len(before) + 1
    row = rows[0]
    assert row["context"] == context
    assert row["actor"] == ACTOR
    if "amount" in fields or action == "refill-now":
        assert row["reason"] == fields["reason"]
    state = await web.refiller.get_state("u1")
    assert state.balance == balance
    page = await web.client.get("/users?" + done.headers["location"].split("?")[1])
    assert 'id="notice"' in page.text
    assert "New ledger row" in page.text
    assert f"by {ACTOR.replace('@', '@')}" in page.text
    assert '<tr class="new">' in page.text
    if action == "set-tier":
        assert state.tier == "pro"
        assert state.pinned
    if action == "auto-refill":
        assert not state.auto_refill
        assert 'id="auto-refill">paused<' in page.text
    form = await web.db["balance_refill_web_forms"].find_one({})
    assert form["actor"] == ACTOR
    assert form["reason"] == fields["reason"]
    assert form["row"] == str(row["_id"])


async def test_user_ids_and_reasons_are_escaped(web: Web) -> None:
    """A user id and a reason containing <script> are shown as text, never as markup."""
    evil = '<script>alert("id")</script>'
    await web.refiller.ensure_balance(evil)
    done = await web.confirm("grant", user=evil, amount="5", reason="<script>alert(1)</script>")
    assert done.status_code == 303
    page = await web.client.get("/users?" + done.headers["location"].split("?")[1])
    assert page.status_code == 200
    assert "<script" not in page.text
    assert "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    missing = await web.client.get("/users", params={"id": "<img src=x onerror=alert(1)>"})
    assert missing.status_code == 404
    assert "<img" not in missing.text


async def test_int_and_objectid_users(web: Web) -> None:
    """Numeric ids (marked `as=int`) and ObjectId hex ids round-trip through the pages."""
    await web.refiller.ensure_balance(42)
    hex_id = "65f1c0ffee0000000000a11c"
    await web.refiller.ensure_balance(hex_id)
    assert (await web.client.get("/users?id=42&as=int")).status_code == 200
    assert (await web.client.get("/users?id=42")).status_code == 404  # the string "42"
    page = await web.client.get(f"/users?id={hex_id}")
    assert "ObjectId" in page.text
    done = await web.confirm("grant", user="42", **{"as": "int"}, amount="1", reason="r")
    assert "as=int" in done.headers["location"]
    assert (await web.refiller.get_state(42)).balance == 20_001


async def test_admin_app_has_no_open_default(web: Web) -> None:
    """authorize is required and must be callable."""
    with pytest.raises(TypeError):
        admin_app(web.refiller)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        admin_app(web.refiller, authorize=None)  # type: ignore[arg-type]


async def test_mounted_under_a_prefix(web: Web, db: Any) -> None:
    """Mounted at /admin/credits, links, forms and redirects keep the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/admin/credits", admin_app(web.refiller, authorize=authorize))])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=host),
        base_url="https://testserver",
        headers={"x-test-actor": ACTOR},
    ) as client:
        page = await client.get("/admin/credits/users?id=u1")
        assert page.status_code == 200
        assert 'href="/admin/credits/static/admin.css"' in page.text
        assert 'action="/admin/credits/users/grant"' in page.text
        review = await client.post(
            "/admin/credits/users/grant",
            data={"csrf": _field(page.text, "csrf"), "user": "u1", "amount": "3",
                  "reason": "r", "step": "review", "seen": _field(page.text, "seen")},
        )  # fmt: skip
        done = await client.post(
            "/admin/credits/users/grant", data=_form(review.text, "confirm-form")
        )
        assert done.status_code == 303
        followed = await client.get(done.url.join(done.headers["location"]))
        assert followed.status_code == 200
        assert str(followed.url).startswith("https://testserver/admin/credits/users?")


# -- the standalone server ------------------------------------------------------------------

TOKEN = "s3cret-token-for-tests-0123"  # noqa: S105 - a test token


async def test_standalone_sign_in_sets_a_strict_session_cookie(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """The token is posted once; a wrong one is 401; the session cookie is Secure,
    HttpOnly and SameSite=Strict, names the actor, and a forged one is refused."""
    refiller = make_refiller(policy=TIERS)
    await refiller.ensure_balance("u1")
    app = standalone_app(refiller, token=TOKEN, balances=db["balances"], ledger=db["transactions"],
                         forms=db["balance_refill_web_forms"], banner="Demo data")  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://testserver") as client:  # fmt: skip
        assert (await client.get("/")).status_code == 401
        login = await client.get("/login")
        assert login.status_code == 200
        _check_headers(login)
        csrf = _field(login.text, "csrf")
        wrong = await client.post("/login", data={"csrf": csrf, "name": "bob", "token": "nope"})
        assert wrong.status_code == 401
        assert "not the admin token" in wrong.text
        no_csrf = await client.post("/login", data={"name": "bob", "token": TOKEN})
        assert no_csrf.status_code == 403
        ok = await client.post("/login", data={"csrf": csrf, "name": "bob", "token": TOKEN})
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        for flag in ("Secure", "HttpOnly", "SameSite=strict"):
            assert flag.lower() in cookie.lower()
        home = await client.get("/")
        assert home.status_code == 200
        assert "Demo data" in home.text
        assert "Signed in as <strong>bob</strong>" in home.text
        user_page = (await client.get("/users?id=u1")).text
        csrf = _field(user_page, "csrf")  # bound to the new session
        done = await client.post(
            "/users/grant",
            data=_form((await client.post("/users/grant", data={
                "csrf": csrf, "user": "u1", "amount": "9", "reason": "r", "step": "review",
                "seen": _field(user_page, "seen")})).text, "confirm-form"),
        )  # fmt: skip
        assert done.status_code == 303
        assert (await refiller.admin.history("u1", 1))[0]["actor"] == "bob"
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, "forged-" + "x" * 40, domain="testserver")
        assert (await client.get("/")).status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"host": "0.0.0.0"}, None, "BALANCE_REFILL_ADMIN_TOKEN"),  # noqa: S104 - refused
        ({"host": "127.0.0.1"}, None, "--insecure-local"),
        ({"host": "0.0.0.0", "insecure_local": True}, None, "only binds to 127.0.0.1"),  # noqa: S104
        ({"host": "127.0.0.1"}, "short", "too short"),
    ],
)
def test_serve_refuses_to_start_unsafely(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], env: str | None, message: str
) -> None:
    """No token: no server, unless bound to 127.0.0.1 with --insecure-local."""
    if env is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, env)
    out = io.StringIO()
    assert serve(port=8080, insecure_local=kwargs.pop("insecure_local", False), out=out,
                 **{"uri": None, **kwargs}) == 2  # fmt: skip
    assert message in out.getvalue()


async def test_the_mounting_example(db: Any) -> None:
    """examples/web_mount.py: FastAPI and plain Starlette hosts both serve the page at
    /admin/credits, behind the host's own authorize."""
    from examples.web_mount import create_app, create_starlette_app

    await BalanceRefiller(db["balances"], TIERS, ledger=db["transactions"]).ensure_balance("bo")
    for app in (create_app(db), create_starlette_app(db)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://testserver"
        ) as client:
            assert (await client.get("/admin/credits/users?id=bo")).status_code == 401
            page = await client.get("/admin/credits/users?id=bo", headers={"x-admin-user": "alice"})
            assert page.status_code == 200
            assert "web:alice" in page.text
