"""Benchmark 3: real round trips, on a wire server over loopback TCP.

One mongoeco wire server (`tests/wire/launcher.py`: an in-memory MongoDB written in
Python, run by Python 3.13 in a child process) listens on 127.0.0.1; the flows reach it
through the real driver, `pymongo.AsyncMongoClient`, so every call is a real command on
a real socket. mongoeco is much slower than a real `mongod`: absolute figures here are
far below what a server gives, and only the ratios between the flows mean something.

Each flow (ours, LibreChat classic, LibreChat reservations; `baselines`) runs on a fresh
database of that server, with the indexes it would have (ours: `ensure_indexes()`;
LibreChat: `{user: 1}` on both collections) and `users` balance documents in LibreChat's
layout with ObjectId user ids. Each user has a `balances` / `transactions` pair of their
own (every call names one user, so no call changes): mongoeco checks a single-document
insert for a duplicate `_id` by scanning the whole collection, which would make one
shared ledger slower with every row, unlike a server's `_id` index.

Each user logs in, then sends `messages` messages one after another; `concurrency` users
run at a time. Users start with credits for about half their messages and an elapsed
period, so each flow refills each user once, mid-session.
Latency is measured per message (the `spend` for ours, the whole check/reserve/spend/
settle sequence for LibreChat); throughput counts messages over the wall time of the
whole run, logins included. The same is then done with `unloaded_users` users one at a
time, so latency shows the round trips without the queue at the server.

Round trips are counted by a `pymongo.monitoring.CommandListener` on the client: every
command the driver sends. After each flow, every user is checked: exactly one refill row,
the balance a sequential replay of their messages gives, no reservation or refill marker
left behind. A failed check, or a wire server that cannot start, fails the benchmark.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import bson
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from balance_refill import BalanceRefiller
from balance_refill import _schema as S
from tests.wire.launcher import WireServer, WireUnavailable, start_wire_server
from tests.wire.proxy import Proxy

from . import before
from .baselines import Flow, LibreChatClassic, LibreChatReservations, Message, Ours
from .common import (
    COMPLETION_CREDITS,
    LIBRECHAT_BALANCE,
    MESSAGE_COST,
    PROMPT_CREDITS,
    START,
    Section,
    due_last_refill,
    librechat_doc,
    librechat_policy,
    median,
    percentile,
    ratio,
)

FLOWS = ("ours", "LibreChat classic", "LibreChat reservations")
BEFORE_FLOW = "ours before"
"""This library as it was on main (`bench/before.py`): the paired "before" figures."""
DELAYS = (0.0, 0.25e-3, 1e-3)
"""Seconds the delay proxy adds to each message each way: none (direct), then about
0.5 ms and 2 ms of round-trip time, as a network adds and loopback does not."""
GOAL_THROUGHPUT = {"LibreChat classic": 5.0, "LibreChat reservations": 6.0}
GOAL_SERVER_CPU = 5.0  # classic's server CPU per message over ours
GOAL_SPEND_BYTES = 500
REFILL_AMOUNT = cast(int, LIBRECHAT_BALANCE["refillAmount"])


class WireBenchmarkError(RuntimeError):
    """The wire benchmark could not run (no server), or a flow left a user inconsistent."""


@dataclass(frozen=True)
class Sizes:
    users: int  # per flow, loaded pass (split over the rounds)
    messages: int  # per user
    concurrency: int
    unloaded_users: int  # per flow, one at a time (split over the rounds)
    rounds: int = 1

    @property
    def start_credits(self) -> int:
        """Enough for about half the messages: one refill each, mid-session."""
        return MESSAGE_COST * (self.messages // 2) + 500


FULL = Sizes(users=100, messages=10, concurrency=10, unloaded_users=10, rounds=5)
QUICK = Sizes(users=12, messages=4, concurrency=4, unloaded_users=4, rounds=2)
BYTES_PASS = Sizes(users=4, messages=10, concurrency=1, unloaded_users=1)
"""The untimed pass whose commands are measured in bytes."""
WARM_UP = (8, 3)  # users, messages per flow before measuring (connections, code paths)
PINGS = 200


def progress(text: str) -> None:
    print(f"  network: {text}", file=sys.stderr, flush=True)


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process `pid` has used so far, from /proc (Linux);
    None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


PLAIN_SPEND = "plain spend"
"""Where `CommandLog.sizes` also lists the steady-state spends (counted once in totals)."""


PLAIN_UPDATE = frozenset({"$inc", "$push", "$max"})


def is_plain_spend(command: Any) -> bool:
    """Whether `command` is our steady-state spend: a findAndModify whose update is
    `fast_spend_update`'s plain operators (`$inc` and the `$push` of the request window,
    `$max` of lastSeen once a minute)."""
    update = command.get("update") if command.get("findAndModify") else None
    return (
        isinstance(update, dict)
        and "$inc" in update
        and "$push" in update
        and set(update) <= PLAIN_UPDATE
    )


def field_sizes(command: Any) -> str:
    """`command`'s BSON bytes by top-level field (the query's and update's by clause)."""

    def sizes(doc: Any) -> list[str]:
        return [f"{k} {len(bson.encode({k: v})) - 5}" for k, v in doc.items()]

    parts = []
    for key, value in command.items():
        inner = f" ({', '.join(sizes(value))})" if key in {"query", "update"} else ""
        parts.append(f"{key} {len(bson.encode({key: value})) - 5}{inner}")
    return "; ".join(parts)


