"""The admin page on a LibreChat database (issue 20): each numbered finding, in process
through httpx. LibreChat's spend rows, one intent applied once, sessions that end,
sign-in limits, plain http refused, an honest balance chart, finding people, pages
without a ledger, reads through the library, oversized and non-ASCII digits, and CSRF
bound to the session with the Origin's scheme checked."""

from __future__ import annotations

import asyncio
import hmac
import io
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect
from starlette.requests import Request

from balance_refill import BalanceRefiller, RefillPolicy, TieredPolicy
from balance_refill.testing import FakeClock
from balance_refill.web import _charts, _rows, _sessions, admin_app
from balance_refill.web.serve import SESSION_COOKIE, TOKEN_ENV, serve, standalone_app

ACTOR = "ops@example"
TOKEN = "a-long-enough-admin-token-42"  # noqa: S105 - a test token
TIERS = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=10_000, interval="30d", start_balance=10_000),
        "pro": RefillPolicy(amount=50_000, interval="30d", mode="add"),
    },
    default_tier="free",
)
ALICE = ObjectId("65f1c0ffee0000000000a11c")


def authorize(request: Request) -> str | None:
    return request.headers.get("x-test-actor") or None


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no field {name}"
    return match.group(1).replace("&amp;", "&")


def confirm_form(html: str) -> dict[str, str]:
    """The confirmation page's form as a browser posts it."""
    body = html.split('id="confirm-form"', 1)[1].split("</form>", 1)[0]
    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))
    data["step"] = "confirm"
    return {k: v.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">") for k, v in data.items()}  # fmt: skip


def spend_rows(user: object, when: datetime, prompt: int, completion: int) -> list[dict[str, Any]]:
    """What LibreChat's spendTokens writes for one message: no balanceAfter."""
    return [
        {"user": user, "conversationId": "c1", "tokenType": kind, "model": "gpt-4o",
         "context": "message", "rawAmount": -n, "rate": rate, "tokenValue": -n * rate,
         "createdAt": when, "updatedAt": when}
        for kind, n, rate in (("prompt", prompt, 2.5), ("completion", completion, 10.0))
    ]  # fmt: skip


class Page:
    """An httpx client on admin_app, signed in as ACTOR."""

    def __init__(self, client: httpx.AsyncClient, db: Any, refiller: BalanceRefiller) -> None:
        self.client, self.db, self.refiller = client, db, refiller

    async def user(self, user: object = ALICE) -> httpx.Response:
        return await self.client.get("/users", params={"id": str(user)})

    async def review(
        self, action: str, page: str, user: object = ALICE, **fields: str
    ) -> httpx.Response:
        data = {"csrf": field(page, "csrf"), "seen": field(page, "seen"), "user": str(user),
                "step": "review", **fields}  # fmt: skip
        return await self.client.post(f"/users/{action}", data=data)


async def make_page(db: Any, refiller: BalanceRefiller, clock: Any) -> AsyncIterator[Page]:
    app = admin_app(refiller, authorize=authorize, balances=db["balances"],
                    forms=db["balance_refill_web_forms"], users=db["users"], clock=clock)  # fmt: skip
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://testserver",
        headers={"x-test-actor": ACTOR},
    ) as client:  # fmt: skip
        yield Page(client, db, refiller)


@pytest.fixture
async def page(
    db: Any, make_refiller: Callable[..., BalanceRefiller], clock: FakeClock
) -> AsyncIterator[Page]:
    refiller = make_refiller(policy=TIERS)
    await refiller.ensure_balance(ALICE)
    await db["users"].insert_one(
        {"_id": ALICE, "email": "alice@example.com", "name": "Alice Martin", "username": "alice"}
    )
    async for p in make_page(db, refiller, clock):
        yield p


# -- 1. LibreChat's rows render ------------------------------------------------------------


