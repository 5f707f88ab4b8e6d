"""Reads for the people who look after users (`refiller.directory`): a user's history,
finding users by email, name, username or id in LibreChat's `users` collection, paged
lists (users at zero, paused, per tier), and the overview's figures.

Every read goes through the store (the same retries and `StorageError` as the rest of
the library) and every lookup has a named index (`LOOKUP_INDEXES`). The indexes this
module needs beyond the library's own are created only by `create_lookup_indexes()`,
when the operator asks; a lookup whose index is missing on a large collection is
refused with the index's name rather than scanning.

Cost at 10 million users, with the indexes in place (one round trip each):

| read | index | examined |
|---|---|---|
| find by email or prefix | users `email_1`, `username_1`, `name_1` | at most `limit` keys per branch |
| their balances | balances `user_1__id_1` | one key and document per user found |
| users at zero, page | balances `tokenCredits_1__id_1` | `limit` + 1 keys and documents |
| paused, page | balances `refillPaused_1__id_1` | `limit` + 1 |
| a tier, page | balances `tier_1__id_1` (missing `tier` = default) | `limit` + 1 per `$in` value |
| users at zero, count | balances `tokenCredits_1__id_1` | keys of users at zero, no documents |
| a user's history | ledger `user_1_createdAt_-1` | `limit` keys and documents |
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from bson import ObjectId, json_util

from . import _schema as S
from ._engine import Engine
from ._store import AsyncCollection
from ._validate import UserId, check_limit
from .errors import ConfigurationError, InvalidArgument, InvalidUserId

log = logging.getLogger(__name__)

USERS = "users"
"""LibreChat's users collection, in the balances' database unless another is given."""
EXACT_BELOW = 20_000
"""Below this many documents a lookup without its index is allowed (a small scan)."""
SAMPLE_SIZE = 2_000
LEDGER_SCAN_CAP = 200_000
MAX_QUERY = 256
REFILL_CONTEXTS = ("autoRefill", "refillReset", "refillNow")
ADMIN_CONTEXTS = ("admin", "setBalance")
Index = tuple[str, list[tuple[str, int]]]
Listing = Literal["zero", "paused", "tier"]

ZERO_INDEX: Index = ("tokenCredits_1__id_1", [(S.CREDITS, 1), ("_id", 1)])
PAUSED_INDEX: Index = ("refillPaused_1__id_1", [(S.PAUSED, 1), ("_id", 1)])
TIER_INDEX: Index = ("tier_1__id_1", [(S.TIER, 1), ("_id", 1)])
EMAIL_INDEX: Index = ("email_1", [("email", 1)])  # LibreChat's own (unique)
USERNAME_INDEX: Index = ("username_1", [("username", 1)])
NAME_INDEX: Index = ("name_1", [("name", 1)])
LOOKUP_INDEXES: dict[str, tuple[Index, ...]] = {
    "balances": (ZERO_INDEX, PAUSED_INDEX, TIER_INDEX),
    "users": (EMAIL_INDEX, USERNAME_INDEX, NAME_INDEX),
}
"""The indexes the directory's lookups use, per collection (name, keys)."""
LISTING_INDEX: dict[Listing, Index] = {
    "zero": ZERO_INDEX,
    "paused": PAUSED_INDEX,
    "tier": TIER_INDEX,
}
PERSON_FIELDS = {"_id": 1, "email": 1, "name": 1, "username": 1}


@dataclass(frozen=True, slots=True)
class Person:
    """A user as the directory shows one: the balance beside LibreChat's profile."""

    user: object
    email: str | None = None
    name: str | None = None
    username: str | None = None
    balance: float | None = None  # None: no balance document
    tier: str | None = None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Found:
    """A lookup's people, and the lookups left out because their index is missing."""

    people: list[Person]
    missing_indexes: list[str] = field(default_factory=list)
    profiles: bool = True  # False: there is no users collection to search


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list; `next` is the cursor of the next page (None: the last)."""

    people: list[Person]
    next: str | None
    index: str


@dataclass(frozen=True, slots=True)
class History:
    """A user's ledger rows, newest first; `ledger` False: the refiller has no ledger."""

    rows: list[dict[str, object]]
    ledger: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A user's document version (see `Directory.snapshot`) and spend per period."""

    version: str
    spend_history: list[float]