class CommandLog(monitoring.CommandListener):
    """Every command the driver sends (one round trip each): how many, by name, and how
    long each took from the driver's send to its reply (`duration_micros`)."""

    def __init__(self) -> None:
        self.started_count: Counter[str] = Counter()
        self.durations: dict[str, list[float]] = {}
        self.sizes: dict[str, list[int]] | None = None  # BSON bytes sent, when measured
        self.sample = ""  # the first steady-state spend measured, its bytes by field

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.started_count[event.command_name] += 1
        if self.sizes is not None:
            size = len(bson.encode(event.command))
            self.sizes.setdefault(event.command_name, []).append(size)
            if is_plain_spend(event.command):
                self.sizes.setdefault(PLAIN_SPEND, []).append(size)
                self.sample = self.sample or field_sizes(event.command)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.durations.setdefault(event.command_name, []).append(event.duration_micros / 1000)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.durations.setdefault(event.command_name, []).append(event.duration_micros / 1000)

    def take(self) -> tuple[dict[str, int], dict[str, list[float]]]:
        """The counts and durations (ms) since the last `take`, then forget them."""
        taken = dict(self.started_count), self.durations
        self.started_count, self.durations = Counter(), {}
        return taken


@dataclass
class WireResult:
    name: str
    users: int
    messages: int
    concurrency: int
    seconds: float
    latencies_ms: list[float]
    commands: dict[str, int]
    command_ms: dict[str, list[float]]
    client_cpu: float  # seconds of this process's CPU during the run
    server_cpu: float | None  # seconds of the server's CPU during the run
    sent_bytes: dict[str, list[int]] | None = None  # BSON bytes of each command, by name
    spend_sample: str = ""  # a steady-state spend's bytes by field (`field_sizes`)

    @property
    def bytes_per_message(self) -> float | None:
        """BSON bytes the driver sent per message (every command of the run)."""
        if self.sent_bytes is None:
            return None
        return sum(sum(v) for k, v in self.sent_bytes.items() if k != PLAIN_SPEND) / self.messages

    @property
    def bytes_per_request(self) -> float | None:
        """BSON bytes per command sent, on average."""
        if self.sent_bytes is None:
            return None
        sizes = [n for k, v in self.sent_bytes.items() if k != PLAIN_SPEND for n in v]
        return sum(sizes) / len(sizes) if sizes else 0.0

    @property
    def spend_bytes(self) -> float | None:
        """The median steady-state spend's BSON bytes (the plain update's; for a flow
        without one, the median findAndModify's)."""
        if not self.sent_bytes:
            return None
        sizes = self.sent_bytes.get(PLAIN_SPEND) or self.sent_bytes.get("findAndModify")
        return median(sizes) if sizes else None

    @property
    def round_trips(self) -> int:
        return sum(self.commands.values())

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds

    @property
    def p50(self) -> float:
        return median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def round_trips_per_message(self) -> float:
        return self.round_trips / self.messages

    @property
    def wall_per_round_trip_ms(self) -> float:
        """The run's wall time over its round trips: when the server is the bottleneck,
        about the server's time per command."""
        return self.seconds / self.round_trips * 1000

    @property
    def server_ms_per_message(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / self.messages * 1000

    @property
    def client_ms_per_message(self) -> float:
        return self.client_cpu / self.messages * 1000

    def command_medians(self) -> dict[str, float]:
        """The median round trip of each command, in ms."""
        return {name: median(ms) for name, ms in sorted(self.command_ms.items())}

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "messages": self.messages,
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "throughput": self.throughput,
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "round_trips": self.round_trips,
            "round_trips_per_message": self.round_trips_per_message,
            "commands": dict(sorted(self.commands.items())),
            "command_median_ms": self.command_medians(),
            "client_cpu_ms_per_message": self.client_ms_per_message,
            "server_cpu_ms_per_message": self.server_ms_per_message,
        }


def combine(results: list[WireResult]) -> WireResult:
    """One flow's rounds as one run: times and counts added, latencies pooled."""
    commands: Counter[str] = Counter()
    command_ms: dict[str, list[float]] = {}
    for r in results:
        commands.update(r.commands)
        for name, ms in r.command_ms.items():
            command_ms.setdefault(name, []).extend(ms)
    first = results[0]
    server = [r.server_cpu for r in results]
    return WireResult(
        first.name,
        sum(r.users for r in results),
        sum(r.messages for r in results),
        first.concurrency,
        sum(r.seconds for r in results),
        [ms for r in results for ms in r.latencies_ms],
        dict(commands),
        command_ms,
        sum(r.client_cpu for r in results),
        None if None in server else sum(c for c in server if c is not None),
    )


