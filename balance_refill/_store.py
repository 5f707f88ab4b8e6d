"""The one module that talks to the MongoDB driver.

It runs calls on any collection with pymongo's async API (pymongo's AsyncCollection,
Motor, mongomock-motor), retries transient failures of calls that are safe to repeat,
and wraps every other error a collection raises in `StorageError`, naming the call, with
the original as `__cause__`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from ._schema import OLDEST_FIRST, Document, Update
from .errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")
IndexKeys = Sequence[tuple[str, int]]


class AsyncCollection(Protocol):
    """The part of pymongo's async collection API the library uses, with the parameters
    it passes (pymongo's AsyncCollection, Motor and mongomock-motor all fit)."""

    @property
    def name(self) -> str: ...

    async def find_one_and_update(  # noqa: PLR0917 - pymongo's own signature
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        projection: Mapping[str, Any] | None = None,
        sort: IndexKeys | None = None,
        upsert: bool = False,
        return_document: bool = False,
    ) -> Document | None: ...

    async def find_one(
        self, filter: Mapping[str, Any] | None = None, *, sort: IndexKeys | None = None
    ) -> Document | None: ...

    async def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False
    ) -> Any: ...

    async def update_many(self, filter: Mapping[str, Any], update: Mapping[str, Any]) -> Any: ...

    async def insert_one(self, document: dict[str, Any]) -> Any: ...

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True) -> Any: ...

    async def delete_one(self, filter: Mapping[str, Any]) -> Any: ...

    async def count_documents(self, filter: Mapping[str, Any]) -> int: ...

    async def create_index(self, keys: IndexKeys, *, name: str, sparse: bool = False) -> str: ...

    async def index_information(self) -> Mapping[str, Any]: ...

    async def bulk_write(self, requests: list[UpdateOne], ordered: bool = True) -> Any: ...

    def find(
        self,
        filter: Mapping[str, Any],
        projection: Mapping[str, Any] | None = None,
        *,
        sort: IndexKeys | None = None,
        limit: int = 0,
        batch_size: int = 0,
    ) -> AsyncIterable[Document]: ...

    def aggregate(
        self, pipeline: list[Update]
    ) -> Awaitable[AsyncIterable[Document]] | AsyncIterable[Document]: ...


class DuplicateKey(Exception):
    """A unique index refused a write (internal signal)."""


TRANSIENT: tuple[type[BaseException], ...] = (AutoReconnect, ConnectionFailure, WriteConcernError)


def _is_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ServerSelectionTimeoutError):
        return False  # the driver already waited serverSelectionTimeoutMS
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, OperationFailure) and exc.has_error_label("RetryableWriteError")


def _count(result: object, field: str) -> int:
    value = getattr(result, field, 0)
    return value if isinstance(value, int) else 0


