"""LibreChat's document layout: field names, parsing, and the filters and updates we send.

Everything here is pure: it builds plain dicts that `_store` sends. Every value that
comes from a caller is either validated first or wrapped in `$literal`, so user input is
never read as an operator or a field path.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ._ids import Credits
from .periods import as_utc

# LibreChat's own fields.
USER = "user"
CREDITS = "tokenCredits"
LAST_REFILL = "lastRefill"
AUTO = "autoRefillEnabled"  # LibreChat's own refill switch: the library keeps it false
RESERVED = "reservedCredits"  # credits held by LibreChat's in-flight requests
PENDING_REFILL = "pendingRefill"  # LibreChat's marker of its own refill whose row is unwritten
REFILL_AMOUNT = "refillAmount"
INTERVAL_VALUE = "refillIntervalValue"
INTERVAL_UNIT = "refillIntervalUnit"
# Ours, added beside them (LibreChat ignores unknown fields).
PAUSED = "refillPaused"  # true: automatic refills paused for this user by an admin
PENDING = "pendingLedger"  # the ledger row of a refill whose row may not exist yet
TIER = "tier"  # assigned tier; missing means the default tier
REFILL_TIER = "refillTier"  # tier whose period governs the current period
PINNED = "tierPinned"  # activity rules never move a pinned user
SPENT = "spentSinceRefill"
LAST_SEEN = "lastSeen"
HISTORY = "spendHistory"  # credits spent in each of the last few periods, oldest first
RECENT = "recentRequests"  # 64-bit keys of the last few spends' request ids (idempotency)
OP_ID = "lastOpId"  # id of the last refill or admin change (also its ledger row's _id)

RECENT_WINDOW = 32
HISTORY_LENGTH = 6


@dataclass(slots=True)  # not frozen: built on every call, and frozen init costs ~2 us
class BalanceDoc:
    """A balance document as read, with the raw values kept for compare-and-swap."""

    id: Any
    user: Any
    balance: Credits
    raw_balance: Any
    last_refill: datetime | None
    raw_last_refill: Any
    auto_refill: bool  # not paused by the library's own switch
    raw_paused: Any
    librechat_auto: bool  # LibreChat's `autoRefillEnabled` is true (to be switched off)
    reserved: Credits  # LibreChat's reservedCredits (as stored; 0 when missing)
    raw_reserved: Any
    pending_refill: bool  # LibreChat's own refill is settling its ledger row
    tier: str | None
    raw_tier: Any
    refill_tier: str | None
    pinned: bool
    raw_pinned: Any
    pending: Mapping[str, Any] | None
    spent: Credits
    raw_spent: Any
    history: tuple[Credits, ...]
    recent: tuple[int, ...]
    last_seen: datetime | None
    op_id: Any = None

    @property
    def available(self) -> Credits:
        """Credits not held by LibreChat's in-flight requests (LibreChat's own rule)."""
        return self.balance - self.reserved


def _num(value: Any) -> Credits:
    """A stored number, exactly as stored; anything else (missing, NaN, text) is 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):  # noqa: PLR0124 - NaN test
        return value
    return 0


