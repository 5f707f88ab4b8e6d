"""Smoke tests of the benchmarks (tiny sizes, in process, no wall-clock assertions), and
the check that every filter of the hot path targets one user (a single shard)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill.testing import Call, CallLog, FakeClock, RecordingCollection
from bench import before, calls, network, overhead, scale, simulate, sweep
from bench.baselines import LibreChatClassic, LibreChatReservations, Message, Ours
from bench.common import START, librechat_doc, librechat_policy, mock_db, render
from bench.run import BENCHMARKS, WIRE, main
from tests.wire.launcher import WireUnavailable

from .wire import backend

on_wire = pytest.mark.skipif(
    not backend.is_wire(), reason="needs the mongoeco wire server: BALANCE_REFILL_TEST_BACKEND=wire"
)

# -- 1. calls per chat turn ------------------------------------------------------------


async def test_calls_per_turn() -> None:
    """Ours: 1 call per message, 4 with a refill; LibreChat's flows: 7/10 and 9/13."""
    section = await calls.run(quick=True)
    counts = {name: calls.FlowCounts(**c) for name, c in section.data.items()}
    ours = counts["ours"]
    assert (ours.login, ours.login_first_seen, ours.per_message) == (1, 1, 1)
    assert (ours.with_refill, ours.after_refill) == (4, 1)
    classic, reservations = counts["LibreChat classic"], counts["LibreChat reservations"]
    assert (classic.per_message, classic.with_refill) == (7, 10)
    assert (reservations.per_message, reservations.with_refill) == (9, 13)
    assert classic.after_refill == classic.per_message
    assert reservations.after_refill == reservations.per_message
    assert section.figure("ours: per message, no refill").met is True
    assert section.figure("ours: message with a refill").met is True


@pytest.mark.parametrize(
    ("flow_name", "refill_rows"),
    [("ours", 1), ("LibreChat classic", 2), ("LibreChat reservations", 1)],
)
async def test_baselines_keep_librechat_race_behaviour(flow_name: str, refill_rows: int) -> None:
    """Two racing messages of a user due for a refill: the classic read-then-write flow
    refills twice, the compare-and-swap flows once."""
    db = mock_db("race")
    log = CallLog()
    balances = RecordingCollection(db["balances"], log, yield_first=True)
    transactions = RecordingCollection(db["transactions"], log, yield_first=True)
    user = ObjectId()
    await db["balances"].insert_one(librechat_doc(user, 200, START - timedelta(days=31)))
    flow = calls.make_flow(flow_name, balances, transactions, FakeClock(START))
    await asyncio.gather(flow.message(user, Message("a")), flow.message(user, Message("b")))
    assert await db["transactions"].count_documents({"context": "autoRefill"}) == refill_rows


async def test_every_flow_refuses_when_short_and_not_due() -> None:
    db = mock_db("refuse")
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
    for name in ("stub: spend (covered), CPU per call", "mock: spend, ours / bare"):
        value = section.value(name)
        assert isinstance(value, float)
        assert value > 0


async def test_overhead_is_paired_with_main() -> None:
    """The stub figures are paired in one run with main's package, imported beside this
    one: both sides ran and the ratio is theirs."""
    section = await overhead.run(quick=True)
    paired = section.data["paired"]
    assert paired["before"].startswith("main@")
    for name in ("ensure_balance", "spend"):
        now_us, before_us = paired[name]
        assert now_us > 0
        assert before_us > 0
        assert section.value(f"paired: {name}, now / {paired['before']}, ratio") == (
            now_us / before_us
        )


def test_before_is_another_package() -> None:
    """bench/before.py imports main's package under its own name: a different
    BalanceRefiller class, whose modules are its own."""
    import balance_refill

    package = before.load()
    assert package.__name__.startswith("balance_refill_")
    assert package.BalanceRefiller is not balance_refill.BalanceRefiller
    assert package.BalanceRefiller.__module__ == f"{package.__name__}.refiller"
    assert before.load() is package  # loaded once


async def test_bare_calls_are_the_librarys_own() -> None:
    """The replayed bare calls charge like the library's spend (a fresh request key each)."""
    ours, bare = (await overhead.mock_pairs(calls=2))["spend"]
    before = await bare()
    await ours()
    after = await bare()
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    assert before["tokenCredits"] - after["tokenCredits"] == 2  # one bare spend, one ours


async def test_profile_lists_library_functions() -> None:
    assert "balance_refill" in await overhead.profile(calls=50, top=10)


# -- 3. sizes and shard key ------------------------------------------------------------