# -- one flow on one database ------------------------------------------------------------


def _clock() -> Any:
    return START


def make_flow(name: str, balances: Any, transactions: Any) -> Flow:
    if name == "ours":
        refiller = BalanceRefiller(balances, librechat_policy(), ledger=transactions, clock=_clock)
        return Ours(refiller)
    if name == BEFORE_FLOW:
        package = before.load()
        policy = package.RefillPolicy.from_librechat(LIBRECHAT_BALANCE)
        was = package.BalanceRefiller(balances, policy, ledger=transactions, clock=_clock)
        return Ours(cast(BalanceRefiller, was))
    if name == "LibreChat classic":
        return LibreChatClassic(balances, transactions, _clock)
    if name == "LibreChat reservations":
        return LibreChatReservations(balances, transactions, _clock)
    raise ValueError(name)


def seed_doc(name: str, user: ObjectId, credits: int) -> dict[str, Any]:
    """LibreChat's document, due for a refill. Under ours LibreChat's own refill is off
    (`autoRefillEnabled: false` in librechat.yaml, and on every document the library
    writes), so ours starts from that steady state rather than paying the one-time
    switch-off on the first call."""
    doc = librechat_doc(user, credits, due_last_refill(START))
    if name.startswith("ours"):
        doc["autoRefillEnabled"] = False
    return doc


@dataclass
class Partition:
    """One user's `balances` and `transactions` collections, and the flow on them."""

    user: ObjectId
    balances: Any
    transactions: Any
    flow: Flow


async def prepare(db: Any, name: str, users: list[ObjectId], credits: int) -> list[Partition]:
    """Each user's partition, with the indexes the flow's deployment would have (ours:
    `ensure_indexes()`; LibreChat: `{user: 1}` on both) and the user's document."""
    parts = []
    for i, user in enumerate(users):
        balances, transactions = db[f"balances_{i}"], db[f"transactions_{i}"]
        flow = make_flow(name, balances, transactions)
        if isinstance(flow, Ours):
            await flow.refiller.ensure_indexes()
        else:
            await balances.create_index([("user", 1)])
            await transactions.create_index([("user", 1)])
        await balances.insert_one(seed_doc(name, user, credits))
        parts.append(Partition(user, balances, transactions, flow))
    return parts


