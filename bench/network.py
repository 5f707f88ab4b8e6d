"""Benchmark 3: a simulated network, 1 ms per round trip.

`NetworkCollection` sleeps `latency` seconds (`await asyncio.sleep(0.001)`) before every
call, then forwards it. Under it, each user's documents live in their own small
mongomock-motor collection (`PartitionedMock`, routing by the `user` or `_id` equality
of the filter, or the `user` of an inserted document): the mock scans a whole collection
on every call, so one 1,000-document collection would measure the mock's scan (about
1.4 ms a call), not the flows. A call that cannot be routed to one user raises, so the
run also checks that every call of every flow targets a single user's partition.

Each user logs in, then sends `messages` messages one after another; `concurrency`
users run at a time. Users start with enough credits for half their messages and an
elapsed period, so each flow refills each user once, mid-session. Latency is measured
per message (the `spend` for ours, the whole check/reserve/spend/settle sequence for
LibreChat); throughput counts messages over the wall time of the whole run, logins
included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from balance_refill import BalanceRefiller

from .baselines import Flow, LibreChatClassic, LibreChatReservations, Message, Ours
from .common import (
    MESSAGE_COST,
    START,
    Section,
    due_last_refill,
    librechat_doc,
    librechat_policy,
    median,
    mock_db,
    percentile,
    ratio,
)

FLOWS = ("ours", "LibreChat classic", "LibreChat reservations")


class Unroutable(Exception):
    """A call whose filter does not name one user: it would not target a single shard."""


class _Router:
    """Routes each call to one user (the `user` or `_id` equality of the filter, or the
    `user` of an inserted document) and hands it to `_dispatch`."""

    def __init__(self, name: str, owners: dict[Any, Any]) -> None:
        self.name = name
        self.owners = owners  # document _id -> user, shared by both collections

    def _user_of(self, filter_: Mapping[str, Any]) -> Any:
        user = filter_.get("user")
        if user is not None and not isinstance(user, Mapping):
            return user
        doc_id = filter_.get("_id")
        if doc_id is not None and doc_id in self.owners:
            return self.owners[doc_id]
        raise Unroutable(f"{self.name}: filter {filter_!r} names no single user")

    async def _dispatch(
        self, user: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        raise NotImplementedError

    async def find_one_and_update(self, filter: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._dispatch(
            self._user_of(filter), "find_one_and_update", (filter, *args), kwargs
        )

    async def find_one(self, filter: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._dispatch(self._user_of(filter), "find_one", (filter, *args), kwargs)

    async def update_one(self, filter: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._dispatch(self._user_of(filter), "update_one", (filter, *args), kwargs)

    async def insert_one(self, document: Any, *args: Any, **kwargs: Any) -> Any:
        user = document.get("user")
        if user is None:
            raise Unroutable(f"{self.name}: inserted document has no user")
        return await self._dispatch(user, "insert_one", (document, *args), kwargs)


class PartitionedMock(_Router):
    """One mongomock collection per user behind one collection-like object. Records every
    reply per user (for `Replay`) and the CPU time the mock spends."""

    def __init__(self, db: Any, name: str, owners: dict[Any, Any]) -> None:
        super().__init__(name, owners)
        self._db = db
        self._parts: dict[Any, Any] = {}
        self.tapes: dict[Any, list[tuple[str, Any, BaseException | None]]] = {}
        self.mock_seconds = 0.0

    def part(self, user: Any) -> Any:
        coll = self._parts.get(user)
        if coll is None:
            coll = self._parts[user] = self._db[f"{self.name}.{len(self._parts)}"]
        return coll

    async def seed(self, doc: dict[str, Any]) -> None:
        self.owners[doc["_id"]] = doc["user"]
        await self.part(doc["user"]).insert_one(doc)

    async def _dispatch(
        self, user: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tape = self.tapes.setdefault(user, [])
        t0 = time.perf_counter()
        try:
            result = await getattr(self.part(user), method)(*args, **kwargs)
        except Exception as exc:
            tape.append((method, None, exc))
            raise
        finally:
            self.mock_seconds += time.perf_counter() - t0
        tape.append((method, result, None))
        return result

    async def count(self, filter_: Mapping[str, Any]) -> int:
        return sum([await c.count_documents(filter_) for c in self._parts.values()])


class Replay(_Router):
    """Answers each user's calls with the replies `PartitionedMock` recorded for that
    user, in order: a server that costs the client no CPU. Each user's session depends
    only on its own replies, so the flow takes the same path; a call that differs from
    the recording raises."""

    def __init__(self, recorded: PartitionedMock) -> None:
        super().__init__(recorded.name, recorded.owners)
        self._tapes = {user: iter(tape) for user, tape in recorded.tapes.items()}

    async def _dispatch(
        self, user: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        recorded, result, exc = next(self._tapes[user])
        if recorded != method:
            raise RuntimeError(f"replay diverged for {user!r}: {method} instead of {recorded}")
        if exc is not None:
            raise exc
        return result


class NetworkCollection:
    """Sleeps `latency` seconds before every call (one simulated round trip)."""

    def __init__(self, inner: Any, latency: float) -> None:
        self.inner = inner
        self.latency = latency
        self.calls = 0

    @property
    def name(self) -> str:
        return str(self.inner.name)

    async def _trip(self) -> None:
        self.calls += 1
        await asyncio.sleep(self.latency)

    async def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        await self._trip()
        return await self.inner.find_one_and_update(*args, **kwargs)

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        await self._trip()
        return await self.inner.find_one(*args, **kwargs)

    async def update_one(self, *args: Any, **kwargs: Any) -> Any:
        await self._trip()
        return await self.inner.update_one(*args, **kwargs)

    async def insert_one(self, *args: Any, **kwargs: Any) -> Any:
        await self._trip()
        return await self.inner.insert_one(*args, **kwargs)


@dataclass
class NetResult:
    name: str
    messages: int
    seconds: float
    latencies_ms: list[float]
    calls: int
    refills: int = 0
    mock_seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds

    @property
    def p50(self) -> float:
        return median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    def summary(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "seconds": self.seconds,
            "throughput": self.throughput,
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "calls": self.calls,
            "refills": self.refills,
            "mock_seconds": self.mock_seconds,
        }


def make_flow(name: str, balances: Any, transactions: Any) -> Flow:
    def clock() -> Any:
        return START

    if name == "ours":
        refiller = BalanceRefiller(balances, librechat_policy(), ledger=transactions, clock=clock)
        return Ours(refiller)
    if name == "LibreChat classic":
        return LibreChatClassic(balances, transactions, clock)
    if name == "LibreChat reservations":
        return LibreChatReservations(balances, transactions, clock)
    raise ValueError(name)


async def drive(
    flow: Flow, users: list[Any], messages: int, concurrency: int
) -> tuple[float, list[float]]:
    """Every user logs in and sends `messages` messages; `concurrency` users at a time.
    Returns the wall time and each message's latency in ms."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def session(user: Any) -> None:
        async with gate:
            await flow.login(user)
            for i in range(messages):
                t0 = time.perf_counter()
                await flow.message(user, Message(f"{user}-{i}"))
                latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(session(u) for u in users))
    return time.perf_counter() - t0, latencies


