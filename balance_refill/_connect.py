"""Where the CLI and the admin server read and write: a MongoDB server, or the embedded mock."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from .errors import StorageError

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
        # The driver's reason, first line only, with the URI and its password masked.
        reason = redact(str(exc).strip().split("\n", 1)[0], uri)
        shown = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise StorageError(f"cannot use MONGODB_URI: {shown}") from exc
    return Connection(client, client[database], mock=False)


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by `***` (safe to print or log)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = parts.query
    if "password=" in query.lower():
        query = "&".join(
            f"{kv.split('=', 1)[0]}=***" if kv.lower().startswith("password=") else kv
            for kv in query.split("&")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password(uri: str) -> str | None:
    """The password in `uri`'s user info, as written (None if there is none)."""
    _, sep, rest = uri.partition("://")
    head = rest.split("?", 1)[0]
    if not sep or "@" not in head:
        return None
    userinfo = head.rpartition("@")[0]
    return userinfo.partition(":")[2] or None


def redact(text: str, uri: str | None) -> str:
    """`text` with `uri` masked and its password, as written or decoded, replaced by
    `***` wherever it appears (a driver's message may quote either)."""
    if not uri:
        return text
    text = text.replace(uri, mask_uri(uri))
    password = _password(uri)
    if password:
        for form in sorted({password, unquote_plus(password)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text
