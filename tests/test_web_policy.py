"""The policy page with a policy store, in process through httpx on the test backend:
the version list, the editor and its per-field messages, the preview (it writes
nothing), apply and roll back through review → confirm with CSRF and replay-once, and
the read-only page without a store."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, ClassVar

import httpx
import pytest
from starlette.requests import Request

from balance_refill import BalanceRefiller, PolicyStore, RefillPolicy, TieredPolicy, TierRule
from balance_refill.testing import FakeClock
from balance_refill.web import admin_app
from balance_refill.web._demo import librechat_turn

ACTOR = "ana@ops"
TIERS = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
        "pro": RefillPolicy(amount=50_000, interval="30d", mode="add", max_balance=100_000),
    },
    default_tier="free",
    rules=(TierRule(from_tier="free", to_tier="pro", min_usage=0.8, periods=2, of_last=3),),
)
COLLECTIONS = ("balances", "transactions", "balance_refill_web_forms", "balance_refill_policies")


def authorize(request: Request) -> str | None:
    return request.headers.get("x-test-actor") or None


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"no field {name}"
    return unescape(match.group(1))


def unescape(text: str) -> str:
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&#34;", '"'), ("&quot;", '"'),
                         ("&#39;", "'"), ("&amp;", "&")):  # fmt: skip
        text = text.replace(entity, char)
    return text


def form_of(html: str, form_id: str) -> dict[str, str]:
    """A form's inputs (hidden and text), its checked boxes, its selected options and
    the first submit button, as a browser sends them."""
    body = html.split(f'id="{form_id}"', 1)[1].split("</form>", 1)[0]
    data: dict[str, str] = {}
    for tag in re.findall(r"<input [^>]*>", body):
        name = re.search(r'name="([^"]+)"', tag)
        if name is None:
            continue
        value = re.search(r'value="([^"]*)"', tag)
        if 'type="checkbox"' in tag:
            if " checked" in tag:
                data[name.group(1)] = "on"
            continue
        data[name.group(1)] = unescape(value.group(1)) if value else ""
    for name, options in re.findall(
        r'<select id="[^"]*" name="([^"]+)">(.*?)</select>', body, re.S
    ):
        picked = re.search(r'<option value="([^"]*)" selected>', options) or re.search(
            r'<option value="([^"]*)"', options
        )
        data[name] = unescape(picked.group(1)) if picked else ""
    for name, text in re.findall(
        r'<textarea [^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', body, re.S
    ):
        data[name] = unescape(text)
    return data


class Web:
    def __init__(self, client: httpx.AsyncClient, db: Any, store: PolicyStore) -> None:
        self.client = client
        self.db = db
        self.store = store

    async def editor(self) -> tuple[str, dict[str, str]]:
        page = await self.client.get("/policy/edit")
        assert page.status_code == 200, page.text
        return page.text, form_of(page.text, "policy-form")

    async def post_edit(self, step: str, **changes: str) -> httpx.Response:
        _, data = await self.editor()
        data.update(changes, step=step)
        return await self.client.post("/policy/edit", data=data)

    async def confirm(self, review: httpx.Response, path: str) -> httpx.Response:
        assert review.status_code == 200, review.text
        data = form_of(review.text, "confirm-form")
        data["step"] = "confirm"
        return await self.client.post(path, data=data)

    async def snapshot(self) -> dict[str, list[str]]:
        found = {}
        for name in COLLECTIONS:
            docs = await self.db[name].find({}).to_list(None)
            found[name] = sorted(repr(sorted(d.items())) for d in docs)
        return found


@pytest.fixture
async def store(db: Any, clock: FakeClock) -> PolicyStore:
    store = PolicyStore(db["balance_refill_policies"], clock=clock)
    await store.push(TIERS, actor="ops:setup", reason="the first policy")
    await store.activate(1, actor="ops:setup", reason="launch")
    return store


async def _usage(db: Any, clock: FakeClock) -> None:
    """Two users' LibreChat spend rows over the last 60 days."""
    rows = []
    for day in range(60):
        when = clock() - timedelta(days=60 - day)
        rows += librechat_turn("heavy", when, 6_000, 3_000)
        if day % 5 == 0:
            rows += librechat_turn("light", when, 500, 200)
    await db["transactions"].insert_many(rows)


