"""The independent invariant checker of the kill-and-cut run.

It knows LibreChat's layout and the workers' logs, not the library's code: it reads the
final `balances` and `transactions` and every log line, and verifies exactly (with
`Fraction`s, so fractional credits are compared without rounding):

- no balance document still holds a pending ledger marker (after the final flush);
- each user has one balance document;
- every ledger row's amount is its `balanceAfter - balanceBefore`;
- no two ledger rows are the same row (user, context, time, before, after);
- two automatic refills of one user are at least one interval apart (no second refill
  in a period);
- a grant is applied at most once (one `admin` row naming its call), and a grant the
  caller was told succeeded is applied;
- no call raised anything but the library's own exceptions;
- no request id is kept twice in `recentRequests` (no spend id charged twice);
- each user's balance equation: start + ledger rows - charged spends = final balance.
  A spend is charged if a call with its id was told so, not charged if every attempt
  was refused for lack of credits; otherwise (killed, or failed) its id in
  `recentRequests` proves it was charged, and the ones left are resolved by the
  equation itself: the balance must be reached by charging some subset of them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

PENDING = "pendingLedger"
RECENT = "recentRequests"
GRANT_REASON = "call "  # a worker's grant names its call in `reason`
MAX_UNITS = 10**8  # the subset search's bound: the unknown spends' total in smallest units


def credits(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number of credits: {value!r}")
    return Fraction(value)


def request_key(request_id: str) -> int:
    """The 64-bit key a request id is kept under in `recentRequests` (blake2b, 8 bytes)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass
class Call:
    call: str
    op: str
    user: str | None
    amount: Fraction | None = None
    rid: str | None = None
    origin: str = ""  # a grant: the call whose key and reason it carries (itself, or the
    # killed worker's call it retries)
    outcomes: list[str | None] = field(default_factory=list)  # per attempt; None: no end


@dataclass(frozen=True)
class LogFile:
    path: Path
    killed: bool


@dataclass
class Report:
    users: int = 0
    calls: int = 0
    attempts: int = 0
    retries: int = 0
    errors: int = 0  # attempts that ended in a library error (StorageError and the like)
    duplicate_sends: int = 0  # spend ids sent by two calls
    rows: int = 0
    row_equations: int = 0
    balance_equations: int = 0
    refills: int = 0
    min_refill_gap: timedelta | None = None
    spends_charged: int = 0
    spends_refused: int = 0
    unknown_spends: int = 0
    resolved_by_recent: int = 0
    resolved_by_equation: int = 0  # users whose equation needed unknown spends charged
    grants: int = 0
    grants_applied: int = 0
    grants_unknown: int = 0  # never told "ok": settled by their ledger rows
    grants_unknown_applied: int = 0
    in_flight_at_kills: list[int] = field(default_factory=list)
    torn_lines: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        flight = self.in_flight_at_kills
        gap = self.min_refill_gap
        gap_text = f"{gap.days}d {gap.seconds // 60}min" if gap is not None else "n/a"
        return (
            f"{self.users} users, {self.calls} calls ({self.retries} retries, "
            f"{self.errors} errors, {self.duplicate_sends} spend ids sent twice at once), "
            f"{self.rows} ledger rows, "
            f"{self.refills} refills (smallest gap {gap_text}), "
            f"{self.balance_equations} balance + {self.row_equations} row equations checked; "
            f"calls in flight at kills: {sum(flight)} "
            f"({min(flight, default=0)}-{max(flight, default=0)} per kill); "
            f"outcomes unknown to the caller: {self.unknown_spends} spends "
            f"({self.resolved_by_recent} proven charged by recentRequests, the rest settled by "
            f"the equations, {self.resolved_by_equation} users' needing some charged), "
            f"{self.grants_unknown} of {self.grants} grants "
            f"({self.grants_unknown_applied} applied, by their ledger rows); "
            f"{len(self.violations)} violations"
        )