async def test_scale_runs() -> None:
    section = await scale.run(quick=True)
    sizes = section.data["sizes"]
    assert sizes["ours, steady state"] > sizes["ours, first-seen user"] > 0
    assert "user_1__id_1" in section.data["indexes"]
    assert section.data["spread"]["user: 1"] == 1.0  # every new user on the last range
    assert section.data["spread"]["user: hashed"] < 0.5
    routed = [f for f in section.figures if "routed to one shard" in f.name]
    assert routed
    assert all(str(f.value).split(" of ")[0] == str(f.value).split(" of ")[1] for f in routed)


# -- 4. sweep vs classic (wire) ----------------------------------------------------------


def test_sweep_population_is_exact() -> None:
    docs = sweep.population(100)
    due = [d for d in docs if d["lastRefill"] < START - timedelta(days=30)]
    active = [d for d in docs if d["lastSeen"] > START - timedelta(days=30)]
    assert (len(docs), len(due), len(active)) == (100, 20, 50)
    assert all(d["tokenCredits"] < sweep.AMOUNT for d in due)
    assert len({id(d) for d in due} & {id(d) for d in active}) == 10


@on_wire
async def test_simulate_benchmark_quick() -> None:
    """The simulator benchmark feeds a synthetic trace a day at a time and reports its
    events per second and the memory it holds per user (no figure is asserted on time)."""
    section = await simulate.run(quick=True)
    assert section.data["events"] == section.value("synthetic trace: 200 users, 10 days")
    assert section.data["events"] > 1_000
    assert section.data["totals"]["demands"] > 0
    assert all(b > 0 for b in section.data["bytes_per_user"])
    assert section.figure("simulator speed").goal == ">= 100,000"


