"""Benchmark 2: the library's own CPU per call.

(a) On a stub collection whose async methods return a prepared document at once, a call
    costs only our own Python: validation, building the filter and update, parsing the
    reply and building the `BalanceState`. Median over many batches after a warm-up.
(b) On mongomock-motor (1-document collection), `ensure_balance` and `spend` against the
    bare driver call the library issues: the same filter, update and options, built with
    `balance_refill._docs` (`by_user`, `first_seen_update`, `spend_pipeline`) before the
    timing starts. The ratio is what the library adds on top of one round trip of the mock.
`--profile` runs (a) under cProfile and prints the functions that cost the most.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId, tz_util
from pymongo import ReturnDocument

from balance_refill import BalanceRefiller
from balance_refill import _docs as D

from .common import (
    LIBRECHAT_BALANCE,
    Section,
    librechat_doc,
    librechat_policy,
    median,
    mock_db,
    ratio,
)

GOAL_US = 20.0
GOAL_RATIO = 1.3


class _Result:
    modified_count = 1
    matched_count = 1
    inserted_id = None
    upserted_id = None


class StubCollection:
    """An async collection that answers every call at once with a prepared document."""

    name = "stub"

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.calls = 0

    async def find_one_and_update(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.doc

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.doc

    async def update_one(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return _Result()

    async def insert_one(self, document: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return _Result()


def as_driver_returns(value: datetime) -> datetime:
    """A datetime as pymongo returns it with tz_aware=True: milliseconds, bson's utc."""
    value = value.astimezone(tz_util.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def steady_state_doc(user: Any, now: datetime) -> dict[str, Any]:
    """A balance document as it looks after weeks of use (LibreChat's fields plus ours,
    a full window of 32 recent request ids, 6 periods of history), with dates as the
    driver returns them."""
    now = as_driver_returns(now)
    doc = librechat_doc(user, 1_000_000_000, now - timedelta(days=1))
    doc.update(
        {
            D.SPENT: 12_000,
            D.HISTORY: [9_000, 11_000, 10_000, 8_000, 12_000, 10_500],
            D.RECENT: [f"5f1c2b7a-0000-4000-8000-{i:012d}" for i in range(D.RECENT_WINDOW)],
            D.LAST_SEEN: now - timedelta(hours=2),
            D.REFILL_TIER: "default",
            D.OP_ID: ObjectId(),
        }
    )
    return doc


Step = Callable[[], Awaitable[Any]]


async def time_per_call(step: Step, *, batches: int, batch: int, warmup: int) -> list[float]:
    """Microseconds per call of `step`, one value per batch (gc off while timing)."""
    for _ in range(warmup):
        await step()
    samples = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(batches):
            t0 = time.perf_counter_ns()
            for _ in range(batch):
                await step()
            samples.append((time.perf_counter_ns() - t0) / batch / 1000)
    finally:
        if enabled:
            gc.enable()
    return samples


def stub_refiller() -> tuple[BalanceRefiller, StubCollection, Any]:
    user = ObjectId()
    stub = StubCollection(steady_state_doc(user, datetime.now(UTC)))
    coll: Any = stub  # duck-typed: only the four methods the hot path calls
    # The real clock, as in production; the stub's document is never due.
    return BalanceRefiller(coll, librechat_policy(), ledger=coll), stub, user


def _counter_ids(prefix: str) -> Callable[[], str]:
    n = 0

    def nxt() -> str:
        nonlocal n
        n += 1
        return f"{prefix}-{n}"

    return nxt


async def stub_steps() -> dict[str, Step]:
    refiller, stub, user = stub_refiller()
    rid = _counter_ids("m")

    async def ensure() -> Any:
        return await refiller.ensure_balance(user)

    async def spend() -> Any:
        return await refiller.spend(user, 1_000, request_id=rid())

    async def bare() -> Any:
        return await stub.find_one_and_update({"user": user}, {}, sort=[("_id", 1)])

    # Sanity: each operation is one call on the stub and no refill happens.
    before = stub.calls
    state = await ensure()
    await spend()
    assert stub.calls - before == 2
    assert not state.refilled
    return {"ensure_balance": ensure, "spend": spend, "stub call alone": bare}


async def mock_pairs(rounds: int) -> dict[str, tuple[Step, Step]]:
    """(ours, bare driver call) on the same 1-document mock collection."""
    db = mock_db()
    coll = db["balances"]
    user = ObjectId()
    now = datetime.now(UTC)
    await coll.insert_one(steady_state_doc(user, now))
    refiller = BalanceRefiller(coll, librechat_policy(), ledger=db["transactions"])
    librechat_fields = {
        D.REFILL_AMOUNT: LIBRECHAT_BALANCE["refillAmount"],
        D.INTERVAL_VALUE: LIBRECHAT_BALANCE["refillIntervalValue"],
        D.INTERVAL_UNIT: LIBRECHAT_BALANCE["refillIntervalUnit"],
    }
    policy = librechat_policy()
    first_seen = D.first_seen_update(
        D.first_seen_insert(
            user, now, start_balance=policy.start_balance, librechat_fields=librechat_fields
        ),
        now,
    )
    filter_ = D.by_user(user)
    n_pipelines = rounds + 16
    pipelines = iter([D.spend_pipeline(1, f"bare-{i}", now) for i in range(n_pipelines)])
    rid = _counter_ids("ours")

    async def ours_ensure() -> Any:
        return await refiller.ensure_balance(user)

    async def bare_ensure() -> Any:
        return await coll.find_one_and_update(
            filter_,
            first_seen,
            upsert=True,
            sort=D.OLDEST_FIRST,
            return_document=ReturnDocument.BEFORE,
        )

    async def ours_spend() -> Any:
        return await refiller.spend(user, 1, request_id=rid())

    async def bare_spend() -> Any:
        return await coll.find_one_and_update(
            filter_, next(pipelines), sort=D.OLDEST_FIRST, return_document=ReturnDocument.BEFORE
        )

    return {"ensure_balance": (ours_ensure, bare_ensure), "spend": (ours_spend, bare_spend)}


async def profile(calls: int = 20_000, top: int = 25) -> str:
    """cProfile of `calls` ensure_balance + `calls` spend on the stub: the top functions."""
    steps = await stub_steps()
    ensure, spend = steps["ensure_balance"], steps["spend"]
    for _ in range(1_000):
        await ensure()
        await spend()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await ensure()
        await spend()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


async def run(quick: bool = False, *, with_profile: bool = False) -> Section:
    batches, batch, warmup = (20, 20, 200) if quick else (300, 100, 5_000)
    section = Section("overhead", "2. library overhead")
    steps = await stub_steps()
    stub = {
        name: median(await time_per_call(s, batches=batches, batch=batch, warmup=warmup))
        for name, s in steps.items()
    }
    for name in ("ensure_balance", "spend"):
        us = stub[name]
        what = "no refill" if name == "ensure_balance" else "covered"
        section.add(
            f"stub: {name} ({what}), CPU per call", us, "us", f"<= {GOAL_US:g} us", us <= GOAL_US
        )
    section.add("stub: the stub call alone", stub["stub call alone"], "us")

    mock_batches, mock_batch, mock_warmup = (6, 5, 20) if quick else (60, 20, 300)
    pairs = await mock_pairs(rounds=(mock_batches * mock_batch + mock_warmup) * 2)
    for name, (ours, bare) in pairs.items():
        ours_samples: list[float] = []
        bare_samples: list[float] = []
        for _ in range(mock_warmup):
            await ours()
            await bare()
        for _ in range(mock_batches):  # interleaved, so drift hits both alike
            ours_samples += await time_per_call(ours, batches=1, batch=mock_batch, warmup=0)
            bare_samples += await time_per_call(bare, batches=1, batch=mock_batch, warmup=0)
        o, b = median(ours_samples), median(bare_samples)
        section.add(f"mock: {name}, ours", o, "us")
        section.add(f"mock: {name}, bare driver call", b, "us")
        r = ratio(o, b)
        section.add(f"mock: {name}, ours / bare", r, "x", f"<= {GOAL_RATIO:g}x", r <= GOAL_RATIO)
    section.notes.append(
        f"stub: median of {batches} batches of {batch} calls after {warmup} warm-up calls; "
        f"mock: median of {mock_batches} interleaved batches of {mock_batch}."
    )
    if with_profile:
        section.notes.append("cProfile (stub, ensure_balance + spend):")
        section.notes.extend((await profile(calls=2_000 if quick else 20_000)).splitlines())
    return section