def read_logs(logs: Iterable[LogFile], report: Report) -> dict[str, Call]:
    calls: dict[str, Call] = {}
    for log in logs:
        lines = log.path.read_text().splitlines() if log.path.exists() else []
        open_calls: set[str] = set()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                report.torn_lines += 1
                continue
            kind = event.get("e")
            if kind == "start":
                call = calls.setdefault(
                    event["call"],
                    Call(
                        event["call"],
                        event["op"],
                        event.get("user"),
                        None if event.get("amount") is None else credits(event["amount"]),
                        event.get("rid"),
                        event.get("origin") or event["call"],
                    ),
                )
                call.outcomes.append(None)
                open_calls.add(event["call"])
            elif kind == "end":
                call = calls[event["call"]]
                call.outcomes[event["attempt"] - 1] = event["outcome"]
                open_calls.discard(event["call"])
        if log.killed:
            report.in_flight_at_kills.append(len(open_calls))
    return calls


def check(
    start: Mapping[str, Fraction],
    balances: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    logs: Iterable[LogFile],
    *,
    interval: timedelta,
) -> Report:
    """Verify the final database against the seeded balances and the logs."""
    report = Report(users=len(start))
    calls = read_logs(logs, report)
    report.calls = len(calls)
    report.attempts = sum(len(c.outcomes) for c in calls.values())
    report.retries = report.attempts - report.calls
    report.errors = sum(o == "error" for c in calls.values() for o in c.outcomes)
    for call in calls.values():
        if "crash" in call.outcomes:
            report.violations.append(f"{call.op} {call.call}: an exception outside the library's")
    docs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in balances:
        docs[str(doc["user"])].append(doc)
    _check_documents(start, docs, report)
    by_user = _check_rows(rows, interval, report)
    _check_grants(calls, rows, report)
    charged, unresolved = _resolve_spends(calls, docs, report)
    for user, initial in start.items():
        held = docs.get(user, [])
        if len(held) == 1:
            report.balance_equations += 1
            _check_equation(
                user,
                initial,
                credits(held[0]["tokenCredits"]),
                sum((credits(r["rawAmount"]) for r in by_user.get(user, [])), Fraction(0)),
                charged[user],
                unresolved.get(user, []),
                report,
            )
    return report


def _check_documents(
    start: Mapping[str, Fraction], docs: Mapping[str, list[dict[str, Any]]], report: Report
) -> None:
    """One document per user, no marker left, no request key kept twice."""
    for user in start:
        if len(docs.get(user, [])) != 1:
            report.violations.append(f"{user}: {len(docs.get(user, []))} balance documents")
    for user, held in docs.items():
        for doc in held:
            if doc.get(PENDING) is not None:
                report.violations.append(f"{user}: a pending ledger marker left after the flush")
            for key, n in Counter(doc.get(RECENT) or []).items():
                if n > 1:
                    report.violations.append(f"{user}: request key {key} kept {n} times")


def _check_rows(
    rows: list[dict[str, Any]], interval: timedelta, report: Report
) -> dict[str, list[dict[str, Any]]]:
    """Each row's own equation, no row twice, refills at least `interval` apart."""
    report.rows = len(rows)
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: Counter[tuple[object, ...]] = Counter()
    for row in rows:
        user = str(row["user"])
        by_user[user].append(row)
        before, after = credits(row["balanceBefore"]), credits(row["balanceAfter"])
        amount = credits(row["rawAmount"])
        report.row_equations += 1
        if amount != after - before or credits(row["tokenValue"]) != amount:
            report.violations.append(
                f"{user}: row {row['_id']} amount {amount} != {after} - {before}"
            )
        seen[(user, row["context"], row["createdAt"], before, after, row.get("reason"))] += 1
    for identity, n in seen.items():
        if n > 1:
            report.violations.append(f"{identity[0]}: one ledger row {n} times: {identity[1:]}")
    for user, held in by_user.items():
        times = sorted(r["createdAt"] for r in held if r["context"] == "autoRefill")
        report.refills += len(times)
        for earlier, later in itertools.pairwise(times):
            gap = later - earlier
            if report.min_refill_gap is None or gap < report.min_refill_gap:
                report.min_refill_gap = gap
            if gap < interval:
                report.violations.append(f"{user}: two refills {gap} apart ({earlier} and {later})")
    return by_user


