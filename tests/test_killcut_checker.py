"""The kill-and-cut checker (tests/killcut/checker.py) on hand-made databases and logs:
it passes a consistent one, resolves unknown outcomes, and flags each kind of violation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from balance_refill.decide import request_key as library_request_key

from .killcut.checker import LogFile, Report, check, request_key

DAY = timedelta(days=1)
T = datetime(2026, 1, 15, tzinfo=UTC)
USER = "64f0c0ffee0000000000beef"


def row(context: str, before: float, after: float, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "user": ObjectId(USER),
        "context": context,
        "rawAmount": after - before,
        "tokenValue": after - before,
        "balanceBefore": before,
        "balanceAfter": after,
        "createdAt": at,
        **extra,
    }


def write_log(path: Path, events: list[dict[str, Any]], *, torn: bool = False) -> Path:
    text = "".join(json.dumps(e) + "\n" for e in events)
    path.write_text(text + ('{"e": "sta' if torn else ""))
    return path


def spend(call: str, rid: str, amount: float, *outcomes: str | None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for n, outcome in enumerate(outcomes, start=1):
        events.append(
            {"e": "start", "call": call, "attempt": n, "op": "spend", "user": USER}
            | {"amount": amount, "rid": rid}
        )
        if outcome is not None:
            events.append({"e": "end", "call": call, "attempt": n, "outcome": outcome})
    return events


def grant(call: str, amount: float, outcome: str | None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"e": "start", "call": call, "attempt": 1, "op": "grant", "user": USER, "amount": amount}
    ]
    if outcome is not None:
        events.append({"e": "end", "call": call, "attempt": 1, "outcome": outcome})
    return events


class World:
    """A consistent run: start 100; a refill of 300; a grant of 10.5; spend a (20.25) told
    charged; spend b (5.5) killed but in recentRequests; spend c (7.25) failed, not charged."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.start = {USER: Fraction(100)}
        self.rows = [
            row("autoRefill", 100, 400, T),
            row("admin", 379.75, 390.25, T + DAY / 2, reason="call w1-2"),
        ]
        self.doc: dict[str, Any] = {
            "user": ObjectId(USER),
            "tokenCredits": 100 + 300 + 10.5 - 20.25 - 5.5,
            "recentRequests": [request_key("a"), request_key("b")],
        }
        self.events = [
            *spend("w1-1", "a", 20.25, "error", "ok"),
            *grant("w1-2", 10.5, "ok"),
            *spend("w1-3", "b", 5.5, None),
            *spend("w1-4", "c", 7.25, "error", "error"),
        ]
        self.killed = True

    def check(self) -> Report:
        log = write_log(self.tmp_path / "w1.log", self.events, torn=True)
        return check(self.start, [self.doc], self.rows, [LogFile(log, self.killed)], interval=DAY)


def test_request_key_is_the_librarys() -> None:
    """The checker's own request key is the one the library keeps in `recentRequests`."""
    for rid in ("a", "msg-1", "é" * 300):
        assert request_key(rid) == library_request_key(rid)


def test_a_consistent_run_passes_and_is_counted(tmp_path: Path) -> None:
    """A consistent database and log: no violation; retries, kills and evidence counted."""
    report = World(tmp_path).check()
    assert report.violations == []
    assert (report.calls, report.retries, report.errors, report.torn_lines) == (4, 2, 3, 1)
    assert (report.grants, report.grants_applied, report.grants_unknown) == (1, 1, 0)
    assert report.in_flight_at_kills == [1]
    assert (report.spends_charged, report.unknown_spends, report.resolved_by_recent) == (1, 2, 1)
    assert (report.balance_equations, report.row_equations, report.refills) == (1, 2, 1)
    assert report.resolved_by_equation == 0


def test_an_unknown_spend_missing_from_recent_is_resolved_by_the_equation(
    tmp_path: Path,
) -> None:
    """A spend of unknown outcome whose key fell out of `recentRequests` but was charged:
    the balance equation accounts for it."""
    world = World(tmp_path)
    world.doc["tokenCredits"] -= 7.25
    report = world.check()
    assert report.violations == []
    assert report.resolved_by_equation == 1


def break_balance(world: World) -> None:
    world.doc["tokenCredits"] -= 1 / 64  # the smallest fraction the workers use


