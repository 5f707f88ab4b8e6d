"""Smoke tests of the benchmarks (tiny sizes, in-process, no wall-clock assertions), and
the check that every filter of the hot path targets one user (a single shard)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import AutoReconnect

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill.testing import (
    BulkWriteShim,
    Call,
    CallLog,
    FakeClock,
    RecordingCollection,
)
from bench import calls, fastmock, network, overhead, scale, sweep_memory, sweep_vs_classic
from bench.baselines import LibreChatClassic, LibreChatReservations, Message, Ours
from bench.common import START, librechat_doc, librechat_policy, render
from bench.run import BENCHMARKS, main
from tests.wire.launcher import WireUnavailable

from .wire import backend

ROOT = Path(__file__).resolve().parent.parent


# -- 1. calls per chat turn ------------------------------------------------------------


async def test_calls_per_turn() -> None:
    section = await calls.run(quick=True)
    counts = {name: calls.FlowCounts(**c) for name, c in section.data.items()}
    ours = counts["ours"]
    assert (ours.login, ours.login_first_seen) == (1, 1)
    assert ours.per_message == 1
    assert ours.with_refill == 4
    assert ours.after_refill == 1
    assert counts["ours + host usage row"].per_message == 2
    classic, reservations = counts["LibreChat classic"], counts["LibreChat reservations"]
    assert (classic.per_message, classic.with_refill) == (7, 10)
    assert (reservations.per_message, reservations.with_refill) == (9, 13)
    for baseline in (classic, reservations):
        assert baseline.per_message > ours.per_message
        assert baseline.with_refill > ours.with_refill
        assert baseline.after_refill == baseline.per_message
    assert section.figure("ours: per message, no refill").met is True
    assert section.figure("ours: message with a refill").met is True


@pytest.mark.parametrize(
    ("flow_name", "refill_rows"),
    [("ours", 1), ("LibreChat classic", 2), ("LibreChat reservations", 1)],
)
async def test_baselines_keep_librechat_race_behaviour(flow_name: str, refill_rows: int) -> None:
    """Two racing messages of a user due for a refill: the classic read-then-write flow
    refills twice (the bug the reference describes), the CAS-based flows once."""
    db = AsyncMongoMockClient(tz_aware=True)["race"]
    log = CallLog()
    balances = RecordingCollection(db["balances"], log, yield_first=True)
    transactions = RecordingCollection(db["transactions"], log, yield_first=True)
    clock = FakeClock(START)
    user = ObjectId()
    await db["balances"].insert_one(librechat_doc(user, 200, START - timedelta(days=31)))
    flow = calls.make_flow(flow_name, balances, transactions, clock)
    await asyncio.gather(flow.message(user, Message("a")), flow.message(user, Message("b")))
    rows = await db["transactions"].count_documents({"context": "autoRefill"})
    assert rows == refill_rows


async def test_classic_refuses_when_short_and_not_due() -> None:
    db = AsyncMongoMockClient(tz_aware=True)["refuse"]
    clock = FakeClock(START)
    user = ObjectId()
    await db["balances"].insert_one(librechat_doc(user, 100, START - timedelta(days=1)))
    for flow in (
        LibreChatClassic(db["balances"], db["transactions"], clock),
        LibreChatReservations(db["balances"], db["transactions"], clock),
    ):
        with pytest.raises(Exception, match="credits"):
            await flow.message(user, Message("x"))
    ours = Ours(BalanceRefiller(db["balances"], librechat_policy(), clock=clock))
    with pytest.raises(InsufficientCredits):
        await ours.message(user, Message("x"))


# -- 2. overhead -----------------------------------------------------------------------


async def test_overhead_runs() -> None:
    section = await overhead.run(quick=True)
    for name in ("stub: ensure_balance (no refill), CPU per call", "mock: spend, ours / bare"):
        value = section.value(name)
        assert isinstance(value, float)
        assert value > 0


async def test_profile_lists_library_functions() -> None:
    text = await overhead.profile(calls=50, top=10)
    assert "refiller.py" in text


# -- 3. round trips on a wire server -----------------------------------------------------


@pytest.mark.skipif(
    not backend.is_wire(),
    reason="runs on the mongoeco wire server: BALANCE_REFILL_TEST_BACKEND=wire",
)
async def test_wire_benchmark_quick() -> None:
    """The quick wire benchmark runs every flow on a real server over TCP, checks every
    user, and counts each flow's round trips exactly."""
    section = await network.run(quick=True)
    sizes = network.QUICK
    loaded, unloaded = section.data["loaded"], section.data["unloaded"]
    assert {r["messages"] for r in loaded.values()} == {sizes.users * sizes.messages}
    assert {r["messages"] for r in unloaded.values()} == {sizes.unloaded_users * sizes.messages}
    # per user: login 1; ours 1 per message + 3 for the refill; LibreChat classic 7 + 3;
    # reservations 9 + 4 (bench/calls.py counts the same on the mock)
    per_user = {
        "ours": 1 + 4 + 3,
        "LibreChat classic": 1 + 28 + 3,
        "LibreChat reservations": 1 + 36 + 4,
    }
    for name, trips in per_user.items():
        assert loaded[name]["round_trips"] == trips * sizes.users
        assert unloaded[name]["round_trips"] == trips * sizes.unloaded_users
    assert all(r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in loaded.values())
    assert len(section.data["rounds"]) == sizes.rounds
    if sys.platform == "linux":  # the server's CPU comes from /proc
        assert all(r["server_cpu_ms_per_message"] > 0 for r in loaded.values())
    assert section.data["server"]["mongoeco"]
    text = render([section])
    assert "Only the ratios between the flows" in text
    assert "throughput ours / LibreChat classic" in text
    for name in per_user:
        assert section.value(f"{name}: users consistent after the run") == (
            f"{sizes.users} of {sizes.users}"
        )