async def drive(
    parts: list[Partition], messages: int, concurrency: int
) -> tuple[float, list[float]]:
    """Every user logs in and sends `messages` messages; `concurrency` users at a time.
    Returns the wall time and each message's latency in ms."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def session(part: Partition) -> None:
        async with gate:
            await part.flow.login(part.user)
            for i in range(messages):
                t0 = time.perf_counter()
                await part.flow.message(part.user, Message(f"{part.user}-{i}"))
                latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(session(p) for p in parts))
    return time.perf_counter() - t0, latencies


def expected_credits(name: str, start: int, messages: int) -> int:
    """A user's balance after `messages` messages sent one after another, as each flow
    computes it (LibreChat checks the prompt's cost only and floors each spend at 0)."""
    credits = start
    for _ in range(messages):
        if name.startswith("ours"):
            if credits < MESSAGE_COST:
                credits += REFILL_AMOUNT
            credits -= MESSAGE_COST
        else:
            if credits - PROMPT_CREDITS <= 0:
                credits += REFILL_AMOUNT
            credits = max(0, credits - PROMPT_CREDITS)
            credits = max(0, credits - COMPLETION_CREDITS)
    return credits


async def check(name: str, parts: list[Partition], sizes: Sizes) -> list[str]:
    """What is wrong with any user after the run (empty: every user is consistent): one
    refill row each, the balance a sequential replay gives, LibreChat's two usage rows
    per message, nothing left pending or reserved."""
    problems: list[str] = []
    wanted = expected_credits(name, sizes.start_credits, sizes.messages)
    usage_wanted = 0 if name.startswith("ours") else 2 * sizes.messages
    for part in parts:
        docs = [d async for d in part.balances.find({})]
        rows = [r async for r in part.transactions.find({}, {"user": 1, "context": 1})]
        contexts = Counter(r.get("context") for r in rows)
        wrong = [f"{len(docs)} balance documents"] if len(docs) != 1 else []
        if contexts["autoRefill"] != 1:
            wrong.append(f"{contexts['autoRefill']} refill rows")
        if contexts["message"] != usage_wanted or len(contexts) > 1 + bool(usage_wanted):
            wrong.append(f"ledger rows {dict(contexts)}")
        if any(r.get("user") != part.user for r in rows):
            wrong.append("ledger rows of another user")
        for doc in docs:
            if doc.get("user") != part.user:
                wrong.append(f"a balance document of {doc.get('user')!r}")
            if doc.get("tokenCredits") != wanted:
                wrong.append(f"{doc.get('tokenCredits')} credits, expected {wanted}")
            left = [f for f in ("pendingLedger", "pendingRefill") if doc.get(f) is not None]
            if (doc.get("reservedCredits") or 0) != 0 or doc.get("reservations"):
                left.append("reservations")
            if left:
                wrong.append(f"left behind: {', '.join(left)}")
        if wrong:
            problems.append(f"{part.user}: {'; '.join(wrong)}")
    return problems


ServerCpu = Callable[[], float | None]


def _no_cpu() -> float | None:
    return None


async def run_flow(
    client: Any,
    log: CommandLog,
    name: str,
    sizes: Sizes,
    *,
    users: int,
    concurrency: int,
    server_cpu: ServerCpu = _no_cpu,
) -> WireResult:
    """One flow, `users` users, on a fresh database: seed, drive, count round trips,
    check, drop."""
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    db = client[db_name]
    ids = [ObjectId() for _ in range(users)]
    try:
        parts = await prepare(db, name, ids, sizes.start_credits)
        log.take()
        measuring = log.sizes is not None
        if measuring:
            log.sizes, log.sample = {}, ""
        client_before, server_before = time.process_time(), server_cpu()
        seconds, latencies = await drive(parts, sizes.messages, concurrency)
        client_used, server_after = time.process_time() - client_before, server_cpu()
        commands, command_ms = log.take()
        sent, log.sizes = (log.sizes, {}) if measuring else (None, None)
        problems = await check(name, parts, sizes)
    finally:
        await client.drop_database(db_name)
    if problems:
        more = f"; and {len(problems) - 3} more users" if len(problems) > 3 else ""
        raise WireBenchmarkError(
            f"{name}: inconsistent users after the run: {' | '.join(problems[:3])}{more}"
        )
    return WireResult(
        name,
        users,
        users * sizes.messages,
        concurrency,
        seconds,
        latencies,
        commands,
        command_ms,
        client_used,
        None if server_before is None or server_after is None else server_after - server_before,
        sent,
        log.sample if measuring else "",
    )


# -- the whole benchmark -----------------------------------------------------------------


async def start_server() -> WireServer:
    try:
        return await asyncio.to_thread(start_wire_server)
    except WireUnavailable as exc:
        raise WireBenchmarkError(
            "the network benchmark measures real round trips on a mongoeco wire server, "
            f"and none could be started: {exc}\n"
            "(check with `python -m tests.wire.launcher --check`; there is no simulated "
            "fallback: leave this benchmark out with --only)"
        ) from exc


@dataclass
class Measured:
    ping_ms: list[float]
    rounds: list[dict[str, WireResult]]  # the loaded pass, round by round
    loaded: dict[str, WireResult]  # every round combined
    unloaded: dict[str, WireResult]
    load_before: float
    load_after: float
    sent: dict[str, WireResult]  # the bytes pass: a few users, every command's size


async def measure(
    uri: str,
    sizes: Sizes,
    server_cpu: ServerCpu = _no_cpu,
    flows: tuple[str, ...] = FLOWS,
) -> Measured:
    """After a short warm-up of each flow, `sizes.rounds` rounds; in each, every flow
    loaded (`sizes.concurrency` users at a time), then every flow unloaded (one user at a
    time), the flows in an order that rotates from round to round, so that a change in
    the machine's other load falls on every flow alike."""
    log = CommandLog()
    client: Any = AsyncMongoClient(uri, tz_aware=True, event_listeners=[log])
    load_before = os.getloadavg()[0]
    try:
        warm_users, warm_messages = WARM_UP
        warm = Sizes(warm_users, warm_messages, warm_users, 1)
        for name in flows:
            await run_flow(client, log, name, warm, users=warm_users, concurrency=warm_users)
        log.take()
        for _ in range(PINGS):
            await client.admin.command("ping")
        ping_ms = log.take()[1]["ping"]
        sent: dict[str, WireResult] = {}
        for name in flows:  # sizes measured apart: encoding them costs the client CPU
            log.sizes = {}
            sent[name] = await run_flow(
                client, log, name, BYTES_PASS, users=BYTES_PASS.users, concurrency=1
            )
            log.sizes = None
        rounds: list[dict[str, WireResult]] = []
        unloaded_rounds: list[dict[str, WireResult]] = []
        for i in range(sizes.rounds):
            order = flows[i % len(flows) :] + flows[: i % len(flows)]
            loaded_round: dict[str, WireResult] = {}
            for name in order:
                loaded_round[name] = await run_flow(
                    client,
                    log,
                    name,
                    sizes,
                    users=sizes.users // sizes.rounds,
                    concurrency=sizes.concurrency,
                    server_cpu=server_cpu,
                )
            unloaded_round: dict[str, WireResult] = {}
            for name in order:
                unloaded_round[name] = await run_flow(
                    client,
                    log,
                    name,
                    sizes,
                    users=sizes.unloaded_users // sizes.rounds,
                    concurrency=1,
                )
            rounds.append(loaded_round)
            unloaded_rounds.append(unloaded_round)
            progress(
                f"round {i + 1} of {sizes.rounds}: "
                + ", ".join(
                    f"{n} {loaded_round[n].throughput:,.1f} msg/s "
                    f"(p50 {loaded_round[n].p50:.0f} ms, alone {unloaded_round[n].p50:.1f} ms)"
                    for n in flows
                )
            )
    finally:
        await client.close()
    loaded = {n: combine([r[n] for r in rounds]) for n in flows}
    unloaded = {n: combine([r[n] for r in unloaded_rounds]) for n in flows}
    return Measured(ping_ms, rounds, loaded, unloaded, load_before, os.getloadavg()[0], sent)


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} - {max(values):.2f}"


