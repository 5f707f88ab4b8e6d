"""Benchmark 1: database calls per chat turn, ours against LibreChat's two flows.

Each flow runs on its own mock database whose collections are wrapped in
`RecordingCollection` (one shared `CallLog`), on the same LibreChat documents:

* a regular user (plenty of credits, period not elapsed): login, then `messages` turns;
* a user whose balance is short and whose period has elapsed: login, then one turn that
  needs a refill (checked: exactly one autoRefill row is written), then a plain turn;
* a user seen for the first time: login only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from bson import ObjectId

from balance_refill import BalanceRefiller
from balance_refill.testing import CallLog, FakeClock, RecordingCollection

from .baselines import Flow, LibreChatClassic, LibreChatReservations, Message, Ours
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

FLOW_NAMES = ("ours", "LibreChat classic", "LibreChat reservations")


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
    """One of FLOW_NAMES on the given collections."""
    if name == "ours":
        policy = librechat_policy()
        return Ours(
            BalanceRefiller(balances, policy, ledger=transactions, clock=clock, retry_delay=0)
        )
    if name == "LibreChat classic":
        return LibreChatClassic(balances, transactions, clock)
    return LibreChatReservations(balances, transactions, clock)


async def count_flow(name: str, messages: int) -> FlowCounts:
    db = mock_db()
    log = CallLog()
    clock = FakeClock(START)
    flow = make_flow(
        name,
        RecordingCollection(db["balances"], log),
        RecordingCollection(db["transactions"], log),
        clock,
    )
    regular, short, newcomer = ObjectId(), ObjectId(), ObjectId()
    for user, credits, last in (
        (regular, 10**7, recent_last_refill(START)),
        (short, 200, due_last_refill(START)),
    ):
        doc = librechat_doc(user, credits, last)
        # Beside this library LibreChat's own refill is off (as the library's writes keep it).
        doc["autoRefillEnabled"] = name != "ours"
        await db["balances"].insert_one(doc)

    async def calls(step: Callable[[], Awaitable[None]]) -> int:
        log.reset()
        await step()
        return log.count

    login = await calls(lambda: flow.login(regular))
    log.reset()
    for i in range(messages):
        await flow.message(regular, Message(f"r{i}"))
    per_message = log.count / messages
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
    for c in counts.values():
        ours = c.name == "ours"
        section.add(
            f"{c.name}: login (existing / first-seen user)",
            f"{c.login} / {c.login_first_seen}",
            "calls",
        )
        per_message = int(c.per_message) if c.per_message.is_integer() else c.per_message
        section.add(
            f"{c.name}: per message, no refill",
            per_message,
            "calls",
            "= 1" if ours else "",
            c.per_message == 1 if ours else None,
        )
        section.add(
            f"{c.name}: message with a refill",
            c.with_refill,
            "calls",
            "<= 5" if ours else "",
            c.with_refill <= 5 if ours else None,
        )
    for name in FLOW_NAMES[1:]:
        c, ours_c = counts[name], counts["ours"]
        section.add(f"{name} / ours, no refill", ratio(c.per_message, ours_c.per_message), "x")
        section.add(f"{name} / ours, with a refill", ratio(c.with_refill, ours_c.with_refill), "x")
    section.notes.append(
        f"{messages} plain messages per flow; one message with a refill. This library writes "
        "refill rows only: a host that also wants a usage row per message, as LibreChat "
        "writes two, adds one insert (2 calls per message, 5 with a refill)."
    )
    section.notes += [
        f"{c.name}, refill turn: {', '.join(c.methods_refill)}" for c in counts.values()
    ]
    section.data = {name: asdict(c) for name, c in counts.items()}
    return section