@pytest.mark.parametrize("name", network.FLOWS)
async def test_wire_flows_leave_every_user_consistent_on_the_mock(name: str) -> None:
    """The benchmark's seeding, sessions and per-user check, on mongomock: the check
    passes after a run, and names a user given a second refill row."""
    db = AsyncMongoMockClient(tz_aware=True)["wire_flows"]
    sizes = network.Sizes(users=3, messages=4, concurrency=2, unloaded_users=1)
    users = [ObjectId() for _ in range(sizes.users)]
    parts = await network.prepare(db, name, users, sizes.start_credits)
    _, latencies = await network.drive(parts, sizes.messages, sizes.concurrency)
    assert len(latencies) == sizes.users * sizes.messages
    assert await network.check(name, parts, sizes) == []
    await parts[1].transactions.insert_one({"user": users[1], "context": "autoRefill"})
    problems = await network.check(name, parts, sizes)
    assert len(problems) == 1
    assert str(users[1]) in problems[0]
    assert "2 refill rows" in problems[0]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_process_cpu_seconds_reads_proc() -> None:
    sum(i * i for i in range(200_000))  # use some CPU
    used = network.process_cpu_seconds(os.getpid())
    assert used is not None
    assert 0 < used <= time.process_time() + 0.05
    assert network.process_cpu_seconds(2**22 + 1) is None  # no such process


@pytest.mark.parametrize(
    ("name", "start", "messages", "credits"),
    [
        ("ours", 2_500, 4, 8_500),  # 2 messages, refill on the 3rd, 2 more
        ("ours", 10_500, 20, 500),
        ("LibreChat classic", 2_500, 4, 9_000),  # the 3rd is covered for its prompt, floored
        ("LibreChat reservations", 10_500, 20, 1_000),
    ],
)
def test_expected_credits(name: str, start: int, messages: int, credits: int) -> None:
    assert network.expected_credits(name, start, messages) == credits