def _add_pass(
    section: Section, label: str, results: dict[str, WireResult], *, throughput: bool
) -> None:
    for r in results.values():
        if throughput:
            section.add(f"{label}: {r.name}: throughput", r.throughput, "msg/s")
        section.add(f"{label}: {r.name}: latency p50 / p99", f"{r.p50:.1f} / {r.p99:.1f}", "ms")
    ours = results["ours"]
    for name in FLOWS[1:]:
        r = results[name]
        if throughput:
            section.add(
                f"{label}: throughput ours / {name}", ratio(ours.throughput, r.throughput), "x"
            )
        section.add(f"{label}: p50 latency {name} / ours", ratio(r.p50, ours.p50), "x")
        section.add(f"{label}: p99 latency {name} / ours", ratio(r.p99, ours.p99), "x")


def _medians(result: WireResult) -> str:
    return ", ".join(f"{name} {ms:.1f}" for name, ms in result.command_medians().items())


COSTED = 100  # calls per command shape in `command_costs`
FULL_WINDOW = "on a full request window: "
"""The prefix of the command shapes measured on a document holding 128 request keys."""


async def command_costs(uri: str, server_cpu: ServerCpu) -> dict[str, float]:
    """The server's CPU (ms) per command of a few shapes, each on a fresh LibreChat
    document under ours' indexes: what bounds throughput on this stand-in. Our
    steady-state spend, the same without its two `$push`es (the request window), and
    LibreChat's own commands; then LibreChat's `$inc` and our spend on a document that
    holds a full request window (`FULL_WINDOW`), as every user's does after 128 spends:
    mongoeco copies the whole document several times a command, so its cost grows with
    the document's size."""
    client: Any = AsyncMongoClient(uri, tz_aware=True)
    costs: dict[str, float] = {}
    db_name = f"bench_costs_{uuid.uuid4().hex[:8]}"
    try:
        db = client[db_name]
        shapes: dict[str, Callable[[Any, ObjectId, int], Any]] = {
            "ping": lambda c, u, i: client.admin.command("ping"),
            "find_one {user}": lambda c, u, i: c.find_one({"user": u}),
            "findAndModify {user} $inc (LibreChat)": lambda c, u, i: c.find_one_and_update(
                {"user": u}, {"$inc": {"tokenCredits": -1}}
            ),
            "insert_one (a ledger row)": lambda c, u, i: c.insert_one({"user": u, "n": i}),
            "ours: steady-state spend": lambda c, u, i: c.find_one_and_update(
                S.fast_spend_filter(u, u, 1, i),
                S.fast_spend_update(1, i, None, S.RECENT_WINDOW),  # lastSeen: this minute's
                projection=S.FAST_PROJECTION,
            ),
            "ours: the same without its two $push": lambda c, u, i: c.find_one_and_update(
                S.fast_spend_filter(u, u, 1, i),
                {"$inc": {"tokenCredits": -1, "spentSinceRefill": 1}},
                projection=S.FAST_PROJECTION,
            ),
            FULL_WINDOW + "findAndModify {user} $inc (LibreChat)": lambda c, u, i: (
                c.find_one_and_update({"user": u}, {"$inc": {"tokenCredits": -1}})
            ),
            FULL_WINDOW + "ours: steady-state spend": lambda c, u, i: c.find_one_and_update(
                S.fast_spend_filter(u, u, 1, i),
                S.fast_spend_update(1, i, None, S.RECENT_WINDOW),
                projection=S.FAST_PROJECTION,
            ),
        }
        for n, (name, shape) in enumerate(shapes.items()):
            coll = db[f"costs_{n}"]
            await BalanceRefiller(coll, librechat_policy()).ensure_indexes()
            user = ObjectId()
            doc = seed_doc("ours", user, 10**9)
            if name.startswith(FULL_WINDOW):
                doc[S.RECENT] = [-(2**62) - k for k in range(S.RECENT_WINDOW)]  # int64 keys
                doc[S.RECENT_AMOUNTS] = [MESSAGE_COST] * S.RECENT_WINDOW
            await coll.insert_one(doc)
            before = server_cpu()
            for i in range(COSTED):
                await shape(coll, user, i)
            after = server_cpu()
            if before is not None and after is not None:
                costs[name] = (after - before) / COSTED * 1000
    finally:
        await client.drop_database(db_name)
        await client.close()
    return costs