def _check_grants(calls: Mapping[str, Call], rows: list[dict[str, Any]], report: Report) -> None:
    """Each grant applied at most once (its `admin` rows name its call, which its retries
    from other processes name too), and applied if a caller was told so."""
    applied_rows: Counter[str] = Counter(
        str(row["reason"])[len(GRANT_REASON) :]
        for row in rows
        if row["context"] == "admin" and str(row.get("reason", "")).startswith(GRANT_REASON)
    )
    grants: dict[str, list[Call]] = defaultdict(list)
    for call in calls.values():
        if call.op == "grant":
            grants[call.origin].append(call)
    for origin, group in grants.items():
        applied = applied_rows.get(origin, 0)
        outcomes = [o for c in group for o in c.outcomes]
        user = group[0].user
        report.grants += 1
        report.grants_applied += min(applied, 1)
        if applied > 1:
            report.violations.append(
                f"grant {origin} to {user} applied {applied} times (attempts: {outcomes})"
            )
        if "ok" in outcomes and applied == 0:
            report.violations.append(f"grant {origin} to {user} reported but not applied")
        if "ok" not in outcomes:
            report.grants_unknown += 1
            report.grants_unknown_applied += min(applied, 1)


def _resolve_spends(
    calls: Mapping[str, Call], docs: Mapping[str, list[dict[str, Any]]], report: Report
) -> tuple[dict[str, Fraction], dict[str, list[Fraction]]]:
    """Per user: the credits of spends known charged, and the amounts still unknown."""
    spends: dict[str, list[Call]] = defaultdict(list)
    for call in calls.values():
        if call.op == "spend" and call.rid is not None:
            spends[call.rid].append(call)
    report.duplicate_sends = sum(1 for group in spends.values() if len(group) > 1)
    charged: dict[str, Fraction] = defaultdict(Fraction)
    unresolved: dict[str, list[Fraction]] = defaultdict(list)
    for rid, group in spends.items():
        user, amount = group[0].user or "", group[0].amount or Fraction(0)
        outcomes = [o for c in group for o in c.outcomes]
        if "ok" in outcomes:
            report.spends_charged += 1
            charged[user] += amount
        elif all(o == "insufficient" for o in outcomes):
            report.spends_refused += 1
        else:
            report.unknown_spends += 1
            held = docs.get(user, [])
            if held and request_key(rid) in (held[0].get(RECENT) or []):
                report.resolved_by_recent += 1
                charged[user] += amount
            else:
                unresolved[user].append(amount)
    return charged, unresolved


def _check_equation(
    user: str,
    initial: Fraction,
    final: Fraction,
    added: Fraction,
    charged: Fraction,
    candidates: list[Fraction],
    report: Report,
) -> None:
    """start + rows - charged spends = final, some unknown-outcome spends included."""
    missing = initial + added - charged - final  # what unknown-outcome spends must explain
    if missing == 0 and not candidates:
        return
    reachable = _is_subset_sum(missing, candidates)
    if reachable is None:
        report.violations.append(f"{user}: {len(candidates)} spends of unknown outcome")
        return
    if not reachable:
        report.violations.append(
            f"{user}: start {initial} + rows {added} - charged {charged} = "
            f"{initial + added - charged}, final {final}; the difference {missing} is no "
            f"set of the {len(candidates)} spends of unknown outcome {candidates}"
        )
    elif missing:
        report.resolved_by_equation += 1


def _is_subset_sum(target: Fraction, amounts: list[Fraction]) -> bool | None:
    """Whether some subset of `amounts` adds up to `target` exactly (None: too large to
    search). Counted in the amounts' smallest common unit, as bits of one integer."""
    unit = math.lcm(target.denominator, *(a.denominator for a in amounts))
    goal = target * unit
    units = [int(a * unit) for a in amounts]
    if any(u < 0 for u in units) or sum(units) > MAX_UNITS:
        return None
    if goal < 0 or goal > sum(units):
        return False
    reachable = 1  # bit n set: some subset adds up to n units
    for u in units:
        reachable |= reachable << u
    return bool(reachable >> int(goal) & 1)
