"""LibreChat's document layout, and every filter and update the library sends. Pure.

A balance document is read into a `Record`: the storage-free `UserState` the decisions
need, plus the raw values a compare-and-swap must find unchanged. Every value that comes
from a caller is validated before it gets here or is wrapped in `$literal`, so user input
is never read as an operator or a field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from ._validate import Credits, UserId
from .decide import RefillPlan, UserState
from .periods import as_utc

Document = Mapping[str, Any]
"""A BSON document as the driver hands it over."""
Update = dict[str, Any]
"""A filter, an update or a document we build."""

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
PENDING = "pendingLedger"  # the ledger row of a change whose row may not exist yet
TIER = "tier"  # assigned tier; missing means the default tier
REFILL_TIER = "refillTier"  # tier whose period governs the current period
PINNED = "tierPinned"  # activity rules never move a pinned user
SPENT = "spentSinceRefill"
LAST_SEEN = "lastSeen"
HISTORY = "spendHistory"  # credits spent in each of the last few periods, oldest first
RECENT = "recentRequests"  # 64-bit keys of the last spends' request ids (idempotency)
RECENT_AMOUNTS = "recentAmounts"  # the amount of each of them, aligned from the end
OP_ID = "lastOpId"  # id of the last refill or admin change (also its ledger row's _id)
RECENT_OPS = "recentOps"  # op ids of the last writes made through the commit loop
RECENT_ADMIN = "recentAdmin"  # keyed admin operations: {k: key, f: fingerprint, a, g, b}

RECENT_WINDOW = 128
"""Default number of spend request ids remembered per user (`request_window`)."""
OPS_WINDOW = 16
"""Op ids remembered per user: a caller whose reply was lost finds its own write among
them, even when other writers changed the document since."""
ADMIN_WINDOW = 32
"""Keyed admin operations remembered per user."""
OLDEST_FIRST = [("_id", 1)]
HEX_STRING_USERS = {USER: {"$regex": "^[0-9a-fA-F]{24}$"}}
"""Documents naming their user by the hex string of an ObjectId."""
OWNED: Update = {AUTO: False}
"""Set by every write: LibreChat's runtime never refills a document the library manages."""


class Record(NamedTuple):
    """A balance document as read: the user's state, and what a compare-and-swap on it
    must find unchanged (immutable; a named tuple for the hot path's sake)."""

    id: Any
    user: UserId
    state: UserState
    doc: Document
    """The document as read: a compare-and-swap expects its values (`cas_filter`)."""
    pending: Document | None = None
    op_id: Any = None
    recent: tuple[int, ...] = ()
    last_seen: datetime | None = None
    librechat_auto: bool = False  # LibreChat's `autoRefillEnabled` was found true
    recent_amounts: tuple[object, ...] = ()
    recent_ops: tuple[object, ...] = ()
    recent_admin: tuple[Document, ...] = ()

    def spent_amount(self, key: int) -> object:
        """The amount remembered for spend request `key` (`UNKNOWN` if the document
        predates amounts); call only for a key in `recent`."""
        index = len(self.recent) - 1 - self.recent[::-1].index(key)
        from_end = len(self.recent) - index
        if from_end > len(self.recent_amounts):
            return UNKNOWN
        return self.recent_amounts[-from_end]

    def admin_entry(self, key: int) -> Document | None:
        """The remembered keyed admin operation with request key `key`, if any."""
        for entry in reversed(self.recent_admin):
            if entry.get("k") == key:
                return entry
        return None


UNKNOWN = object()
"""An amount a remembered request id does not carry (written by an older version)."""


_INF = float("inf")
_new = tuple.__new__
_INT_ONLY = frozenset({int})


def _num(value: object) -> Credits:
    """A stored number, exactly as stored; anything else (missing, NaN, text) is 0."""
    kind = type(value)
    if kind is int:  # the common cases first, by exact type (the hot path reads nine)
        return value  # type: ignore[return-value]  # an int, by its exact type
    if kind is float:
        return value if -_INF < value < _INF else 0  # type: ignore[operator,return-value]  # NaN: False
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != _INF:  # noqa: PLR0124 - NaN test
        return value
    return 0