async def run_flow(
    name: str,
    *,
    users: int,
    messages: int,
    concurrency: int,
    latency: float,
    light: tuple[int, int] = (200, 10),
) -> tuple[NetResult, NetResult, NetResult]:
    """The live run (mock in the event loop), the replayed run (server costs 0), and a
    light replayed run: the first `light[0]` users, `light[1]` at a time, so the client
    is not saturated and latency shows the round trips alone."""
    db = mock_db()
    owners: dict[Any, Any] = {}
    live_balances = PartitionedMock(db, "balances", owners)
    live_transactions = PartitionedMock(db, "transactions", owners)
    ids = [ObjectId() for _ in range(users)]
    start_credits = MESSAGE_COST * (messages // 2) + 500
    for user in ids:
        await live_balances.seed(librechat_doc(user, start_credits, due_last_refill(START)))

    balances = NetworkCollection(live_balances, latency)
    transactions = NetworkCollection(live_transactions, latency)
    seconds, latencies = await drive(
        make_flow(name, balances, transactions), ids, messages, concurrency
    )
    calls = balances.calls + transactions.calls
    refills = await live_transactions.count({"context": "autoRefill"})
    mock = live_balances.mock_seconds + live_transactions.mock_seconds
    live = NetResult(name, users * messages, seconds, latencies, calls, refills, mock)

    balances = NetworkCollection(Replay(live_balances), latency)
    transactions = NetworkCollection(Replay(live_transactions), latency)
    seconds, latencies = await drive(
        make_flow(name, balances, transactions), ids, messages, concurrency
    )
    replayed = NetResult(
        name, users * messages, seconds, latencies, balances.calls + transactions.calls, refills
    )
    assert replayed.calls == live.calls, "the replay made a different number of calls"

    few, at_once = light
    balances = NetworkCollection(Replay(live_balances), latency)
    transactions = NetworkCollection(Replay(live_transactions), latency)
    seconds, latencies = await drive(
        make_flow(name, balances, transactions), ids[:few], messages, at_once
    )
    lightly = NetResult(
        name, few * messages, seconds, latencies, balances.calls + transactions.calls
    )
    return live, replayed, lightly


async def run(quick: bool = False) -> Section:
    users, messages, concurrency = (20, 3, 10) if quick else (1_000, 20, 100)
    light = (10, 2) if quick else (200, 10)
    latency = 0.001
    section = Section("network", "3. simulated network (1 ms)")
    live: dict[str, NetResult] = {}
    replayed: dict[str, NetResult] = {}
    lightly: dict[str, NetResult] = {}
    for name in FLOWS:
        live[name], replayed[name], lightly[name] = await run_flow(
            name,
            users=users,
            messages=messages,
            concurrency=concurrency,
            latency=latency,
            light=light,
        )
    light_label = f"replayed, {light[1]} at a time"
    for label, results in (
        ("server replayed", replayed),
        ("mock in the loop", live),
        (light_label, lightly),
    ):
        for r in results.values():
            section.add(f"{label}: {r.name}: throughput", r.throughput, "msg/s")
            section.add(f"{label}: {r.name}: latency p50 / p99", f"{r.p50:.2f} / {r.p99:.2f}", "ms")
        ours = results["ours"]
        for name in FLOWS[1:]:
            r = results[name]
            section.add(
                f"{label}: throughput ours / {name}", ratio(ours.throughput, r.throughput), "x"
            )
            section.add(f"{label}: p50 latency {name} / ours", ratio(r.p50, ours.p50), "x")
    for r in live.values():
        section.add(f"{r.name}: calls per message (logins included)", r.calls / r.messages, "calls")
        section.add(f"{r.name}: mock CPU per call", r.mock_seconds / r.calls * 1e6, "us")
    section.notes.append(
        f"{users} users x {messages} messages, {concurrency} users at a time, "
        f"{latency * 1000:g} ms asyncio.sleep before every call; every user is refilled once "
        f"mid-session (refill rows: {', '.join(f'{r.name} {r.refills}' for r in live.values())})."
    )
    section.notes.append(
        "'mock in the loop': mongomock answers inside the client's event loop, so its CPU "
        "(the server's work) queues every coroutine. 'server replayed': the same replies, "
        "recorded per user in that run, are replayed: only the 1 ms trip and the flow's own "
        "client CPU remain, as with a server on another machine."
    )
    section.notes.append(
        f"'{light_label}': the first {light[0]} users' replies replayed with {light[1]} users "
        "at a time, so the event loop is not saturated and latency is mostly round trips."
    )
    section.data = {
        "live": {n: r.summary() for n, r in live.items()},
        "replayed": {n: r.summary() for n, r in replayed.items()},
        "light": {n: r.summary() for n, r in lightly.items()},
    }
    return section
