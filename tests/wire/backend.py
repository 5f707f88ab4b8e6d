"""Which database the suite runs on, and fresh databases on it.

`BALANCE_REFILL_TEST_BACKEND` picks the backend:

- `mock` (the default): mongomock-motor, in process, no server;
- `wire`: a mongoeco wire server started for the session (see `launcher.py`), reached
  through the real `pymongo.AsyncMongoClient`;
- `server`: the MongoDB server at `MONGODB_URI`. A set `MONGODB_URI` also selects it when
  the switch is unset or `wire` (use that server instead of starting mongoeco).

The backend is read once, at import: tests that change `MONGODB_URI` do not move the suite.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .launcher import WireServer, WireUnavailable, start_wire_server

SWITCH = "BALANCE_REFILL_TEST_BACKEND"
MOCK, WIRE, SERVER = "mock", "wire", "server"
EXIT_NO_BACKEND = 4  # the session's exit status when the backend cannot be reached


def _kind() -> str:
    value = os.environ.get(SWITCH, "").strip().lower()
    if value not in ("", MOCK, WIRE, SERVER):
        raise pytest.UsageError(f"{SWITCH}={value!r}: expected mock, wire or server")
    if value == MOCK:
        return MOCK
    if os.environ.get("MONGODB_URI"):
        return SERVER
    if value == SERVER:
        raise pytest.UsageError(f"{SWITCH}=server needs MONGODB_URI")
    return WIRE if value == WIRE else MOCK


KIND = _kind()
_SERVER_URI = os.environ.get("MONGODB_URI") if KIND == SERVER else None
_started: list[WireServer] = []  # the session's wire server, once started
_failed: list[str] = []  # why it could not start


def is_mock() -> bool:
    return KIND == MOCK


def is_wire() -> bool:
    return KIND == WIRE


def uri() -> str:
    """The server's URI; on `wire` the first call starts the server (or ends the session)."""
    if _SERVER_URI is not None:
        return _SERVER_URI
    if KIND != WIRE:
        raise RuntimeError("the mock backend has no URI")
    if not _started:
        try:
            _started.append(start_wire_server())
        except WireUnavailable as exc:
            _failed.append(str(exc))
            pytest.exit(
                f"{SWITCH}=wire: cannot start the mongoeco wire server: {exc}",
                returncode=EXIT_NO_BACKEND,
            )
    return _started[0].uri


def uri_for(database: str) -> str:
    """The server's URI with `database` as its path (what the CLI reads a name from)."""
    parts = urlsplit(uri())
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def stop() -> None:
    """Stop the wire server, if one was started."""
    for server in _started:
        server.stop()


def describe() -> str:
    """One line naming the backend, for the end of the test report."""
    pymongo = f"pymongo {version('pymongo')}"
    if KIND == MOCK:
        return f"mock (mongomock-motor {version('mongomock-motor')}, {pymongo})"
    if KIND == SERVER:
        from balance_refill.cli.settings import mask_uri

        return f"server ({mask_uri(_SERVER_URI or '')}, {pymongo})"
    if _failed:
        return f"wire (the mongoeco server could not start; {pymongo})"
    if not _started:
        return f"wire (no test needed the server, so it was not started; {pymongo})"
    return f"wire ({_started[0].describe()}, {pymongo})"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def database(prefix: str = "balance_refill_test") -> AsyncIterator[Any]:
    """A fresh, empty database on the backend, dropped (and its client closed) at exit.

    On a server the client is made here, so in the running event loop, which is the only
    loop it may be used from (pymongo binds a client to its first loop).
    """
    if KIND == MOCK:
        from mongomock_motor import AsyncMongoMockClient

        mock: Any = AsyncMongoMockClient(tz_aware=True)
        try:
            yield mock[prefix]
        finally:
            mock.close()
        return
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(uri(), tz_aware=True)
    name = unique_name(prefix)
    try:
        yield ServerDatabase(client[name], asyncio.get_running_loop())
    finally:
        try:
            await client.drop_database(name)
        finally:
            await client.close()


class ServerDatabase:
    """A database on a server, usable from its own event loop and, for the few tests that
    call `asyncio.run` themselves (the CLI tests), from any other loop.

    In its own loop (or outside any loop, as sync fixtures are) `db[name]` is pymongo's
    own collection. From another loop it is a `_OneShotCollection`, whose every call
    opens and closes a client in that loop, since the database's client cannot go there.
    """

    def __init__(self, inner: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop

    @property
    def inner(self) -> Any:
        return self._inner

    def __getitem__(self, name: str) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None or running is self._loop:
            return self._inner[name]
        return _OneShotCollection(self._inner.name, name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


class _OneShotCollection:
    """A collection of the backend whose every call runs on a client of its own."""

    def __init__(self, database: str, name: str) -> None:
        self._database = database
        self.name = name

    async def _with_client(self, use: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(uri(), tz_aware=True)
        try:
            return await use(client[self._database][self.name])
        finally:
            await client.close()

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._with_client(lambda coll: getattr(coll, method)(*args, **kwargs))

        return call

    async def find(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async def read(coll: Any) -> list[Any]:
            return [doc async for doc in coll.find(*args, **kwargs)]

        for doc in await self._with_client(read):
            yield doc


def route_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run code that opens its own client (the README's blocks, the examples, the demo)
    on the backend.

    On the mock: as written, with no `MONGODB_URI`. On a server: `MONGODB_URI` is the
    server's, and every client the code makes (pymongo's `AsyncMongoClient`, or the mock
    client the README's blocks import) is one on the server whose databases get a name of
    this test's own; when the code's `asyncio.run` ends, those clients are closed (in
    their loop, the only one they can be closed from) and those databases dropped.
    """
    if KIND == MOCK:
        monkeypatch.delenv("MONGODB_URI", raising=False)
        return
    from pymongo import AsyncMongoClient

    monkeypatch.setenv("MONGODB_URI", uri())
    prefix = unique_name("balance_refill_docs")
    opened: list[Any] = []
    used: set[str] = set()

    class BackendClient(AsyncMongoClient[dict[str, Any]]):
        """Any client the code makes: one on the backend, with this test's databases."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(uri(), tz_aware=True)
            opened.append(self)

        def __getitem__(self, name: str) -> Any:
            if name in ("admin", "config", "local"):
                return super().__getitem__(name)
            used.add(name)
            return super().__getitem__(f"{prefix}_{name}")

    real_run = asyncio.run

    async def closing(main: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await main
        finally:
            while opened:
                await opened.pop().close()
            cleaner = BackendClient()
            try:
                for name in used:
                    await cleaner.drop_database(name)
            finally:
                opened.clear()
                await cleaner.close()

    def run(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        return real_run(closing(main), **kwargs)

    monkeypatch.setattr(asyncio, "run", run)
    monkeypatch.setattr("pymongo.AsyncMongoClient", BackendClient)
    monkeypatch.setattr("mongomock_motor.AsyncMongoMockClient", BackendClient)