@pytest.fixture
async def web(
    db: Any, store: PolicyStore, make_refiller: Callable[..., BalanceRefiller], clock: FakeClock
) -> AsyncIterator[Web]:
    refiller = make_refiller(policy=store, policy_refresh=timedelta(seconds=30))
    await refiller.ensure_balance("u1")
    await _usage(db, clock)
    app = admin_app(refiller, authorize=authorize, balances=db["balances"],
                    ledger=db["transactions"], forms=db["balance_refill_web_forms"],
                    clock=clock, policy_store=store)  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://testserver", headers={"x-test-actor": ACTOR}
    ) as client:
        yield Web(client, db, store)


async def test_the_page_lists_the_versions_with_the_active_one(web: Web) -> None:
    """Each version shows its number, actor and reason; the active one is marked and has
    no roll-back button."""
    await web.store.push(TIERS.model_copy(update={"default_tier": "pro"}), actor="ops:bo",
                         reason="try <pro> first")  # fmt: skip
    page = await web.client.get("/policy")
    assert page.status_code == 200
    assert 'id="active-version">version 1<' in page.text
    row1 = page.text.split('id="version-1"', 1)[1].split("</tr>", 1)[0]
    row2 = page.text.split('id="version-2"', 1)[1].split("</tr>", 1)[0]
    assert "active" in row1
    assert "ops:setup" in row1
    assert "the first policy" in row1
    assert "activate-1" not in row1
    assert "ops:bo" in row2
    assert "try &lt;pro&gt; first" in row2
    assert 'id="activate-2"' in row2
    assert page.text.index('id="version-2"') < page.text.index('id="version-1"')  # newest first


async def test_the_editor_shows_the_active_version(web: Web) -> None:
    """Every tier's fields, the default tier, the rules and the YAML hold version 1."""
    html, data = await web.editor()
    assert data["t0.name"] == "free"
    assert data["t0.amount"] == "10000"
    assert data["t0.period"] == "interval"
    assert data["t0.interval"] == "30d"
    assert data["t0.start_balance"] == "20000"
    assert data["t0.auto_refill"] == "on"
    assert data["t1.name"] == "pro"
    assert data["t1.mode"] == "add"
    assert data["t1.max_balance"] == "100000"
    assert data["default_tier"] == "free"
    assert (data["r0.from"], data["r0.to"], data["r0.usage"]) == ("free", "pro", "0.8")
    assert data["base"] == "1"
    assert "amount: 10000" in form_of(html, "yaml-form")["yaml"]


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"t0.amount": "ten"}, {"t0-amount-error": "digits only"}),
        ({"t0.amount": ""}, {"t0-amount-error": "whole number"}),
        ({"t1.max_balance": "10"}, {"t1-error": "below amount"}),
        ({"t0.interval": "soon"}, {"t0-interval-error": ""}),
        ({"t0.period": "calendar", "t0.calendar": ""}, {"t0-calendar-error": "Choose one of"}),
        ({"t0.period": "calendar", "t0.calendar": "month", "t0.timezone": "Mars/Base"},
         {"t0-error": ""}),
        ({"r0.usage": "lots", "t0.amount": "-5"},
         {"r0-usage-error": "decimal", "t0-amount-error": "digits only"}),
        ({"r0.periods": "9"}, {"r0-periods-error": ""}),
        ({"reason": ""}, {"reason-error": "reason is required"}),
        ({"days": "400"}, {}),
    ],
)  # fmt: skip
async def test_bad_fields_get_their_own_message_and_nothing_is_written(
    web: Web, changes: dict[str, str], fields: dict[str, str]
) -> None:
    """A wrong value is a 400 with a message beside the field (never a 500), the form
    keeps what was typed, and no collection changes."""
    before = await web.snapshot()
    step = "preview" if "days" in changes else "review"
    answer = await web.post_edit(step, **changes)
    assert answer.status_code == 400, answer.text
    assert 'id="errors-summary"' in answer.text
    for error_id, words in fields.items():
        message = answer.text.split(f'id="{error_id}"', 1)[1].split("</p>", 1)[0]
        assert words in message
    if "days" in changes:
        assert "from 1 to 90" in answer.text
    for _name, value in changes.items():
        if value:
            assert f'value="{value}"' in answer.text or f'value="{value}" selected' in answer.text
    assert await web.snapshot() == before


