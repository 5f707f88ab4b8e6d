"""The examples a host developer copies work: the FastAPI app (in process, through httpx's
ASGI transport, its lifespan run) and the chat backend, on the test backend."""

from __future__ import annotations

import runpy
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect, InvalidOperation

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection
from examples import fastapi_app
from examples.chat_backend import ChatBackend
from examples.fastapi_app import PRICE_PER_WORD, create_app

from .conftest import START
from .wire import backend

ROOT = Path(__file__).resolve().parent.parent
DAY = timedelta(days=1)  # fastapi_app.POLICY: 1,000 credits a day, 1,000 to start


def words(cost: int) -> str:
    """A prompt that costs `cost` credits."""
    assert cost % PRICE_PER_WORD == 0
    return " ".join(["word"] * (cost // PRICE_PER_WORD))


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on `app`, in process, with the app's startup and shutdown run."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
    ):
        yield http


@pytest.fixture
async def http(db: Any, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(db, clock=clock)) as client:
        yield client


async def send(
    http: httpx.AsyncClient, user: str, cost: int, key: str | None = "m1"
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await http.post(f"/users/{user}/messages", json={"prompt": words(cost)}, headers=headers)


async def stored(db: Any, user: str) -> Any:
    doc = await db["balances"].find_one({"user": user})
    return None if doc is None else doc["tokenCredits"]


async def test_login_creates_the_user(http: httpx.AsyncClient, db: Any) -> None:
    """The login hook creates an unknown user with the policy's start balance."""
    assert await stored(db, "alice") is None
    response = await http.post("/users/alice/login")
    assert response.status_code == 200
    body = response.json()
    assert body["balance"] == 1_000
    assert body["refilled"] == 0
    assert datetime.fromisoformat(body["next_refill_at"]) == START + DAY
    assert await stored(db, "alice") == 1_000


async def test_login_refills_a_user_who_is_due(
    http: httpx.AsyncClient, db: Any, clock: FakeClock
) -> None:
    """A day after spending, the next login tops the user up again."""
    await http.post("/users/alice/login")
    assert (await send(http, "alice", 600)).json()["balance"] == 400
    clock.advance(DAY)
    body = (await http.post("/users/alice/login")).json()
    assert (body["balance"], body["refilled"]) == (1_000, 600)
    assert await stored(db, "alice") == 1_000


async def test_a_message_is_charged(http: httpx.AsyncClient, db: Any) -> None:
    """A message costs its price, on the stored balance too."""
    await http.post("/users/alice/login")
    response = await send(http, "alice", 200)
    assert response.status_code == 200
    assert response.json()["balance"] == 800
    assert response.json()["text"].startswith("echo: word")
    assert await stored(db, "alice") == 800


async def test_a_retried_request_id_is_charged_once(http: httpx.AsyncClient, db: Any) -> None:
    """The same Idempotency-Key twice is charged once; a new key is charged again."""
    await http.post("/users/alice/login")
    first = await send(http, "alice", 200, key="m1")
    retry = await send(http, "alice", 200, key="m1")
    assert (first.status_code, retry.status_code) == (200, 200)
    assert first.json()["balance"] == retry.json()["balance"] == 800
    assert await stored(db, "alice") == 800
    fresh = await send(http, "alice", 200, key="m2")
    assert fresh.json()["balance"] == 600
    assert await stored(db, "alice") == 600


async def test_out_of_credits_is_402_with_the_next_refill(
    http: httpx.AsyncClient, db: Any, clock: FakeClock
) -> None:
    """Out of credits: 402 with balance, needed and next_refill_at, nothing charged; at
    next_refill_at the same message goes through."""
    await http.post("/users/alice/login")
    assert (await send(http, "alice", 800, key="m1")).status_code == 200
    refused = await send(http, "alice", 400, key="m2")
    assert refused.status_code == 402
    body = refused.json()
    assert (body["balance"], body["needed"]) == (200, 400)
    next_refill_at = datetime.fromisoformat(body["next_refill_at"])
    assert next_refill_at == START + DAY
    assert await stored(db, "alice") == 200
    clock.set(next_refill_at)
    again = await send(http, "alice", 400, key="m2")
    assert again.status_code == 200
    assert again.json()["balance"] == 600  # refilled to 1,000, then charged


async def test_a_missing_idempotency_key_is_400(http: httpx.AsyncClient, db: Any) -> None:
    """Without the header the message is refused with 400, and nobody is created or charged."""
    response = await send(http, "alice", 200, key=None)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert await stored(db, "alice") is None


@pytest.mark.parametrize(
    ("user", "prompt", "key", "says"),
    [
        ("%20", "hello", "m1", "user id"),  # a blank user id: InvalidUserId
        ("u" * 1_025, "hello", "m1", "user id"),  # too long: InvalidUserId
        ("alice", "", "m1", "amount"),  # an empty prompt costs 0: InvalidAmount
        ("alice", "hello", "k" * 257, "request_id"),  # too long: InvalidArgument
    ],
)
async def test_bad_input_is_400(
    http: httpx.AsyncClient, db: Any, user: str, prompt: str, key: str, says: str
) -> None:
    """The library's ValueErrors become 400 with its message, and nothing is written."""
    response = await http.post(
        f"/users/{user}/messages", json={"prompt": prompt}, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 400
    assert says in response.json()["detail"]
    assert await db["balances"].count_documents({}) == 0


async def test_a_storage_failure_is_503(db: Any, clock: FakeClock) -> None:
    """A database that keeps failing gives 503 with a generic message, not a traceback."""
    log = CallLog()
    tables = {name: RecordingCollection(db[name], log) for name in ("balances", "transactions")}
    async with serve(create_app(tables, clock=clock)) as http:

        def down(call: Call, index: int) -> BaseException:
            return AutoReconnect("connection reset")

        log.fail_before = down
        response = await send(http, "alice", 200)
    assert response.status_code == 503
    assert response.json() == {"detail": "balance store unavailable; try again"}


async def test_metrics_are_served_for_prometheus(http: httpx.AsyncClient) -> None:
    """`/metrics` serves the library's counters and histograms in Prometheus' format."""
    await http.post("/users/alice/login")
    await send(http, "alice", 200)
    await send(http, "alice", 5_000, key="m2")  # refused: 402
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (
            sample.name,
            sample.labels.get("balance_refill_operation"),
            sample.labels.get("error_type") or None,
        ): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    count = "balance_refill_operation_duration_seconds_count"
    assert samples[("balance_refill_spends_total", None, None)] == 1
    assert samples[("balance_refill_spends_refused_total", None, None)] == 1
    assert samples[(count, "spend", None)] == 1
    assert samples[(count, "spend", "InsufficientCredits")] == 1
    assert samples[(count, "ensure_balance", None)] == 1


async def test_a_low_balance_sends_one_email_without_holding_up_the_request(
    db: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The message that takes alice below 200 credits logs one "email" to her from the
    async callback; the messages after it, still below, send none."""
    caplog.set_level("INFO", logger=fastapi_app.__name__)
    app = create_app(db, clock=clock)
    async with serve(app) as http:
        await http.post("/users/alice/login")
        assert (await send(http, "alice", 600, key="m1")).json()["balance"] == 400
        assert (await send(http, "alice", 300, key="m2")).json()["balance"] == 100
        assert (await send(http, "alice", 20, key="m3")).json()["balance"] == 80
        await app.state.refiller.events.drain()
    emails = [r for r in caplog.records if r.getMessage().startswith("email to user alice")]
    assert len(emails) == 1
    assert "below 200 credits" in emails[0].getMessage()


async def test_the_module_app_uses_mongodb_uri_and_closes_its_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`uvicorn examples.fastapi_app:app`: on the mock, without MONGODB_URI, it runs on its
    in-memory database; on a server, on MONGODB_URI's database, whose client its shutdown
    closes."""
    if backend.is_mock():
        monkeypatch.delenv("MONGODB_URI", raising=False)
        async with serve(fastapi_app.create_app()) as http:
            assert (await http.post("/users/alice/login")).json()["balance"] == 1_000
            assert (await send(http, "alice", 200)).json()["balance"] == 800
        return
    name = backend.unique_name("balance_refill_fastapi")
    monkeypatch.setenv("MONGODB_URI", backend.uri_for(name))
    opened: list[AsyncMongoClient[dict[str, Any]]] = []

    class Recorded(AsyncMongoClient[dict[str, Any]]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(fastapi_app, "AsyncMongoClient", Recorded)
    checker: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backend.uri(), tz_aware=True)
    try:
        async with serve(fastapi_app.create_app()) as http:
            assert (await http.post("/users/alice/login")).json()["balance"] == 1_000
            assert (await send(http, "alice", 200)).json()["balance"] == 800
        doc = await checker[name]["balances"].find_one({"user": "alice"})
        assert doc is not None
        assert doc["tokenCredits"] == 800
        assert len(opened) == 1
        with pytest.raises(InvalidOperation):  # closed at shutdown
            await opened[0][name]["balances"].find_one({})
    finally:
        await checker.drop_database(name)
        await checker.close()


async def test_chat_backend_charges_a_retry_once_and_a_new_id_again(
    db: Any, clock: FakeClock
) -> None:
    """ChatBackend.on_message: a retried message id is not charged; a new id is."""
    refiller = BalanceRefiller(
        db["balances"],
        RefillPolicy(amount=1_000, interval="1d", start_balance=1_000),
        ledger=db["transactions"],
        clock=clock,
    )
    chat = ChatBackend(refiller)
    assert (await chat.on_login("alice"))["balance"] == 1_000
    prompt = "one two three four five"  # 100 credits
    assert (await chat.on_message("alice", "m1", prompt)).balance == 900
    assert (await chat.on_message("alice", "m1", prompt)).balance == 900
    assert (await chat.on_message("alice", "m2", prompt)).balance == 800
    refused = await chat.on_message("alice", "m3", " ".join(["w"] * 41))
    assert not refused.ok
    assert "Not enough credits (800 left, 820 needed)" in refused.text


def test_chat_backend_example_shows_both_outcomes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, own_clients: None
) -> None:
    """`python examples/chat_backend.py` shows a retry not charged and a new id charged,
    each worked out from the balances it printed."""
    monkeypatch.setattr(sys, "argv", ["chat_backend.py"])
    runpy.run_path(str(ROOT / "examples" / "chat_backend.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "retry of m0 charged again? False" in out
    assert "new message m1 charged? True" in out
    assert "Not enough credits" in out
    assert len(out.splitlines()) <= 10