async def test_wire_benchmark_fails_without_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No wire server: the benchmark stops with the reason, with no simulated fallback."""

    def unavailable() -> None:
        raise WireUnavailable("no Python 3.13+ found to run mongoeco")

    monkeypatch.setattr(network, "start_wire_server", unavailable)
    with pytest.raises(network.WireBenchmarkError, match=r"no Python 3\.13\+ found"):
        await network.run(quick=True)
    assert await asyncio.to_thread(main, ["--quick", "--only", "network"]) == 1
    err = capsys.readouterr().err
    assert "no simulated fallback" in err
    assert "no Python 3.13+ found" in err


# -- 4. scale --------------------------------------------------------------------------


async def test_scale_runs() -> None:
    section = await scale.run(quick=True)
    data = section.data
    assert "user_1__id_1" in data["index_names"]
    assert len(data["indexes"]) == len(data["index_names"]) + 2  # plus both _id_
    assert data["sizes"]["ours, steady state"] > data["sizes"]["ours, first-seen user"] > 0
    assert data["ledger_row"] > 0
    assert data["recommended_shard_key"] == {"user": "hashed"}
    assert data["spread"]["user: 1"] == 1.0  # every new user lands on the last range
    assert data["spread"]["user: hashed"] < 0.5


# -- 5. sweep memory -------------------------------------------------------------------


class _BatchSweep(BalanceRefiller):
    """A stand-in sweep (batched reads, one ensure_balance per user) to exercise the
    measurement while the real sweep does not exist."""

    async def sweep(self, *, batch_size: int = 500) -> int:
        balances: Any = self._store.balances
        last = None
        done = 0
        while True:
            query = {} if last is None else {"_id": {"$gt": last}}
            batch = [d async for d in balances.find(query, sort=[("_id", 1)], limit=batch_size)]
            for doc in batch:
                await self.ensure_balance(doc["user"])
            done += len(batch)
            if len(batch) < batch_size:
                return done
            last = batch[-1]["_id"]


async def test_sweep_memory_measures_a_sweep() -> None:
    section = await sweep_memory.run(refiller_cls=_BatchSweep, sizes=(20, 40))
    runs = section.data["runs"]
    assert [r["users"] for r in runs] == [20, 40]
    assert [r["ledger_rows"] for r in runs] == [20, 40]
    assert all(r["peak_bytes"] > 0 for r in runs)
    assert all(r["batch_peak_bytes"] is None for r in runs)  # no progress= on this sweep


async def test_sweep_memory_of_the_real_sweep() -> None:
    if not sweep_memory.sweep_available():
        pytest.skip("BalanceRefiller has no sweep yet")
    result = await sweep_memory.measure(120, batch_size=50)
    assert result["ledger_rows"] == 120
    assert result["batches"] >= 3
    assert 0 < result["batch_peak_bytes"] <= result["peak_bytes"]


class _WithoutSweep:
    """Stands for a BalanceRefiller from before the sweep existed."""


async def test_sweep_memory_without_sweep() -> None:
    section = await sweep_memory.run(refiller_cls=_WithoutSweep)  # type: ignore[arg-type]
    assert section.data == {"available": False}
    assert sweep_memory.NOT_AVAILABLE in render([section])


# -- 6. sweep vs the classic reset script ----------------------------------------------


async def test_sweep_vs_classic_smoke() -> None:
    """At tiny sizes: ours moves fewer documents than the classic script, refills exactly
    the due and active users (one ledger row each), and does not grow with the users
    who are not due and active (the control run)."""
    section = await sweep_vs_classic.run(sizes=(100, 400))
    small, large, control = section.data["runs"]
    assert [r["users"] for r in (small, large, control)] == [100, 400, 400]
    assert [r["due_active"] for r in (small, large, control)] == [10, 40, 10]
    for r in (small, large, control):
        classic, ours = r["classic"], r["ours"]
        assert ours["docs"] < classic["docs"]
        assert classic["docs_read"] == r["users"]
        assert classic["docs_written"] == r["users"]
        assert ours["docs_read"] == r["due_active"]
        check = r["ours_check"]
        assert check["ledger_rows"] == r["due_active"]
        assert check["same_users"]
        assert check["wrong_balances"] == check["pending_left"] == 0
        assert r["classic_check"]["credited"] == r["users"]
    assert control["ours"]["docs"] == small["ours"]["docs"]
    assert control["ours"]["round_trips"] == small["ours"]["round_trips"]
    assert control["classic"]["docs"] == large["classic"]["docs"]
    assert section.figure("400 users: documents transferred (read + written), classic / ours").met
    text = render([section])
    assert "indicative only" in text


@pytest.mark.parametrize(
    ("sizes", "limit", "trips"),
    [
        ([], 0, 1),
        ([100] * 100, 0, 1),
        ([100] * 101, 0, 2),  # cut at 101 with nothing after: one empty getMore
        ([100] * 101, 101, 1),  # the limit was reached
        ([100] * 500, 500, 2),  # 101, then a getMore for the other 399
        ([40] * 10_000, 0, 2),  # the rest of 10,000 small documents fits in 16 MiB
        ([1_000_000] * 120, 0, 8),  # 16 MiB holds 16 of them, in the first reply too
        ([9_000_000] * 3, 0, 3),  # one document per reply once over 16 MiB together
    ],
)
def test_find_round_trips(sizes: list[int], limit: int, trips: int) -> None:
    assert sweep_vs_classic.find_round_trips(sizes, limit) == trips


async def test_classic_reset_upserts_every_user_in_batches_of_500() -> None:
    db = AsyncMongoMockClient(tz_aware=True)["classic"]
    users = [ObjectId() for _ in range(1_001)]
    await db["balances"].insert_many(
        [librechat_doc(u, 5, START - timedelta(days=3)) for u in users]
    )
    log = CallLog()
    balances = RecordingCollection(BulkWriteShim(db["balances"]), log)
    written = await sweep_vs_classic.classic_reset(balances, amount=7, now=START)
    assert written == 1_001
    assert log.methods() == ["balances.find"] + ["balances.bulk_write"] * 3
    batches = [c.args[0] for c in log.calls[1:]]
    assert [len(b) for b in batches] == [500, 500, 1]
    assert all(r._upsert for b in batches for r in b)
    assert await db["balances"].count_documents({"tokenCredits": 7, "lastRefill": START}) == 1_001


# -- the faster mock the sweep benchmark runs on ---------------------------------------

_NOW = START.replace(tzinfo=None)  # naive UTC, as the mock stores dates


def _random_doc(rng: random.Random, i: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": ObjectId(), "user": i}
    for field, values in {
        "lastRefill": [None, _NOW, _NOW - timedelta(days=40), _NOW - timedelta(days=10)],
        "lastSeen": [None, _NOW - timedelta(days=2), "2026-01-01"],
        "tokenCredits": [None, 0, 5_000, 10_000, 20_000.5, True],
        "autoRefillEnabled": [None, True, False, 0, 1],
        "pendingLedger": [None, {"_id": ObjectId()}, {"_id": "x", "n": [1]}],
        "tags": [None, [1, 2], "a"],
    }.items():
        value = rng.choice([*values, "__missing__"])
        if value != "__missing__":
            doc[field] = value
    return doc


_CUTOFF = _NOW - timedelta(days=30)
_FILTERS: list[dict[str, Any]] = [
    {"lastRefill": {"$not": {"$gt": _CUTOFF}}},
    {"$or": [{"lastRefill": {"$lte": _CUTOFF}}, {"lastRefill": None}]},
    {"autoRefillEnabled": {"$ne": False}},
    {"autoRefillEnabled": False},
    {"autoRefillEnabled": 0},
    {"tokenCredits": {"$lt": 10_000}},
    {"tokenCredits": {"$gte": 10_000}, "autoRefillEnabled": True},
    {"$or": [{"tokenCredits": {"$lt": 10_000}}, {"tokenCredits": None}]},
    {"pendingLedger": {"$exists": True}},
    {"pendingLedger._id": {"$exists": False}},
    {"lastSeen": {"$gte": _NOW - timedelta(days=5)}},
    {"tokenCredits": {"$in": [0, None, 5_000]}},
    {"tags": 1},
    {
        "$and": [
            {"lastRefill": {"$not": {"$gt": _CUTOFF}}},
            {"autoRefillEnabled": {"$ne": False}},
            {"$or": [{"tokenCredits": {"$lt": 10_000}}, {"tokenCredits": None}]},
            {"$or": [{"lastRefill": {"$gt": _NOW - timedelta(days=41)}}, {"lastRefill": None}]},
        ]
    },
]


@pytest.mark.parametrize("spec", _FILTERS)
def test_compiled_filters_agree_with_mongomock(spec: dict[str, Any]) -> None:
    from mongomock.filtering import filter_applies

    rng = random.Random(5)
    predicate = fastmock.compile_filter(spec)
    assert predicate is not None
    for i in range(400):
        doc = _random_doc(rng, i)
        assert predicate(doc) == filter_applies(spec, doc), (spec, doc)


async def test_fast_mock_answers_like_the_mock() -> None:
    db = AsyncMongoMockClient(tz_aware=True)["fast"]
    rng = random.Random(7)
    await db["c"].insert_many([_random_doc(rng, i) for i in range(600)])
    plain, fast = db["c"], fastmock.fast_mock(db["c"])
    sort = [("lastRefill", 1), ("_id", 1)]
    for spec in _FILTERS:
        assert await fast.count_documents(spec) == await plain.count_documents(spec)
        for limit in (1, 7, 500):
            expected = [d async for d in plain.find(spec, {"tags": 0}, sort=sort, limit=limit)]
            got = [d async for d in fast.find(spec, {"tags": 0}, sort=sort, limit=limit)]
            assert got == expected
    some = [d["_id"] async for d in plain.find({}, limit=30)]
    by_or = {"$or": [{"_id": i, "tokenCredits": {"$ne": None}} for i in some]}
    assert await fast.count_documents(by_or) == await plain.count_documents(by_or)
    result = await fast.update_many(by_or, {"$set": {"hit": True}})
    assert result.modified_count == await plain.count_documents({"hit": True}) > 0


# -- the runner ------------------------------------------------------------------------


def test_main_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    # the network benchmark needs the wire server: only on that backend
    chosen = [k for k in BENCHMARKS if k != "network" or backend.is_wire()]
    assert main(["--quick", "--json", "--only", ",".join(chosen)]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = [s["key"] for s in report["sections"]]
    assert keys == chosen
    assert BENCHMARKS == ("calls", "overhead", "network", "scale", "sweep", "sweepcost")


def test_script_entry_point_prints_the_table() -> None:
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "calls"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ours: per message, no refill" in out
    assert "LibreChat reservations: message with a refill" in out


# -- single-shard targeting of the hot path --------------------------------------------


class _Capture:
    """Wraps a collection; remembers the `_id` of every document a call found by `user`."""

    def __init__(self, inner: RecordingCollection, found: set[Any]) -> None:
        self._inner = inner
        self._found = found

    @property
    def name(self) -> str:
        return self._inner.name

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._inner, attr)
        if attr not in ("find_one_and_update", "find_one"):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await target(*args, **kwargs)
            filter_ = args[0] if args else kwargs.get("filter", {})
            if isinstance(result, Mapping) and _user_equality(filter_):
                self._found.add(result.get("_id"))
            return result

        return call


def _equality(filter_: Any, field: str) -> bool:
    if not isinstance(filter_, Mapping) or field not in filter_:
        return False
    value = filter_[field]
    if isinstance(value, Mapping):
        return set(value) == {"$eq"}
    return value is not None


def _user_equality(filter_: Any) -> bool:
    return _equality(filter_, "user")


def _filter_of(call: Call) -> Any:
    return call.args[0] if call.args else call.kwargs.get("filter")


async def _seed_hot_path_documents(db: Any) -> ObjectId:
    """LibreChat's layout (_id = user), a legacy user (_id != user, two documents), and
    one with a pending ledger marker left by a crash. Returns the legacy document's _id."""
    old = START - timedelta(days=31)

    async def seed(**doc: Any) -> None:
        await db["balances"].insert_one(doc)

    await seed(_id="due", user="due", tokenCredits=0, lastRefill=old, autoRefillEnabled=True)
    await seed(_id="rich", user="rich", tokenCredits=10**9, lastRefill=START)
    legacy = ObjectId()
    await seed(_id=legacy, user="legacy", tokenCredits=0, lastRefill=old)
    await seed(_id=ObjectId(), user="legacy", tokenCredits=50, lastRefill=old)
    for user, credits, last in [
        ("broke", 0, START),
        ("spender", 100, old),
        ("plain", 0, old),
        ("racer", 0, old),
        ("lost", 0, old),
    ]:
        await seed(_id=user, user=user, tokenCredits=credits, lastRefill=last)
    row = {"_id": ObjectId(), "user": "crashed", "tokenType": "credits", "rawAmount": 1}
    await seed(_id="crashed", user="crashed", tokenCredits=1, lastRefill=START, pendingLedger=row)
    return legacy