def _date(value: object) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _items(value: object) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else ()


def _history(history: object) -> tuple[Credits, ...]:
    if not isinstance(history, list):
        return ()
    if _INT_ONLY.issuperset(map(type, history)):  # whole numbers, as written: no check per value
        return tuple(history)
    return tuple(map(_num, history))


def parse(doc: Document, *, seen: datetime | None = None) -> Record:
    """Read a balance document, tolerating LibreChat's quirks (missing or odd fields).

    `seen`: `doc` is as it was before `first_seen_update` at `seen` (which raised
    `lastSeen` to at least `seen` and switched LibreChat's refill off); the record is
    the document after it (the compare-and-swap fields are the same)."""
    get = doc.get
    doc_id = get("_id")
    user: Any = get(USER)
    credits = get(CREDITS)
    reserved = get(RESERVED)
    last_refill = get(LAST_REFILL)
    paused = get(PAUSED)
    tier = get(TIER)
    spent = get(SPENT)
    pinned = get(PINNED)
    history = get(HISTORY)
    recent = get(RECENT)
    amounts = get(RECENT_AMOUNTS)
    ops = get(RECENT_OPS)
    admin = get(RECENT_ADMIN)
    pending = get(PENDING)
    refill_tier = get(REFILL_TIER)
    refill_pending = get(PENDING_REFILL) is not None
    # Missing fields (None) are tested first: the hot path's replies lack most of them.
    spent_n = spent if spent.__class__ is int else _num(spent)
    state = _new(  # UserState(...) without its Python-level __new__ (one per call)
        UserState,
        (
            credits if credits.__class__ is int else _num(credits),
            0 if reserved is None else _num(reserved),
            as_utc(last_refill) if isinstance(last_refill, datetime) else None,
            paused is True,
            tier if isinstance(tier, str) else None,
            refill_tier if isinstance(refill_tier, str) else None,
            pinned is True,
            spent_n if spent_n > 0 else 0,
            () if history is None else _history(history),
            refill_pending,
        ),
    )
    last_seen = get(LAST_SEEN)
    last_seen = as_utc(last_seen) if isinstance(last_seen, datetime) else None
    if seen is not None and (last_seen is None or last_seen < seen):
        last_seen = seen
    return _new(
        Record,
        (
            doc_id,
            user,
            state,
            doc,
            None if pending is None or not isinstance(pending, Mapping) else pending,
            get(OP_ID),
            () if recent is None else _items(recent),
            last_seen,
            seen is None and get(AUTO) is True,
            () if amounts is None else _items(amounts),
            () if ops is None else _items(ops),
            () if admin is None else tuple(e for e in _items(admin) if isinstance(e, Mapping)),
        ),
    )


def by_user(user: UserId) -> Update:
    return {USER: user}


CAS_FIELDS = ("_id", USER, CREDITS, RESERVED, LAST_REFILL, PAUSED, TIER, SPENT, PINNED)
"""The fields a compare-and-swap expects unchanged (each as read; missing means null)."""


def cas_filter(record: Record, *, with_pending: bool = True) -> Update:
    """Match the document only if nothing a decision rests on has changed since it was
    read: no pending ledger row (unless `with_pending=False`: without a ledger a left
    marker does not block the write) and no LibreChat refill starting under the write.
    It names `user` too, so on a collection sharded by user it targets one shard."""
    get = record.doc.get
    cas: Update = {name: get(name) for name in CAS_FIELDS}
    if with_pending:
        cas[PENDING] = None
    if not record.state.refill_pending:
        cas[PENDING_REFILL] = None  # LibreChat's refill must not start under our write
    return cas


# -- first sight ------------------------------------------------------------------------


def first_seen_insert(
    user: UserId, now: datetime, *, start_balance: Credits, mirrored: Mapping[str, object]
) -> Update:
    """The fields a first-seen user's document is created with (besides `OWNED` and
    `lastSeen`). Its `_id` is the user id itself (newer LibreChat does the same), so two
    racing first requests collide on the `_id` index and one retries."""
    return {"_id": user, CREDITS: start_balance, LAST_REFILL: now, SPENT: 0, **mirrored}