async def test_bad_yaml_gets_a_message_and_nothing_is_written(web: Web) -> None:
    """Broken YAML, an unknown setting, or a policy that does not validate: 400 with the
    message under the text, the text kept."""
    html, _ = await web.editor()
    data = form_of(html, "yaml-form")
    before = await web.snapshot()
    for text, words in (
        ("tiers: [", "not valid YAML"),
        ("amount: 100\ninterval: 30d\ncolour: blue", "colour"),
        ("amount: 100", "exactly one of 'interval'"),
        ("default_tier: a.b\ntiers:\n  a.b: {amount: 5, interval: 1d}\n", "cannot be stored"),
    ):
        answer = await web.client.post("/policy/edit", data={**data, "yaml": text,
                                                             "step": "review", "reason": "x"})  # fmt: skip
        assert answer.status_code == 400
        message = answer.text.split('id="yaml-error"', 1)[1].split("</p>", 1)[0]
        assert words in unescape(message)
        assert unescape(form_of(answer.text, "yaml-form")["yaml"]) == text
    assert await web.snapshot() == before


async def test_a_tampered_form_is_a_message_not_a_500(web: Web) -> None:
    """Hidden fields changed by hand (a tier count far too large, a tier name MongoDB
    cannot hold, a confirmation carrying a broken policy): 400, nothing written."""
    _, data = await web.editor()
    before = await web.snapshot()
    for changes in ({"tiers": "99999"}, {"t0.name": "a.b", "default_tier": "a.b"},
                    {"kind": "refill", "tiers": "0"}):  # fmt: skip
        answer = await web.client.post("/policy/edit", data={**data, **changes,
                                                             "step": "review", "reason": "x"})  # fmt: skip
        assert answer.status_code == 400, answer.text
    review = await web.post_edit("review", **{"t0.amount": "9000", "reason": "x"})
    confirm = {**form_of(review.text, "confirm-form"), "step": "confirm"}
    for candidate in ("{", '{"kind": "refill", "policy": {"amount": -1}}', "x" * 200_000):
        answer = await web.client.post("/policy/edit", data={**confirm, "candidate": candidate})
        assert answer.status_code == 400
    assert await web.snapshot() == before


async def test_a_preview_replays_usage_shows_charts_and_writes_nothing(web: Web) -> None:
    """Preview: the summary side by side, four script-free SVG charts as images, the
    candidate's lower amount granting fewer credits, and every collection unchanged."""
    before = await web.snapshot()
    answer = await web.post_edit("preview", **{"t0.amount": "4000", "days": "61"})
    assert answer.status_code == 200, answer.text
    assert "Preview: the last 61 days replayed" in answer.text
    summary = answer.text.split('id="preview-summary"', 1)[1].split("</table>", 1)[0]
    granted = re.search(
        r'Figure">credits granted</td><td data-label="Active" class="num">([\d,]+)</td>'
        r'<td data-label="Candidate" class="num">([\d,]+)</td>', summary)  # fmt: skip
    assert granted is not None
    active, candidate = (int(v.replace(",", "")) for v in granted.groups())
    assert candidate < active
    images = re.findall(r'<img src="data:image/svg\+xml;base64,([^"]+)"', answer.text)
    assert len(images) == 4
    for image in images:
        svg = base64.b64decode(image).decode()
        assert svg.startswith("<svg")
        assert "<script" not in svg.lower()
    assert "<script" not in answer.text.lower()
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert form_of(answer.text, "policy-form")["t0.amount"] == "4000"  # the form kept
    assert await web.snapshot() == before


