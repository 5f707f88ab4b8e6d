"""One process of the kill-and-cut run: calls the library through the real driver and
logs every call, so that a checker can tell what it tried and what it was told.

    python -m tests.killcut.worker '<WorkerConfig as JSON>'

Role `work`: `concurrency` calls in flight at all times until `stop_at` (wall time),
each one of `ensure_balance`, `spend` (retried after an error with the same request id;
some sent twice at the same moment), `grant` (retried with the same key when the
library takes one) or `sweep`. Role `flush`: one `flush_pending()`.

The log is append-only, one JSON object per line, each written with one unbuffered
`os.write` (so a SIGKILL loses no line that was written): `start` before every attempt
of a call, `end` after it with its outcome (`ok`, `insufficient`, `locked`, `error` for a
`BalanceRefillError`, `crash` for any other exception, which the checker reports).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    InsufficientCredits,
    RefillPolicy,
    SweepLocked,
)

INTERVAL = timedelta(days=1)
REFILL = 300
HOT = 20  # the first HOT users get half the calls, so calls on one user often overlap
# Refill on every visit once a day has passed (the threshold is above any balance here),
# so refills race with each other, with spends and with grants.
POLICY = RefillPolicy(amount=REFILL, interval="1d", mode="add", threshold=10**9)
ACTOR = "killcut"
SPEND_ATTEMPTS = 6
GRANT_ATTEMPTS = 6
RETRY_PAUSE = 0.2  # seconds between a caller's own retries (the library retries inside)


@dataclass(frozen=True)
class WorkerConfig:
    role: str  # "work" or "flush"
    name: str
    uri: str
    database: str
    users: list[str]
    log: str
    t0: float  # wall time at which the simulated clock reads `base`
    base: str  # ISO datetime
    speedup: float
    stop_at: float  # wall time
    seed: int
    concurrency: int = 8
    # Calls a killed worker left unfinished, retried first with the same request id, as a
    # host retries a message after a crash: start events, as `unfinished()` returns them.
    retries: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        return cls(**json.loads(text))


def unfinished(path: str) -> list[dict[str, Any]]:
    """The retryable calls a killed worker's log shows in flight: spends, and grants made
    with a request id (the start event of each call's last attempt)."""
    last: dict[str, dict[str, Any]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line torn by the kill
        if event.get("e") == "start":
            last[event["call"]] = event
        elif event.get("e") == "end":
            last.pop(event["call"], None)
    return [
        e for e in last.values() if e["op"] == "spend" or (e["op"] == "grant" and e.get("keyed"))
    ]


class SimClock:
    """The simulated time shared by every process: base + (wall - t0) * speedup."""

    def __init__(self, t0: float, base: datetime, speedup: float) -> None:
        self.t0, self.base, self.speedup = t0, base, speedup

    def __call__(self) -> datetime:
        return self.base + timedelta(seconds=(time.time() - self.t0) * self.speedup)


def grants_take_request_id() -> bool:
    """Whether this version of the library accepts `grant(..., request_id=)`."""
    return "request_id" in inspect.signature(BalanceRefiller.grant).parameters


def fraction(rng: random.Random, low: int, high: int) -> float:
    """An amount with a fractional part, exact in binary (a multiple of 1/64)."""
    return rng.randint(low * 64, high * 64) / 64


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **event: Any) -> None:
        os.write(self.fd, (json.dumps(event) + "\n").encode())


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Worker:
    def __init__(self, config: WorkerConfig, refiller: BalanceRefiller, log: Log) -> None:
        self.config = config
        self.refiller = refiller
        self.log = log
        self.rng = random.Random(config.seed)
        self.calls = 0
        self.keyed_grants = grants_take_request_id()

    def call_id(self) -> str:
        self.calls += 1
        return f"{self.config.name}-{self.calls}"

    async def attempt(self, call: str, attempt: int, op: str, run: Any, **fields: Any) -> str:
        """One attempt of one call, logged before and after; returns its outcome."""
        self.log.write(e="start", call=call, attempt=attempt, op=op, **fields)
        try:
            state = await run()
        except InsufficientCredits:
            outcome, extra = "insufficient", dict[str, Any]()
        except SweepLocked:
            outcome, extra = "locked", {}
        except BalanceRefillError as exc:
            outcome, extra = "error", {"error": _error(exc)}
        except Exception as exc:  # any other exception is a finding: logged, reported
            outcome, extra = "crash", {"error": _error(exc)}
        else:
            outcome, extra = "ok", {"balance": getattr(state, "balance", None)}
        self.log.write(e="end", call=call, attempt=attempt, outcome=outcome, **extra)
        return outcome

    async def spend(self, user: str, amount: float, rid: str) -> None:
        call = self.call_id()
        for attempt in range(1, SPEND_ATTEMPTS + 1):
            outcome = await self.attempt(
                call,
                attempt,
                "spend",
                lambda: self.refiller.spend(user, amount, request_id=rid),
                user=user,
                amount=amount,
                rid=rid,
            )
            if outcome not in ("error", "crash"):
                return
            await asyncio.sleep(RETRY_PAUSE)

    async def grant(self, user: str, amount: float, origin: str | None = None) -> None:
        """A grant, retried with its key after an error when the library takes one (an
        unkeyed retry could apply it twice); `origin`: the call of a killed worker that
        this one retries (its key and its reason, which the checker finds rows by)."""
        call = self.call_id()
        origin = origin or call
        attempts = GRANT_ATTEMPTS if self.keyed_grants else 1
        keyed: dict[str, Any] = {"request_id": f"grant-{origin}"} if self.keyed_grants else {}
        for attempt in range(1, attempts + 1):
            outcome = await self.attempt(
                call,
                attempt,
                "grant",
                lambda: self.refiller.grant(
                    user, amount, actor=ACTOR, reason=f"call {origin}", **keyed
                ),
                user=user,
                amount=amount,
                keyed=bool(keyed),
                origin=origin,
            )
            if outcome not in ("error", "crash"):
                return
            await asyncio.sleep(RETRY_PAUSE)

    async def one_call(self) -> None:
        rng = self.rng
        users = self.config.users
        user = rng.choice(users[:HOT] if rng.random() < 0.5 else users)
        roll = rng.random()
        if roll < 0.55:
            amount = fraction(rng, 5, 120)
            rid = f"{self.config.name}-r{self.calls}-{rng.getrandbits(32):08x}"
            if rng.random() < 0.15:  # the same id twice at the same moment
                await asyncio.gather(self.spend(user, amount, rid), self.spend(user, amount, rid))
            else:
                await self.spend(user, amount, rid)
        elif roll < 0.80:
            call = self.call_id()
            await self.attempt(
                call, 1, "ensure", lambda: self.refiller.ensure_balance(user), user=user
            )
        elif roll < 0.97:
            await self.grant(user, fraction(rng, 1, 50))
        else:
            call = self.call_id()
            await self.attempt(
                call, 1, "sweep", lambda: self.refiller.sweep(batch_size=50), user=None
            )

    async def lane(self) -> None:
        while time.time() < self.config.stop_at:
            await self.one_call()

    async def retry(self, event: dict[str, Any]) -> None:
        if event["op"] == "spend":
            await self.spend(event["user"], event["amount"], event["rid"])
        else:
            await self.grant(event["user"], event["amount"], origin=event["origin"])

    async def run(self) -> None:
        await asyncio.gather(*(self.retry(event) for event in self.config.retries))
        await asyncio.gather(*(self.lane() for _ in range(self.config.concurrency)))


async def main(config: WorkerConfig) -> None:
    from pymongo import AsyncMongoClient

    log = Log(config.log)
    log.write(e="begin", name=config.name, role=config.role, pid=os.getpid())
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        config.uri, tz_aware=True, serverSelectionTimeoutMS=10_000
    )
    try:
        db = client[config.database]
        clock = SimClock(config.t0, datetime.fromisoformat(config.base), config.speedup)
        refiller = BalanceRefiller(
            db["balances"], POLICY, ledger=db["transactions"], leases=db["leases"], clock=clock
        )
        if config.role == "flush":
            call = f"{config.name}-flush"
            log.write(e="start", call=call, attempt=1, op="flush")
            try:
                settled = await refiller.flush_pending()
            except BalanceRefillError as exc:
                log.write(e="end", call=call, attempt=1, outcome="error", error=_error(exc))
                raise SystemExit(1) from exc
            log.write(e="end", call=call, attempt=1, outcome="ok", settled=settled)
        else:
            await Worker(config, refiller, log).run()
    finally:
        await client.close()
    log.write(e="finish", name=config.name)


if __name__ == "__main__":
    asyncio.run(main(WorkerConfig.from_json(sys.argv[1])))