def _add_ceiling(section: Section, direct: Measured, costs: dict[str, float]) -> None:
    """What the stand-in allows at best: LibreChat classic's server CPU per message over
    one steady-state spend's (every message one spend, no login, no refill)."""
    classic = direct.loaded["LibreChat classic"].server_ms_per_message
    spend = costs.get("ours: steady-state spend")
    bare = costs.get("ours: the same without its two $push")
    if not classic or not spend or not bare:
        return
    section.add(
        "ceiling here: classic's server CPU per message / one spend's (without the $push)",
        f"{classic / spend:.2f} ({classic / bare:.2f})",
        "x",
    )
    note = (
        "What bounds the throughput and server-CPU targets here: the server's CPU per "
        "message (above, per command). A message of ours is at least one spend; LibreChat "
        f"classic's costs the server {classic:.2f} ms, so if every message were one "
        f"steady-state spend ({spend:.2f} ms) ours could be at most {classic / spend:.1f}x "
        f"cheaper ({classic / bare:.1f}x without the two $push of the request window that "
        "idempotency needs)."
    )
    small = costs.get("findAndModify {user} $inc (LibreChat)")
    big = costs.get(FULL_WINDOW + "findAndModify {user} $inc (LibreChat)")
    full = costs.get(FULL_WINDOW + "ours: steady-state spend")
    if small and big and full:
        note += (
            " mongoeco copies the whole document several times a command, so a command "
            f"costs more as the document grows: LibreChat's own $inc costs {small:.2f} ms on "
            f"its small document and {big:.2f} ms on one holding a full request window (128 "
            f"keys and amounts, about 2 KB), where our spend costs {full:.2f} ms."
        )
    section.notes.append(
        note + " A real mongod runs each of these in microseconds, where round trips and "
        "the network dominate instead."
    )


def condition(delay: float) -> str:
    """The label of a network condition: `direct`, or the round-trip time added."""
    return "direct" if not delay else f"+{2 * delay * 1000:g} ms RTT"


def _before_flows() -> tuple[str, ...]:
    try:
        before.load()
    except before.BeforeUnavailable as exc:
        progress(f"no paired figures against main: {exc}")
        return ()
    return (BEFORE_FLOW,)


def _add_targets(section: Section, label: str, m: Measured) -> None:
    """The issue's targets under one network condition, as ratios of one run."""
    loaded = m.loaded
    ours = loaded["ours"]
    for name, goal in GOAL_THROUGHPUT.items():
        r = ratio(ours.throughput, loaded[name].throughput)
        section.add(f"{label}: throughput ours / {name}", r, "x", f">= {goal:g}x", r >= goal)
    for name in FLOWS[1:]:
        theirs = loaded[name]
        section.add(
            f"{label}: latency p50 / p99, {name} / ours",
            f"{ratio(theirs.p50, ours.p50):.2f} / {ratio(theirs.p99, ours.p99):.2f}",
            "x",
        )
    server_ms = {n: r.server_ms_per_message for n, r in loaded.items()}
    if server_ms["ours"]:
        classic = ratio(server_ms["LibreChat classic"] or 0.0, server_ms["ours"])
        section.add(
            f"{label}: server CPU per message, LibreChat classic / ours",
            classic,
            "x",
            f">= {GOAL_SERVER_CPU:g}x",
            classic >= GOAL_SERVER_CPU,
        )
        section.add(
            f"{label}: server CPU per message, LibreChat reservations / ours",
            ratio(server_ms["LibreChat reservations"] or 0.0, server_ms["ours"]),
            "x",
        )
    if BEFORE_FLOW in loaded:
        was = loaded[BEFORE_FLOW]
        section.add(
            f"{label}: ours now / {before.label()}: throughput, server CPU per message",
            f"{ratio(ours.throughput, was.throughput):.2f} / "
            f"{ratio(server_ms['ours'] or 0.0, server_ms[BEFORE_FLOW] or 0.0):.2f}",
            "x",
        )


def _add_bytes(section: Section, sent: dict[str, WireResult]) -> None:
    for name, r in sent.items():
        shown = before.label() if name == BEFORE_FLOW else name
        section.add(
            f"{shown}: BSON bytes sent per message / per request",
            f"{r.bytes_per_message or 0:,.0f} / {r.bytes_per_request or 0:,.0f}",
            "B",
        )
    spend = sent["ours"].spend_bytes or 0.0
    section.add(
        "ours: BSON bytes per steady-state spend (the plain findAndModify, median)",
        spend,
        "B",
        f"<= {GOAL_SPEND_BYTES}",
        spend <= GOAL_SPEND_BYTES,
    )
    plain = (sent["ours"].sent_bytes or {}).get(PLAIN_SPEND, [])
    if plain:
        section.add(
            "ours: steady-state spends measured, BSON bytes min - max",
            f"{len(plain)}: {min(plain):,} - {max(plain):,}",
            "B",
        )
    if sent["ours"].spend_sample:
        section.notes.append(f"A steady-state spend, bytes by field: {sent['ours'].spend_sample}.")
    if BEFORE_FLOW in sent:
        section.add(
            f"{before.label()}: BSON bytes per spend (findAndModify, median)",
            sent[BEFORE_FLOW].spend_bytes or 0.0,
            "B",
        )


