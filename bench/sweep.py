"""Benchmark 5: the sweep against the classic monthly reset script, on the wire server.

The classic script reads every balance document, then sends `bulk_write` of
`UpdateOne({_id}, {$set: {tokenCredits, lastRefill}}, upsert=True)` in unordered batches
of 500, and writes no ledger. Ours is `sweep(active_within="30d")` (batches of 2,000) under
`RefillPolicy(amount=10_000, interval="30d")`. Both run on copies of one population, on a
mongoeco wire server through the real driver (see `network`): 20% of the users are due
(under 10,000 credits, `lastRefill` over 30 days old) and, independently, 50% inactive
(`lastSeen` over 30 days old), so 10% are due and active. Ours reads the due users; for
those its documents do not show as seen, one aggregation per batch looks for their rows in
the ledger (LibreChat records activity there), which this population does not have.

A second population has everyone due and active: 10,000 users, the classic script in
batches of 500 and ours in its default batches of 2,000 (`SWEEP_BATCH`), measured at 1/5
scale (2,000 users, batches of 100 and 400; 1/20 with `--quick`): the same number of
batches, so the same round trips. mongoeco, unlike a server, checks every inserted ledger
row's `_id` by scanning the collection (about 16 ms a row at 1,000 rows), which makes
10,000 rows a matter of hours on it, not of round trips.

Every command the driver sends is counted by a `CommandListener`, with the documents its
reply carries (`find`, `getMore`) or reports written (`insert`, `update`, `delete`).
Afterwards, ours must have refilled exactly the due and active users, one ledger row each.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import AsyncMongoClient, UpdateOne, monitoring

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.sweep import SWEEP_BATCH
from balance_refill.testing import FakeClock

from .common import START, Section, librechat_doc, ratio
from .network import CommandLog, WireBenchmarkError, start_server

AMOUNT = 10_000
BATCH_SIZE = 500  # the classic script's
GOAL_ALL_DUE = 2.0  # ours' round trips over the classic script's, everyone due
ALL_DUE_USERS = 10_000
Doc = dict[str, Any]


class DocumentLog(CommandLog):
    """CommandLog, plus the documents the replies carry (read) or report written."""

    def __init__(self) -> None:
        super().__init__()
        self.read = self.written = 0

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        super().succeeded(event)
        reply, name = event.reply, event.command_name
        cursor = reply.get("cursor")
        if name in ("find", "getMore") and isinstance(cursor, Mapping):
            self.read += len(cursor.get("firstBatch", cursor.get("nextBatch", [])))
        elif name in ("insert", "delete"):
            self.written += int(reply.get("n", 0))
        elif name == "update":
            self.written += int(reply.get("nModified", 0)) + len(reply.get("upserted", []))


def population(users: int) -> list[Doc]:
    """LibreChat documents (the library's own switch-off of LibreChat's refill already
    made): user i is due if i % 5 == 0 and active if i % 2 == 0."""
    docs = []
    for i in range(users):
        due, active = i % 5 == 0, i % 2 == 0
        credits = (i * 37) % (AMOUNT if due else 2 * AMOUNT)
        last_refill = START - timedelta(days=31 + i % 60 if due else 1 + i % 29)
        doc = librechat_doc(ObjectId(), credits, last_refill)
        doc["autoRefillEnabled"] = False
        doc["lastSeen"] = START - timedelta(days=1 + i % 29 if active else 31 + i % 150)
        docs.append(doc)
    return docs


def population_all_due(users: int) -> list[Doc]:
    """Everyone due (under 10,000 credits, `lastRefill` over 30 days old) and active."""
    docs = []
    for i in range(users):
        doc = librechat_doc(ObjectId(), (i * 37) % AMOUNT, START - timedelta(days=31 + i % 60))
        doc["autoRefillEnabled"] = False
        doc["lastSeen"] = START - timedelta(days=1 + i % 29)
        docs.append(doc)
    return docs


async def classic_reset(balances: Any, batch_size: int = BATCH_SIZE) -> None:
    """The classic script: every user set to AMOUNT credits, in bulk writes of 500."""
    users = [doc async for doc in balances.find({}, {"user": 1})]
    for i in range(0, len(users), batch_size):
        update = {"$set": {"tokenCredits": AMOUNT, "lastRefill": START}}
        requests = [
            UpdateOne({"_id": u["_id"]}, update, upsert=True) for u in users[i : i + batch_size]
        ]
        await balances.bulk_write(requests, ordered=False)


async def run_side(
    client: Any,
    log: DocumentLog,
    side: str,
    docs: list[Doc],
    *,
    everyone_due: bool = False,
    scale: int = 1,
) -> dict[str, Any]:
    """One side on a fresh database: seed, run, count, check, drop. Ours sweeps with its
    default batch size (`SWEEP_BATCH`), the classic script in batches of 500; both
    divided by `scale` (a population `scale` times smaller in as many batches)."""
    db = client[f"bench_sweep_{uuid.uuid4().hex[:12]}"]
    policy = RefillPolicy(amount=AMOUNT, interval="30d")
    ours = BalanceRefiller(
        db["balances"], policy, ledger=db["transactions"], clock=FakeClock(START)
    )
    try:
        for i in range(0, len(docs), 100):  # mongoeco's insert scans the whole collection
            await db["balances"].insert_many([dict(d) for d in docs[i : i + 100]])
        await (ours.ensure_indexes() if side == "ours" else db["balances"].create_index("user"))
        log.take()
        log.read = log.written = 0
        t0 = time.perf_counter()
        if side == "ours":
            await ours.sweep(active_within="30d", batch_size=SWEEP_BATCH // scale)
        else:
            await classic_reset(db["balances"], BATCH_SIZE // scale)
        seconds = time.perf_counter() - t0
        commands, read, written = log.take()[0], log.read, log.written
        wanted = sorted(d["user"] for i, d in enumerate(docs) if everyone_due or i % 10 == 0)
        rows = sorted([r["user"] async for r in db["transactions"].find({"context": "autoRefill"})])
        topped = {"user": {"$in": wanted}, "tokenCredits": AMOUNT}
        if side == "ours" and (
            rows != wanted or await db["balances"].count_documents(topped) != len(wanted)
        ):
            raise WireBenchmarkError(f"sweep: {len(rows)} ledger rows, expected {len(wanted)}")
    finally:
        await client.drop_database(db.name)
    trips = sum(commands.values())
    return {
        "commands": commands,
        "round_trips": trips,
        "read": read,
        "written": written,
        "ledger_rows": len(rows),
        "seconds": seconds,
    }


async def run(quick: bool = False) -> Section:
    users = 200 if quick else 1_000
    section = Section("sweep", "5. sweep vs classic reset (wire)")
    docs = population(users)
    log = DocumentLog()
    with await start_server() as server:
        client: Any = AsyncMongoClient(server.uri, tz_aware=True, event_listeners=[log])
        try:
            results = {
                side: await run_side(client, log, side, docs) for side in ("classic", "ours")
            }
        finally:
            await client.close()
        scale = 20 if quick else 5
        everyone = population_all_due(ALL_DUE_USERS // scale)
        client = AsyncMongoClient(server.uri, tz_aware=True, event_listeners=[log])
        try:
            all_due = {
                side: await run_side(client, log, side, everyone, everyone_due=True, scale=scale)
                for side in ("classic", "ours")
            }
        finally:
            await client.close()
    classic, ours = results["classic"], results["ours"]
    section.add(
        "users / due / active / due and active",
        f"{users} / {users // 5} / {users // 2} / {users // 10}",
    )
    for label in ("round_trips", "read", "written", "ledger_rows"):
        section.add(
            f"{label.replace('_', ' ')}, classic / ours", f"{classic[label]:,} / {ours[label]:,}"
        )
    moved = [r["read"] + r["written"] for r in (classic, ours)]
    section.add(
        "documents moved (read + written), classic / ours",
        ratio(*moved),
        "x",
        "> 1x",
        moved[0] > moved[1],
    )
    section.add(
        "wall time on mongoeco, classic / ours",
        f"{classic['seconds']:.2f} / {ours['seconds']:.2f}",
        "s",
    )
    due_users = ALL_DUE_USERS
    trips = [all_due[side]["round_trips"] for side in ("classic", "ours")]
    section.add(
        f"everyone due and active, {due_users:,} users: round trips, classic / ours",
        f"{trips[0]:,} / {trips[1]:,}",
    )
    section.add(
        f"everyone due and active, {due_users:,} users: round trips, ours / classic",
        ratio(trips[1], trips[0]),
        "x",
        f"<= {GOAL_ALL_DUE:g}x",
        ratio(trips[1], trips[0]) <= GOAL_ALL_DUE,
    )
    section.add(
        f"everyone due, at 1/{scale} scale: wall time on mongoeco, classic / ours",
        f"{all_due['classic']['seconds']:.2f} / {all_due['ours']['seconds']:.2f}",
        "s",
    )
    section.notes += [
        f"{side}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["commands"].items()))
        for side, r in results.items()
    ]
    section.notes += [
        f"everyone due, {side}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["commands"].items()))
        for side, r in all_due.items()
    ]
    section.notes.append(
        "read / written: documents. The two do not do the same thing: the classic sets every "
        "user to 10,000 (users above it lose credits) and records nothing; ours tops up only "
        "the due users seen within 30 days (checked: exactly those, once each), with a ledger "
        "row each, and is safe beside lazy refills. mongoeco answers a find with every "
        "document in its first batch, where mongod sends 101 and then getMores: the "
        "classic's read is one round trip more on a real server."
    )
    section.data = {
        "users": users,
        **results,
        "everyone_due": {"users": due_users, "scale": scale, **all_due},
    }
    return section
