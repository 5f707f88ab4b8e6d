"""Where the CLI reads and writes: a MongoDB server, or the embedded mock."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from balance_refill import StorageError

Collection: TypeAlias = AsyncCollection[dict[str, Any]]
"""A collection with pymongo's async API (the embedded mock's collections duck-type it)."""


class Database(Protocol):
    """The part of a database the CLI uses: collections by name, and dropping one."""

    def __getitem__(self, name: str, /) -> Collection: ...

    async def drop_collection(self, name: str, /) -> object: ...


class Client(Protocol):
    """A client the CLI closes when it is done (pymongo's is async, the mock's is not)."""

    def close(self) -> object: ...


@dataclass(frozen=True, slots=True)
class Connection:
    """An open database for the CLI: `main(argv, connection=...)` takes one, so tests and
    host apps can hand in a database they already have.

    `client` is closed by `close()` (None: nothing to close); `mock` says the database is
    the embedded mock (the demo then leaves existing collections alone).
    """

    client: Client | None
    database: Database
    mock: bool = False

    def collection(self, name: str) -> Collection:
        return self.database[name]

    async def close(self) -> None:
        if self.client is None:
            return
        closed = self.client.close()
        if inspect.isawaitable(closed):
            await closed


def connect(uri: str | None, database: str) -> Connection:
    """Open `database` at `uri` with pymongo's async client (tz-aware); with no URI, an
    embedded mongomock-motor database (tz-aware, in memory, gone at exit)."""
    if uri is None:
        from mongomock_motor import AsyncMongoMockClient  # noqa: PLC0415 - only when asked for

        mock: Any = AsyncMongoMockClient(tz_aware=True)  # typed as Motor, duck-types pymongo
        return Connection(mock, mock[database], mock=True)
    from pymongo import AsyncMongoClient  # noqa: PLC0415 - keeps import time low for mock users

    options: dict[str, Any] = {"tz_aware": True}
    if "serverselectiontimeoutms" not in uri.lower():
        options["serverSelectionTimeoutMS"] = 5000
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, **options)
    except (PyMongoError, ValueError) as exc:
        # The message may quote the URI and its password: name the error type only.
        raise StorageError(f"cannot use MONGODB_URI: {type(exc).__name__}") from exc
    return Connection(client, client[database], mock=False)
