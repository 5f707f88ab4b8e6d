"""Test helpers shipped with the library: a fake clock and a recording collection.

Never imported by the library itself; host apps use them in their own tests.

`RecordingCollection` wraps any async collection. It counts every database call (the
call budgets are checked with it), records each call's arguments (for the query lint),
can yield to the event loop before each call (the mock never interleaves calls on its
own, so races only show with `yield_first=True`), and can inject faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ._schema import Document
from ._store import AsyncCollection

_T = TypeVar("_T")

CALL_METHODS = (
    "find_one_and_update",
    "find_one",
    "update_one",
    "update_many",
    "insert_one",
    "insert_many",
    "delete_one",
    "delete_many",
    "count_documents",
    "create_index",
    "bulk_write",
)
"""The calls `RecordingCollection` counts as they are awaited (`find` and `aggregate`
count when their cursor is first iterated)."""


class FakeClock:
    """A clock for tests and demos: returns a fixed aware UTC time until moved."""

    def __init__(self, start: datetime | None = None) -> None:
        self.value = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self.value.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")

    def __call__(self) -> datetime:
        return self.value

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self.value += delta if delta is not None else timedelta(**kwargs)
        return self.value

    def set(self, value: datetime) -> None:
        self.value = value


@dataclass(frozen=True, slots=True)
class Call:
    """One database call as the library sent it: positional and keyword arguments as
    passed (filters, updates, pipelines, options)."""

    collection: str
    method: str
    args: tuple[object, ...]
    kwargs: Mapping[str, object]


Fault = Callable[[Call, int], BaseException | None]
"""Called with (call, index of the call); returns an exception to raise before or after
the call is applied, or None."""


@dataclass
class CallLog:
    """Calls across every collection that shares this log."""

    calls: list[Call] = field(default_factory=list)
    fail_before: Fault | None = None
    fail_after: Fault | None = None

    @property
    def count(self) -> int:
        return len(self.calls)

    def reset(self) -> None:
        self.calls.clear()

    def methods(self) -> list[str]:
        return [f"{c.collection}.{c.method}" for c in self.calls]


def _send(method: Callable[..., _T], args: tuple[object, ...], kwargs: dict[str, object]) -> _T:
    """Call `method` with arguments as they were recorded."""
    return method(*args, **kwargs)


class RecordingCursor:
    """A cursor that records (and may fail) its first round trip when iterated."""

    def __init__(
        self,
        make: Callable[[], object],
        before: Callable[[], Awaitable[None]],
        after: Callable[[], None],
    ) -> None:
        self._make = make
        self._before = before
        self._after = after
        self._it: Iterator[Document] | None = None

    def __aiter__(self) -> RecordingCursor:
        return self

    async def __anext__(self) -> Document:
        if self._it is None:
            await self._before()
            cursor = self._make()
            if asyncio.iscoroutine(cursor):  # pymongo's async aggregate
                cursor = await cursor
            if isinstance(cursor, AsyncIterable):
                docs: list[Document] = [d async for d in cursor]
            elif isinstance(cursor, Iterable):  # a synchronous iterator (some mocks)
                docs = list(cursor)
            else:
                raise TypeError(f"{type(cursor).__name__} object is not a cursor")
            self._after()
            self._it = iter(docs)
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    async def to_list(self, length: int | None = None) -> list[Document]:
        return [doc async for doc in self]


class RecordingCollection:
    """Wraps an async collection: counts, records, optionally yields and injects faults.

    It has every method of the collection API the library uses, so it goes wherever a
    collection does; each method takes what the wrapped collection's takes and records
    the arguments as passed. Other attributes pass through to the wrapped collection at
    run time; typed code reaches them through `inner`.
    """

    def __init__(
        self, inner: AsyncCollection, log: CallLog | None = None, *, yield_first: bool = False
    ) -> None:
        self._inner = inner
        self.log = log if log is not None else CallLog()
        self.yield_first = yield_first

    @property
    def name(self) -> str:
        return str(self._inner.name)

    @property
    def inner(self) -> AsyncCollection:
        """The wrapped collection (calls on it are not recorded)."""
        return self._inner

    def __getattr__(self, attr: str) -> object:
        return getattr(self._inner, attr)

    # -- calls ----------------------------------------------------------------------

    async def find_one_and_update(self, *args: object, **kwargs: object) -> Document | None:
        return await self._call(
            "find_one_and_update", self._inner.find_one_and_update, args, kwargs
        )

    async def find_one(self, *args: object, **kwargs: object) -> Document | None:
        return await self._call("find_one", self._inner.find_one, args, kwargs)

    async def update_one(self, *args: object, **kwargs: object) -> object:
        return await self._call("update_one", self._inner.update_one, args, kwargs)

    async def update_many(self, *args: object, **kwargs: object) -> object:
        return await self._call("update_many", self._inner.update_many, args, kwargs)

    async def insert_one(self, *args: object, **kwargs: object) -> object:
        return await self._call("insert_one", self._inner.insert_one, args, kwargs)

    async def insert_many(self, *args: object, **kwargs: object) -> object:
        return await self._call("insert_many", self._inner.insert_many, args, kwargs)

    async def delete_one(self, *args: object, **kwargs: object) -> object:
        return await self._call("delete_one", self._inner.delete_one, args, kwargs)

    async def delete_many(self, *args: object, **kwargs: object) -> object:
        delete_many: Callable[..., Awaitable[object]] = getattr(self._inner, "delete_many")  # noqa: B009 - not in the protocol: the library never deletes many
        return await self._call("delete_many", delete_many, args, kwargs)

    async def count_documents(self, *args: object, **kwargs: object) -> int:
        return await self._call("count_documents", self._inner.count_documents, args, kwargs)

    async def create_index(self, *args: object, **kwargs: object) -> str:
        return await self._call("create_index", self._inner.create_index, args, kwargs)

    async def index_information(self, *args: object, **kwargs: object) -> Mapping[str, Any]:
        return await self._call("index_information", self._inner.index_information, args, kwargs)

    async def bulk_write(self, *args: object, **kwargs: object) -> object:
        return await self._call("bulk_write", self._inner.bulk_write, args, kwargs)

    def find(self, *args: object, **kwargs: object) -> RecordingCursor:
        return self._cursor("find", lambda: _send(self._inner.find, args, kwargs), args, kwargs)

    def aggregate(self, pipeline: object, *args: object, **kwargs: object) -> RecordingCursor:
        return self._cursor(
            "aggregate",
            lambda: _send(self._inner.aggregate, (pipeline, *args), kwargs),
            (pipeline, *args),
            kwargs,
        )

    # -- recording ------------------------------------------------------------------

    def _record(
        self, method: str, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> tuple[Call, int]:
        call = Call(self.name, method, args, kwargs)
        index = len(self.log.calls)
        self.log.calls.append(call)
        return call, index

    async def _call(
        self,
        method: str,
        send: Callable[..., Awaitable[_T]],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> _T:
        if self.yield_first:
            await asyncio.sleep(0)
        call, index = self._record(method, args, kwargs)
        if self.log.fail_before is not None:
            exc = self.log.fail_before(call, index)
            if exc is not None:
                raise exc
        result = await _send(send, args, kwargs)
        if self.log.fail_after is not None:
            exc = self.log.fail_after(call, index)
            if exc is not None:
                raise exc
        return result

    def _cursor(
        self,
        method: str,
        make: Callable[[], object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> RecordingCursor:
        recorded: list[tuple[Call, int]] = []

        async def before() -> None:
            if self.yield_first:
                await asyncio.sleep(0)
            call, index = self._record(method, args, kwargs)
            recorded.append((call, index))
            if self.log.fail_before is not None:
                exc = self.log.fail_before(call, index)
                if exc is not None:
                    raise exc

        def after() -> None:
            if self.log.fail_after is not None:
                exc = self.log.fail_after(*recorded[-1])
                if exc is not None:
                    raise exc

        return RecordingCursor(make, before, after)
