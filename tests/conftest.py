"""Fixtures: a tz-aware database on the chosen backend, recording collections, a fake clock.

`BALANCE_REFILL_TEST_BACKEND=mock|wire` (default mock; `MONGODB_URI` for a real server)
picks where every test's database lives: see tests/wire/backend.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import settings

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.cli import Connection
from balance_refill.policy import AnyPolicy
from balance_refill.testing import (
    CallLog,
    FakeClock,
    RecordingCollection,
)

from .wire import backend
from .wire.differences import EXPECTED_DIFFERENCES

START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

# Hypothesis profiles: `dev` (the default: quick local runs), `ci` (what CI runs: the
# model test's 2,000 examples, derandomized so a CI failure reproduces), `long` (20,000
# on demand). Pick one with HYPOTHESIS_PROFILE.
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("ci", max_examples=2_000, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def db() -> AsyncIterator[Any]:
    """A fresh tz-aware database per test, dropped at the end. On the mock its collections
    run bulk writes through the shim (mongomock's UpdateOne is broken); on a server it is
    reached through a real `AsyncMongoClient` made in the test's event loop."""
    async with backend.database() as database:
        yield database


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
    """Build a refiller whose gathered calls interleave. On the mock every call yields to
    the event loop first (the sweep's bulk updates go one by one there, each yielding),
    as on a server; on a server they interleave for real, so no wrapper changes the order."""
    mock = backend.is_mock()

    def make(policy: AnyPolicy, **kwargs: Any) -> BalanceRefiller:
        log = CallLog()
        return BalanceRefiller(
            RecordingCollection(db["balances"], log, yield_first=mock),
            policy,
            ledger=RecordingCollection(db["transactions"], log, yield_first=mock),
            leases=RecordingCollection(db["leases"], log, yield_first=mock),
            clock=clock,
            retry_delay=0,
            max_attempts=kwargs.pop("max_attempts", 200),
            **kwargs,
        )

    return make


@pytest.fixture
def cli_connection(db: Any, monkeypatch: pytest.MonkeyPatch) -> Connection | None:
    """What the CLI tests hand to `main()`: the test's mock database; on a server, no
    connection and `MONGODB_URI` naming the test's database, so the CLI opens (and
    closes) its own client inside the event loop its `asyncio.run` makes."""
    if backend.is_mock():
        monkeypatch.delenv("MONGODB_URI", raising=False)
        return Connection(client=None, database=db, mock=True)
    monkeypatch.setenv("MONGODB_URI", backend.uri_for(db.name))
    return None


@pytest.fixture
def own_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code that opens its own client (README blocks, examples, the demo) runs on the
    test backend: as written on the mock; on a server, with every client it makes
    replaced by one on the server (tests/wire/backend.py: `route_clients`)."""
    backend.route_clients(monkeypatch)


def server_uri() -> str | None:
    return os.environ.get("MONGODB_URI") or None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On the wire, each check listed in tests/wire/differences.py must fail (strict xfail)."""
    if not backend.is_wire():
        return
    for item in items:
        reason = EXPECTED_DIFFERENCES.get(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"mongoeco differs: {reason}"))


def pytest_sessionfinish() -> None:
    """Stop the wire server (also after failures and Ctrl-C; an atexit hook backs this)."""
    backend.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report the backend, and one line for each suite that claims a size: the model test,
    the fault matrix, the bad-input table and the query lint."""
    from tests import (
        test_faults,
        test_hostile,
        test_kill_and_cut,
        test_model,
        test_querylint,
        test_simulate,
    )

    def failed(path: str) -> int:
        return sum(1 for r in terminalreporter.stats.get("failed", []) if path in r.nodeid)

    terminalreporter.write_line(f"backend: {backend.describe()}")
    if backend.is_wire():
        terminalreporter.write_line(
            f"expected differences on the wire: {len(EXPECTED_DIFFERENCES)} "
            "(tests/wire/differences.py)"
        )

    if test_faults.MATRIX:
        total = sum(test_faults.MATRIX.values())
        terminalreporter.write_line(
            f"fault matrix: {total} cases over {len(test_faults.MATRIX)} operations "
            f"(every call position x before/after x 3 error types), "
            f"{len(test_faults.VIOLATIONS)} violations"
        )
    if test_model.RUNS["examples"]:
        terminalreporter.write_line(
            f"model test: {test_model.RUNS['examples']} examples of up to 12 steps "
            f"(profile {os.environ.get('HYPOTHESIS_PROFILE', 'dev')}), "
            f"{failed('tests/test_model.py')} violations"
        )
    if test_simulate.RUNS["examples"]:
        terminalreporter.write_line(
            f"simulator exactness: {test_simulate.RUNS['examples']} random policies and traces "
            f"compared with the live library user for user "
            f"(profile {os.environ.get('HYPOTHESIS_PROFILE', 'dev')}), "
            f"{failed('tests/test_simulate.py::test_simulated_equals')} violations"
        )
    for line in test_kill_and_cut.SUMMARY:
        terminalreporter.write_line(line)
    if test_querylint.LINTED:
        terminalreporter.write_line(
            f"query lint: {sum(test_querylint.LINTED)} calls of {len(test_querylint.LINTED)} "
            f"scenarios checked, {len(test_querylint.PROBLEMS)} problems"
        )
    if test_hostile.PASSED:
        terminalreporter.write_line(
            f"bad input: {sum(test_hostile.PASSED.values())} table cases refused with nothing written "
            f"({dict(test_hostile.PASSED)}), plus fuzzed policy files"
        )