def _add_cpu(section: Section, loaded_label: str, loaded: dict[str, WireResult]) -> None:
    """Server and client CPU per message of each flow, and LibreChat's over ours."""
    ours = loaded["ours"]
    server_ms = {n: r.server_ms_per_message for n, r in loaded.items()}
    ours_ms = server_ms["ours"]
    if ours_ms is not None:
        for n, ms in server_ms.items():
            section.add(f"{loaded_label}: {n}: server CPU per message", ms or 0.0, "ms")
        for name in FLOWS[1:]:
            section.add(
                f"server CPU per message, {name} / ours",
                ratio(server_ms[name] or 0.0, ours_ms),
                "x",
            )
    for r in loaded.values():
        section.add(
            f"{loaded_label}: {r.name}: client CPU per message", r.client_ms_per_message, "ms"
        )
    for name in FLOWS[1:]:
        section.add(
            f"client CPU per message, {name} / ours",
            ratio(loaded[name].client_ms_per_message, ours.client_ms_per_message),
            "x",
        )


async def measure_conditions(
    server: WireServer, sizes: Sizes, flows: tuple[str, ...]
) -> tuple[dict[str, Measured], dict[str, float]]:
    """`measure` directly and through the delay proxy for each of `DELAYS`; also the
    latency the proxy really added per message and direction (ms), per condition."""
    pid = server.process.pid

    def cpu() -> float | None:
        return process_cpu_seconds(pid)

    conditions: dict[str, Measured] = {}
    proxies: dict[str, float] = {}
    for delay in DELAYS:
        label = condition(delay)
        progress(f"{label}: {', '.join(flows)}")
        if not delay:
            conditions[label] = await measure(server.uri, sizes, cpu, flows)
            continue
        async with Proxy(server.host, server.port, delay=delay) as proxy:
            conditions[label] = await measure(proxy.uri, sizes, cpu, flows)
            proxies[label] = proxy.stats.mean_hold * 1000
    return conditions, proxies


