"""Run the kill-and-cut scenario against a wire server and check the result.

200 users are seeded in LibreChat's layout (ObjectId users, fractional credits). Worker
processes (`worker.py`) reach the server through the cutting proxy (`tests/wire/proxy.py`,
run in this process's event loop) with a simulated clock shared by every process (a day
every `day_seconds`). Each worker is killed with SIGKILL at a random moment of its life
and replaced; the spends (and keyed grants) it left in flight are retried by its
replacement with the same ids, as a host retries after a crash. `flush_pending()` runs from fresh processes, some of them killed too. At
the end the workers stop, one last flush runs straight to the server, and the checker
(`checker.py`) reads the database and every log.

Profiles (`BALANCE_REFILL_KILLCUT=ci|long`): `ci` runs the load for 45 s (what CI runs
on the wire backend), `long` for 5 minutes with more workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bson import ObjectId

from tests.wire.proxy import Proxy, ProxyStats

from .checker import LogFile, Report, check
from .worker import INTERVAL, POLICY, WorkerConfig, fraction, unfinished

REPO = Path(__file__).resolve().parent.parent.parent
PROFILE_ENV = "BALANCE_REFILL_KILLCUT"
BASE = datetime(2026, 1, 15, tzinfo=UTC)
# The requests the proxy may cut: the library's reads and writes (not the handshake, so
# a new connection can always be made, nor the driver's own housekeeping).
CUT_COMMANDS = ("findAndModify", "update", "insert", "find", "aggregate", "delete", "count")


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: float  # of load
    workers: int  # alive at any moment
    life: tuple[float, float]  # a worker is killed this many seconds after it started
    flush_every: float  # seconds between flush processes
    flush_kill_share: float  # of flush processes killed mid-run
    cut_rate: float  # of the library's requests
    after_apply: float  # share of cuts made after the server applied the request
    users: int = 200
    day_seconds: float = 1.2
    concurrency: tuple[int, int] = (8, 11)


PROFILES = {
    "ci": Profile("ci", 45, 3, (4.0, 9.0), 4.0, 0.4, 0.03, 0.75),
    "long": Profile("long", 300, 3, (4.0, 10.0), 2.5, 0.4, 0.03, 0.75),
}


def profile_from_env() -> Profile:
    name = os.environ.get(PROFILE_ENV, "ci").strip().lower() or "ci"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


@dataclass
class Result:
    profile: Profile
    report: Report
    proxy: ProxyStats
    kills: int = 0
    flushes: int = 0
    flush_kills: int = 0
    spawned: int = 0
    orphans_retried: int = 0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"kill-and-cut ({self.profile.name}, {self.wall_seconds:.0f}s): "
            f"{self.spawned} worker processes, {self.kills} killed with SIGKILL "
            f"({self.orphans_retried} calls they left in flight retried by the next worker); "
            f"{self.flushes} flush processes, {self.flush_kills} killed; "
            f"{self.proxy.cuts} connections cut, {self.proxy.cuts_after_apply} after the server "
            f"applied the request; {self.report.summary()}"
        )


class Processes:
    """The worker and flush processes of one run, with their logs."""

    def __init__(self, workdir: Path, template: WorkerConfig) -> None:
        self.workdir = workdir
        self.template = template
        self.logs: list[LogFile] = []
        self.count = 0

    async def spawn(
        self,
        role: str,
        *,
        uri: str,
        seed: int,
        concurrency: int,
        retries: list[dict[str, Any]] | None = None,
    ) -> tuple[asyncio.subprocess.Process, Path]:
        self.count += 1
        name = f"{role[0]}{self.count}"
        log = self.workdir / f"{name}.log"
        config = WorkerConfig(
            **{
                **self.template.__dict__,
                "role": role,
                "name": name,
                "uri": uri,
                "log": str(log),
                "seed": seed,
                "concurrency": concurrency,
                "retries": retries or [],
            }
        )
        with (self.workdir / f"{name}.stderr").open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.killcut.worker",
                config.to_json(),
                cwd=str(REPO),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        return proc, log


def kill(proc: asyncio.subprocess.Process) -> bool:
    """SIGKILL a process still running; whether it was."""
    if proc.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
        return True
    return False


async def seed(db: Any, users: list[str], rng: random.Random) -> dict[str, Fraction]:
    """Balance documents as LibreChat writes them, with fractional credits."""
    start: dict[str, Fraction] = {}
    docs = []
    for user in users:
        credits = fraction(rng, 0, 400)
        start[user] = Fraction(credits)
        docs.append(
            {
                "user": ObjectId(user),
                "tokenCredits": credits,
                "autoRefillEnabled": False,
                "refillIntervalValue": 30,
                "refillIntervalUnit": "days",
                "lastRefill": BASE - timedelta(hours=rng.uniform(0, 48)),
                "refillAmount": 0,
                "__v": 0,
            }
        )
    await db["balances"].insert_many(docs)
    return start


async def run(profile: Profile, server_uri: str, workdir: Path, *, seed_value: int = 21) -> Result:
    """Seed, run the load under kills and cuts, flush, check; the database is dropped."""
    from pymongo import AsyncMongoClient

    from balance_refill import BalanceRefiller

    rng = random.Random(seed_value)
    target = urlsplit(server_uri)
    database = f"killcut_{os.getpid()}_{int(time.time())}"
    direct: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server_uri, tz_aware=True)
    try:
        db = direct[database]
        users = [str(ObjectId()) for _ in range(profile.users)]
        start = await seed(db, users, rng)
        await BalanceRefiller(
            db["balances"], POLICY, ledger=db["transactions"], leases=db["leases"]
        ).ensure_indexes()
        proxy = Proxy(
            target.hostname or "127.0.0.1",
            target.port or 27017,
            cut_rate=profile.cut_rate,
            after_apply=profile.after_apply,
            commands=CUT_COMMANDS,
            seed=seed_value,
        )
        began = time.monotonic()
        async with proxy:
            result = await _load(profile, proxy, server_uri, database, users, workdir, rng)
        stats = proxy.stats
        balances = [doc async for doc in db["balances"].find({})]
        rows = [row async for row in db["transactions"].find({})]
        report = check(start, balances, rows, result.logs, interval=INTERVAL)
        await direct.drop_database(database)
    finally:
        await direct.close()
    return Result(
        profile,
        report,
        stats,
        kills=result.kills,
        flushes=result.flushes,
        flush_kills=result.flush_kills,
        spawned=result.spawned,
        orphans_retried=result.orphans_retried,
        wall_seconds=time.monotonic() - began,
    )


@dataclass
class _Load:
    logs: list[LogFile]
    kills: int = 0
    flushes: int = 0
    flush_kills: int = 0
    spawned: int = 0
    orphans_retried: int = 0


@dataclass
class _Running:
    proc: asyncio.subprocess.Process
    log: Path
    kill_at: float | None  # wall time
    role: str


class _Conductor:
    """Starts, kills and replaces the processes of one run."""

    def __init__(self, profile: Profile, procs: Processes, uri: str, rng: random.Random) -> None:
        self.profile = profile
        self.procs = procs
        self.uri = uri
        self.rng = rng
        self.load = _Load(logs=[])
        self.running: list[_Running] = []
        self.orphans: list[dict[str, Any]] = []  # calls killed workers left, to retry

    async def start(self, role: str, kill_at: float | None) -> None:
        retries: list[dict[str, Any]] = []
        if role == "work":
            retries, self.orphans = self.orphans, []
            self.load.spawned += 1
            self.load.orphans_retried += len(retries)
        else:
            self.load.flushes += 1
        proc, log = await self.procs.spawn(
            role,
            uri=self.uri,
            seed=self.rng.getrandbits(32),
            concurrency=self.rng.randint(*self.profile.concurrency) if role == "work" else 1,
            retries=retries,
        )
        self.running.append(_Running(proc, log, kill_at, role))

    async def reap(self, now: float) -> int:
        """Kill the processes whose moment came, forget the ended; how many workers run."""
        alive = 0
        for entry in list(self.running):
            if entry.kill_at is not None and now >= entry.kill_at and kill(entry.proc):
                await entry.proc.wait()
                self.running.remove(entry)
                self.load.logs.append(LogFile(entry.log, killed=True))
                if entry.role == "work":
                    self.load.kills += 1
                    self.orphans.extend(unfinished(str(entry.log)))
                else:
                    self.load.flush_kills += 1
            elif entry.proc.returncode is not None:
                self.running.remove(entry)
                self.load.logs.append(LogFile(entry.log, killed=False))
            elif entry.role == "work":
                alive += 1
        return alive

    async def conduct(self, stop_at: float) -> None:
        profile, rng = self.profile, self.rng
        next_flush = time.time() + profile.flush_every
        while (now := time.time()) < stop_at:
            for _ in range(profile.workers - await self.reap(now)):
                kill_at = now + rng.uniform(*profile.life)
                await self.start("work", kill_at if kill_at < stop_at else None)
            if now >= next_flush:
                killed = rng.random() < profile.flush_kill_share
                await self.start("flush", now + rng.uniform(0.3, 1.5) if killed else None)
                next_flush = now + profile.flush_every
            await asyncio.sleep(0.05)  # the harness's pace: kills happen at wall-clock moments
        for entry in self.running:  # the workers stop by themselves at stop_at
            try:
                await asyncio.wait_for(entry.proc.wait(), timeout=60)
            except TimeoutError:
                kill(entry.proc)
                await entry.proc.wait()
            self.load.logs.append(LogFile(entry.log, killed=entry.proc.returncode == -9))


async def _load(
    profile: Profile,
    proxy: Proxy,
    server_uri: str,
    database: str,
    users: list[str],
    workdir: Path,
    rng: random.Random,
) -> _Load:
    t0 = time.time()
    stop_at = t0 + profile.seconds
    template = WorkerConfig(
        role="work",
        name="",
        uri="",
        database=database,
        users=users,
        log="",
        t0=t0,
        base=BASE.isoformat(),
        speedup=INTERVAL.total_seconds() / profile.day_seconds,
        stop_at=stop_at,
        seed=0,
    )
    procs = Processes(workdir, template)
    conductor = _Conductor(profile, procs, proxy.uri, rng)
    await conductor.conduct(stop_at)
    final, log = await procs.spawn("flush", uri=server_uri, seed=0, concurrency=1)
    if await final.wait() != 0:
        raise RuntimeError(f"the final flush_pending() failed: see {log}")
    conductor.load.logs.append(LogFile(log, killed=False))
    return conductor.load