class Store:
    """Driver calls on the balances collection, and on any other passed to a call."""

    def __init__(
        self, balances: AsyncCollection, *, attempts: int = 3, retry_delay: float = 0.05
    ) -> None:
        self.balances = balances
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self._bulk = True  # False once the collection turned out not to run bulk updates

    async def run(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one idempotent call, retrying transient errors; wrap the rest."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except DuplicateKeyError as exc:
                raise DuplicateKey(str(exc)) from exc
            except PyMongoError as exc:
                if attempt < self.attempts and _is_transient(exc):
                    log.warning("transient error in %s (attempt %d): %s", what, attempt, exc)
                    if self.retry_delay:
                        await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                    continue
                raise StorageError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
            except (TypeError, ValueError, AttributeError, KeyError, NotImplementedError) as exc:
                # Not a driver error: a collection that does not do what pymongo's does.
                raise StorageError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- balances -------------------------------------------------------------------

    async def upsert_before(self, filter_: Update, update: Update) -> Document | None:
        """Upsert the oldest matching document; returns it as it was before (None: created)."""
        return await self.run(
            "read-or-create balance",
            lambda: self.balances.find_one_and_update(
                filter_,
                update,
                upsert=True,
                sort=OLDEST_FIRST,
                return_document=ReturnDocument.BEFORE,
            ),
        )

    async def modify(
        self, what: str, filter_: Update, update: Update | list[Update], *, before: bool = False
    ) -> Document | None:
        """find_one_and_update on the oldest matching document; None if nothing matched."""
        return await self.run(
            what,
            lambda: self.balances.find_one_and_update(
                filter_,
                update,
                sort=OLDEST_FIRST,
                return_document=ReturnDocument.BEFORE if before else ReturnDocument.AFTER,
            ),
        )

    async def find_balance(self, filter_: Update) -> Document | None:
        return await self.run(
            "read balance", lambda: self.balances.find_one(filter_, sort=OLDEST_FIRST)
        )

    async def update_balance(self, what: str, filter_: Update, update: Update) -> int:
        result = await self.run(what, lambda: self.balances.update_one(filter_, update))
        return _count(result, "modified_count")

    async def update_many(self, what: str, filter_: Update, update: Update) -> int:
        result = await self.run(what, lambda: self.balances.update_many(filter_, update))
        return _count(result, "modified_count")

    async def bulk_update(self, what: str, ops: Sequence[tuple[Update, Update]]) -> tuple[int, int]:
        """Send compare-and-swap updates in one unordered bulk write.

        Returns (matched, failed): updates whose filter matched, and updates the server
        rejected. Retrying the whole batch after a lost reply is safe: an applied
        compare-and-swap no longer matches. A collection that cannot run bulk updates
        (mongomock's `bulk_write` under pymongo >= 4.11) gets them one at a time.
        """
        if not ops:
            return 0, 0
        if self._bulk:
            requests = [UpdateOne(f, u) for f, u in ops]

            async def write() -> tuple[int, int]:
                try:
                    result = await self.balances.bulk_write(requests, ordered=False)
                except BulkWriteError as exc:
                    details = exc.details
                    return int(details.get("nMatched", 0)), len(details.get("writeErrors", []))
                return _count(result, "matched_count"), 0

            try:
                return await self.run(what, write)
            except StorageError as exc:
                if not isinstance(exc.__cause__, TypeError):
                    raise
                log.info(
                    "%s: the collection cannot run bulk updates; sending them one by one", what
                )
                self._bulk = False
        matched = failed = 0
        for filter_, update in ops:
            try:
                matched += await self.update_one(self.balances, filter_, update)
            except DuplicateKey:
                failed += 1
        return matched, failed

    # -- any collection -------------------------------------------------------------

    async def iterate(
        self,
        collection: AsyncCollection,
        filter_: Update,
        *,
        sort: IndexKeys | None = None,
        limit: int = 0,
        projection: Update | None = None,
    ) -> list[Document]:
        """Read at most `limit` documents (0: all) in one call."""

        async def fetch() -> list[Document]:
            # batch_size = limit: one round trip, not 101 documents then a getMore
            cursor = collection.find(filter_, projection, sort=sort, limit=limit, batch_size=limit)
            return [doc async for doc in cursor]

        return await self.run(f"read {collection.name}", fetch)

    async def aggregate(
        self, collection: AsyncCollection, pipeline: list[Update]
    ) -> list[Document]:
        async def fetch() -> list[Document]:
            cursor = collection.aggregate(list(pipeline))
            if inspect.isawaitable(cursor):  # pymongo's async API; Motor and the mock don't
                cursor = await cursor
            return [doc async for doc in _aiter(cursor)]

        return await self.run(f"aggregate {collection.name}", fetch)

    async def create_index(
        self,
        collection: AsyncCollection,
        keys: IndexKeys,
        *,
        name: str,
        sparse: bool = False,
        unique: bool = False,
        partial: Update | None = None,
    ) -> str:
        options: dict[str, Any] = {"name": name}
        if sparse:
            options["sparse"] = True
        if unique:
            options["unique"] = True
        if partial is not None:
            options["partialFilterExpression"] = dict(partial)
        return await self.run(
            f"create index on {collection.name}",
            lambda: collection.create_index(list(keys), **options),
        )

    async def index_names(self, collection: AsyncCollection) -> set[str]:
        """The names of the indexes `collection` has."""
        info = await self.run(f"list indexes of {collection.name}", collection.index_information)
        return set(info)

    async def count(self, collection: AsyncCollection, filter_: Update) -> int:
        return int(
            await self.run(f"count {collection.name}", lambda: collection.count_documents(filter_))
        )

    async def try_insert(self, collection: AsyncCollection, doc: Update) -> bool:
        """Insert `doc`; False if its _id exists."""
        try:
            await self.run(
                f"insert into {collection.name}", lambda: collection.insert_one(dict(doc))
            )
        except DuplicateKey:
            return False
        return True

    async def find_one_and_update(
        self, collection: AsyncCollection, filter_: Update, update: Update
    ) -> Document | None:
        return await self.run(
            f"update {collection.name}",
            lambda: collection.find_one_and_update(
                filter_, update, return_document=ReturnDocument.AFTER
            ),
        )

    async def update_one(self, collection: AsyncCollection, filter_: Update, update: Update) -> int:
        """update_one; returns how many documents matched (0 or 1)."""
        result = await self.run(
            f"update {collection.name}", lambda: collection.update_one(filter_, update)
        )
        return _count(result, "matched_count")

    async def delete_one(self, collection: AsyncCollection, filter_: Update) -> None:
        await self.run(f"release in {collection.name}", lambda: collection.delete_one(filter_))

    async def find_one(self, collection: AsyncCollection, filter_: Update) -> Document | None:
        return await self.run(f"read {collection.name}", lambda: collection.find_one(filter_))

    # -- ledger ---------------------------------------------------------------------

    async def insert_row(self, ledger: AsyncCollection, row: Update) -> bool:
        """Insert a ledger row with a chosen _id; False if it already exists."""
        return await self.try_insert(ledger, row)

    async def insert_rows(self, ledger: AsyncCollection, rows: Sequence[Update]) -> int:
        """Insert ledger rows with chosen ids in one call; rows already there are skipped."""
        if not rows:
            return 0

        async def insert() -> int:
            try:
                result = await ledger.insert_many([dict(r) for r in rows], ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                return int(exc.details.get("nInserted", len(rows) - len(errors)))
            return len(getattr(result, "inserted_ids", rows))

        return await self.run("write ledger rows", insert)


async def _aiter(cursor: object) -> AsyncIterable[Document]:
    if isinstance(cursor, AsyncIterable):
        async for doc in cursor:
            yield doc
    elif isinstance(cursor, Iterable):  # a synchronous iterator (some mocks)
        for doc in cursor:
            yield doc
