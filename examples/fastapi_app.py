"""A FastAPI chat backend on balance_refill: a login hook and a metered message endpoint.

Run it from the repository root with `uvicorn examples.fastapi_app:app` (`pip install
fastapi uvicorn`). Balances live in the database named in `MONGODB_URI` (default
`LibreChat`, as in LibreChat's own URI); without `MONGODB_URI` the app uses an in-memory
mock that forgets everything when it stops. Then:

    curl -X POST localhost:8000/users/alice/login
    curl -X POST localhost:8000/users/alice/messages -H 'Idempotency-Key: msg-1' \\
         -H 'Content-Type: application/json' -d '{"prompt": "hello there"}'

Send the same `Idempotency-Key` again (a client's retry) and it is not charged twice. Out of
credits, the answer is 402 with `balance`, `needed` and `next_refill_at`. Tests build the app
on their own database and clock: `create_app(db, clock=FakeClock())` (tests/test_examples.py).

Observability: `GET /metrics` serves the library's OpenTelemetry metrics in Prometheus'
text format (`pip install opentelemetry-sdk opentelemetry-exporter-prometheus`), and a
user whose balance falls below `low_balance` gets a (logged) email from an async event
callback, which never holds up the request that caused it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from pymongo import AsyncMongoClient

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    InsufficientCredits,
    RefillPolicy,
)
from balance_refill.events import Event, LowBalance
from balance_refill.metrics import Metrics

POLICY = RefillPolicy(amount=1_000, interval="1d", start_balance=1_000, low_balance=200)
PRICE_PER_WORD = 20  # credits; a real backend prices the model's expected tokens

log = logging.getLogger(__name__)


async def notify_low_balance(event: Event) -> None:
    """The event callback: email a user whose balance fell below their tier's level.

    It runs as a task after the spend committed, so a slow mail server delays no request;
    here the "email" is a log line (a real one would `await` an email API)."""
    if isinstance(event, LowBalance):
        log.info(
            "email to user %s: your balance is below %s credits; it refills daily",
            event.user, event.level, extra={"user": event.user, "operation": "notify"},
        )  # fmt: skip


class Message(BaseModel):
    prompt: str


class Balance(BaseModel):
    balance: int | float  # LibreChat's tokenCredits: often fractional
    next_refill_at: datetime | None  # None: auto refill is off for this user


class Login(Balance):
    refilled: int | float  # credits this login added


class Reply(Balance):
    text: str


class OutOfCredits(Balance):  # the 402 body
    detail: str = "not enough credits"
    needed: int | float


def get_refiller(request: Request) -> BalanceRefiller:
    refiller: BalanceRefiller = request.app.state.refiller
    return refiller


Refiller = Annotated[BalanceRefiller, Depends(get_refiller)]
router = APIRouter()


@router.post("/users/{user_id}/login")
async def login(user_id: str, refiller: Refiller) -> Login:
    """Call from your login flow: creates a new user, refills one who is due."""
    state = await refiller.ensure_balance(user_id)
    return Login(
        balance=state.balance,
        next_refill_at=state.next_refill_at,
        refilled=state.granted if state.refilled else 0,
    )


@router.post("/users/{user_id}/messages", responses={402: {"model": OutOfCredits}})
async def message(
    user_id: str,
    body: Message,
    refiller: Refiller,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Reply:
    """Charge the message's cost once per Idempotency-Key (a retry is free), then answer."""
    if idempotency_key is None:
        raise HTTPException(400, "the Idempotency-Key header is required: one per message")
    cost = len(body.prompt.split()) * PRICE_PER_WORD
    state = await refiller.spend(user_id, cost, request_id=idempotency_key)
    return Reply(
        balance=state.balance, next_refill_at=state.next_refill_at, text=f"echo: {body.prompt}"
    )


@asynccontextmanager
async def connect() -> AsyncIterator[Any]:
    """The database in MONGODB_URI, its client closed at exit."""
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        # For trying the app only: an in-memory mock, emptied when the app stops.
        from mongomock_motor import AsyncMongoMockClient

        yield AsyncMongoMockClient(tz_aware=True)["LibreChat"]
        return
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        yield client.get_default_database("LibreChat")
    finally:
        await client.close()


def create_app(
    database: Any = None,
    *,
    policy: RefillPolicy = POLICY,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The app on `database` (a test's), or on the one `connect()` opens at startup."""

    # Metrics: the OpenTelemetry SDK, read by the Prometheus exporter into this app's own
    # registry (served at /metrics below).
    registry = CollectorRegistry()
    meters = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with connect() if database is None else nullcontext(database) as db:
            refiller = BalanceRefiller(
                db["balances"],
                policy,
                ledger=db["transactions"],
                clock=clock,
                on_event=notify_low_balance,
                metrics=Metrics(meters),
            )
            report = await refiller.ensure_indexes()
            if not report.ok:  # an old LibreChat database: usable, but say so
                log.warning("users with several balance documents: %s", dict(report.duplicates))
            app.state.refiller = refiller
            yield
            await refiller.events.drain()  # let the last notifications finish
        meters.shutdown()

    app = FastAPI(title="chat backend", lifespan=lifespan)
    app.include_router(router)

    @app.get("/metrics")
    async def metrics() -> Response:
        """The library's metrics in Prometheus' text format (put it behind your auth)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(InsufficientCredits)
    async def out_of_credits(request: Request, exc: InsufficientCredits) -> JSONResponse:
        body = OutOfCredits(
            balance=exc.balance, needed=exc.amount, next_refill_at=exc.next_refill_at
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=402)

    @app.exception_handler(BalanceRefillError)
    async def refused(request: Request, exc: BalanceRefillError) -> JSONResponse:
        if isinstance(exc, ValueError):  # InvalidUserId, InvalidAmount, InvalidArgument
            return JSONResponse({"detail": str(exc)}, status_code=400)
        log.error("balance store failed: %s", exc)  # StorageError, ContentionError
        return JSONResponse({"detail": "balance store unavailable; try again"}, status_code=503)

    return app


app = create_app()
