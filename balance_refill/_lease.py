"""A lease document: one sweep at a time, across processes and machines.

Taken by inserting a document with a fixed `_id`; taken over only once it has expired;
renewed after every batch; released at the end. A crashed holder's lease expires.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from ._store import AsyncCollection, Store
from .errors import SweepLocked


class Lease:
    def __init__(
        self,
        store: Store,
        collection: AsyncCollection,
        name: str,
        ttl: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.collection = collection
        self.id = name
        self.ttl = ttl
        self.clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def acquire(self) -> None:
        now = self.clock()
        doc = {
            "_id": self.id,
            "holder": self.holder,
            "acquiredAt": now,
            "expiresAt": now + self.ttl,
        }
        if await self.store.try_insert(self.collection, doc):
            return
        # Take over an expired lease, or find our own insert whose reply was lost.
        taken = await self.store.find_one_and_update(
            self.collection,
            {"_id": self.id, "$or": [{"expiresAt": {"$lte": now}}, {"holder": self.holder}]},
            {"$set": {"holder": self.holder, "acquiredAt": now, "expiresAt": now + self.ttl}},
        )
        if taken is not None:
            return
        current = await self.store.find_one(self.collection, {"_id": self.id}) or {}
        expires = current.get("expiresAt")
        raise SweepLocked(
            str(current.get("holder", "another sweep")),
            expires if isinstance(expires, datetime) else now,
        )

    async def renew(self) -> None:
        now = self.clock()
        if not await self.store.update_one(
            self.collection,
            {"_id": self.id, "holder": self.holder},
            {"$set": {"expiresAt": now + self.ttl}},
        ):
            raise SweepLocked("another sweep (ours expired and was taken over)", now)

    async def release(self) -> None:
        await self.store.delete_one(self.collection, {"_id": self.id, "holder": self.holder})