async def _exercise_hot_path(
    refiller: BalanceRefiller,
    no_ledger: BalanceRefiller,
    log: CallLog,
    recorders: list[RecordingCollection],
) -> None:
    await refiller.ensure_balance("newcomer")  # first seen
    await refiller.ensure_balance("rich")  # no refill
    await refiller.ensure_balance("due")  # refill with its ledger row
    await refiller.ensure_balance("legacy")  # refill of the oldest of two documents
    await refiller.ensure_balance("crashed")  # finishes the pending ledger row
    await no_ledger.ensure_balance("plain")  # refill without a ledger
    await refiller.spend("rich", 10, request_id="r1")  # covered
    await refiller.spend("rich", 10, request_id="r1")  # duplicate request
    await refiller.spend("spender", 1_000, request_id="s1")  # refill, then charge
    await refiller.spend("first-spender", 100)  # first seen inside spend
    with pytest.raises(InsufficientCredits):
        await refiller.spend("broke", 100)  # short, no refill due

    # A refill whose reply is lost after the server applied it: retried, recognised.
    def lose_refill_reply(call: Call, index: int) -> BaseException | None:
        if call.method == "find_one_and_update" and "_id" in (_filter_of(call) or {}):
            log.fail_after = None
            return AutoReconnect("reply lost")
        return None

    log.fail_after = lose_refill_reply
    await refiller.ensure_balance("lost")
    log.fail_after = None

    # Racing spends on a user due for a refill: compare-and-swap losers retry.
    for recorder in recorders:
        recorder.yield_first = True
    await asyncio.gather(*(refiller.spend("racer", 500, request_id=f"race-{i}") for i in range(8)))
    for recorder in recorders:
        recorder.yield_first = False


