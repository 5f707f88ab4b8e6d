"""The one module that talks to the MongoDB driver.

It runs calls on any collection with pymongo's async API (pymongo's AsyncCollection,
Motor, mongomock-motor). Every call the library makes is safe to repeat (reads, upserts
that only fill missing fields, compare-and-swaps, inserts with chosen `_id`s), so
transient driver failures (a lost connection, a paused connection pool, a
retryable-write error, a write concern timeout) are retried with exponential backoff and
jitter (half to all of each wait) until a time budget is spent. Driver errors that
remain are wrapped in `StorageError`, naming the call, with the original as
`__cause__`; anything else (a bug, a collection that is not pymongo-like) propagates as
itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import weakref
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
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


class CallObserver(Protocol):
    """Told of every driver call and of every call that failed for good (metrics)."""

    def db_call(self, what: str) -> None: ...

    def storage_error(self, what: str) -> None: ...


class DuplicateKey(Exception):
    """A unique index refused a write (internal signal)."""


TRANSIENT: tuple[type[BaseException], ...] = (AutoReconnect, ConnectionFailure, WriteConcernError)


def _is_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ServerSelectionTimeoutError):
        return False  # the driver already waited serverSelectionTimeoutMS
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, OperationFailure) and exc.has_error_label("RetryableWriteError")


class _Recovery:
    """At most one probe at a time per client: the call retrying a transient failure,
    which the client's other calls wait for (see `Store.run`)."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[None] | None = None
        """The last probe started (maybe done, maybe of another loop): None means no
        probe can be under way, so the hot path skips `probe()` (an attribute, read on
        every call)."""

    def probe(self) -> asyncio.Future[None] | None:
        """The probe under way in this event loop, if any."""
        probe = self.pending
        if probe is None or probe.done() or probe.get_loop() is not asyncio.get_running_loop():
            return None
        return probe

    def start(self) -> bool:
        """Become the probe; False if another call already is."""
        if self.probe() is not None:
            return False
        self.pending = asyncio.get_running_loop().create_future()
        return True

    def finish(self) -> None:
        """The probe succeeded or gave up: the waiting calls go on."""
        probe, self.pending = self.pending, None
        if probe is not None and not probe.done():
            probe.set_result(None)


_RECOVERIES: weakref.WeakKeyDictionary[object, _Recovery] = weakref.WeakKeyDictionary()


def _recovery_for(collection: object) -> _Recovery:
    """The probe slot shared by every store on `collection`'s client (its own if the
    client cannot be found or weakly referenced)."""
    client = getattr(getattr(collection, "database", None), "client", None)
    if client is None:
        return _Recovery()
    try:
        recovery = _RECOVERIES.get(client)
        if recovery is None:
            recovery = _RECOVERIES[client] = _Recovery()
    except TypeError:  # not weakly referenceable, or unhashable
        return _Recovery()
    return recovery


def monotonic() -> float:
    """The clock retry budgets are measured on (a seam for tests)."""
    return time.monotonic()


async def pause(seconds: float) -> None:
    """Wait between two attempts (a seam for tests)."""
    await asyncio.sleep(seconds)


def _mock_bulk_mismatch(exc: TypeError) -> bool:
    """mongomock's known signature mismatch: its UpdateOne handling refuses `sort`."""
    return "unexpected keyword argument 'sort'" in str(exc)


def _own(projection: Update | None) -> Update | None:
    """A copy of `projection` for one call: the library's projections are shared
    constants, and mongomock writes `_id` into the projection it is given."""
    return None if projection is None else dict(projection)


def _count(result: object, field: str) -> int:
    value = getattr(result, field, 0)
    return value if isinstance(value, int) else 0


RETRY_BUDGET = 10.0
"""Default seconds spent retrying one call's transient errors (a paused pool recovers
within a few seconds)."""
MAX_BACKOFF = 1.0
"""Longest single wait between two attempts, in seconds."""


