"""Fixtures for the interop suite: one mongoeco wire server, LibreChat's own code (Node)
and this library on the same database.

These tests run on the wire backend (`BALANCE_REFILL_TEST_BACKEND=wire`, or a real server
at `MONGODB_URI`) and are skipped on the mock: LibreChat's code is a separate Node process,
so the database must be a server both can reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.policy import AnyPolicy
from balance_refill.testing import FakeClock
from tests.interop.node import ensure_node_modules, run_bridge
from tests.wire import backend

ON_SERVER = not backend.is_mock()
SKIP_REASON = (
    "LibreChat interop needs a server both programs reach: set BALANCE_REFILL_TEST_BACKEND=wire "
    "(a mongoeco wire server; or MONGODB_URI) to run LibreChat's @librechat/data-schemas in Node"
)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """LibreChat's packages, installed once (a missing npm fails loudly, never skips)."""
    return ensure_node_modules()


class LibreChatError(AssertionError):
    """A LibreChat command failed."""


@dataclass
class LibreChat:
    """LibreChat's own balance code (tests/interop/librechat/bridge.mjs) on the test's
    database. Each `run` is one Node process; batch commands to keep tests fast."""

    uri: str
    db_name: str

    async def run(self, *commands: dict[str, Any]) -> list[Any]:
        """Run commands in order; return their results; raise if any of them failed."""
        answers = await asyncio.to_thread(run_bridge, self.uri, self.db_name, commands)
        failed = [
            f"{command['op']}: {answer['error']}"
            for command, answer in zip(commands, answers, strict=True)
            if not answer["ok"]
        ]
        if failed:
            raise LibreChatError("LibreChat commands failed:\n" + "\n".join(failed))
        return [answer["result"] for answer in answers]

    async def one(self, op: str, **fields: Any) -> Any:
        (result,) = await self.run({"op": op, **fields})
        return result


@pytest.fixture
def librechat(db: Any, node_modules: Path) -> LibreChat:
    """LibreChat's code on the test's database (the `db` fixture of tests/conftest.py: a
    fresh database on the session's wire server, dropped after the test)."""
    return LibreChat(backend.uri(), db.name)


@pytest.fixture
def clock() -> FakeClock:
    """The library's clock, starting at the real time: LibreChat's code reads the real
    clock, so both programs must agree on "now" (tests move lastRefill into the past)."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def make_library(db: Any, clock: FakeClock) -> Callable[..., BalanceRefiller]:
    """The library on LibreChat's own collections (`balances`, `transactions`)."""

    def make(policy: AnyPolicy | None = None, **kwargs: Any) -> BalanceRefiller:
        kwargs.setdefault("ledger", db["transactions"])
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("retry_delay", 0)
        return BalanceRefiller(
            db["balances"],
            policy or RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
            **kwargs,
        )

    return make