async def run(quick: bool = False) -> Section:
    sizes = QUICK if quick else FULL
    section = Section("network", "3. round trips on a wire server")
    flows = FLOWS + _before_flows()
    server = await start_server()
    with server:
        python = ".".join(map(str, server.python.version))
        where = (
            f"mongoeco {server.mongoeco_version} (in-memory engine, Python {python}) "
            f"on {server.host}, loopback TCP"
        )
        progress(f"server: {where}, port {server.port}")
        conditions, proxies = await measure_conditions(server, sizes, flows)
        pid = server.process.pid
        costs = await command_costs(server.uri, lambda: process_cpu_seconds(pid))
    for name, ms in costs.items():
        section.add(f"server CPU per command: {name}", ms, "ms")
    _add_ceiling(section, conditions["direct"], costs)
    measured = conditions["direct"]
    for label, m in conditions.items():
        _add_targets(section, label, m)
    for label, hold in proxies.items():
        section.add(f"{label}: delay the proxy really added per message, each way", hold, "ms")
    _add_bytes(section, measured.sent)
    loaded, unloaded = measured.loaded, measured.unloaded
    loaded_label = f"{sizes.concurrency} users at a time"
    section.add("server", f"mongoeco {server.mongoeco_version}, in memory, {server.host} TCP")
    section.add("ping round trip, median (the server's floor)", median(measured.ping_ms), "ms")
    _add_pass(section, loaded_label, loaded, throughput=True)
    for name in FLOWS[1:]:
        per_round = [ratio(r["ours"].throughput, r[name].throughput) for r in measured.rounds]
        section.add(
            f"{loaded_label}: throughput ours / {name}, per round (min - max)",
            _spread(per_round),
            "x",
        )
    _add_pass(section, "one user at a time", unloaded, throughput=False)
    for r in loaded.values():
        section.add(
            f"{r.name}: round trips per message (logins included)",
            r.round_trips_per_message,
            "trips",
        )
    ours = loaded["ours"]
    for name in FLOWS[1:]:
        section.add(
            f"round trips per message, {name} / ours",
            ratio(loaded[name].round_trips_per_message, ours.round_trips_per_message),
            "x",
        )
    for r in loaded.values():
        section.add(
            f"{loaded_label}: {r.name}: wall time per round trip",
            r.wall_per_round_trip_ms,
            "ms",
        )
    for r in unloaded.values():
        section.add(
            f"one user at a time: {r.name}: median round trip by command", _medians(r), "ms"
        )
    _add_cpu(section, loaded_label, loaded)
    for r in loaded.values():
        section.add(f"{r.name}: users consistent after the run", f"{r.users} of {r.users}")
    section.notes.append(
        f"Server: {where}. mongoeco is an in-memory MongoDB written in Python, run in a "
        "child process on this machine: every command costs it milliseconds of CPU (a ping "
        "alone is shown above) where a real mongod takes tens of microseconds, so absolute "
        "throughput and latency here are far below a real deployment's. Only the ratios "
        "between the flows, measured on the same server in the same run, mean something; "
        "they also weigh each command by mongoeco's cost for it, not mongod's (see the "
        "median round trip by command)."
    )
    section.notes.append(
        f"{sizes.users} users x {sizes.messages} messages per flow, {sizes.concurrency} users "
        f"at a time; {sizes.unloaded_users} users x {sizes.messages} messages one user at a "
        "time (no queue at the server). Both in "
        f"{sizes.rounds} rounds of {sizes.users // sizes.rounds} and "
        f"{sizes.unloaded_users // sizes.rounds} users per flow, the flows' order rotating "
        "from round to round, so that the machine's other load falls on every flow alike "
        "(load average over 1 minute: "
        f"{measured.load_before:.2f} before, {measured.load_after:.2f} after, on "
        f"{os.cpu_count()} CPUs). Every user starts with credits for about half the "
        "messages and an elapsed period, so each flow refills each user once, mid-session. "
        "Real pymongo AsyncMongoClient; a fresh database per flow and round; indexes as "
        "each deployment has them; a warm-up of every flow first. Latency per message "
        "(ours: spend; LibreChat: check/reserve, spends, settle); throughput over the "
        "flow's wall time, logins included. Round trips: commands the driver sent (a "
        "pymongo CommandListener), logins included."
    )
    section.notes.append(
        "Each user's documents and ledger rows live in a collection pair of their own "
        "(every call of every flow names one user, so this changes no call): mongoeco "
        "checks a single-document insert for a duplicate _id by scanning the whole "
        "collection, so one shared ledger would make each insert slower as the run goes "
        "on (measured on 4.11.0: about 2.3 ms at 1 row, 16 ms at 1,000), which a real "
        "server's _id index does not, and would penalize LibreChat's two usage rows per "
        "message."
    )
    section.notes.append(
        "CPU: the server's from /proc (user + system time of its process), this process's "
        "from time.process_time(), each over the loaded runs only, per message. Unlike the "
        "wall-clock figures they hardly move with the machine's other load; the server's is "
        "what bounds throughput once the server is saturated on a machine of its own."
    )
    section.notes.append(
        "Reading the figures: one user at a time, a message's latency is the sum of its "
        "round trips, each weighted by what the command costs mongoeco. With "
        f"{sizes.concurrency} users at a time the server is never idle, and latency adds "
        "the queue: about that many commands ahead of each of a message's round trips. "
        "Throughput is then bounded by CPU per message: the server's alone where the "
        "server has a CPU to itself; here, where the client, the server and other work "
        "share the machine's CPUs, about the client's and the server's together. mongoeco "
        "handles every value of a document in Python, so its cost per command grows with "
        "the document, the indexes it maintains and any update pipeline; ours' document "
        "(with its request-id window) is 2.5 to 3 times the size of LibreChat's (533 B "
        "against 170-210 B at the end of a run), its collection has 4 indexes against 2, "
        "and its spend is one findAndModify with a pipeline, so mongoeco spends several times "
        "as long on it as on one of LibreChat's small finds, inserts and $set/$inc writes "
        "(the median round trip by command). A real server does not weigh these the same "
        "way (for one, it leaves alone the indexes whose keys an update does not change)."
    )
    sent = "; ".join(
        f"{r.name}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.commands.items()))
        for r in loaded.values()
    )
    section.notes.append(f"Commands sent ({loaded_label}): {sent}.")
    section.notes.append(
        "After each flow every user was checked: one autoRefill row, the balance a "
        "sequential replay of their messages gives, LibreChat's two usage rows per message, "
        "no refill marker or reservation left."
    )
    section.data = {
        "server": {
            "mongoeco": server.mongoeco_version,
            "host": server.host,
            "ping_ms": median(measured.ping_ms),
        },
        "sizes": {
            "users": sizes.users,
            "messages": sizes.messages,
            "concurrency": sizes.concurrency,
            "unloaded_users": sizes.unloaded_users,
            "rounds": sizes.rounds,
        },
        "load_average": [measured.load_before, measured.load_after],
        "rounds": [{n: r.summary() for n, r in one.items()} for one in measured.rounds],
        "loaded": {n: r.summary() for n, r in loaded.items()},
        "unloaded": {n: r.summary() for n, r in unloaded.items()},
        "conditions": {
            label: {n: r.summary() for n, r in m.loaded.items()} for label, m in conditions.items()
        },
        "bytes": {
            n: {
                "per_message": r.bytes_per_message,
                "per_request": r.bytes_per_request,
                "spend": r.spend_bytes,
            }
            for n, r in measured.sent.items()
        },
        "before": before.label() if BEFORE_FLOW in flows else None,
        "server_cpu_per_command_ms": costs,
    }
    return section
