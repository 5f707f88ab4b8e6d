"""Benchmark 2: the library's own CPU per call.

(a) On a stub collection whose async methods return a prepared document at once, a call
    costs only our own Python: validation, building the filter and update, parsing the
    reply and building the `BalanceState`. Median over many batches after a warm-up.
(b) On mongomock-motor (1-document collection), `ensure_balance` and `spend` against the
    bare driver calls the library sends: its own calls, recorded by `RecordingCollection`
    on a twin collection before the timing starts and replayed with the same arguments.
    The ratio is what the library adds on top of one round trip of the mock.
(c) Observability on the stub: `ensure_balance` and `spend` with no callback, with a
    no-op `on_event` callback, and with OpenTelemetry metrics on (the SDK with an
    in-memory reader), batches interleaved; the ratios are to no callback.
`--profile` runs (a) under cProfile and prints the functions that cost the most.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import count
from types import ModuleType
from typing import Any, cast

from bson import ObjectId, tz_util
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from balance_refill import BalanceRefiller
from balance_refill.events import Event
from balance_refill.metrics import Metrics
from balance_refill.testing import CallLog, RecordingCollection

from . import before
from .common import (
    LIBRECHAT_BALANCE,
    Section,
    librechat_doc,
    librechat_policy,
    median,
    mock_db,
    ratio,
)

GOAL_US = 12.0
GOAL_RATIO = 1.3
Step = Callable[[], Awaitable[object]]


class StubCollection:
    """An async collection that answers every call at once with a prepared document (as
    a server would: without the fields a projection leaves out)."""

    name = "stub"

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.calls = 0
        self._projected: dict[tuple[object, ...], dict[str, Any]] = {}

    async def find_one_and_update(self, *args: object, **kwargs: object) -> dict[str, Any]:
        self.calls += 1
        projection = kwargs.get("projection")
        if not isinstance(projection, Mapping):
            return self.doc
        shape = tuple(projection.items())  # the library's few projections: each made once
        projected = self._projected.get(shape)
        if projected is None:
            left_out = {k for k, v in projection.items() if not v}
            projected = {k: v for k, v in self.doc.items() if k not in left_out}
            self._projected[shape] = projected
        return projected


def steady_state_doc(user: ObjectId) -> dict[str, Any]:
    """A balance document after weeks of use (LibreChat's fields and ours, a full window
    of 32 request keys, 6 periods of history), dated as pymongo returns dates
    (`tz_aware=True`: milliseconds, bson's utc)."""
    now = datetime.now(UTC).astimezone(tz_util.utc)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    doc = librechat_doc(user, 1_000_000_000, now - timedelta(days=1))
    doc.update(
        autoRefillEnabled=False,
        spentSinceRefill=12_000,
        spendHistory=[9_000, 11_000, 10_000, 8_000, 12_000, 10_500],
        recentRequests=[(i * 0x9E3779B97F4A7C15) % 2**64 - 2**63 for i in range(32)],
        lastSeen=now - timedelta(hours=2),
        refillTier="default",
        lastOpId=ObjectId(),
    )
    return doc


async def time_per_call(step: Step, *, batches: int, batch: int, warmup: int) -> list[float]:
    """CPU microseconds (this thread's) per call of `step`, one value per batch, gc off."""
    for _ in range(warmup):
        await step()
    samples = []
    gc.disable()
    try:
        for _ in range(batches):
            t0 = time.thread_time_ns()
            for _ in range(batch):
                await step()
            samples.append((time.thread_time_ns() - t0) / batch / 1000)
    finally:
        gc.enable()
    return samples


def stub_steps(package: ModuleType | None = None) -> dict[str, Step]:
    """ensure_balance and spend on the stub (the real clock; the document is never due),
    and the stub call alone; with the refiller of `package` (a `balance_refill` of an
    earlier commit, see `before`) instead of the current one if given."""
    user = ObjectId()
    stub = StubCollection(steady_state_doc(user))
    make = BalanceRefiller if package is None else package.BalanceRefiller
    policy = (
        librechat_policy()
        if package is None
        else package.RefillPolicy.from_librechat(LIBRECHAT_BALANCE)
    )
    # The stub has only the one method the hot path calls when nothing is due.
    refiller = make(cast(Any, stub), policy, ledger=cast(Any, stub))
    ids = count()
    steps: dict[str, Step] = {
        "ensure_balance": lambda: refiller.ensure_balance(user),
        "spend": lambda: refiller.spend(user, 1_000, request_id=f"m-{next(ids)}"),
        "stub call alone": lambda: stub.find_one_and_update({"user": user}, {}),
    }
    return steps


OBSERVED = ("no callback", "no-op callback", "OpenTelemetry metrics")


def spender(refiller: BalanceRefiller, user: ObjectId, ids: count[int]) -> Step:
    return lambda: refiller.spend(user, 1_000, request_id=f"o-{next(ids)}")


def observed_steps() -> tuple[dict[str, dict[str, Step]], Callable[[], None]]:
    """operation -> variant -> step, each variant its own refiller on its own stub; and
    a function that shuts the metrics' SDK provider down."""

    def noop(event: Event) -> None:
        return None

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    options: dict[str, dict[str, Any]] = {
        "no callback": {},
        "no-op callback": {"on_event": noop},
        "OpenTelemetry metrics": {"metrics": Metrics(provider)},
    }
    steps: dict[str, dict[str, Step]] = {"ensure_balance": {}, "spend": {}}
    ids = count()
    for variant, extra in options.items():
        user = ObjectId()
        stub = StubCollection(steady_state_doc(user))
        refiller = BalanceRefiller(
            cast(Any, stub), librechat_policy(), ledger=cast(Any, stub), **extra
        )
        steps["ensure_balance"][variant] = partial(refiller.ensure_balance, user)
        steps["spend"][variant] = spender(refiller, user, ids)
    return steps, provider.shutdown


async def observed(section: Section, *, batches: int, batch: int, warmup: int) -> None:
    """(c): CPU per call of each variant, batches interleaved, and the ratios."""
    steps, shutdown = observed_steps()
    try:
        for name, variants in steps.items():
            samples: dict[str, list[float]] = {v: [] for v in variants}
            for step in variants.values():
                for _ in range(warmup):
                    await step()
            for _ in range(batches):
                for variant, step in variants.items():
                    samples[variant] += await time_per_call(step, batches=1, batch=batch, warmup=0)
            base = median(samples["no callback"])
            for variant in OBSERVED:
                us = median(samples[variant])
                section.add(f"observability: {name}, {variant}, CPU per call", us, "us")
                if variant != "no callback":
                    section.add(
                        f"observability: {name}, {variant} / no callback", ratio(us, base), "x"
                    )
    finally:
        shutdown()


async def paired_stub(
    package: ModuleType, *, batches: int, batch: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """(now, before) CPU microseconds per call on the stub, medians of interleaved batches
    (a batch of the current library, then one of `package`'s, and so on)."""
    now, before = stub_steps(), stub_steps(package)
    out: dict[str, tuple[float, float]] = {}
    for name in ("ensure_balance", "spend"):
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(warmup):
            await now[name]()
            await before[name]()
        for i in range(batches):  # interleaved, alternating which goes first
            pair = [(now[name], ours), (before[name], theirs)]
            for step, kept in pair if i % 2 == 0 else pair[::-1]:
                kept.extend(await time_per_call(step, batches=1, batch=batch, warmup=0))
        out[name] = (median(ours), median(theirs))
    return out


async def mock_pairs(calls: int) -> dict[str, tuple[Step, Step]]:
    """(ours, the bare driver call it sends) on one 1-document mock collection. The bare
    calls are the library's own, recorded on a twin collection, `calls` of each."""
    user = ObjectId()
    doc = steady_state_doc(user)
    db = mock_db()
    coll = db["balances"]
    await coll.insert_one(dict(doc))
    refiller = BalanceRefiller(coll, librechat_policy(), ledger=db["transactions"])

    log = CallLog()
    twin_db = mock_db("twin")
    await twin_db["balances"].insert_one(dict(doc))
    twin = BalanceRefiller(
        RecordingCollection(twin_db["balances"], log),
        librechat_policy(),
        ledger=RecordingCollection(twin_db["transactions"], log),
    )
    recorded: dict[str, list[tuple[tuple[object, ...], Mapping[str, object]]]] = {}
    for name in ("ensure_balance", "spend"):
        log.reset()
        for i in range(calls):
            if name == "ensure_balance":
                await twin.ensure_balance(user)
            else:
                await twin.spend(user, 1, request_id=f"bare-{i}")
        assert [c.method for c in log.calls] == ["find_one_and_update"] * calls
        recorded[name] = [(c.args, c.kwargs) for c in log.calls]

    def bare(name: str) -> Step:
        replay = iter(recorded[name])

        async def call() -> object:
            args, kwargs = next(replay)
            return await coll.find_one_and_update(*args, **kwargs)

        return call

    ids = count()
    return {
        "ensure_balance": (lambda: refiller.ensure_balance(user), bare("ensure_balance")),
        "spend": (lambda: refiller.spend(user, 1, request_id=f"ours-{next(ids)}"), bare("spend")),
    }


async def profile(calls: int = 20_000, top: int = 25) -> str:
    """cProfile of `calls` ensure_balance + `calls` spend on the stub: the top functions."""
    steps = stub_steps()
    ensure, spend = steps["ensure_balance"], steps["spend"]
    profiler = cProfile.Profile()
    for i in range(1_000 + calls):
        if i == 1_000:
            profiler.enable()
        await ensure()
        await spend()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


async def run(quick: bool = False, *, with_profile: bool = False) -> Section:
    section = Section("overhead", "2. library overhead")
    batches, batch, warmup = (20, 20, 200) if quick else (300, 100, 5_000)
    steps = stub_steps()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        await time_per_call(step, batches=0, batch=0, warmup=warmup)
    for _ in range(batches):  # the steps' batches interleaved: a burst of load hits all alike
        for name, step in steps.items():
            samples[name] += await time_per_call(step, batches=1, batch=batch, warmup=0)
    stub = {name: median(values) for name, values in samples.items()}
    for name, what in (("ensure_balance", "no refill"), ("spend", "covered")):
        us = stub[name]
        section.add(
            f"stub: {name} ({what}), CPU per call", us, "us", f"<= {GOAL_US:g} us", us <= GOAL_US
        )
    section.add("stub: the stub call alone", stub["stub call alone"], "us")
    try:
        package = before.load()
    except before.BeforeUnavailable as exc:
        section.notes.append(f"no paired figures against main: {exc}")
    else:
        was = before.label()
        paired = await paired_stub(package, batches=batches, batch=batch, warmup=warmup)
        section.data["paired"] = {"before": was, **{k: list(v) for k, v in paired.items()}}
        for name, (now_us, before_us) in paired.items():
            section.add(f"paired: {name}, now / {was}", f"{now_us:.2f} / {before_us:.2f}", "us")
            section.add(f"paired: {name}, now / {was}, ratio", ratio(now_us, before_us), "x")
        section.notes.append(
            f"paired: the current library and {was} (its package extracted with git archive "
            "and imported beside this one, bench/before.py) on the same stub, batches "
            "interleaved in one run; the machine's other load falls on both alike."
        )

    batches, batch, warmup = (6, 5, 20) if quick else (60, 20, 300)
    pairs = await mock_pairs(calls=warmup + batches * batch)
    for name, (ours, bare) in pairs.items():
        ours_us: list[float] = []
        bare_us: list[float] = []
        for _ in range(warmup):
            await ours()
            await bare()
        for _ in range(batches):  # interleaved, so drift hits both alike
            ours_us += await time_per_call(ours, batches=1, batch=batch, warmup=0)
            bare_us += await time_per_call(bare, batches=1, batch=batch, warmup=0)
        o, b = median(ours_us), median(bare_us)
        section.add(f"mock: {name}, ours", o, "us")
        section.add(f"mock: {name}, bare driver call", b, "us")
        r = ratio(o, b)
        section.add(f"mock: {name}, ours / bare", r, "x", f"<= {GOAL_RATIO:g}x", r <= GOAL_RATIO)
    batches, batch, warmup = (10, 20, 100) if quick else (200, 100, 3_000)
    await observed(section, batches=batches, batch=batch, warmup=warmup)
    section.notes.append(
        "stub: median of interleaved batches of calls after a warm-up; mock: median of interleaved "
        "batches; the bare calls are the library's own, recorded and replayed; "
        "observability: stub, the three variants' batches interleaved."
    )
    if with_profile:
        section.notes.append("cProfile (stub, ensure_balance + spend):")
        section.notes += (await profile(calls=2_000 if quick else 20_000)).splitlines()
    return section