@dataclass(frozen=True, slots=True)
class Window:
    """Refill and admin rows written in one window (`partial`: the scan cap was hit)."""

    label: str
    refills: int
    refill_credits: float
    admin_rows: int
    admin_credits: float
    partial: bool


@dataclass(frozen=True, slots=True)
class Overview:
    users: int
    zero: int | None
    zero_exact: bool
    sample: int
    paused: int | None
    windows: list[Window]
    ledger: bool
    missing_indexes: list[str]


def _escape_prefix(text: str) -> dict[str, str]:
    """An anchored, escaped prefix regex: MongoDB reads it as an index range."""
    return {"$regex": "^" + re.escape(text)}


ID_TYPES = ["number", "string", "object", "array", "binData", "objectId", "bool", "date"]
"""BSON's sort order of the types an `_id` can have."""


def after_id(doc_id: object) -> dict[str, Any]:
    """`_id` after `doc_id` in sort order, across types (`$gt` alone stays within one
    type: a page of string ids would never reach the ObjectIds after them)."""
    kind = (
        "number" if isinstance(doc_id, int | float) and not isinstance(doc_id, bool)
        else "string" if isinstance(doc_id, str)
        else "objectId" if isinstance(doc_id, ObjectId)
        else None
    )  # fmt: skip
    if kind is None:
        return {"_id": {"$gt": doc_id}}
    later = ID_TYPES[ID_TYPES.index(kind) + 1 :]
    return {"$or": [{"_id": {"$gt": doc_id}}, *({"_id": {"$type": t}} for t in later)]}