async def test_sweep_benchmark_quick() -> None:
    """Ours reads only the due users (activity is read from the ledger, per batch) and
    refills the due and active ones once each; the classic reads and writes everyone."""
    section = await sweep.run(quick=True)
    classic, ours = section.data["classic"], section.data["ours"]
    users = section.data["users"]
    assert (classic["read"], classic["written"]) == (users, users)
    assert (ours["read"], ours["ledger_rows"]) == (users // 5, users // 10)
    assert classic["ledger_rows"] == 0
    assert section.figure("documents moved (read + written), classic / ours").met
    everyone = section.data["everyone_due"]
    scaled = sweep.ALL_DUE_USERS // everyone["scale"]
    assert everyone["ours"]["ledger_rows"] == everyone["ours"]["read"] == scaled
    assert everyone["classic"]["round_trips"] == 1 + 20  # one read, 20 bulk writes of 500
    assert everyone["ours"]["round_trips"] <= 2 * everyone["classic"]["round_trips"]


# -- 5. round trips on a wire server -----------------------------------------------------


@on_wire
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
        assert section.value(f"{name}: users consistent after the run") == (
            f"{sizes.users} of {sizes.users}"
        )
    assert all(r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in loaded.values())
    assert len(section.data["rounds"]) == sizes.rounds
    if sys.platform == "linux":  # the server's CPU comes from /proc
        assert all(r["server_cpu_ms_per_message"] > 0 for r in loaded.values())
    assert "Only the ratios between the flows" in render([section])
    assert list(section.data["conditions"]) == ["direct", "+0.5 ms RTT", "+2 ms RTT"]
    sent = section.data["bytes"]
    assert set(sent) == {*network.FLOWS, network.BEFORE_FLOW}
    assert sent["ours"]["spend"] < sent[network.BEFORE_FLOW]["spend"]  # no pipeline now
    for label in ("+0.5 ms RTT", "+2 ms RTT"):
        held = section.value(f"{label}: delay the proxy really added per message, each way")
        assert isinstance(held, float)
        assert held > 0


@pytest.mark.parametrize("name", [*network.FLOWS, network.BEFORE_FLOW])
async def test_wire_flows_leave_every_user_consistent_on_the_mock(name: str) -> None:
    """The network benchmark's seeding, sessions and per-user check, on mongomock: the
    check passes after a run, and names a user given a second refill row."""
    db = mock_db("wire_flows")
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


async def test_wire_benchmarks_fail_without_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No wire server: the benchmark stops with the reason, with no simulated fallback."""

    def unavailable() -> None:
        raise WireUnavailable("no Python 3.13+ found to run mongoeco")

    monkeypatch.setattr(network, "start_wire_server", unavailable)
    with pytest.raises(network.WireBenchmarkError, match=r"no Python 3\.13\+ found"):
        await sweep.run(quick=True)
    assert await asyncio.to_thread(main, ["--quick", "--only", "network"]) == 1
    err = capsys.readouterr().err
    assert "no simulated fallback" in err
    assert "no Python 3.13+ found" in err


# -- the runner ------------------------------------------------------------------------


def test_main_reports_progress_and_total_time(capsys: pytest.CaptureFixture[str]) -> None:
    """Each benchmark says when it starts and finishes; the run ends with its duration."""
    chosen = [k for k in BENCHMARKS if k not in WIRE]  # the wire ones have tests of their own
    assert main(["--quick", "--json", "--only", ",".join(chosen)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert [s["key"] for s in report["sections"]] == chosen
    assert report["seconds"] > 0
    for name in chosen:
        assert f"bench: {name} started" in err
        assert f"bench: {name} finished in" in err
    assert err.rstrip().splitlines()[-1].startswith("bench: every benchmark finished; total")
    assert main(["--quick", "--only", "calls"]) == 0
    out = capsys.readouterr().out
    assert "ours: per message, no refill" in out
    assert out.rstrip().splitlines()[-1].startswith("Total run time: ")


# -- single-shard targeting of the hot path --------------------------------------------


def _filter_of(call: Call) -> object:
    return call.args[0] if call.args else call.kwargs.get("filter")


async def _seed_hot_path_documents(db: Any) -> ObjectId:
    """LibreChat's layout (_id = user), a legacy user (_id != user, two documents), and
    one with a pending ledger marker left by a crash. Returns the legacy document's _id."""
    old = START - timedelta(days=31)
    legacy = ObjectId()
    await db["balances"].insert_many(
        [
            {"_id": "due", "user": "due", "tokenCredits": 0, "lastRefill": old},
            {"_id": "rich", "user": "rich", "tokenCredits": 10**9, "lastRefill": START},
            {"_id": legacy, "user": "legacy", "tokenCredits": 0, "lastRefill": old},
            {"_id": ObjectId(), "user": "legacy", "tokenCredits": 50, "lastRefill": old},
            *(
                {"_id": user, "user": user, "tokenCredits": credits, "lastRefill": last}
                for user, credits, last in [
                    ("broke", 0, START),
                    ("spender", 100, old),
                    ("plain", 0, old),
                    ("racer", 0, old),
                    ("lost", 0, old),
                ]
            ),
            {
                "_id": "crashed",
                "user": "crashed",
                "tokenCredits": 1,
                "lastRefill": START,
                "pendingLedger": {"_id": ObjectId(), "user": "crashed", "rawAmount": 1},
            },
        ]
    )
    return legacy


async def test_hot_path_filters_target_one_user() -> None:
    """Every filter ensure_balance and spend send (refill paths, first-seen users,
    legacy documents, crash recovery, lost replies and races included) has an equality
    on `user`, and every inserted row carries its `user`. So with `user` as the shard
    key each call is routed to one shard."""
    db = mock_db("targeting")
    log = CallLog()
    recorders = [
        RecordingCollection(db["balances"], log),
        RecordingCollection(db["transactions"], log),
    ]
    balances, ledger = recorders
    clock = FakeClock(START)
    policy = RefillPolicy(amount=10_000, interval="30d", start_balance=5_000)
    refiller = BalanceRefiller(balances, policy, ledger=ledger, clock=clock, retry_delay=0)
    no_ledger = BalanceRefiller(balances, policy, clock=clock, retry_delay=0)
    legacy = await _seed_hot_path_documents(db)

    for user in ("newcomer", "rich", "due", "legacy", "crashed"):
        await refiller.ensure_balance(user)
    await no_ledger.ensure_balance("plain")  # refill without a ledger
    await refiller.spend("rich", 10, request_id="r1")  # covered
    await refiller.spend("rich", 10, request_id="r1")  # duplicate request
    await refiller.spend("spender", 1_000, request_id="s1")  # refill, then charge
    await refiller.spend("first-spender", 100)  # first seen inside spend
    with pytest.raises(InsufficientCredits):
        await refiller.spend("broke", 100)  # short, no refill due

    def lose_refill_reply(call: Call, index: int) -> BaseException | None:
        """A refill whose reply is lost after the server applied it: retried, recognised."""
        filter_ = _filter_of(call)
        if call.method == "find_one_and_update" and isinstance(filter_, dict) and "_id" in filter_:
            log.fail_after = None
            return AutoReconnect("reply lost")
        return None

    log.fail_after = lose_refill_reply
    await refiller.ensure_balance("lost")
    log.fail_after = None
    for recorder in recorders:  # racing spends on a user due for a refill
        recorder.yield_first = True
    await asyncio.gather(*(refiller.spend("racer", 500, request_id=f"race-{i}") for i in range(8)))

    methods = {c.method for c in log.calls}
    assert methods <= {"find_one_and_update", "find_one", "update_one", "insert_one"}, methods
    assert {"find_one_and_update", "update_one", "insert_one"} <= methods
    untargeted = [c for c in log.calls if not scale.targets_user(c)]
    assert not untargeted, "\n".join(map(repr, untargeted))
    # The compare-and-swap and the marker clear (filters on _id too) were exercised,
    # including on the legacy document's own _id.
    id_filters = [f.get("_id") for c in log.calls if isinstance(f := _filter_of(c), dict)]
    assert legacy in id_filters