def first_seen_update(insert: Update, now: datetime) -> Update:
    """Upsert update: touch `lastSeen`, keep LibreChat's refill off (`OWNED`), create the
    document from `insert` (not copied: built for this call) if the user is new. Sent
    with the document returned as it was before."""
    return {"$setOnInsert": insert, "$set": {AUTO: False}, "$max": {LAST_SEEN: now}}


def after_first_seen(
    before: Document | None, insert: Update, user: UserId, now: datetime
) -> Update:
    """The document `first_seen_update` left, from the one it returned (None: created)."""
    after = dict(insert) if before is None else dict(before)
    if before is None:
        after[USER] = user
    after.update(OWNED)
    seen = _date(after.get(LAST_SEEN))
    after[LAST_SEEN] = now if seen is None or seen < now else seen
    return after


# -- writes made through the compare-and-swap ---------------------------------------------


def refill_update(
    plan: RefillPlan,
    now: datetime,
    *,
    charge: Credits,
    mirrored: Mapping[str, object],
    request_key: int | None = None,
    window: int = RECENT_WINDOW,
) -> Update:
    """A refill (charging `charge` in the same write, recording `request_key` as spent),
    or, for a tier-only plan, the tier change alone."""
    if plan.tier_only:
        return {
            "$set": {TIER: plan.tier, REFILL_TIER: plan.period_tier, **mirrored},
            "$max": {LAST_SEEN: now},
        }
    sets: Update = {
        CREDITS: plan.after - charge,
        LAST_REFILL: now,
        REFILL_TIER: plan.tier,
        SPENT: charge,
        HISTORY: list(plan.history),  # already the last HISTORY_LENGTH periods (decide)
        **mirrored,
    }
    if plan.previous_tier is not None:
        sets[TIER] = plan.tier
    update: Update = {"$set": sets, "$max": {LAST_SEEN: now}}
    if request_key is not None:
        update["$push"] = remember_request(request_key, charge, window)
    return update


def remember_request(key: int, amount: object, window: int) -> Update:
    """`$push` clauses remembering a spend's request key and amount (the last `window`)."""
    return {
        RECENT: {"$each": [key], "$slice": -window},
        RECENT_AMOUNTS: {"$each": [amount], "$slice": -window},
    }


def set_fields(fields: Mapping[str, object]) -> Update:
    return {"$set": dict(fields)}


def with_marker(
    update: Update, op_id: object, row: Update | None, *, admin: Update | None = None
) -> Update:
    """`update` with the op id (also remembered among the last `OPS_WINDOW`), LibreChat's
    refill switched off, if given the ledger row (with the op id as its `_id`) left as
    the pending marker, and a keyed admin operation's entry, in the same atomic update."""
    marked = dict(update)
    sets = {**marked.get("$set", {}), **OWNED, OP_ID: op_id}
    if row is not None:
        sets[PENDING] = {"_id": op_id, **row}
    marked["$set"] = sets
    push = dict(marked.get("$push", {}))
    push[RECENT_OPS] = {"$each": [op_id], "$slice": -OPS_WINDOW}
    if admin is not None:
        push[RECENT_ADMIN] = {"$each": [admin], "$slice": -ADMIN_WINDOW}
    marked["$push"] = push
    return marked


def clear_pending_filter(doc_id: object, user: object, row_id: object) -> Update:
    return {"_id": doc_id, USER: user, f"{PENDING}._id": row_id}


def clear_pending_many(row_ids: list[object]) -> Update:
    """The markers of rows `row_ids` (op ids, unique): one range of the sparse
    `pendingLedger_id` index, not a clause per document for the server to try on each."""
    return {f"{PENDING}._id": {"$in": row_ids}}


CLEAR_PENDING: Update = {"$unset": {PENDING: ""}}
PENDING_ROWS: Update = {f"{PENDING}._id": {"$exists": True}}  # served by the sparse index


# -- the one-call spend -----------------------------------------------------------------