def encode_cursor(value: object, doc_id: object) -> str:
    raw = json_util.dumps([value, doc_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[object, object]:
    """The (value, _id) a cursor names; `InvalidArgument` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, doc_id = json_util.loads(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("that page link is not valid; start from the first page") from exc
    for item in (value, doc_id):
        if isinstance(item, dict | list):
            raise InvalidArgument("that page link is not valid; start from the first page")
    return value, doc_id


class Directory:
    """Read-only views over the refiller's collections and LibreChat's `users`."""

    def __init__(self, engine: Engine, *, users: str | AsyncCollection | None = USERS) -> None:
        self._engine = engine
        self._users_spec = users

    def with_users(self, users: str | AsyncCollection | None) -> Directory:
        """The same directory over another users collection (a name in the balances'
        database, a collection, or None for none)."""
        return Directory(self._engine, users=users)

    @property
    def users(self) -> AsyncCollection | None:
        """LibreChat's users collection (None: not configured or no database to find it in)."""
        spec = self._users_spec
        if spec is None or not isinstance(spec, str):
            return spec
        database = getattr(self._engine.store.balances, "database", None)
        if database is None:
            return None
        collection: AsyncCollection = database[spec]
        return collection

    # -- history ------------------------------------------------------------------------

    async def history(self, user_id: UserId, limit: int = 50) -> History:
        """The user's ledger rows, newest first (at most `limit`, 1 to 1000), on the
        ledger's `user_1_createdAt_-1` index; without a ledger, no rows and `ledger=False`."""
        engine = self._engine
        user = engine.user(user_id)
        limit = check_limit(limit, what="limit", low=1, high=1000)
        if engine.ledger is None:
            return History([], ledger=False)
        rows = await engine.store.iterate(
            engine.ledger, S.by_user(user), sort=S.LEDGER_ORDER, limit=limit
        )
        return History([dict(r) for r in rows], ledger=True)

    async def snapshot(self, user_id: UserId) -> Snapshot:
        """The user's document version and stored spend history, in one read.

        The version is what an admin change alters, as a short hash: the op id of the
        last refill or admin change, the tier, the pause and the pin. Spends are left
        out, so a chatting user's review is not made stale by every message."""
        record = await self._engine.find(self._engine.user(user_id))
        s = record.state
        seen = repr((str(record.op_id), s.tier, s.paused, s.pinned, str(record.id)))
        return Snapshot(hashlib.sha256(seen.encode()).hexdigest()[:24], list(s.history))

    async def person(self, user_id: UserId) -> Person | None:
        """The user's LibreChat profile (email, name), if the users collection has one."""
        user = self._engine.user(user_id)
        profile = (await self._profiles([user])).get(user)
        return None if profile is None else self._person(user, None, profile)

    # -- indexes --------------------------------------------------------------------------

    async def missing_indexes(self) -> dict[str, list[str]]:
        """Per collection, the lookup indexes not found (matched by key pattern)."""
        missing: dict[str, list[str]] = {}
        for label, collection in self._collections().items():
            present = list((await self._engine.store.index_keys(collection)).values())
            names = [name for name, keys in LOOKUP_INDEXES[label] if keys not in present]
            if names:
                missing[label] = names
        return missing

    async def create_lookup_indexes(self) -> list[str]:
        """Create the missing lookup indexes (in the background on the server); returns the
        names created. Run it when the operator asks: on 10 million users each index is a
        pass over the collection."""
        created = []
        missing = await self.missing_indexes()
        for label, collection in self._collections().items():
            for name, keys in LOOKUP_INDEXES[label]:
                if name in missing.get(label, []):
                    await self._engine.store.create_index(collection, keys, name=name)
                    log.info("created index %s on %s", name, collection.name)
                    created.append(f"{collection.name}.{name}")
        return created

    def _collections(self) -> dict[str, AsyncCollection]:
        found = {"balances": self._engine.store.balances}
        users = self.users
        if users is not None:
            found["users"] = users
        return found

    async def _usable(self, collection: AsyncCollection, index: Index) -> bool:
        """True if `index` exists, or the collection is small enough to scan."""
        store = self._engine.store
        if index[1] in (await store.index_keys(collection)).values():
            return True
        return await store.estimated_count(collection) <= EXACT_BELOW

    # -- finding people -------------------------------------------------------------------

    async def find(self, query: str, limit: int = 20) -> Found:
        """Users whose id is `query`, or whose email, username or name starts with it
        (email and username compared in lower case, as LibreChat stores them)."""
        if not isinstance(query, str):
            raise InvalidArgument("search for text: an email, a name or an id")
        text = query.strip()
        if not text or len(text) > MAX_QUERY:
            raise InvalidArgument(f"search for 1 to {MAX_QUERY} characters")
        limit = check_limit(limit, what="limit", low=1, high=200)
        store = self._engine.store
        ids: list[object] = []
        with contextlib.suppress(InvalidUserId):
            ids.append(self._engine.user(text))
        profiles: dict[object, Mapping[str, Any]] = {}
        missing: list[str] = []
        users = self.users
        if users is not None:
            branches: list[dict[str, Any]] = []
            if ids and isinstance(ids[0], ObjectId):
                branches.append({"_id": ids[0]})
            wanted = [(EMAIL_INDEX, text.lower())]
            if "@" not in text:
                wanted += [(USERNAME_INDEX, text.lower()), (NAME_INDEX, text)]
            present = list((await store.index_keys(users)).values())
            small = await store.estimated_count(users) <= EXACT_BELOW
            for (name, keys), prefix in wanted:
                if keys in present or small:
                    branches.append({keys[0][0]: _escape_prefix(prefix)})
                else:
                    missing.append(f"{users.name}.{name}")
            if branches:
                docs = await store.iterate(
                    users, {"$or": branches}, limit=limit, projection=PERSON_FIELDS
                )
                profiles = {d.get("_id"): d for d in docs}
        ids += [i for i in profiles if i not in ids]
        people = await self._people(ids[: limit + 1], profiles)
        people = [p for p in people if p.balance is not None or p.user in profiles]
        return Found(people[:limit], missing, profiles=users is not None)

    async def _people(
        self, ids: Sequence[object], profiles: Mapping[object, Mapping[str, Any]]
    ) -> list[Person]:
        """`ids` with their balances (one `$in` read on `user_1__id_1`)."""
        if not ids:
            return []
        docs = await self._engine.store.iterate(
            self._engine.store.balances,
            {S.USER: {"$in": list(ids)}},
            sort=S.OLDEST_FIRST,
            projection={S.USER: 1, S.CREDITS: 1, S.TIER: 1, S.PAUSED: 1},
        )
        balances: dict[object, Mapping[str, Any]] = {}
        for doc in docs:
            balances.setdefault(doc.get(S.USER), doc)  # the oldest, as LibreChat reads
        return [self._person(i, balances.get(i), profiles.get(i)) for i in ids]

    def _person(
        self, user: object, balance: Mapping[str, Any] | None, profile: Mapping[str, Any] | None
    ) -> Person:
        def text(doc: Mapping[str, Any] | None, key: str) -> str | None:
            value = None if doc is None else doc.get(key)
            return value if isinstance(value, str) and value else None

        credits = None
        if balance is not None:
            credits = S.parse(dict(balance)).state.balance
        tier = text(balance, S.TIER) or (
            None if balance is None else self._engine.tiers.default_tier
        )
        return Person(
            user=user,
            email=text(profile, "email"),
            name=text(profile, "name"),
            username=text(profile, "username"),
            balance=credits,
            tier=tier,
            paused=balance is not None and balance.get(S.PAUSED) is True,
        )

    async def _profiles(self, ids: Sequence[object]) -> dict[object, Mapping[str, Any]]:
        users = self.users
        keys = [i for i in ids if isinstance(i, ObjectId)]
        if users is None or not keys:
            return {}
        docs = await self._engine.store.iterate(
            users, {"_id": {"$in": keys}}, projection=PERSON_FIELDS
        )
        return {d.get("_id"): d for d in docs}

    # -- lists ----------------------------------------------------------------------------

    async def listing(
        self, kind: Listing, *, tier: str | None = None, after: str | None = None, limit: int = 25
    ) -> Page:
        """One page of users at zero (lowest balance first), paused, or in `tier`
        (by `_id`), keyset-paged on the kind's index (`after`: the previous page's
        `next`). `ConfigurationError` names the index when it is missing on a large
        collection."""
        limit = check_limit(limit, what="limit", low=1, high=200)
        store = self._engine.store
        index = LISTING_INDEX.get(kind)
        if index is None:
            raise InvalidArgument("list users at zero, paused, or in a tier")
        if not await self._usable(store.balances, index):
            raise ConfigurationError(
                f"listing users {kind} needs the index {index[0]} on {store.balances.name}; "
                "create the lookup indexes first (serve --create-lookup-indexes)"
            )
        field_ = index[1][0][0]
        if kind == "zero":
            match: dict[str, Any] = {field_: {"$lte": 0}}
        elif kind == "paused":
            match = {field_: True}
        else:
            tiers = self._engine.tiers
            if tier not in tiers.tiers:
                raise InvalidArgument(f"unknown tier; known tiers: {', '.join(tiers.tiers)}")
            match = {field_: {"$in": [tier, None]} if tier == tiers.default_tier else tier}
        if after is not None:
            value, doc_id = decode_cursor(after)
            if kind == "zero":
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise InvalidArgument("that page link is not valid; start from the first page")
                match = {
                    "$or": [
                        {field_: {"$gt": value, "$lte": 0}},
                        {"$and": [{field_: value}, after_id(doc_id)]},
                    ]
                }
            else:
                match = {"$and": [match, after_id(doc_id)]}
        sort = index[1] if kind == "zero" else [("_id", 1)]
        docs = await store.iterate(store.balances, match, sort=sort, limit=limit + 1)
        shown = docs[:limit]
        profiles = await self._profiles([d.get(S.USER) for d in shown])
        people = [self._person(d.get(S.USER), d, profiles.get(d.get(S.USER))) for d in shown]
        nxt = None
        if len(docs) > limit:
            last = shown[-1]
            nxt = encode_cursor(last.get(field_) if kind == "zero" else None, last.get("_id"))
        return Page(people, nxt, index[0])

    # -- the overview ---------------------------------------------------------------------

    async def overview(self, now: datetime) -> Overview:
        """Users (from metadata), users at zero and paused (counted on their indexes, or
        estimated from a sample without them), and the ledger's last 24 hours and 30 days."""
        store = self._engine.store
        balances = store.balances
        users = await store.estimated_count(balances)
        present = list((await store.index_keys(balances)).values())
        zero: int | None
        sample = 0
        if ZERO_INDEX[1] in present or users <= EXACT_BELOW:
            zero, exact = await store.count(balances, {S.CREDITS: {"$lte": 0}}), True
        else:
            rows = await store.aggregate(
                balances,
                [
                    {"$sample": {"size": SAMPLE_SIZE}},
                    {"$group": {"_id": None, "n": {"$sum": 1}, "zero": {
                        "$sum": {"$cond": [{"$lte": ["$" + S.CREDITS, 0]}, 1, 0]}}}},
                ],
            )  # fmt: skip
            got = rows[0] if rows else {"n": 0, "zero": 0}
            sample = int(got.get("n", 0))
            zero = round(got.get("zero", 0) / sample * users) if sample else 0
            exact = False
        paused = None
        if PAUSED_INDEX[1] in present or users <= EXACT_BELOW:
            paused = await store.count(balances, {S.PAUSED: True})
        windows = []
        if self._engine.ledger is not None:
            for label, delta in (("last 24 hours", timedelta(days=1)),
                                 ("last 30 days", timedelta(days=30))):  # fmt: skip
                windows.append(await self._window(label, now - delta))
        missing = [n for names in (await self.missing_indexes()).values() for n in names]
        return Overview(
            users, zero, exact, sample, paused, windows, self._engine.ledger is not None, missing
        )

    async def _window(self, label: str, since: datetime) -> Window:
        """Refill and grant rows since `since`: a range on the ledger's `_id` index (an
        ObjectId holds its creation time), newest first, at most LEDGER_SCAN_CAP rows."""
        ledger = self._engine.ledger
        assert ledger is not None  # noqa: S101 - checked by the caller
        store = self._engine.store
        match = {"_id": {"$gte": ObjectId.from_datetime(since)}}
        rows = await store.aggregate(
            ledger,
            [
                {"$match": match},
                {"$sort": {"_id": -1}},
                {"$limit": LEDGER_SCAN_CAP},
                {"$group": {"_id": None, "n": {"$sum": 1}}},
            ],
        )
        scanned = int(rows[0].get("n", 0)) if rows else 0
        grouped = await store.aggregate(
            ledger,
            [
                {"$match": match},
                {"$sort": {"_id": -1}},
                {"$limit": LEDGER_SCAN_CAP},
                {"$match": {"context": {"$in": [*REFILL_CONTEXTS, *ADMIN_CONTEXTS]},
                            "createdAt": {"$gte": since}}},
                {"$group": {"_id": "$context", "n": {"$sum": 1},
                            "credits": {"$sum": "$rawAmount"}}},
            ],
        )  # fmt: skip
        by = {row.get("_id"): row for row in grouped}

        def total(contexts: Sequence[str], key: str) -> Any:
            return sum(by.get(c, {}).get(key, 0) for c in contexts)

        return Window(
            label,
            refills=total(REFILL_CONTEXTS, "n"),
            refill_credits=total(REFILL_CONTEXTS, "credits"),
            admin_rows=total(ADMIN_CONTEXTS, "n"),
            admin_credits=total(ADMIN_CONTEXTS, "credits"),
            partial=scanned >= LEDGER_SCAN_CAP,
        )
