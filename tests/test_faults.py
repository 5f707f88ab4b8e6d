"""Fault injection: a transient error at every call position of every operation, raised
before the server applies the call or after it applied it (reply lost). After the
library's own retries and flush_pending(), the state equals the fault-free run's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect, NetworkTimeout, WriteConcernError

from balance_refill import (
    BalanceRefiller,
    InsufficientCredits,
    RefillPolicy,
    StorageError,
    TieredPolicy,
)
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection

from .querylint import lint
from .wire import backend

NOW = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)
POLICY = TieredPolicy(
    tiers={
        "regular": RefillPolicy(amount=1_000, interval="1mo", start_balance=300),
        "heavy": RefillPolicy(amount=4_000, calendar="week", timezone="Europe/Paris", mode="add"),
    },
    default_tier="regular",
)
ERRORS: dict[str, Callable[[], BaseException]] = {
    "AutoReconnect": lambda: AutoReconnect("connection reset by peer"),
    "NetworkTimeout": lambda: NetworkTimeout("timed out"),
    "WriteConcernError": lambda: WriteConcernError("waiting for replication timed out", 64, {}),
}
MATRIX: dict[str, int] = {}  # scenario -> cases run; printed in the terminal summary
VIOLATIONS: list[str] = []

Op = Callable[[BalanceRefiller], Awaitable[Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: list[dict[str, Any]]
    op: Op


DUE = NOW - timedelta(days=40)


def users(*docs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"tokenCredits": 0, "lastRefill": NOW - timedelta(days=1), **d} for d in docs]


SCENARIOS = [
    Scenario("ensure_balance first seen", [], lambda r: r.ensure_balance("new")),
    Scenario(
        "ensure_balance no refill",
        users({"user": "u", "tokenCredits": 50}),
        lambda r: r.ensure_balance("u"),
    ),
    Scenario(
        "ensure_balance refill",
        users({"user": "u", "lastRefill": DUE}),
        lambda r: r.ensure_balance("u"),
    ),
    Scenario("spend covered", users({"user": "u", "tokenCredits": 50}), lambda r: r.spend("u", 20)),
    Scenario(
        "spend with refill", users({"user": "u", "lastRefill": DUE}), lambda r: r.spend("u", 20)
    ),
    Scenario(
        "spend insufficient", users({"user": "u", "tokenCredits": 5}), lambda r: r.spend("u", 20)
    ),
    Scenario("spend first seen", [], lambda r: r.spend("new", 20, request_id="req-1")),
    Scenario("grant", users({"user": "u"}), lambda r: r.grant("u", 70, actor="ops", reason="r")),
    Scenario(
        "set_balance",
        users({"user": "u", "tokenCredits": 9}),
        lambda r: r.set_balance("u", 70, actor="ops", reason="r"),
    ),
    Scenario(
        "set_tier",
        users({"user": "u"}),
        lambda r: r.set_tier("u", "heavy", actor="ops", pinned=True),
    ),
    Scenario(
        "set_auto_refill",
        users({"user": "u"}),
        lambda r: r.set_auto_refill("u", False, actor="ops"),
    ),
    Scenario(
        "refill_now",
        users({"user": "u", "tokenCredits": 10}),
        lambda r: r.refill_now("u", actor="ops", reason="r"),
    ),
    Scenario(
        "sweep",
        users(
            *({"user": f"s{i}", "lastRefill": DUE} for i in range(5)),
            {"user": "fresh"},
            {"user": "off", "lastRefill": DUE, "autoRefillEnabled": False},
        ),
        lambda r: r.sweep(batch_size=2),
    ),
    Scenario(
        "flush_pending",
        users(
            {
                "user": "p",
                "pendingLedger": {
                    "_id": ObjectId("65a000000000000000000001"),
                    "user": "p",
                    "tokenType": "credits",
                    "context": "autoRefill",
                    "rawAmount": 5,
                    "tokenValue": 5,
                    "createdAt": NOW,
                },
            }
        ),
        lambda r: r.flush_pending(),
    ),
    Scenario("ensure_indexes", users({"user": "u"}), lambda r: r.ensure_indexes()),
    Scenario(
        "get_state and history",
        users({"user": "u"}),
        lambda r: asyncio.gather(r.get_state("u"), r.history("u")),
    ),
]


def normalise(balances: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Any:
    """The state that matters, without ids chosen at random (op ids count, by number)."""
    volatile = {"_id", "lastOpId", "recentRequests", "pendingLedger", "recentOps"}
    docs = sorted(
        (
            sorted(
                [(k, repr(v)) for k, v in d.items() if k not in volatile]
                + [("recentOps", repr(len(d.get("recentOps", []))))]
            )
            for d in balances
        ),
        key=repr,
    )
    ledger = sorted(
        (
            r["user"],
            r["context"],
            r["rawAmount"],
            r.get("balanceBefore"),
            r.get("balanceAfter"),
            r["createdAt"],
        )
        for r in rows
    )
    pending = sum(1 for d in balances if "pendingLedger" in d)
    return docs, ledger, pending


def outcome(result: Any) -> Any:
    if isinstance(result, BaseException):
        return type(result).__name__
    balance = getattr(result, "balance", None)
    return ("ok", balance, getattr(result, "refilled", None))


async def run(
    scenario: Scenario, fault: tuple[str, int, str] | None, *, retry_attempts: int = 3
) -> tuple[Any, Any, int, CallLog]:
    """Run the scenario with the fault on a fresh database of the test backend."""
    async with backend.database("faults") as db:
        return await run_on(db, scenario, fault, retry_attempts)


async def run_on(
    db: Any, scenario: Scenario, fault: tuple[str, int, str] | None, retry_attempts: int
) -> tuple[Any, Any, int, CallLog]:
    if scenario.seed:
        await db["balances"].insert_many([dict(d) for d in scenario.seed])
    log = CallLog()
    clock = FakeClock(NOW)
    refiller = BalanceRefiller(
        RecordingCollection(db["balances"], log),
        POLICY,
        ledger=RecordingCollection(db["transactions"], log),
        leases=RecordingCollection(db["leases"], log),
        clock=clock,
        retry_delay=0,
        retry_attempts=retry_attempts,
    )
    if fault is not None:
        variant, position, error = fault
        fired = [False]

        def inject(call: Call, index: int) -> BaseException | None:
            if index == position and not fired[0]:
                fired[0] = True
                return ERRORS[error]()
            return None

        if variant == "before":
            log.fail_before = inject
        else:
            log.fail_after = inject
    try:
        result: Any = await scenario.op(refiller)
    except (InsufficientCredits, StorageError) as exc:
        result = exc
    calls = log.count
    log.fail_before = log.fail_after = None
    await refiller.flush_pending()
    balances = [d async for d in db["balances"].find()]
    rows = [r async for r in db["transactions"].find()]
    return outcome(result), normalise(balances, rows), calls, log


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_every_fault_position(scenario: Scenario) -> None:
    """Each (call position x before/after x error type) ends in the fault-free state."""
    golden_result, golden_state, calls, log = await run(scenario, None)
    assert calls > 0
    assert golden_state[2] == 0  # no marker left behind
    assert [p for c in log.calls for p in lint(c)] == []
    cases = 0
    for position in range(calls):
        for variant in ("before", "after"):
            for error in ERRORS:
                result, state, _, _ = await run(scenario, (variant, position, error))
                cases += 1
                where = f"{scenario.name}: {error} {variant} call {position} ({log.calls[position].collection}.{log.calls[position].method})"
                if result != golden_result or state != golden_state:
                    VIOLATIONS.append(where)
                assert result == golden_result, where
                assert state == golden_state, where
    MATRIX[scenario.name] = cases


async def test_the_faults_really_fire() -> None:
    """Without the library's retries the same injected faults do surface: the matrix is
    not passing vacuously."""
    scenario = next(s for s in SCENARIOS if s.name == "spend with refill")
    _, _, calls, _ = await run(scenario, None)
    surfaced = 0
    for position in range(calls):
        result, _, _, _ = await run(
            scenario, ("after", position, "AutoReconnect"), retry_attempts=1
        )
        surfaced += result == "StorageError"
    assert surfaced == calls