def _date(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def parse(doc: Mapping[str, Any]) -> BalanceDoc:
    """Read a balance document, tolerating LibreChat's quirks (missing or odd fields)."""
    paused = doc.get(PAUSED)
    pending = doc.get(PENDING)
    history = doc.get(HISTORY)
    recent = doc.get(RECENT)
    tier = doc.get(TIER)
    refill_tier = doc.get(REFILL_TIER)
    return BalanceDoc(
        id=doc.get("_id"),
        user=doc.get(USER),
        balance=_num(doc.get(CREDITS, 0)),
        raw_balance=doc.get(CREDITS),
        last_refill=_date(doc.get(LAST_REFILL)),
        raw_last_refill=doc.get(LAST_REFILL),
        auto_refill=paused is not True,
        raw_paused=paused,
        librechat_auto=doc.get(AUTO) is True,
        reserved=_num(doc.get(RESERVED, 0)),
        raw_reserved=doc.get(RESERVED),
        pending_refill=doc.get(PENDING_REFILL) is not None,
        tier=tier if isinstance(tier, str) else None,
        raw_tier=tier,
        refill_tier=refill_tier if isinstance(refill_tier, str) else None,
        pinned=doc.get(PINNED) is True,
        raw_pinned=doc.get(PINNED),
        pending=pending if isinstance(pending, Mapping) else None,
        spent=max(_num(doc.get(SPENT, 0)), 0),
        raw_spent=doc.get(SPENT),
        history=tuple(_num(x) for x in history) if isinstance(history, list) else (),
        recent=tuple(recent) if isinstance(recent, list) else (),
        last_seen=_date(doc.get(LAST_SEEN)),
        op_id=doc.get(OP_ID),
    )


def by_user(user: Any) -> dict[str, Any]:
    return {USER: user}


OLDEST_FIRST = [("_id", 1)]
HEX_STRING_USERS = {USER: {"$regex": "^[0-9a-fA-F]{24}$"}}
"""Documents naming their user by the hex string of an ObjectId."""


def cas_filter(doc: BalanceDoc) -> dict[str, Any]:
    """Match `doc` only if nothing a refill decision rests on has changed since it was read.
    It names `user` too, so on a collection sharded by user it targets one shard."""
    cas = {
        "_id": doc.id,
        USER: doc.user,
        CREDITS: doc.raw_balance,
        RESERVED: doc.raw_reserved,
        LAST_REFILL: doc.raw_last_refill,
        PAUSED: doc.raw_paused,
        TIER: doc.raw_tier,
        SPENT: doc.raw_spent,
        PINNED: doc.raw_pinned,
        PENDING: None,
    }
    if not doc.pending_refill:
        cas[PENDING_REFILL] = None  # LibreChat's refill must not start under our write
    return cas


OWNED = {AUTO: False}
"""Set by every write: LibreChat's runtime never refills a document the library manages."""


def first_seen_insert(
    user: Any, now: datetime, *, start_balance: Credits, librechat_fields: Mapping[str, Any]
) -> dict[str, Any]:
    """The fields a first-seen user's document is created with (besides `OWNED` and
    `lastSeen`). Its `_id` is the user id itself (newer LibreChat does the same), so two
    racing first requests collide on the `_id` index and one retries."""
    return {
        "_id": user,
        CREDITS: start_balance,
        LAST_REFILL: now,
        SPENT: 0,
        **librechat_fields,
    }


def first_seen_update(insert: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Upsert update: touch `lastSeen`, keep LibreChat's refill off, create the document
    from `insert` if the user is new. Sent with the document returned as it was before."""
    return {"$setOnInsert": dict(insert), "$set": dict(OWNED), "$max": {LAST_SEEN: now}}


def after_first_seen(
    before: Mapping[str, Any] | None, insert: Mapping[str, Any], user: Any, now: datetime
) -> dict[str, Any]:
    """The document `first_seen_update` left, from the one it returned (None: created)."""
    after = dict(insert) if before is None else dict(before)
    if before is None:
        after[USER] = user
    after.update(OWNED)
    seen = _date(after.get(LAST_SEEN))
    after[LAST_SEEN] = now if seen is None or seen < now else seen
    return after


def request_key(request_id: str) -> int:
    """The 64-bit key stored for a request id (8 bytes instead of the whole id)."""
    return int.from_bytes(
        hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big", signed=True
    )


def random_request_key() -> int:
    """A key for a spend that came without a request id (makes the library's own retries safe)."""
    return secrets.randbits(64) - 2**63


def spend_pipeline(amount: Credits, key: int, now: datetime) -> list[dict[str, Any]]:
    """A one-stage pipeline update that charges `amount` only if covered and not yet seen.

    It always matches, so one round trip returns the document whether or not it charged;
    the caller tells which from the document before the update (`spend_outcome`).
    """
    rid = {"$literal": key}
    recent = {"$ifNull": ["$" + RECENT, []]}
    credits = {"$ifNull": ["$" + CREDITS, 0]}
    reserved = {"$ifNull": ["$" + RESERVED, 0]}
    charge = {
        "$and": [
            {"$gte": [{"$subtract": [credits, reserved]}, amount]},
            {"$eq": [{"$in": [rid, recent]}, False]},
        ]
    }
    when = {"$literal": now}
    return [
        {
            "$set": {
                CREDITS: {"$cond": [charge, {"$subtract": [credits, amount]}, credits]},
                SPENT: {"$add": [{"$ifNull": ["$" + SPENT, 0]}, {"$cond": [charge, amount, 0]}]},
                RECENT: {
                    "$cond": [
                        charge,
                        {
                            "$slice": [
                                {"$concatArrays": [recent, {"$literal": [key]}]},
                                -RECENT_WINDOW,
                            ]
                        },
                        recent,
                    ]
                },
                LAST_SEEN: {"$max": [{"$ifNull": ["$" + LAST_SEEN, when]}, when]},
                AUTO: {"$literal": False},
            }
        }
    ]


def spend_outcome(doc: BalanceDoc, amount: Credits, key: int) -> str:
    """What `spend_pipeline` did to the document it returned as it was before: the same
    predicate, evaluated in Python (IEEE doubles on both sides, so the same answer).
    One of "duplicate", "charged", "insufficient"."""
    if key in doc.recent:
        return "duplicate"
    if doc.available >= amount:
        return "charged"
    return "insufficient"


def after_uncharged_spend(doc: BalanceDoc) -> BalanceDoc:
    """The document as `spend_pipeline` left it when it did not charge: it still wrote
    missing or null counters as 0 (so a compare-and-swap must expect those values)."""
    return replace(
        doc,
        raw_balance=0 if doc.raw_balance is None else doc.raw_balance,
        raw_spent=0 if doc.raw_spent is None else doc.raw_spent,
        librechat_auto=False,
    )


def clear_pending_filter(doc_id: Any, user: Any, row_id: Any) -> dict[str, Any]:
    return {"_id": doc_id, USER: user, f"{PENDING}._id": row_id}


CLEAR_PENDING = {"$unset": {PENDING: ""}}