async def test_apply_pushes_and_activates_and_the_refiller_switches(
    web: Web, db: Any, clock: FakeClock, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """Review shows the change; confirm pushes version 2 with the signed-in actor and
    the reason and activates it; a refiller on the store decides with it after its
    refresh and its ledger row carries policyVersion 2."""
    review = await web.post_edit("review", **{"t0.amount": "12345", "reason": "more for free"})
    assert review.status_code == 200, review.text
    assert "tiers.free.amount" in review.text
    assert "12345" in review.text
    assert await web.store.versions()
    assert len(await web.store.versions()) == 1
    done = await web.confirm(review, "/policy/edit")
    assert done.status_code == 303
    assert done.headers["location"].startswith("../policy?applied=2")
    version, policy = await web.store.active()
    assert version == 2
    assert isinstance(policy, TieredPolicy)
    assert policy.tiers["free"].amount == 12_345
    assert policy.tiers["pro"] == TIERS.tiers["pro"]
    assert policy.rules == TIERS.rules
    stored = await web.store.get(2)
    assert (stored.actor, stored.reason) == (ACTOR, "more for free")
    activation = (await web.store.activations())[0]
    assert (activation.version, activation.actor, activation.reason) == (2, ACTOR, "more for free")
    page = await web.client.get("/policy?applied=2")
    assert "Version 2 was stored and is now active" in page.text
    assert 'id="active-version">version 2<' in page.text

    serving = make_refiller(policy=web.store, policy_refresh=timedelta(seconds=30))
    await serving.refresh_policy()
    assert serving.policy_version == 2
    await serving.ensure_balance("newcomer")
    await serving.admin.set_balance("newcomer", 0, actor="t", reason="drain")
    clock.advance(timedelta(days=31))
    state = await serving.ensure_balance("newcomer")
    assert state.balance == 12_345
    rows = (
        await db["transactions"].find({"user": "newcomer", "context": "autoRefill"}).to_list(None)
    )
    assert [r["policyVersion"] for r in rows] == [2]


async def test_a_replayed_confirmation_applies_once(web: Web) -> None:
    """The same confirmation posted again (back and reload), or twice at once, pushes
    one version: the later ones say "Already applied"."""
    review = await web.post_edit("review", **{"t0.amount": "9000", "reason": "trim"})
    data = form_of(review.text, "confirm-form")
    data["step"] = "confirm"
    first, second = await asyncio.gather(
        web.client.post("/policy/edit", data=data), web.client.post("/policy/edit", data=data)
    )
    assert sorted([first.status_code, second.status_code])[0] == 303
    again = await web.client.post("/policy/edit", data=data)
    assert again.status_code == 409
    assert "Already applied" in again.text
    assert "version 2" in again.text
    assert [v.version for v in await web.store.versions()] == [1, 2]
    assert [a.version for a in await web.store.activations()] == [2, 1]


async def test_a_confirmation_after_another_change_is_refused(web: Web) -> None:
    """Reviewed on version 1, but someone activated another version since: 409
    "changed since you reviewed", nothing pushed."""
    review = await web.post_edit("review", **{"t0.amount": "9000", "reason": "trim"})
    other = await web.store.push(TIERS.model_copy(update={"default_tier": "pro"}),
                                 actor="ops:bo", reason="other")  # fmt: skip
    await web.store.activate(other, actor="ops:bo", reason="other")
    answer = await web.confirm(review, "/policy/edit")
    assert answer.status_code == 409
    assert "Changed since you reviewed" in answer.text
    assert [v.version for v in await web.store.versions()] == [1, 2]


@pytest.mark.parametrize("path", ["/policy/edit", "/policy/activate"])
@pytest.mark.parametrize("sent", [None, "forged", "other-session"])
async def test_a_change_without_the_right_csrf_token_is_refused(
    web: Web, path: str, sent: str | None
) -> None:
    """No token, a made-up one, or one bound to another actor: 403, nothing written."""
    _html, data = await web.editor()
    data.update({"t0.amount": "9000", "reason": "x", "step": "confirm", "version": "1"})
    if path == "/policy/edit":
        review = await web.post_edit("review", **{"t0.amount": "9000", "reason": "x"})
        data = {**form_of(review.text, "confirm-form"), "step": "confirm"}
    if sent is None:
        data.pop("csrf")
    elif sent == "forged":
        data["csrf"] = "A" * 43
    before = await web.snapshot()
    headers = {"x-test-actor": "mallory"} if sent == "other-session" else {}
    answer = await web.client.post(path, data=data, headers=headers)
    assert answer.status_code == 403
    assert "Nothing was changed" in answer.text
    assert await web.snapshot() == before


async def test_rolling_back_activates_an_older_version_once(web: Web) -> None:
    """Apply version 2, then activate version 1 from the list: review, confirm, the
    actor and reason recorded; the confirmation replayed is "Already applied"."""
    await web.confirm(await web.post_edit("review", **{"t0.amount": "9000", "reason": "trim"}),
                      "/policy/edit")  # fmt: skip
    page = await web.client.get("/policy")
    data = form_of(page.text, "activate-1")
    assert data["base"] == "2"
    missing = await web.client.post("/policy/activate", data={**data, "step": "review"})
    assert missing.status_code == 400
    assert "reason is required" in missing.text
    review = await web.client.post(
        "/policy/activate", data={**data, "reason": "trim was a mistake", "step": "review"}
    )
    assert review.status_code == 200
    assert "Make version 1 active again (now: version 2)" in review.text
    assert (await web.store.active())[0] == 2
    done = await web.confirm(review, "/policy/activate")
    assert done.status_code == 303
    assert done.headers["location"].startswith("../policy?activated=1")
    assert (await web.store.active())[0] == 1
    latest = (await web.store.activations())[0]
    assert (latest.version, latest.actor, latest.reason) == (1, ACTOR, "trim was a mistake")
    replay = await web.confirm(review, "/policy/activate")
    assert replay.status_code == 409
    assert "Already applied" in replay.text
    assert len(await web.store.activations()) == 3


async def test_activating_a_version_that_does_not_exist_is_a_message(web: Web) -> None:
    """A version that is not stored, or not a number: 400 with a message, nothing written."""
    csrf = field((await web.client.get("/policy/edit")).text, "csrf")
    before = await web.snapshot()
    for version in ("7", "x", "1"):
        answer = await web.client.post("/policy/activate", data={
            "csrf": csrf, "version": version, "base": "1", "reason": "r", "step": "confirm"})  # fmt: skip
        assert answer.status_code == 400
        assert "does not exist" in answer.text or "already active" in answer.text
    assert await web.snapshot() == before


async def test_the_yaml_editor_applies_a_policy(web: Web) -> None:
    """A policy pasted as YAML (here: one tier dropped) is reviewed and applied."""
    html, _ = await web.editor()
    data = form_of(html, "yaml-form")
    text = "amount: 7000\ninterval: 7d\nstart_balance: 7000\n"
    review = await web.client.post("/policy/edit", data={**data, "yaml": text, "step": "review",
                                                         "reason": "simpler"})  # fmt: skip
    assert review.status_code == 200, review.text
    assert (await web.confirm(review, "/policy/edit")).status_code == 303
    version, policy = await web.store.active()
    assert version == 2
    assert policy == RefillPolicy(amount=7000, interval="7d", start_balance=7000)


async def test_a_single_policy_is_edited_as_one_tier_and_stays_single(web: Web) -> None:
    """An active plain RefillPolicy shows as one tier without rules; edited, it is stored
    as a RefillPolicy again."""
    single = RefillPolicy(amount=7000, interval="7d", start_balance=7000)
    await web.store.activate(await web.store.push(single, actor="o", reason="r"), actor="o",
                             reason="r")  # fmt: skip
    html, data = await web.editor()
    assert data["kind"] == "refill"
    assert data["tiers"] == "1"
    assert 'id="rules"' not in html
    review = await web.post_edit("review", **{"t0.amount": "7500", "reason": "a bit more"})
    assert (await web.confirm(review, "/policy/edit")).status_code == 303
    assert (await web.store.active())[1] == single.model_copy(update={"amount": 7500})


async def test_without_a_store_the_page_is_read_only_and_says_how_to_edit(
    db: Any, make_refiller: Callable[..., BalanceRefiller]
) -> None:
    """A refiller on a fixed policy: the tiers are shown, editing is explained, and the
    editor's routes answer 404 without writing."""
    refiller = make_refiller(policy=TIERS)
    await refiller.ensure_balance("u1")
    app = admin_app(refiller, authorize=authorize, balances=db["balances"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://testserver",
                                 headers={"x-test-actor": ACTOR}) as client:  # fmt: skip
        page = await client.get("/policy")
        assert page.status_code == 200
        assert 'id="read-only"' in page.text
        assert "policy push FILE" in page.text
        assert "PolicyStore" in page.text
        assert "without --policy" in page.text
        assert 'id="edit-policy"' not in page.text
        assert '<td data-label="Tier"><strong>free' in page.text
        assert (await client.get("/policy/edit")).status_code == 404
        csrf = field((await client.get("/users?id=u1")).text, "csrf")
        answer = await client.post("/policy/activate", data={"csrf": csrf, "version": "1"})
        assert answer.status_code == 404
        answer = await client.post("/policy/edit", data={"csrf": csrf, "step": "review"})
        assert answer.status_code == 404
    assert await db["balance_refill_policies"].count_documents({}) == 0


def test_admin_app_refuses_a_store_that_is_not_one(refiller: BalanceRefiller) -> None:
    """`policy_store=` takes a PolicyStore; anything else is a TypeError at build time."""
    with pytest.raises(TypeError, match="PolicyStore"):
        admin_app(refiller, authorize=authorize, policy_store="balance_refill_policies")  # type: ignore[arg-type]


# -- balance-refill serve: the policy store and /metrics ------------------------------------

TOKEN = "s3cret-token-for-tests-0123"  # noqa: S105 - a test token


class Captured:
    """uvicorn's Server, replaced: it keeps the app instead of serving it."""

    apps: ClassVar[list[Any]] = []

    def __init__(self, config: Any) -> None:
        Captured.apps.append(config.app)

    async def serve(self) -> None:
        return None


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import uvicorn

    Captured.apps = []
    monkeypatch.setattr(uvicorn, "Server", Captured)
    monkeypatch.setenv("BALANCE_REFILL_ADMIN_TOKEN", TOKEN)
    return Captured.apps


@pytest.fixture
def shared_db(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`serve`'s connections all open one in-memory database (as a server would)."""
    from mongomock_motor import AsyncMongoMockClient

    from balance_refill import _connect

    database: Any = AsyncMongoMockClient(tz_aware=True)["LibreChat"]
    shared = _connect.Connection(None, database)
    monkeypatch.setattr(_connect, "connect", lambda uri, name: shared)
    return database


async def _signed_in(app: Any, check: Callable[[httpx.AsyncClient], Any]) -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            csrf = field((await client.get("/login")).text, "csrf")
            signed = await client.post("/login", data={"csrf": csrf, "name": "ana", "token": TOKEN})
            assert signed.status_code == 303
            await check(client)


def _serve(**kwargs: Any) -> tuple[int, str]:
    import io

    from balance_refill.web.serve import serve

    out = io.StringIO()
    code = serve(port=8080, out=out, **kwargs)
    return code, out.getvalue()


def test_serve_uses_the_stored_active_version_when_no_policy_is_given(
    captured: list[Any], shared_db: Any
) -> None:
    """No --policy and an active stored version: the refiller runs on the store and the
    policy page can edit; with --policy FILE the fixed policy is served, read only."""
    store = PolicyStore(shared_db["balance_refill_policies"])

    async def seed() -> None:
        await store.push(TIERS, actor="ops", reason="launch")
        await store.activate(1, actor="ops", reason="launch")

    asyncio.run(seed())
    code, said = _serve(uri="mongodb://db.example/")
    assert code == 0, said
    assert "policy from the policy store" in said

    async def editable(client: httpx.AsyncClient) -> None:
        page = await client.get("/policy")
        assert 'id="active-version">version 1<' in page.text
        assert 'id="in-process-version">1<' in page.text
        assert (await client.get("/policy/edit")).status_code == 200

    asyncio.run(_signed_in(captured[-1], editable))

    code, said = _serve(uri="mongodb://db.example/", policy=TIERS)
    assert code == 0
    assert "policy fixed (--policy)" in said

    async def read_only(client: httpx.AsyncClient) -> None:
        assert 'id="read-only"' in (await client.get("/policy")).text
        assert (await client.get("/policy/edit")).status_code == 404

    asyncio.run(_signed_in(captured[-1], read_only))


def test_serve_without_a_policy_or_an_active_version_refuses_to_start(
    captured: list[Any], shared_db: Any
) -> None:
    """No --policy and nothing active in the store: exit 2, saying what to do."""
    code, said = _serve(uri="mongodb://db.example/")
    assert code == 2
    assert "pass a policy (--policy FILE" in said
    assert "no active version" in said
    assert "policy push FILE" in said
    assert captured == []


def test_serve_metrics_are_refused_with_insecure_local(captured: list[Any]) -> None:
    """--metrics serves behind the admin token, so it cannot go with --insecure-local."""
    code, said = _serve(uri=None, insecure_local=True, metrics=True, host="127.0.0.1")
    assert code == 2
    assert "--metrics and --insecure-local exclude each other" in said
    assert captured == []


def test_serve_metrics_without_the_packages_fail_in_one_line(
    captured: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the OpenTelemetry SDK and Prometheus exporter, --metrics stops at start
    with one line naming both packages."""
    import sys

    monkeypatch.setitem(sys.modules, "balance_refill.web._metrics", None)
    code, said = _serve(uri=None, metrics=True)
    assert code == 2
    assert said.count("\n") == 1
    assert "opentelemetry-sdk" in said
    assert "opentelemetry-exporter-prometheus" in said
    assert captured == []


def test_the_demo_serves_an_editable_policy_and_metrics_behind_the_token(
    captured: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's store holds version 1 (the editor works); /metrics answers 401 without
    the token and the Prometheus text with it; the endpoint is shut down at stop."""
    from balance_refill.web import _metrics

    stopped: list[bool] = []
    original = _metrics.PrometheusEndpoint.shutdown

    def shutdown(self: _metrics.PrometheusEndpoint) -> None:
        stopped.append(True)
        original(self)

    monkeypatch.setattr(_metrics.PrometheusEndpoint, "shutdown", shutdown)
    code, said = _serve(uri=None, metrics=True)
    assert code == 0, said
    assert "/metrics behind the token" in said

    async def check(client: httpx.AsyncClient) -> None:
        page = await client.get("/policy")
        assert 'id="active-version">version 1<' in page.text
        assert "ops" not in page.text.split('id="version-1"', 1)[1].split("</tr>", 1)[0]
        assert (await client.get("/policy/edit")).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        user = (await client.get("/users?id=ben@example.com")).text
        grant = {"csrf": field(user, "csrf"), "seen": field(user, "seen"), "amount": "5",
                 "user": "ben@example.com", "reason": "metrics", "step": "confirm"}  # fmt: skip
        assert (await client.post("/users/grant", data=grant)).status_code == 303
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200
        assert "balance_refill" in scraped.text
        assert stopped == []

    asyncio.run(_signed_in(captured[-1], check))
    assert stopped == [True]


def test_serve_refuses_to_start_when_the_policy_store_cannot_be_read(
    captured: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --policy and a store the server refuses to read (no permission): exit 2 in one
    line with the driver's reason and what to pass instead; nothing is served."""
    from pymongo.errors import OperationFailure

    from balance_refill import _connect

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise OperationFailure("not authorized on LibreChat", code=13)

            return refuse

    class Database:
        def __getitem__(self, name: str) -> Any:
            return Refusing()

    broken: Any = Database()
    monkeypatch.setattr(_connect, "connect", lambda uri, name: _connect.Connection(None, broken))
    code, said = _serve(uri="mongodb://db.example/")
    assert code == 2
    assert said.count("\n") == 1
    assert "could not be read" in said
    assert "not authorized" in said
    assert "pass a policy (--policy FILE" in said
    assert captured == []