async def test_a_user_page_renders_librechat_spend_rows(page: Page, clock: FakeClock) -> None:
    """Finding 1: prompt/completion spends without balanceAfter, structured tokens,
    LibreChat's own autoRefill row and rows with odd fields render (200), as spends."""
    now = clock()
    rows = [
        *spend_rows(ALICE, now - timedelta(hours=2), 1000, 200),
        {"user": ALICE, "tokenType": "prompt", "model": "claude-3-5-sonnet", "context": "message",
         "rawAmount": -1500, "inputTokens": -1000, "writeTokens": -300, "readTokens": -200,
         "rate": 3, "tokenValue": -3000, "createdAt": now - timedelta(hours=1)},
        {"user": ALICE, "tokenType": "credits", "context": "autoRefill", "rawAmount": 10_000,
         "tokenValue": 10_000, "createdAt": now - timedelta(hours=3)},
        {"user": ALICE, "tokenType": 7, "rawAmount": "lots", "balanceAfter": None,
         "createdAt": "yesterday", "weird": {"nested": [1, 2]}},
        {"user": ALICE},
    ]  # fmt: skip
    await page.db["transactions"].insert_many(rows)
    response = await page.user()
    assert response.status_code == 200, response.text[-2000:]
    text = response.text
    assert "prompt spend" in text
    assert "completion spend" in text
    assert "gpt-4o" in text
    assert "1,000 input, 300 cache write, 200 cache read" in text
    assert "-2,500" in text  # 1,000 prompt tokens at 2.5 credits
    assert "weird: {&#39;nested&#39;: [1, 2]}" in text
    assert "≈" in text  # balances rebuilt for rows without balanceAfter