def _untargeted(calls: list[Call], found: set[Any]) -> list[str]:
    problems = []
    for call in calls:
        if call.method == "insert_one":
            if "user" not in call.args[0]:
                problems.append(f"{call.collection}.insert_one without user: {call.args[0]!r}")
            continue
        filter_ = _filter_of(call)
        if not _user_equality(filter_):
            problems.append(f"{call.collection}.{call.method} not targeted: {filter_!r}")
    return problems


async def test_hot_path_filters_target_one_user() -> None:
    """Every filter ensure_balance and spend send (refill paths, first-seen users,
    legacy documents, crash recovery, lost replies and races included) has an equality
    on `user`, and every inserted row carries its `user`. So with `user` as the shard
    key each call is routed to one shard."""
    db = AsyncMongoMockClient(tz_aware=True)["targeting"]
    log = CallLog()
    found: set[Any] = set()
    recorders = [
        RecordingCollection(db["balances"], log),
        RecordingCollection(db["transactions"], log),
    ]
    balances, ledger = (_Capture(r, found) for r in recorders)
    clock = FakeClock(START)
    policy = RefillPolicy(amount=10_000, interval="30d", start_balance=5_000)
    refiller = BalanceRefiller(balances, policy, ledger=ledger, clock=clock, retry_delay=0)
    no_ledger = BalanceRefiller(balances, policy, clock=clock, retry_delay=0)
    legacy = await _seed_hot_path_documents(db)

    await _exercise_hot_path(refiller, no_ledger, log, recorders)

    methods = {c.method for c in log.calls}
    assert methods <= {"find_one_and_update", "find_one", "update_one", "insert_one"}, methods
    assert {"find_one_and_update", "update_one", "insert_one"} <= methods
    problems = _untargeted(log.calls, found)
    assert not problems, "\n".join(problems)
    # The compare-and-swap and the marker clear (filters on _id too) were exercised,
    # including on the legacy document's own _id.
    id_filters = [_filter_of(c).get("_id") for c in log.calls if c.method != "insert_one"]
    assert legacy in id_filters
