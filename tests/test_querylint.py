"""Every call each operation sends obeys the real server's rules (see querylint.py)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import pytest

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill.policy import as_tiered
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection

from .querylint import lint

LINTED: list[int] = []
"""Calls linted per scenario, for the run's summary line (tests/conftest.py)."""
PROBLEMS: list[tuple[str, str]] = []


async def exercise(refiller: BalanceRefiller, db: Any, clock: FakeClock) -> None:
    """Drive every operation through its branches."""
    await refiller.ensure_indexes()
    await refiller.ensure_balance("first")
    await refiller.spend("first", 10)
    await refiller.spend("brand-new", 10, request_id="r1")
    await db["balances"].insert_one(
        {"user": "due", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=40)}
    )
    await refiller.ensure_balance("due")
    await db["balances"].insert_one({"user": "due2", "tokenCredits": 0})
    await refiller.spend("due2", 5)
    with contextlib.suppress(InsufficientCredits):
        await refiller.spend("due2", 10**9)
    await refiller.flush_pending()
    await refiller.grant("first", 5, actor="a", reason="r")
    await refiller.set_balance("first", 50, actor="a", reason="r")
    await refiller.set_auto_refill("first", False, actor="a")
    await refiller.set_auto_refill("first", True, actor="a")
    await refiller.set_tier(
        "first", as_tiered(refiller.policy).default_tier, actor="a", pinned=True
    )
    await refiller.refill_now("first", actor="a", reason="r")
    await refiller.get_state("first")
    await refiller.history("first")
    await db["balances"].insert_many(
        [
            {"user": f"s{i}", "tokenCredits": 0, "lastRefill": clock() - timedelta(days=40)}
            for i in range(5)
        ]
    )
    await refiller.sweep(dry_run=True, active_within="90d")
    await refiller.sweep(batch_size=2, active_within="90d")
    await refiller.sweep(batch_size=2)


@pytest.mark.parametrize("mode", ["top_up", "add", "reset"])
async def test_every_call_passes_the_lint(
    make_refiller: Any, db: Any, clock: FakeClock, log: CallLog, mode: str
) -> None:
    """No recorded call breaks a rule that only a real server enforces."""
    refiller = make_refiller(
        policy=RefillPolicy(
            amount=100, interval="30d", mode=mode, max_balance=150, start_balance=100
        ),
        leases=RecordingCollection(db["leases"], log),
    )
    await exercise(refiller, db, clock)
    assert log.count > 10
    problems = {(c.method, p) for c in log.calls for p in lint(c)}
    LINTED.append(len(log.calls))
    PROBLEMS.extend(sorted(problems))
    assert problems == set()
    # The ledger is insert-only: no update or delete ever reaches it.
    ledger_methods = {c.method for c in log.calls if c.collection == "transactions"}
    assert ledger_methods <= {"insert_one", "insert_many", "find", "create_index"}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            Call(
                "b",
                "find_one_and_update",
                ({"user": 1}, {"$setOnInsert": {"tokenCredits": 0}, "$inc": {"tokenCredits": 5}}),
                {"upsert": True},
            ),
            "two operators on one path",
        ),
        (
            Call(
                "b",
                "find_one_and_update",
                ({"user": 1}, {"$set": {"a": 1}, "$unset": {"a.b": ""}}),
                {},
            ),
            "two operators on one path",
        ),
        (
            Call(
                "b",
                "find_one_and_update",
                ({"$expr": {"$lt": ["$a", 1]}}, {"$set": {"a": 1}}),
                {"upsert": True},
            ),
            "$expr in an upsert filter",
        ),
        (Call("b", "update_one", ({"user": 1}, [{"$set": {"t": "$$NOW"}}]), {}), "$$NOW"),
        (
            Call("b", "update_one", ({"user": 1}, [{"$replaceWith": {"a": 1}}]), {}),
            "stage $replaceWith",
        ),
        (Call("b", "update_one", ({"user": 1}, [{"$set": {"a": {"$mul": [1, 2]}}}]), {}), "$mul"),
        (
            Call("b", "update_one", ({"user": 1}, [{"$set": {"a": 1}}]), {"upsert": True}),
            "pipeline update with upsert",
        ),
        (Call("b", "update_one", ({"user": 1}, {"$rename": {"a": "b"}}), {}), "$rename"),
        (
            Call(
                "b",
                "find_one_and_update",
                ({"_id": 1, "lastRefill": {"$lt": 5}}, {"$set": {"a": 1}}),
                {"upsert": True},
            ),
            "conditional filter on _id",
        ),
        (Call("b", "update_one", ({"user": {"$where": "1"}}, {"$set": {"a": 1}}), {}), "$where"),
        (
            Call(
                "b",
                "update_one",
                ({"u": 1}, [{"$set": {"a": {"$concatArrays": ["$a", [{"$literal": 1}]]}}}]),
                {},
            ),
            "array literal",
        ),
    ],
)
def test_lint_catches_what_the_mock_accepts(call: Call, expected: str) -> None:
    """The lint itself fails on each rule it claims to enforce."""
    assert any(expected in p for p in lint(call)), lint(call)
