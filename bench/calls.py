"""Benchmark 1: database calls per chat turn, ours against LibreChat's two flows.

Every flow runs on its own mongomock-motor database whose two collections are wrapped in
`balance_refill.testing.RecordingCollection` sharing one `CallLog`, so every call any
flow makes is counted. Each flow sees the same seeded LibreChat documents:

* a regular user (plenty of credits, period not elapsed): login, then `messages` turns;
* a user whose balance is short and whose period has elapsed: login, then one turn that
  needs a refill (checked: exactly one autoRefill row is written), then a plain turn;
* a user seen for the first time: login only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from balance_refill import BalanceRefiller
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

from .baselines import (
    Flow,
    LibreChatClassic,
    LibreChatReservations,
    Message,
    Ours,
    OursWithSpendRows,
)
from .common import (
    START,
    Section,
    due_last_refill,
    librechat_doc,
    librechat_policy,
    mock_db,
    ratio,
    recent_last_refill,
)

FLOW_NAMES = ("ours", "ours + host usage row", "LibreChat classic", "LibreChat reservations")


@dataclass
class FlowCounts:
    name: str
    login: int
    login_first_seen: int
    per_message: float
    with_refill: int
    after_refill: int
    methods_refill: list[str]


def make_flow(name: str, balances: Any, transactions: Any, clock: FakeClock) -> Flow:
    """Build one of FLOW_NAMES on the given collections."""
    if name in ("ours", "ours + host usage row"):
        refiller = BalanceRefiller(
            balances, librechat_policy(), ledger=transactions, clock=clock, retry_delay=0
        )
        if name == "ours":
            return Ours(refiller)
        return OursWithSpendRows(refiller, transactions, clock)
    if name == "LibreChat classic":
        return LibreChatClassic(balances, transactions, clock)
    if name == "LibreChat reservations":
        return LibreChatReservations(balances, transactions, clock)
    raise ValueError(name)


async def count_flow(name: str, messages: int) -> FlowCounts:
    db = mock_db()
    log = CallLog()
    balances = RecordingCollection(db["balances"], log)
    transactions = RecordingCollection(db["transactions"], log)
    clock = FakeClock(START)
    flow = make_flow(name, balances, transactions, clock)
    now = clock()
    regular, short, newcomer = ObjectId(), ObjectId(), ObjectId()
    await db["balances"].insert_one(librechat_doc(regular, 10_000_000, recent_last_refill(now)))
    await db["balances"].insert_one(librechat_doc(short, 200, due_last_refill(now)))

    async def calls(step: Callable[[], Any]) -> int:
        log.reset()
        await step()
        return log.count

    login = await calls(lambda: flow.login(regular))
    log.reset()
    for i in range(messages):
        await flow.message(regular, Message(f"r{i}"))
    per_message: float = log.count / messages
    if per_message.is_integer():
        per_message = int(per_message)

    await flow.login(short)
    with_refill = await calls(lambda: flow.message(short, Message("s0")))
    methods = log.methods()
    after_refill = await calls(lambda: flow.message(short, Message("s1")))
    refills = await db["transactions"].count_documents({"user": short, "context": "autoRefill"})
    assert refills == 1, f"{name}: expected one refill row, found {refills}"
    first_seen = await calls(lambda: flow.login(newcomer))
    return FlowCounts(name, login, first_seen, per_message, with_refill, after_refill, methods)


async def run(quick: bool = False) -> Section:
    messages = 3 if quick else 20
    section = Section("calls", "1. calls per chat turn")
    counts = {name: await count_flow(name, messages) for name in FLOW_NAMES}
    ours = counts["ours"]
    for c in counts.values():
        section.add(
            f"{c.name}: login (existing / first-seen user)",
            f"{c.login} / {c.login_first_seen}",
            "calls",
        )
        goal_plain = "= 1" if c.name == "ours" else ""
        goal_refill = "<= 5" if c.name == "ours" else ""
        section.add(
            f"{c.name}: per message, no refill",
            c.per_message,
            "calls",
            goal_plain,
            (c.per_message == 1) if c.name == "ours" else None,
        )
        section.add(
            f"{c.name}: message with a refill",
            c.with_refill,
            "calls",
            goal_refill,
            (c.with_refill <= 5) if c.name == "ours" else None,
        )
    for name in ("LibreChat classic", "LibreChat reservations"):
        c = counts[name]
        section.add(f"{name} / ours, no refill", ratio(c.per_message, ours.per_message), "x")
        section.add(f"{name} / ours, with a refill", ratio(c.with_refill, ours.with_refill), "x")
    section.notes.append(f"{messages} plain messages per flow; one message with a refill.")
    for c in counts.values():
        section.notes.append(f"{c.name}, refill turn: {', '.join(c.methods_refill)}")
    section.data = {name: vars(c) for name, c in counts.items()}
    return section