class Store:
    """Driver calls on the balances collection, and on any other passed to a call.

    Transient errors are retried for up to `retry_budget` seconds (measured from the
    first failure), waiting a random time up to `retry_delay * 2**n` (at most 1 s)
    before retry n. `attempts` caps the tries as well (None: only the budget; with
    `retry_delay=0`, as in tests, at most 3 tries unless `attempts` says otherwise).
    """

    def __init__(
        self,
        balances: AsyncCollection,
        *,
        attempts: int | None = None,
        retry_delay: float = 0.05,
        retry_budget: float = RETRY_BUDGET,
    ) -> None:
        self.balances = balances
        if attempts is None and retry_delay <= 0:
            attempts = 3
        self.attempts = None if attempts is None else max(1, attempts)
        self.retry_delay = max(0.0, retry_delay)
        self.retry_budget = max(0.0, retry_budget)
        self._bulk = True  # False once the collection showed mongomock's bulk_write mismatch
        self._recovery: _Recovery | None = None
        self.observer: CallObserver | None = None

    async def run(self, what: str, call: Callable[[], Awaitable[T]]) -> T:  # noqa: PLR0912 - the one retry loop, kept whole
        """Run one idempotent call, retrying transient errors; wrap the driver's others.

        While one call of this client retries a transient failure (the probe), the other
        calls wait for it instead of retrying on their own: PyMongo treats a checkout that
        a paused pool refuses as a new network error and clears the pool again, so a crowd
        of retries would keep it paused. When the probe succeeds they all go on; when it
        gives up they retry for themselves, each within its own budget."""
        recovery = self._recovery
        if recovery is None:
            recovery = self._recovery = _recovery_for(self.balances)
        attempt = 0
        started: float | None = None
        probing = False
        observer = self.observer
        try:
            while True:
                if not probing and recovery.pending is not None:  # rare: a probe may be on
                    started = await self._wait_for_probe(recovery, what, started)
                attempt += 1
                if observer is not None:
                    observer.db_call(what)
                try:
                    return await call()
                except DuplicateKeyError as exc:
                    raise DuplicateKey(str(exc)) from exc
                except PyMongoError as exc:
                    if not _is_transient(exc):
                        if observer is not None:
                            observer.storage_error(what)
                        raise StorageError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
                    now = monotonic()
                    if started is None:
                        started = now
                    spent = now - started
                    if (self.attempts is not None and attempt >= self.attempts) or (
                        spent >= self.retry_budget
                    ):
                        if observer is not None:
                            observer.storage_error(what)
                        raise StorageError(
                            f"{what} failed after {attempt} attempt(s) in {spent:.1f} s: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    log.warning(
                        "transient error in %s (attempt %d): %s",
                        what,
                        attempt,
                        exc,
                        extra={"operation": what, "attempt": attempt},
                    )
                    if not probing:
                        probing = recovery.start()
                        if not probing:
                            continue  # another call is probing: wait for it
                    if self.retry_delay:
                        ceiling = min(MAX_BACKOFF, self.retry_delay * 2 ** (attempt - 1))
                        wait = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto
                        await pause(min(wait, max(0.0, self.retry_budget - spent)))
        finally:
            if probing:
                recovery.finish()

    async def _wait_for_probe(
        self, recovery: _Recovery, what: str, started: float | None
    ) -> float | None:
        """Wait (within this call's budget) while another call probes a failure; returns
        when this call's budget started counting (the first wait or failure)."""
        probe = recovery.probe()
        if probe is None:
            return started
        now = monotonic()
        started = now if started is None else started
        remaining = self.retry_budget - (now - started)
        try:
            await asyncio.wait_for(asyncio.shield(probe), timeout=max(0.0, remaining))
        except TimeoutError:
            raise StorageError(
                f"{what} failed: the database stayed unavailable for {self.retry_budget:.1f} s "
                "while another call retried"
            ) from None
        return started

    # -- balances -------------------------------------------------------------------

    # The hot path's two calls return `run`'s coroutine itself (one coroutine fewer per call).

    def upsert_before(
        self, filter_: Update, update: Update, projection: Update | None = None
    ) -> Coroutine[Any, Any, Document | None]:
        """Upsert the oldest matching document; returns it (the fields `projection`
        keeps) as it was before (None: created)."""
        return self.run(
            "read-or-create balance",
            lambda: self.balances.find_one_and_update(
                filter_,
                update,
                projection=_own(projection),
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

    def modify_by_id(
        self, what: str, filter_: Update, update: Update, projection: Update
    ) -> Coroutine[Any, Any, Document | None]:
        """find_one_and_update of the one document `filter_` names by `_id` (no sort);
        returns the fields `projection` keeps as they were before, None if no match."""
        return self.run(
            what,
            lambda: self.balances.find_one_and_update(
                filter_, update, projection=_own(projection), return_document=ReturnDocument.BEFORE
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
        compare-and-swap no longer matches. mongomock's `bulk_write` cannot run
        `UpdateOne` under pymongo >= 4.11 (it passes `sort`, which mongomock refuses): that
        one mismatch, recognised by its message, switches this collection to one update
        at a time, once; any other error propagates.
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
            except TypeError as exc:
                if not _mock_bulk_mismatch(exc):
                    raise
                log.info(
                    "%s: the collection's bulk_write cannot run UpdateOne (mongomock); "
                    "sending updates one by one",
                    what,
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
            cursor = collection.find(
                filter_, _own(projection), sort=sort, limit=limit, batch_size=limit
            )
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

    async def estimated_count(self, collection: AsyncCollection) -> int:
        """The collection's document count from its metadata (no scan)."""
        # Not in AsyncCollection: only the admin directory asks, and every driver has it.
        count = getattr(collection, "estimated_document_count")  # noqa: B009 - see above
        return int(await self.run(f"count {collection.name}", count))

    async def index_keys(self, collection: AsyncCollection) -> dict[str, list[tuple[str, int]]]:
        """The collection's indexes: name -> key pattern."""
        info = await self.run(f"list indexes of {collection.name}", collection.index_information)
        return {str(n): [(str(k), v) for k, v in spec.get("key", [])] for n, spec in info.items()}

    async def index_names(self, collection: AsyncCollection) -> set[str]:
        """The names of the indexes `collection` has."""
        return set(await self.index_keys(collection))

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