def spend_pipeline(
    amount: Credits, key: int, now: datetime, window: int = RECENT_WINDOW
) -> list[Update]:
    """A one-stage pipeline update that charges `amount` only if the available balance
    covers it and the request key is new (`decide.spend_outcome`'s rule, on the server).

    It always matches, so one round trip returns the document whether or not it charged;
    the caller tells which from the document before the update.
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
    amounts = {"$ifNull": ["$" + RECENT_AMOUNTS, []]}
    keys = {"$slice": [{"$concatArrays": [recent, {"$literal": [key]}]}, -window]}
    kept = {"$slice": [{"$concatArrays": [amounts, {"$literal": [amount]}]}, -window]}
    return [
        {
            "$set": {
                CREDITS: {"$cond": [charge, {"$subtract": [credits, amount]}, credits]},
                SPENT: {"$add": [{"$ifNull": ["$" + SPENT, 0]}, {"$cond": [charge, amount, 0]}]},
                RECENT: {"$cond": [charge, keys, recent]},
                RECENT_AMOUNTS: {"$cond": [charge, kept, amounts]},
                LAST_SEEN: {"$max": [{"$ifNull": ["$" + LAST_SEEN, when]}, when]},
                AUTO: {"$literal": False},
            }
        }
    ]


LAST_SEEN_STEP = timedelta(minutes=1)
"""The steady-state spend rewrites `lastSeen` only when the value it last read is this
much older than now: `lastSeen` is kept to the minute (activity is judged over days)."""


def plain_reserved(doc: Document) -> tuple[bool, int | None]:
    """(whether the steady-state spend can name `doc`'s reserved credits, the value it
    names): missing (or null) and zero can be matched exactly; anything else (credits
    held by LibreChat's in-flight requests, odd values) leaves the spend to the pipeline."""
    reserved = doc.get(RESERVED)
    if reserved is None:
        return _PLAIN_MISSING
    if isinstance(reserved, int | float) and not isinstance(reserved, bool) and reserved == 0:
        return _PLAIN_ZERO
    return _NOT_PLAIN


_PLAIN_MISSING, _PLAIN_ZERO, _NOT_PLAIN = (True, None), (True, 0), (False, None)


def fast_spend_filter(
    doc_id: object, user: UserId, amount: Credits, key: int, reserved: int | None = None
) -> Update:
    """The steady-state spend's filter, in plain query operators: the user's oldest
    document (`doc_id`, learned from an earlier read), its balance covering `amount`,
    its reserved credits still as last read (`reserved`: None, missing; or 0: see
    `plain_reserved`), LibreChat's own refill switch off (a document the library already
    manages) and the request key not seen. Stricter than `spend_pipeline`'s rule, never
    looser: whatever it misses, the pipeline decides."""
    return {
        "_id": doc_id,
        USER: user,
        CREDITS: {"$gte": amount},
        RESERVED: reserved,
        AUTO: False,
        RECENT: {"$ne": key},
    }


def fast_spend_update(amount: Credits, key: int, seen: datetime | None, window: int) -> Update:
    """The steady-state spend's update: what `spend_pipeline` writes when it charges, as
    update operators (no pipeline for the server to evaluate); `lastSeen` raised to
    `seen` unless it is None (see `LAST_SEEN_STEP`)."""
    update: Update = {
        "$inc": {CREDITS: -amount, SPENT: amount},
        "$push": {
            RECENT: {"$each": [key], "$slice": -window},
            RECENT_AMOUNTS: {"$each": [amount], "$slice": -window},
        },
    }
    if seen is not None:
        update["$max"] = {LAST_SEEN: seen}
    return update


FAST_PROJECTION: Update = {RECENT: 0, RECENT_AMOUNTS: 0}
"""What the steady-state spend reads back: the document without its request window
(two arrays of `request_window` entries, most of the document; the reported state needs
neither). The short arrays come back: naming them would cost the request more bytes than
they cost the reply."""
READ_PROJECTION: Update = {RECENT: 0, RECENT_AMOUNTS: 0, RECENT_ADMIN: 0}
"""What `ensure_balance` reads: everything a refill decision and its compare-and-swap
need (the spend history, the op ids of the lost-reply check), not the request window."""


def after_uncharged_spend(record: Record) -> Record:
    """The record as a `spend_pipeline` that did not charge left it, from the one it
    returned as it was before: it still wrote missing counters as 0, so a
    compare-and-swap must expect those values. (After a charge no compare-and-swap
    follows; `charged` says what moved.)"""
    doc = dict(record.doc)
    for name in (CREDITS, SPENT):
        if doc.get(name) is None:
            doc[name] = 0
    return record._replace(doc=doc, librechat_auto=False)


# -- the sweep's queries ----------------------------------------------------------------


def due_by(cutoff: datetime) -> Update:
    """lastRefill at or before `cutoff`, or missing: one index range [MinKey, cutoff] in
    (lastRefill, _id) order."""
    return {LAST_REFILL: {"$not": {"$gt": cutoff}}}


def refilled_after(cutoff: datetime) -> Update:
    """The complement of `due_by(cutoff)`: refilled after `cutoff` (an index range)."""
    return {LAST_REFILL: {"$gt": cutoff}}


NOT_PAUSED: Update = {PAUSED: {"$ne": True}}
IS_PAUSED: Update = {PAUSED: True}


def seen_since(since: datetime) -> Update:
    """Seen (a call or a refill) at or after `since`."""
    return {"$or": [{LAST_SEEN: {"$gte": since}}, {LAST_REFILL: {"$gte": since}}]}


def unseen_since(since: datetime) -> Update:
    return {
        "$and": [
            {"$or": [{LAST_SEEN: {"$lt": since}}, {LAST_SEEN: None}]},
            {"$or": [{LAST_REFILL: {"$lt": since}}, {LAST_REFILL: None}]},
        ]
    }


def maybe_below(top: Credits) -> Update:
    """Possibly below `top`: under it, missing, or holding credits reserved by LibreChat
    (whose available balance is decided in Python)."""
    return {"$or": [{CREDITS: {"$lt": top}}, {CREDITS: None}, {RESERVED: {"$gt": 0}}]}


def surely_above(top: Credits) -> Update:
    return {"$and": [{CREDITS: {"$gte": top}}, {RESERVED: {"$not": {"$gt": 0}}}]}


def after_key(last_refill: object, doc_id: object) -> Update:
    """Keyset condition: strictly after (last_refill, _id) in (lastRefill, _id) order,
    where a missing lastRefill sorts first."""
    if last_refill is None:
        return {"$or": [{LAST_REFILL: None, "_id": {"$gt": doc_id}}, {LAST_REFILL: {"$ne": None}}]}
    return {
        "$or": [
            {LAST_REFILL: {"$gt": last_refill}},
            {LAST_REFILL: last_refill, "_id": {"$gt": doc_id}},
        ]
    }


def latest_rows_since(users: list[UserId], since: datetime) -> list[Update]:
    """Each of `users` with a ledger row at or after `since`, with its latest row's time:
    a range per user on the `user_1_createdAt_-1` index, grouped by user (a server can
    answer it from the index alone)."""
    return [
        {"$match": {USER: {"$in": users}, "createdAt": {"$gte": since}}},
        {"$sort": {USER: 1, "createdAt": -1}},
        {"$group": {"_id": "$" + USER, "last": {"$first": "$createdAt"}}},
    ]


SWEEP_ORDER = [(LAST_REFILL, 1), ("_id", 1)]
SWEEP_PROJECTION: Update = {RECENT: 0, RECENT_AMOUNTS: 0, RECENT_ADMIN: 0}

# -- indexes ----------------------------------------------------------------------------

BALANCE_INDEXES: list[tuple[str, list[tuple[str, int]], bool]] = [
    ("user_1__id_1", [(USER, 1), ("_id", 1)], False),
    ("pendingLedger_id", [(f"{PENDING}._id", 1)], True),
    ("lastRefill_1__id_1", [(LAST_REFILL, 1), ("_id", 1)], False),
]
"""(name, keys, sparse) of the indexes on `balances`."""
LEDGER_INDEX = ("user_1_createdAt_-1", [(USER, 1), ("createdAt", -1)])
LEDGER_ORDER = [("createdAt", -1), ("_id", -1)]

DUPLICATE_USERS: list[Update] = [
    {"$group": {"_id": "$" + USER, "n": {"$sum": 1}}},
    {"$match": {"n": {"$gt": 1}}},
    {"$sort": {"n": -1}},
    {"$limit": 1000},
]
