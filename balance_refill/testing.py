"""Test helpers shipped with the library: a fake clock and a recording collection.

Never imported by the library itself; host apps use them in their own tests.

`RecordingCollection` wraps any async collection. It counts every database call (the
call budgets are checked with it), records each call's arguments (for the query lint),
can yield to the event loop before each call (the mock never interleaves calls on its
own, so races only show with `yield_first=True`), and can inject faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
    """One database call as the library sent it."""

    collection: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


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


class _RecordingCursor:
    """A cursor that records (and may fail) its first round trip when iterated."""

    def __init__(
        self, make: Callable[[], Any], before: Callable[[], Any], after: Callable[[], Any]
    ) -> None:
        self._make = make
        self._before = before
        self._after = after
        self._it: Any = None

    def __aiter__(self) -> _RecordingCursor:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            await self._before()
            cursor = self._make()
            if asyncio.iscoroutine(cursor):
                cursor = await cursor
            docs = [d async for d in cursor] if hasattr(cursor, "__aiter__") else list(cursor)
            self._after()
            self._it = _SyncIter(docs)
        return await self._it.__anext__()

    async def to_list(self, length: int | None = None) -> list[Any]:
        return [doc async for doc in self]


class _SyncIter:
    def __init__(self, it: Any) -> None:
        self._it = iter(it)

    async def __anext__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class _Wrapper:
    """A collection wrapped by a test double; other attributes pass through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return str(self._inner.name)

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


class RecordingCollection(_Wrapper):
    """Wraps an async collection: counts, records, optionally yields and injects faults."""

    def __init__(
        self, inner: Any, log: CallLog | None = None, *, yield_first: bool = False
    ) -> None:
        super().__init__(inner)
        self.log = log if log is not None else CallLog()
        self.yield_first = yield_first

    def __getattr__(self, attr: str) -> Any:
        if attr in CALL_METHODS:

            async def call(*args: Any, **kwargs: Any) -> Any:
                return await self._call(attr, args, kwargs)

            return call
        return getattr(self._inner, attr)

    def _record(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Call, int]:
        call = Call(self.name, method, args, kwargs)
        index = len(self.log.calls)
        self.log.calls.append(call)
        return call, index

    async def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.yield_first:
            await asyncio.sleep(0)
        call, index = self._record(method, args, kwargs)
        if self.log.fail_before is not None:
            exc = self.log.fail_before(call, index)
            if exc is not None:
                raise exc
        result = await getattr(self._inner, method)(*args, **kwargs)
        if self.log.fail_after is not None:
            exc = self.log.fail_after(call, index)
            if exc is not None:
                raise exc
        return result

    def _cursor(
        self, method: str, make: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _RecordingCursor:
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

        return _RecordingCursor(make, before, after)

    def find(self, *args: Any, **kwargs: Any) -> _RecordingCursor:
        return self._cursor("find", lambda: self._inner.find(*args, **kwargs), args, kwargs)

    def aggregate(self, pipeline: Any, *args: Any, **kwargs: Any) -> _RecordingCursor:
        return self._cursor(
            "aggregate",
            lambda: self._inner.aggregate(pipeline, *args, **kwargs),
            (pipeline, *args),
            kwargs,
        )
