"""Fixtures: a tz-aware mock database, recording collections, a fake clock."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.policy import AnyPolicy
from balance_refill.testing import (
    BulkWriteShim,
    CallLog,
    FakeClock,
    MockDatabase,
    RecordingCollection,
)

START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def db() -> AsyncIterator[Any]:
    """A fresh mock database per test (tz-aware, like a real client should be), whose
    collections run bulk writes through the shim (mongomock's UpdateOne is broken)."""
    client = AsyncMongoMockClient(tz_aware=True)
    yield MockDatabase(client["balance_refill_test"])
    client.close()


@pytest.fixture
def log() -> CallLog:
    return CallLog()


@pytest.fixture
def balances(db: Any, log: CallLog) -> RecordingCollection:
    return RecordingCollection(db["balances"], log)


@pytest.fixture
def ledger(db: Any, log: CallLog) -> RecordingCollection:
    return RecordingCollection(db["transactions"], log)


@pytest.fixture
def policy() -> RefillPolicy:
    return RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)


@pytest.fixture
def make_refiller(
    balances: RecordingCollection,
    ledger: RecordingCollection,
    clock: FakeClock,
    policy: RefillPolicy,
) -> Callable[..., BalanceRefiller]:
    """Build a refiller on the recording collections; keyword arguments override."""

    def make(**kwargs: Any) -> BalanceRefiller:
        kwargs.setdefault("ledger", ledger)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("retry_delay", 0)
        return BalanceRefiller(
            kwargs.pop("balances", balances), kwargs.pop("policy", policy), **kwargs
        )

    return make


@pytest.fixture
def refiller(make_refiller: Callable[..., BalanceRefiller]) -> BalanceRefiller:
    return make_refiller()


@pytest.fixture
def make_racing(db: Any, clock: FakeClock) -> Callable[..., BalanceRefiller]:
    """Build a refiller whose every call yields to the event loop first (and whose bulk
    writes yield between requests), so gathered calls interleave as on a server."""

    def make(policy: AnyPolicy, **kwargs: Any) -> BalanceRefiller:
        log = CallLog()
        balances = BulkWriteShim(db["balances"].inner, yield_between=True)
        return BalanceRefiller(
            RecordingCollection(balances, log, yield_first=True),
            policy,
            ledger=RecordingCollection(db["transactions"], log, yield_first=True),
            leases=RecordingCollection(db["leases"], log, yield_first=True),
            clock=clock,
            retry_delay=0,
            max_attempts=kwargs.pop("max_attempts", 200),
            **kwargs,
        )

    return make


@pytest.fixture
def cli_connection(db: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What the CLI tests hand to `main()`: the test's mock database, as a
    `balance_refill.cli.Connection` (the CLI leaves it open)."""
    from balance_refill.cli import Connection

    monkeypatch.delenv("MONGODB_URI", raising=False)
    return Connection(client=None, database=db, mock=True)


def server_uri() -> str | None:
    return os.environ.get("MONGODB_URI") or None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report the size of the fault matrix and of the bad-input table that ran."""
    from tests import test_faults, test_hostile

    if test_faults.MATRIX:
        total = sum(test_faults.MATRIX.values())
        terminalreporter.write_line(
            f"fault matrix: {total} cases over {len(test_faults.MATRIX)} operations "
            f"(every call position x before/after x 3 error types), "
            f"{len(test_faults.VIOLATIONS)} violations"
        )
    if test_hostile.PASSED:
        terminalreporter.write_line(
            f"bad input: {sum(test_hostile.PASSED.values())} table cases refused with nothing written "
            f"({dict(test_hostile.PASSED)}), plus fuzzed policy files"
        )