ROW_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.datetimes(timezones=st.none() | st.just(UTC)),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text("abcxyz", min_size=1, max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
ROW_KEYS = st.sampled_from(sorted(_rows.KNOWN - {"_id", "user"})) | st.text(
    "abcdefghij", min_size=1, max_size=8
)


@given(rows=st.lists(st.dictionaries(ROW_KEYS, ROW_VALUES, max_size=8), max_size=4))
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_row_shape_renders(rows: list[dict[str, Any]]) -> None:
    """Finding 1 as a property: a user page over arbitrary ledger rows answers 200."""
    from mongomock_motor import AsyncMongoMockClient

    async def run() -> None:
        db: Any = AsyncMongoMockClient(tz_aware=True)["t"]
        refiller = BalanceRefiller(db["balances"], TIERS, ledger=db["transactions"])
        await refiller.ensure_balance("u1")
        if rows:
            await db["transactions"].insert_many([{**r, "user": "u1"} for r in rows])
        async for p in make_page(db, refiller, None):
            response = await p.user("u1")
            assert response.status_code == 200, response.text[-1500:]

    asyncio.run(run())


# -- 2. one intent, applied once -------------------------------------------------------------


async def test_back_reload_and_confirm_again_grants_once(page: Page) -> None:
    """Finding 2: grant and confirm; then the browser's reload of the review (the same
    POST) and a confirmation of that stale review answer 409 "Already applied"."""
    user_page = (await page.user()).text
    review = await page.review("grant", user_page, amount="2500", reason="refund")
    done = await page.client.post("/users/grant", data=confirm_form(review.text))
    assert done.status_code == 303
    reload = await page.review("grant", user_page, amount="2500", reason="refund")
    assert reload.status_code == 409
    assert "Already applied" in reload.text
    again = await page.client.post("/users/grant", data=confirm_form(review.text))
    assert again.status_code == 409
    state = await page.refiller.get_state(ALICE)
    assert state.balance == 12_500
    rows = await page.refiller.admin.history(ALICE, 10)
    assert [r["rawAmount"] for r in rows if r["context"] == "admin"] == [2500]


async def test_a_second_tab_with_other_values_is_told_what_changed(page: Page) -> None:
    """Finding 2: two tabs from one page, different amounts: the second is refused with
    "Changed since you reviewed" and the current balance; a fresh page applies again."""
    user_page = (await page.user()).text
    one = await page.review("grant", user_page, amount="100", reason="a")
    two = await page.review("grant", user_page, amount="200", reason="b")
    assert (await page.client.post("/users/grant", data=confirm_form(one.text))).status_code == 303
    refused = await page.client.post("/users/grant", data=confirm_form(two.text))
    assert refused.status_code == 409
    assert "Changed since you reviewed" in refused.text
    assert "10,100" in refused.text
    fresh = (await page.user()).text
    review = await page.review("grant", fresh, amount="200", reason="b")
    assert (
        await page.client.post("/users/grant", data=confirm_form(review.text))
    ).status_code == 303
    assert (await page.refiller.get_state(ALICE)).balance == 10_300


async def test_five_concurrent_confirms_apply_once_with_one_consistent_notice(
    page: Page,
) -> None:
    """Finding 10: five confirmations of one review at once: one grant, and no page
    says both "applied once" and "no ledger row was written"."""
    user_page = (await page.user()).text
    review = await page.review("grant", user_page, amount="300", reason="race")
    data = confirm_form(review.text)
    answers = await asyncio.gather(*(page.client.post("/users/grant", data=data) for _ in range(5)))
    texts = []
    for answer in answers:
        shown = answer
        if answer.status_code == 303:
            shown = await page.client.get("/users?" + answer.headers["location"].split("?")[1])
        texts.append(shown.text.lower())
    for text in texts:
        assert not ("applied once" in text and "no ledger row was written" in text)
    assert sum("already" in t for t in texts) == 4
    assert (await page.refiller.get_state(ALICE)).balance == 10_300


# -- 3, 4, 5, 11. the standalone server's sessions --------------------------------------------


async def standalone(
    db: Any, refiller: BalanceRefiller, *, base: str = "https://testserver", **kwargs: Any
) -> tuple[Any, Callable[..., httpx.AsyncClient]]:
    app = standalone_app(refiller, token=TOKEN, balances=db["balances"],
                         forms=db["balance_refill_web_forms"], **kwargs)  # fmt: skip

    def client(address: str = "10.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 4242))
        return httpx.AsyncClient(transport=transport, base_url=base)

    return app, client


async def sign_in(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    login = await client.get("/login")
    return await client.post(
        "/login", data={"csrf": field(login.text, "csrf"), "name": "bob", "token": token}
    )


async def test_signing_out_ends_the_session_on_the_server(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """Finding 3: after sign-out, the old session cookie is refused (401)."""
    _, make = await standalone(db, make_refiller(policy=TIERS))
    async with make() as client:
        assert (await sign_in(client)).status_code == 303
        cookie = client.cookies[SESSION_COOKIE]
        home = await client.get("/")
        assert "Signed in as" in home.text
        out = await client.post("/logout", data={"csrf": field(home.text, "csrf")})
        assert out.status_code == 303
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, cookie, domain="testserver")
        assert (await client.get("/")).status_code == 401


async def test_sessions_expire_when_idle_and_after_their_lifetime(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """Sessions end after 30 idle minutes, and 8 hours after sign-in however active."""
    now = [0.0]
    sessions = _sessions.Sessions(clock=lambda: now[0])
    _, make = await standalone(db, make_refiller(policy=TIERS), sessions=sessions)
    async with make() as client:
        await sign_in(client)
        now[0] += 29 * 60
        assert (await client.get("/")).status_code == 200
        now[0] += 31 * 60
        assert (await client.get("/")).status_code == 401
        await sign_in(client)
        for _ in range(16):
            now[0] += 29 * 60
            assert (await client.get("/")).status_code == 200
        now[0] += 29 * 60  # 8h13m after sign-in
        assert (await client.get("/")).status_code == 401


async def test_sign_in_attempts_are_limited_per_address_and_in_total(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """Finding 4: the 6th wrong token from one address in a burst is 429 with
    Retry-After (even the right token then), another address still gets in, and 31
    attempts from 31 addresses hit the total limit."""
    now = [0.0]
    limits = _sessions.SignInLimits(clock=lambda: now[0])
    _, make = await standalone(db, make_refiller(policy=TIERS), limits=limits)
    async with make("10.0.0.9") as client:
        codes = [(await sign_in(client, "wrong-token")).status_code for _ in range(5)]
        assert codes == [401] * 5
        blocked = await sign_in(client)
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) >= 1
        now[0] += 12
        assert (await sign_in(client)).status_code == 303
    statuses = []
    for i in range(31):
        async with make(f"10.1.0.{i}") as other:
            statuses.append((await sign_in(other, "wrong-token")).status_code)
    assert statuses.count(429) >= 1
    assert statuses[:24] == [401] * 24


def test_a_wrong_token_is_compared_like_a_right_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 4: the token check compares fixed-length digests, whatever was typed."""
    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("balance_refill.web._sessions.hmac.compare_digest", spy)
    assert _sessions.token_matches(TOKEN, TOKEN)
    assert not _sessions.token_matches("x", TOKEN)
    assert not _sessions.token_matches("y" * 5000, TOKEN)
    assert seen == [(32, 32)] * 3


def test_serve_refuses_plain_http_on_another_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5: --host 0.0.0.0 without --behind-tls-proxy is refused in one line; with
    it, start goes on to the next check."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    out = io.StringIO()
    assert serve(host="0.0.0.0", port=8080, out=out) == 2  # noqa: S104 - refused
    assert "refusing plain http on 0.0.0.0" in out.getvalue()
    assert "--behind-tls-proxy" in out.getvalue()
    out = io.StringIO()
    assert serve(host="0.0.0.0", port=0, behind_tls_proxy=True, out=out) == 2  # noqa: S104
    assert "port must be" in out.getvalue()


async def test_a_cookie_the_browser_will_drop_is_explained(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """Finding 5: signing in over plain http from another address says why it cannot
    stay signed in, instead of "Sign-in required"."""
    _, make = await standalone(db, make_refiller(policy=TIERS), base="http://admin.example")
    async with make() as client:
        response = await sign_in(client)
        assert response.status_code == 400
        assert "plain http" in response.text
        assert "Secure session cookie" in response.text


async def test_csrf_is_bound_to_the_session_and_origin_checked(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """Finding 11: a token from an ended session, `Origin: null` and an Origin with
    another scheme are refused (403) and change nothing."""
    refiller = make_refiller(policy=TIERS)
    await refiller.ensure_balance("u1")
    _, make = await standalone(db, refiller)
    async with make() as client:
        await sign_in(client)
        old = (await client.get("/users?id=u1")).text
        await client.post("/logout", data={"csrf": field(old, "csrf")})
        await sign_in(client)
        fresh = (await client.get("/users?id=u1")).text
        data = {"user": "u1", "amount": "5", "reason": "r", "step": "review",
                "seen": field(fresh, "seen")}  # fmt: skip
        assert field(old, "csrf") != field(fresh, "csrf")
        stale = await client.post("/users/grant", data={**data, "csrf": field(old, "csrf")})
        assert stale.status_code == 403
        for origin in ("null", "http://testserver"):
            sent = await client.post("/users/grant", data={**data, "csrf": field(fresh, "csrf")},
                                     headers={"origin": origin})  # fmt: skip
            assert sent.status_code == 403, origin
        ok = await client.post("/users/grant", data={**data, "csrf": field(fresh, "csrf")},
                               headers={"origin": "https://testserver"})  # fmt: skip
        assert ok.status_code == 200
    assert (await refiller.get_state("u1")).balance == 10_000


# -- 7. the balance chart ---------------------------------------------------------------------


async def test_the_balance_chart_plots_the_real_balance(page: Page, clock: FakeClock) -> None:
    """Finding 7: with LibreChat spends (no balanceAfter) the chart ends at the balance
    now, not at the last refill's 10,000, and says it was rebuilt."""
    now = clock()
    await page.db["transactions"].insert_many(
        spend_rows(ALICE, now - timedelta(hours=1), 1000, 100)
    )
    await page.db["balances"].update_one({"user": ALICE}, {"$inc": {"tokenCredits": -3500}})
    text = (await page.user()).text
    assert 'id="balance">6,500<' in text
    chart = text.split("Balance over time", 1)[1].split("</svg>", 1)[0]
    values = re.findall(r": ([\d,.]+)</title></circle>", chart)
    assert values[-1] == "6,500"
    assert values == ["7,500", "6,500", "6,500"]  # after each spend, then now
    assert "rebuilt" in text


def test_axis_labels_are_never_clipped() -> None:
    """Finding 7: the left margin holds the longest value label (e.g. 60,744.75)."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    svg = str(_charts.balance_line([(t, 12.5), (t + timedelta(days=1), 60_744.75)], "b"))
    for x, label in re.findall(
        r'<text x="([\d.]+)" y="[\d.]+" class="lbl end">([^<]+)</text>', svg
    ):
        if "," in label or label.isdigit():
            assert float(x) - _charts.CHAR_WIDTH * len(label) >= 0, label
    svg = str(_charts.spend_bars([1e12], 5))
    x, label = re.findall(r'<text x="([\d.]+)" y="[\d.]+" class="lbl end">([^<]+)</text>', svg)[0]
    assert float(x) - _charts.CHAR_WIDTH * len(label) >= 0


# -- 8. finding people -----------------------------------------------------------------------


async def test_find_by_email_name_username_and_id(page: Page) -> None:
    """Finding 8: an email, a name or username prefix and an id all find Alice; results
    show the email and name beside the balance."""
    bob = ObjectId()
    await page.db["users"].insert_one({"_id": bob, "email": "bob@example.com", "name": "Bob"})
    await page.refiller.ensure_balance(bob)
    for query in ("alice@example.com", "Alice", "ali", str(ALICE), "  ALICE@example.com "):
        found = await page.client.get("/users", params={"q": query})
        assert found.status_code == 303, query
        assert f"id={ALICE}" in found.headers["location"]
    both = await page.client.get("/users", params={"q": "example"})
    assert both.status_code == 404  # an email matches from its start only
    listed = await page.client.get("/users", params={"q": "b"})
    assert listed.status_code == 303
    user = await page.user()
    assert "alice@example.com" in user.text
    assert "Alice Martin" in user.text


async def test_lists_page_through_users_at_zero_paused_and_tiers(page: Page) -> None:
    """Finding 8: users at zero, paused and per tier are lists with a next page."""
    for i in range(30):
        await page.refiller.ensure_balance(f"z{i:02}")
        await page.refiller.admin.set_balance(f"z{i:02}", 0, actor="t", reason="r")
    await page.refiller.admin.set_auto_refill("z03", False, actor="t")
    first = await page.client.get("/lists?kind=zero")
    assert first.status_code == 200
    shown = re.findall(r"<code class=\"uid\">(z\d\d)</code>", first.text)
    assert len(shown) == 25
    nxt = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert nxt
    second = await page.client.get(nxt.group(1).replace("&amp;", "&"))
    rest = re.findall(r"<code class=\"uid\">(z\d\d)</code>", second.text)
    assert sorted(shown + rest) == [f"z{i:02}" for i in range(30)]
    paused = await page.client.get("/lists?kind=paused")
    assert re.findall(r"<code class=\"uid\">(z\d\d)</code>", paused.text) == ["z03"]
    free = await page.client.get("/lists?kind=tier&tier=free")
    nxt = re.search(r'id="next-page" href="([^"]+)"', free.text)
    assert nxt
    later = await page.client.get(nxt.group(1).replace("&amp;", "&"))
    assert str(ALICE) in later.text  # string ids sort before ObjectIds: the last page
    assert "tokenCredits_1__id_1" in first.text


async def test_lookup_indexes_are_created_only_when_asked(page: Page) -> None:
    """Finding 8: the page creates no index; create_lookup_indexes creates the named ones."""
    directory = page.refiller.directory.with_users(page.db["users"])
    await page.client.get("/lists?kind=zero")
    await page.client.get("/users", params={"q": "ali"})
    missing = await directory.missing_indexes()
    assert missing == {
        "balances": ["tokenCredits_1__id_1", "refillPaused_1__id_1", "tier_1__id_1"],
        "users": ["email_1", "username_1", "name_1"],
    }
    created = await directory.create_lookup_indexes()
    assert len(created) == 6
    assert await directory.missing_indexes() == {}


# -- 9. no ledger, reads through the library -------------------------------------------------


async def test_without_a_ledger_the_page_says_there_is_no_history(
    db: Any, make_refiller: Callable[..., BalanceRefiller], clock: FakeClock
) -> None:
    """Finding 9: with no ledger the user page is 200 and says so; a grant applies and
    its claim is marked applied, not left "applying"."""
    refiller = make_refiller(policy=TIERS, ledger=None)
    await refiller.ensure_balance(ALICE)
    async for p in make_page(db, refiller, clock):
        user = await p.user()
        assert user.status_code == 200
        assert "no ledger collection" in user.text
        review = await p.review("grant", user.text, amount="5", reason="r")
        done = await p.client.post("/users/grant", data=confirm_form(review.text))
        assert done.status_code == 303
        assert (await p.client.get("/")).status_code == 200
    claims = await db["balance_refill_web_forms"].find({}).to_list(None)
    assert [c["state"] for c in claims] == ["applied"]


async def test_reads_go_through_the_store_and_are_retried(
    page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 9: a transient driver error on the history read is retried by the store."""
    ledger = page.refiller.directory._engine.ledger
    assert ledger is not None
    real = ledger.find
    failures = [AutoReconnect("blip")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "find", flaky)
    assert (await page.user()).status_code == 200
    assert failures == []


# -- 10. smaller findings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("9" * 5000, "out of range"),
        ("١٢٣", "digits only (0-9)"),
        ("\uff11\uff12", "digits only (0-9)"),
    ],
)
async def test_oversized_and_non_ascii_digits_are_400(
    page: Page, amount: str, message: str
) -> None:
    """Finding 10: a 5,000-digit amount and Arabic-Indic or full-width digits get a 400
    with a message, and nothing changes."""
    user_page = (await page.user()).text
    response = await page.review("grant", user_page, amount=amount, reason="r")
    assert response.status_code == 400
    assert message in response.text
    assert (await page.refiller.get_state(ALICE)).balance == 10_000


async def test_pause_and_tier_changes_show_reason_and_direction(page: Page) -> None:
    """Finding 10: the history shows "paused auto refill" and the tier change with the
    reason typed on the form."""
    for action, fields in (("auto-refill", {"enabled": "off", "reason": "abuse report 7"}),
                           ("set-tier", {"tier": "pro", "pin": "pin", "reason": "sales deal"})):  # fmt: skip
        review = await page.review(action, (await page.user()).text, **fields)
        assert (
            await page.client.post(f"/users/{action}", data=confirm_form(review.text))
        ).status_code == 303
    text = (await page.user()).text
    assert "paused auto refill" in text
    assert "abuse report 7" in text
    assert "tier free → pro" in text
    assert "sales deal" in text


def test_the_sign_in_token_field_is_styled() -> None:
    """Finding 10: the password input gets the same style as the other inputs."""
    from importlib.resources import files

    css = (files("balance_refill.web") / "static" / "admin.css").read_text()
    assert "input[type=password]" in css
    assert "td:empty { display: none; }" in css