def charge_twice(world: World) -> None:
    world.doc["tokenCredits"] -= 20.25


def grant_twice(world: World) -> None:
    world.rows.append(row("admin", 390.25, 400.75, T + DAY, reason="call w1-2"))
    world.doc["tokenCredits"] += 10.5


def lose_grant(world: World) -> None:
    del world.rows[1]
    world.doc["tokenCredits"] -= 10.5


def refill_twice(world: World) -> None:
    world.rows.append(row("autoRefill", 390.25, 690.25, T + DAY - timedelta(seconds=1)))
    world.doc["tokenCredits"] += 300


def leave_marker(world: World) -> None:
    world.doc["pendingLedger"] = {"_id": ObjectId()}


def keep_key_twice(world: World) -> None:
    world.doc["recentRequests"].append(request_key("a"))


def duplicate_row(world: World) -> None:
    world.rows.append(dict(world.rows[0], _id=ObjectId()))
    world.doc["tokenCredits"] += 300


def miscount_row(world: World) -> None:
    world.rows[0]["rawAmount"] = 299.5


@pytest.mark.parametrize(
    ("damage", "found"),
    [
        (break_balance, "final"),
        (charge_twice, "final"),
        (grant_twice, "applied 2 times"),
        (lose_grant, "reported but not applied"),
        (refill_twice, "two refills"),
        (leave_marker, "pending ledger marker"),
        (keep_key_twice, "kept 2 times"),
        (duplicate_row, "one ledger row 2 times"),
        (miscount_row, "amount"),
    ],
)
def test_each_violation_is_found(tmp_path: Path, damage: Any, found: str) -> None:
    """Each kind of damage to a consistent run is reported as a violation."""
    world = World(tmp_path)
    damage(world)
    violations = world.check().violations
    assert violations
    assert any(found in v for v in violations), violations


def test_a_user_with_two_documents_is_a_violation(tmp_path: Path) -> None:
    """A second balance document for one user is reported (and its equation skipped)."""
    world = World(tmp_path)
    report = check(world.start, [world.doc, dict(world.doc)], world.rows, [], interval=DAY)
    assert any("2 balance documents" in v for v in report.violations)
    assert report.balance_equations == 0


def test_many_unknown_spends_are_still_resolved_exactly(tmp_path: Path) -> None:
    """Forty spends of unknown outcome: the subset search still settles the equation,
    and a balance no subset explains is still a violation."""
    amounts = [5 + n / 64 for n in range(40)]
    events = [e for n, a in enumerate(amounts) for e in spend(f"w1-{n}", f"x{n}", a, None)]
    log = write_log(tmp_path / "w1.log", events)
    doc = {"user": ObjectId(USER), "tokenCredits": 1000 - amounts[3] - amounts[17] - amounts[39]}
    report = check({USER: Fraction(1000)}, [doc], [], [LogFile(log, True)], interval=DAY)
    assert report.violations == []
    assert report.resolved_by_equation == 1
    doc["tokenCredits"] = 1000 - 1 / 128  # finer than any spend: no subset gives it
    report = check({USER: Fraction(1000)}, [doc], [], [LogFile(log, True)], interval=DAY)
    assert len(report.violations) == 1


def test_a_grant_retried_by_another_process_is_one_grant(tmp_path: Path) -> None:
    """A killed worker's grant retried elsewhere with its key (`origin`) is one grant:
    applied once is fine, and its retry's success settles it."""
    world = World(tmp_path)
    world.events = [
        *grant("w1-2", 10.5, None),
        {"e": "start", "call": "w2-1", "attempt": 1, "op": "grant", "user": USER}
        | {"amount": 10.5, "origin": "w1-2"},
        {"e": "end", "call": "w2-1", "attempt": 1, "outcome": "ok"},
        *spend("w1-1", "a", 20.25, "ok"),
        *spend("w1-3", "b", 5.5, "ok"),
    ]
    report = world.check()
    assert report.violations == []
    assert (report.grants, report.grants_applied, report.grants_unknown) == (1, 1, 0)


def test_an_exception_outside_the_librarys_is_a_violation(tmp_path: Path) -> None:
    """A call that raised something other than a `BalanceRefillError` is reported."""
    world = World(tmp_path)
    world.events = [*world.events, *spend("w1-9", "z", 1.0, "crash")]
    assert any("outside the library" in v for v in world.check().violations)
