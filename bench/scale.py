"""Benchmark 4: document sizes and the shard key, measured on documents and calls the
library itself produced on the mock.

* Sizes: `bson.encode` of LibreChat's own document, ours for a first-seen user and in
  steady state (after 8 periods of 10 messages: a full window of 32 request keys and 6
  periods of spend history), and an autoRefill ledger row; 10 million users' worth.
* The shard key: how many of each hot-path operation's calls have an equality on `user`
  (so a `{user}` shard key routes them to one shard), and where new users land under
  `{user: 1}` and `{user: "hashed"}` on 8 shards (LibreChat's user ids are ObjectIds,
  which grow with time).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import bson
from bson import ObjectId

from balance_refill import BalanceRefiller
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection

from .common import START, Section, librechat_doc, librechat_policy, mock_db, recent_last_refill

USERS_AT_SCALE = 10_000_000
SHARDS = 8


def bson_size(doc: Mapping[str, Any]) -> int:
    return len(bson.encode(doc))


def targets_user(call: Call) -> bool:
    """True if a `{user}` shard key routes the call to one shard: an equality on `user`
    in its filter, or a `user` in the document it inserts."""
    first = call.args[0] if call.args else call.kwargs.get("filter")
    if not isinstance(first, Mapping):
        return False
    if call.method == "insert_one":
        return "user" in first
    return first.get("user") is not None and not isinstance(first["user"], Mapping)


async def steady_state(users: int) -> dict[str, Any]:
    """`users` users through 8 periods of 10 messages each; the documents, the ledger
    rows, the created indexes and the calls of each hot-path operation."""
    db = mock_db()
    log = CallLog()
    clock = FakeClock(START)
    refiller = BalanceRefiller(
        RecordingCollection(db["balances"], log),
        librechat_policy(),
        ledger=RecordingCollection(db["transactions"], log),
        clock=clock,
    )
    indexes = await refiller.ensure_indexes()
    ids = [ObjectId() for _ in range(users)]
    for user in ids:
        await refiller.ensure_balance(user)
    fresh = await db["balances"].find_one({"user": ids[0]})
    hot: dict[str, list[list[Call]]] = {
        "ensure_balance": [],
        "spend": [],
        "spend with a refill": [],
    }
    for _period in range(8):
        for user in ids:
            for _ in range(10):
                log.reset()
                state = await refiller.spend(user, 1_000, request_id=str(uuid.uuid4()))
                hot["spend with a refill" if state.refilled else "spend"].append(list(log.calls))
            log.reset()
            await refiller.ensure_balance(user)
            hot["ensure_balance"].append(list(log.calls))
        clock.advance(days=31)
    docs = [d async for d in db["balances"].find({})]
    row = await db["transactions"].find_one({"context": "autoRefill"})
    return {"indexes": indexes, "fresh": fresh, "docs": docs, "row": row, "hot": hot}


def new_user_spread(existing: int, new: int) -> dict[str, float]:
    """Share of `new` users landing on the busiest of SHARDS shards: under `{user: 1}`
    the balancer splits the `existing` (older) ids into equal ranges; under a hashed key
    the ranges are equal slices of the hash space (64 bits of the MD5 of the BSON value,
    as MongoDB's hashed index)."""
    old = sorted(ObjectId() for _ in range(existing))
    cuts = [old[len(old) * k // SHARDS] for k in range(1, SHARDS)]
    ranged, hashed = [0] * SHARDS, [0] * SHARDS
    for _ in range(new):
        user = ObjectId()
        ranged[sum(user >= c for c in cuts)] += 1
        digest = hashlib.md5(bson.encode({"": user}), usedforsecurity=False).digest()
        hashed[int.from_bytes(digest[:8], "little") * SHARDS // 2**64] += 1
    return {"user: 1": max(ranged) / new, "user: hashed": max(hashed) / new}


async def run(quick: bool = False) -> Section:
    section = Section("scale", "4. sizes and shard key")
    ran = await steady_state(3 if quick else 20)
    steady = max(ran["docs"], key=bson_size)
    sizes = {
        "LibreChat's own document": bson_size(
            librechat_doc(ObjectId(), 20_000, recent_last_refill(START))
        ),
        "ours, first-seen user": bson_size(ran["fresh"]),
        "ours, steady state": bson_size(steady),
    }
    for name, size in sizes.items():
        section.add(f"balance document: {name}", size, "B")
    recent = bson_size({"recentRequests": steady.get("recentRequests", [])}) - 5
    section.add("  of which recentRequests (request keys)", recent, "B")
    row = bson_size(ran["row"])
    section.add("ledger row (autoRefill)", row, "B")
    section.add(
        "10M users: balance documents, uncompressed",
        sizes["ours, steady state"] * USERS_AT_SCALE / 1e9,
        "GB",
    )
    section.add(
        "10M users: ledger rows per year (a refill a month)", row * 12 * USERS_AT_SCALE / 1e9, "GB"
    )
    section.add("indexes created by ensure_indexes()", ", ".join(ran["indexes"].indexes))
    for op, runs in ran["hot"].items():
        for pattern in sorted({tuple(map(targets_user, calls)) for calls in runs}, key=len):
            section.add(
                f"{{user}} shard key: {op}: calls routed to one shard",
                f"{sum(pattern)} of {len(pattern)}",
            )
    spread = new_user_spread(existing=2_000 if quick else 20_000, new=500 if quick else 5_000)
    for key, share in spread.items():
        section.add(f"new users on the busiest of {SHARDS} shards, {{{key}}}", share * 100, "%")
    section.notes.append(
        "10M users: every user in steady state (the full request window, the worst case); "
        "indexes and compression not counted. LibreChat's own usage rows (2 per message) are "
        "not counted in the ledger. Recommended shard key: {user: 'hashed'}."
    )
    section.data = {
        "sizes": sizes,
        "ledger_row": row,
        "indexes": list(ran["indexes"].indexes),
        "spread": spread,
    }
    return section
