"""Benchmark 4: scale on paper, with every input measured by code.

* Document sizes: `bson.encode` of documents the library itself produced on the mock:
  a LibreChat document as LibreChat stores it, ours for a first-seen user, and ours in
  steady state (after 8 periods of 10 messages: a full `recentRequests` window of 32
  message ids (LibreChat's UUID strings) and 6 periods of `spendHistory`), and a ledger
  row of a refill.
* The indexes `ensure_indexes()` creates, as recorded by `RecordingCollection`.
* The projection for 10 million users, with the assumptions printed beside it.
* The shard key: which hot-path calls a `{user}` shard key targets (from the recorded
  calls), and where new users land under `{user: 1}` and `{user: "hashed"}`.
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import bson
from bson import ObjectId

from balance_refill import BalanceRefiller
from balance_refill import _docs as D
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection

from .common import START, Section, librechat_doc, librechat_policy, mock_db, recent_last_refill

USERS_AT_SCALE = 10_000_000
RECORD_ID = 8  # WiredTiger record ids are 64-bit integers
ENTRY_FRAMING = 8  # assumed per-entry framing in an index page (no prefix compression)
RECOMMENDED_SHARD_KEY = {"user": "hashed"}
SHARDS = 8


_ABSENT = object()


def _dotted(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def bson_size(doc: Mapping[str, Any]) -> int:
    return len(bson.encode(doc))


def value_size(value: Any) -> int:
    """Bytes of one BSON value (its element without the type byte and the empty name)."""
    return bson_size({"": value}) - 4 - 1 - 2  # document length, terminator, type, name


def targets_user(call: Call) -> bool:
    """True if the call reaches one shard under a shard key on `user` (an equality on
    `user` in the filter, or a `user` in the inserted document)."""
    if call.method in ("insert_one", "insert_many"):
        docs = call.args[0] if call.method == "insert_many" else [call.args[0]]
        return all("user" in d for d in docs)
    filter_ = call.args[0] if call.args else call.kwargs.get("filter", {})
    user = filter_.get("user") if isinstance(filter_, Mapping) else None
    return user is not None and not (
        isinstance(user, Mapping) and any(str(k).startswith("$") for k in user)
    )


async def steady_state(users: int) -> dict[str, Any]:
    """Run the library for `users` users through 8 periods of 10 messages each."""
    db = mock_db()
    log = CallLog()
    balances = RecordingCollection(db["balances"], log)
    ledger = RecordingCollection(db["transactions"], log)
    clock = FakeClock(START)
    refiller = BalanceRefiller(balances, librechat_policy(), ledger=ledger, clock=clock)
    index_names = await refiller.ensure_indexes()
    index_calls = [c for c in log.calls if c.method == "create_index"]
    ids = [ObjectId() for _ in range(users)]
    log.reset()
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
    rows = [r async for r in db["transactions"].find({"context": "autoRefill"})]
    return {
        "index_names": index_names,
        "index_calls": index_calls,
        "fresh": fresh,
        "docs": docs,
        "rows": rows,
        "hot": hot,
    }


def zlib_ratio(docs: list[dict[str, Any]]) -> float:
    """Compression of about 32 KB of consecutive documents by zlib (WiredTiger's zlib
    block compressor works on pages of that order; its default, snappy, compresses less)."""
    blob = b""
    i = 0
    while len(blob) < 32 * 1024 and docs:
        blob += bson.encode(docs[i % len(docs)])
        i += 1
        if i >= len(docs):
            break
    return len(blob) / len(zlib.compress(blob, 6)) if blob else 1.0


def hashed(value: Any) -> int:
    """A stand-in for MongoDB's hashed index: 64 bits of the MD5 of the BSON value."""
    digest = hashlib.md5(bson.encode({"": value}), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def new_user_spread(existing: int, new: int) -> dict[str, float]:
    """Share of new users landing on the busiest of SHARDS shards, for each shard key.

    Existing users (ObjectIds made earlier) are split into SHARDS equal ranges, as the
    balancer would for `{user: 1}`; then `new` users sign up. For `{user: "hashed"}` the
    ranges are equal slices of the hash space.
    """
    old = sorted(ObjectId() for _ in range(existing))
    cuts = [old[len(old) * k // SHARDS] for k in range(1, SHARDS)]
    fresh = [ObjectId() for _ in range(new)]
    ranged = [0] * SHARDS
    spread = [0] * SHARDS
    width = 2**64 // SHARDS
    for user in fresh:
        ranged[sum(user >= c for c in cuts)] += 1
        spread[min(SHARDS - 1, (hashed(user) + 2**63) // width)] += 1
    return {"user: 1": max(ranged) / new, "user: hashed": max(spread) / new}


def _gb(n: float) -> float:
    return n / 1e9


def _project(
    section: Section,
    ran: dict[str, Any],
    sizes: dict[str, int],
    steady: dict[str, Any],
    row: dict[str, Any],
) -> tuple[list[str], dict[str, int], float]:
    """The indexes, and the projection for 10 million users."""
    # Indexes as ensure_indexes() created them (recorded), plus MongoDB's own _id_.
    listed = [
        "balances._id_ {_id: 1} (MongoDB's own)",
        "transactions._id_ {_id: 1} (MongoDB's own)",
    ]
    indexes: list[tuple[str, str, list[str], bool]] = [
        ("balances", "_id_", ["_id"], False),
        ("transactions", "_id_", ["_id"], False),
    ]
    for call in ran["index_calls"]:
        keys = list(call.args[0])
        opts = {k: v for k, v in call.kwargs.items() if k != "name"}
        name = str(call.kwargs.get("name", ""))
        indexes.append((call.collection, name, [k for k, _ in keys], bool(opts.get("sparse"))))
        shown = ", ".join(f"{k}: {v}" for k, v in keys)
        listed.append(f"{call.collection}.{name} {{{shown}}} {opts or ''}".rstrip())
    section.add("indexes created by ensure_indexes()", len(ran["index_calls"]))
    section.notes.append("indexes: " + "; ".join(listed))

    # Projection for 10 million users: documents, and every index entry sized from the
    # steady-state document (balances) or the ledger row (transactions).
    n = USERS_AT_SCALE
    per_entry = RECORD_ID + ENTRY_FRAMING
    sample = {"balances": steady, "transactions": ran["rows"][0]}

    def entry_bytes(collection: str, fields: list[str], sparse: bool) -> int:
        values = [_dotted(sample[collection], f) for f in fields]
        if sparse and all(v is _ABSENT for v in values):
            return 0  # a sparse index holds no entry for this document
        return sum(value_size(None if v is _ABSENT else v) for v in values) + per_entry

    index_bytes = {
        f"{coll}.{name}": n * entry_bytes(coll, fields, sparse)
        for coll, name, fields, sparse in indexes
        if coll == "balances"
    }
    index_bytes["balances.user_hashed (shard key)"] = n * (8 + per_entry)
    docs_bytes = n * sizes["ours, steady state"]
    ratio_z = zlib_ratio(ran["docs"])
    section.add("10M users: documents, uncompressed", _gb(docs_bytes), "GB")
    section.add(
        "10M users: documents, zlib-compressed (measured ratio)", _gb(docs_bytes / ratio_z), "GB"
    )
    section.add("zlib ratio on steady-state documents", ratio_z, "x")
    section.add(
        "10M users: balances indexes (incl. hashed shard key)", _gb(sum(index_bytes.values())), "GB"
    )
    section.add(
        "10M users: LibreChat's own documents, uncompressed",
        _gb(n * sizes["LibreChat's own document"]),
        "GB",
    )
    row_bytes = bson_size(row)
    ledger_entries = sum(
        entry_bytes(coll, fields, sparse)
        for coll, _, fields, sparse in indexes
        if coll == "transactions"
    )
    ledger_year = n * 12 * (row_bytes + ledger_entries)
    section.add(
        "10M users: ledger per year (12 refills each, rows + indexes)", _gb(ledger_year), "GB"
    )
    section.notes.append(
        f"projection assumptions: {n:,} users, every one in steady state (full request-id "
        f"window: the worst case); an index entry = its key values + a {RECORD_ID} B record id "
        f"+ {ENTRY_FRAMING} B framing, no prefix compression (an upper bound); sparse indexes "
        f"hold no entry at rest; the hashed shard-key index has 8 B keys; ledger: one "
        f"autoRefill row per user per 30 days, every user active (LibreChat's own usage rows, "
        f"2 per message, are not counted)."
    )
    section.notes.append(
        "index sizes (10M users, GB): "
        + ", ".join(f"{k} {_gb(v):.2f}" for k, v in index_bytes.items())
    )

    return listed, index_bytes, ratio_z


def _shard_key(section: Section, ran: dict[str, Any], quick: bool) -> dict[str, float]:
    """Targeting of the hot path under a {user} shard key, and where new users land."""
    for op, runs in ran["hot"].items():
        patterns = {tuple(targets_user(c) for c in calls) for calls in runs}
        for pattern in sorted(patterns, key=len):
            section.add(
                f"{{user}} shard key: {op}: calls targeted to one shard",
                f"{sum(pattern)} of {len(pattern)}",
            )
        broadcast = sorted(
            {
                f"{c.collection}.{c.method}({', '.join(sorted(c.args[0]))})"
                for calls in runs
                for c in calls
                if not targets_user(c)
            }
        )
        if broadcast:
            section.notes.append(
                f"{op}: filters without `user` (mongos broadcasts them, or refuses a "
                f"findAndModify before 7.1): " + "; ".join(broadcast)
            )
    spread = new_user_spread(existing=2_000 if quick else 20_000, new=500 if quick else 5_000)
    for key, share in spread.items():
        section.add(
            f"new users landing on the busiest of {SHARDS} shards, {{{key}}}", share * 100, "%"
        )
    section.add("recommended shard key", "{user: 'hashed'}")
    return spread


async def run(quick: bool = False) -> Section:
    section = Section("scale", "4. scale on paper")
    users = 3 if quick else 40
    ran = await steady_state(users)
    librechat = librechat_doc(ObjectId(), 20_000, recent_last_refill(START))
    steady = max(ran["docs"], key=bson_size)
    recent_bytes = bson_size({D.RECENT: steady.get(D.RECENT, [])}) - 5
    row = ran["rows"][0]
    sizes = {
        "LibreChat's own document": bson_size(librechat),
        "ours, first-seen user": bson_size(ran["fresh"]),
        "ours, steady state": bson_size(steady),
    }
    for name, size in sizes.items():
        section.add(f"balance document: {name}", size, "B")
    section.add("  of which recentRequests (32 message ids)", recent_bytes, "B")
    section.add("ledger row (autoRefill)", bson_size(row), "B")

    listed, index_bytes, ratio_z = _project(section, ran, sizes, steady, row)
    spread = _shard_key(section, ran, quick)
    section.data = {
        "sizes": sizes,
        "recent_bytes": recent_bytes,
        "ledger_row": bson_size(row),
        "index_names": ran["index_names"],
        "indexes": listed,
        "index_bytes_10m": index_bytes,
        "zlib_ratio": ratio_z,
        "spread": spread,
        "recommended_shard_key": RECOMMENDED_SHARD_KEY,
    }
    return section
