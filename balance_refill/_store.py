"""The one module that talks to the MongoDB driver.

It runs calls on any collection with pymongo's async API (pymongo's AsyncCollection,
Motor, mongomock-motor), retries transient failures of calls that are safe to repeat,
and wraps every other driver error in `StorageError` with the original as `__cause__`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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

from .errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncCollection(Protocol):
    """The subset of pymongo's async collection API the library uses."""

    @property
    def name(self) -> str: ...

    async def find_one_and_update(
        self, filter: Any, update: Any, *args: Any, **kwargs: Any
    ) -> Any: ...

    async def find_one(self, *args: Any, **kwargs: Any) -> Any: ...

    async def update_one(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def update_many(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def insert_one(self, document: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def insert_many(self, documents: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def delete_one(self, filter: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def count_documents(self, filter: Any, *args: Any, **kwargs: Any) -> int: ...

    async def create_index(self, keys: Any, **kwargs: Any) -> str: ...

    async def bulk_write(self, requests: Any, *args: Any, **kwargs: Any) -> Any: ...

    def find(self, *args: Any, **kwargs: Any) -> Any: ...

    def aggregate(self, pipeline: Any, *args: Any, **kwargs: Any) -> Any: ...


class DuplicateKey(Exception):
    """A unique index refused a write (internal signal)."""


TRANSIENT: tuple[type[BaseException], ...] = (AutoReconnect, ConnectionFailure, WriteConcernError)


def _is_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ServerSelectionTimeoutError):
        return False  # the driver already waited serverSelectionTimeoutMS
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, OperationFailure) and exc.has_error_label("RetryableWriteError")


class Store:
    """Driver calls for the balances collection and the optional ledger."""

    def __init__(
        self,
        balances: AsyncCollection,
        ledger: AsyncCollection | None,
        *,
        attempts: int = 3,
        retry_delay: float = 0.05,
    ) -> None:
        self.balances = balances
        self.ledger = ledger
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay

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
        raise AssertionError("unreachable")  # pragma: no cover

    # -- balances -------------------------------------------------------------------

    async def upsert_read(self, filter_: Mapping[str, Any], update: Mapping[str, Any]) -> Any:
        """Upsert the oldest matching document; returns it as it was before (None: created)."""
        return await self.run(
            "read-or-create balance",
            lambda: self.balances.find_one_and_update(
                filter_,
                update,
                upsert=True,
                sort=[("_id", 1)],
                return_document=ReturnDocument.BEFORE,
            ),
        )

    async def modify(
        self,
        what: str,
        filter_: Mapping[str, Any],
        update: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        before: bool = False,
    ) -> Any:
        """find_one_and_update on the oldest matching document; None if nothing matched."""
        return await self.run(
            what,
            lambda: self.balances.find_one_and_update(
                filter_,
                update,
                sort=[("_id", 1)],
                return_document=ReturnDocument.BEFORE if before else ReturnDocument.AFTER,
            ),
        )

    async def find_balance(self, filter_: Mapping[str, Any]) -> Any:
        return await self.run(
            "read balance", lambda: self.balances.find_one(filter_, sort=[("_id", 1)])
        )

    async def update_balance(
        self, what: str, filter_: Mapping[str, Any], update: Mapping[str, Any]
    ) -> int:
        result = await self.run(what, lambda: self.balances.update_one(filter_, update))
        return int(getattr(result, "modified_count", 0) or 0)

    async def iterate(
        self,
        collection: AsyncCollection,
        filter_: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        projection: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """Read at most `limit` documents (0: all) in one call."""

        options: dict[str, Any] = {"sort": sort, "limit": limit}
        if limit:
            options["batch_size"] = limit  # one round trip, not 101 documents then a getMore

        async def fetch() -> list[Any]:
            cursor = collection.find(filter_, projection, **options)
            return [doc async for doc in cursor]

        return await self.run(f"read {collection.name}", fetch)

    async def aggregate(
        self, collection: AsyncCollection, pipeline: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        async def fetch() -> list[Any]:
            cursor = collection.aggregate(list(pipeline))
            if inspect.isawaitable(
                cursor
            ):  # pymongo's async API; Motor and the mock return it directly
                cursor = await cursor
            return [doc async for doc in _aiter(cursor)]

        return await self.run(f"aggregate {collection.name}", fetch)

    async def create_index(
        self, collection: AsyncCollection, keys: Sequence[tuple[str, int]], **options: Any
    ) -> str:
        return await self.run(
            f"create index on {collection.name}",
            lambda: collection.create_index(list(keys), **options),
        )

    async def count(self, collection: AsyncCollection, filter_: Mapping[str, Any]) -> int:
        return int(
            await self.run(f"count {collection.name}", lambda: collection.count_documents(filter_))
        )

    async def bulk_update(
        self, what: str, ops: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
    ) -> tuple[int, int]:
        """Send compare-and-swap updates in one unordered bulk write.

        Returns (matched, failed): updates whose filter matched, and updates the server
        rejected. Retrying the whole batch after a lost reply is safe: an applied
        compare-and-swap no longer matches.
        """
        if not ops:
            return 0, 0
        requests = [UpdateOne(dict(f), dict(u)) for f, u in ops]

        async def write() -> tuple[int, int]:
            try:
                result = await self.balances.bulk_write(requests, ordered=False)
            except BulkWriteError as exc:
                return int(exc.details.get("nMatched", 0)), len(exc.details.get("writeErrors", []))
            return int(result.matched_count), 0

        return await self.run(what, write)

    async def update_many(
        self, what: str, filter_: Mapping[str, Any], update: Mapping[str, Any]
    ) -> int:
        result = await self.run(what, lambda: self.balances.update_many(filter_, update))
        return int(getattr(result, "modified_count", 0) or 0)

    # -- leases ---------------------------------------------------------------------

    async def try_insert(self, collection: AsyncCollection, doc: Mapping[str, Any]) -> bool:
        """Insert `doc`; False if its _id exists."""
        try:
            await self.run(
                f"insert into {collection.name}", lambda: collection.insert_one(dict(doc))
            )
        except DuplicateKey:
            return False
        return True

    async def find_one_and_update(
        self, collection: AsyncCollection, filter_: Mapping[str, Any], update: Mapping[str, Any]
    ) -> Any:
        return await self.run(
            f"update {collection.name}",
            lambda: collection.find_one_and_update(
                filter_, update, return_document=ReturnDocument.AFTER
            ),
        )

    async def update_one(
        self, collection: AsyncCollection, filter_: Mapping[str, Any], update: Mapping[str, Any]
    ) -> int:
        result = await self.run(
            f"update {collection.name}", lambda: collection.update_one(filter_, update)
        )
        return int(getattr(result, "matched_count", 0) or 0)

    async def delete_one(self, collection: AsyncCollection, filter_: Mapping[str, Any]) -> None:
        await self.run(
            f"release lease in {collection.name}", lambda: collection.delete_one(filter_)
        )

    async def find_one(self, collection: AsyncCollection, filter_: Mapping[str, Any]) -> Any:
        return await self.run(f"read {collection.name}", lambda: collection.find_one(filter_))

    # -- ledger ---------------------------------------------------------------------

    async def insert_row(self, row: Mapping[str, Any]) -> bool:
        """Insert a ledger row with a chosen _id; False if it already exists."""
        assert self.ledger is not None  # noqa: S101 - callers check
        ledger = self.ledger
        try:
            await self.run("write ledger row", lambda: ledger.insert_one(dict(row)))
        except DuplicateKey:
            return False
        return True

    async def insert_rows(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ledger rows with chosen ids in one call; rows already there are skipped."""
        assert self.ledger is not None  # noqa: S101 - callers check
        if not rows:
            return 0
        ledger = self.ledger

        async def insert() -> int:
            try:
                result = await ledger.insert_many([dict(r) for r in rows], ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                return int(exc.details.get("nInserted", len(rows) - len(errors)))
            return len(result.inserted_ids)

        return await self.run("write ledger rows", insert)


async def _aiter(cursor: Any) -> AsyncIterator[Any]:
    if hasattr(cursor, "__aiter__"):
        async for doc in cursor:
            yield doc
    else:  # a synchronous iterator (some mocks)
        for doc in cursor:
            yield doc


class Connection:
    """Collections opened from settings: a real server, or the embedded mock."""

    def __init__(self, client: Any, database: Any, *, mock: bool) -> None:
        self.client = client
        self.database = database
        self.mock = mock

    def collection(self, name: str) -> Any:
        return self.database[name]

    async def close(self) -> None:
        closed = self.client.close()
        if inspect.isawaitable(closed):
            await closed


def connect(uri: str | None, database: str) -> Connection:
    """Open `database` at `uri` with pymongo's async client (tz-aware), or the mock."""
    if uri is None:
        from mongomock_motor import AsyncMongoMockClient  # noqa: PLC0415 - only when asked for

        from .testing import MockDatabase  # noqa: PLC0415 - the mock's bulk_write shim

        client: Any = AsyncMongoMockClient(tz_aware=True)
        return Connection(client, MockDatabase(client[database]), mock=True)
    from pymongo import AsyncMongoClient  # noqa: PLC0415 - keeps import time low for mock users

    try:
        options: dict[str, Any] = {"tz_aware": True}
        if "serverselectiontimeoutms" not in uri.lower():
            options["serverSelectionTimeoutMS"] = 5000
        client = AsyncMongoClient(uri, **options)
    except (PyMongoError, ValueError) as exc:
        raise StorageError(f"cannot use MONGODB_URI: {type(exc).__name__}") from exc
    return Connection(client, client[database], mock=False)
