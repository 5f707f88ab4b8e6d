"""OpenTelemetry metrics (`balance_refill.metrics`), read with the SDK's in-memory reader
after a scripted scenario: 3 refills, 2 refusals, 1 grant, 1 sweep."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)
from pymongo.errors import AutoReconnect, OperationFailure

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy, StorageError
from balance_refill.metrics import Metrics
from balance_refill.testing import Call, CallLog, FakeClock

from .conftest import START

DUE = timedelta(days=31)
Make = Callable[..., BalanceRefiller]

EXPECTED_UNITS = {
    "balance_refill.refills": "{refill}",
    "balance_refill.credits.granted": "{credit}",
    "balance_refill.spends": "{spend}",
    "balance_refill.spends.refused": "{spend}",
    "balance_refill.operation.duration": "s",
    "balance_refill.db.calls": "{call}",
    "balance_refill.sweep.duration": "s",
    "balance_refill.sweep.last_success": "s",
}


@pytest.fixture
def otel() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    """An SDK meter provider with an in-memory reader."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


Otel = tuple[MeterProvider, InMemoryMetricReader]


def read(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "balance_refill"
        for m in sm.metrics
    }


def points(metric: Metric) -> dict[tuple[tuple[str, Any], ...], Any]:
    """Data points by their sorted attributes."""
    assert isinstance(metric.data, Sum | Histogram | Gauge)
    return {tuple(sorted((p.attributes or {}).items())): p for p in metric.data.data_points}


def total(metric: Metric) -> dict[tuple[tuple[str, Any], ...], float]:
    out = {}
    for key, point in points(metric).items():
        assert isinstance(point, NumberDataPoint)
        out[key] = point.value
    return out


async def scenario(refiller: BalanceRefiller, clock: FakeClock) -> None:
    """3 refills (2 lazy, 1 by the sweep), 2 refusals, 1 grant, 1 sweep."""
    for user in ("a", "b", "c"):
        await refiller.spend(user, 15_000)  # 3 spends, 20,000 -> 5,000
    clock.advance(DUE)
    await refiller.ensure_balance("a")  # refill 1
    await refiller.spend("b", 6_000)  # refill 2, charged in the same write
    for _ in range(2):
        with pytest.raises(InsufficientCredits):
            await refiller.spend("a", 10**9)
    await refiller.grant("a", 250, actor="ops", reason="goodwill")
    report = await refiller.sweep()  # refill 3: c
    assert report.refilled == 1


async def test_metrics_after_a_scripted_scenario(
    make_refiller: Make, clock: FakeClock, otel: Otel
) -> None:
    """Names, units, attributes and values of every instrument after the scenario."""
    provider, reader = otel
    policy = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)
    refiller = make_refiller(policy=policy, metrics=Metrics(provider))
    await scenario(refiller, clock)
    got = read(reader)
    assert {name: got[name].unit for name in EXPECTED_UNITS} == EXPECTED_UNITS
    assert "balance_refill.contention.retries" not in got  # nothing raced
    assert "balance_refill.storage.errors" not in got

    assert total(got["balance_refill.refills"]) == {
        (
            ("balance_refill.operation", "refill"),
            ("balance_refill.refill.mode", "top_up"),
            ("balance_refill.tier", "default"),
        ): 2,
        (
            ("balance_refill.operation", "sweep"),
            ("balance_refill.refill.mode", "top_up"),
            ("balance_refill.tier", "default"),
        ): 1,
    }
    assert total(got["balance_refill.credits.granted"]) == {
        (("balance_refill.source", "refill"),): 3 * 5_000,
        (("balance_refill.source", "grant"),): 250,
    }
    assert total(got["balance_refill.spends"]) == {(): 4}
    assert total(got["balance_refill.spends.refused"]) == {(): 2}

    durations = points(got["balance_refill.operation.duration"])
    counts = {key: p.count for key, p in durations.items()}
    assert counts == {
        (("balance_refill.operation", "ensure_balance"),): 1,
        (("balance_refill.operation", "spend"),): 4,
        (("balance_refill.operation", "spend"), ("error.type", "InsufficientCredits")): 2,
    }
    calls = points(got["balance_refill.db.calls"])
    ensure = calls[(("balance_refill.operation", "ensure_balance"),)]
    assert isinstance(ensure, HistogramDataPoint)
    # the due refill: read-or-create, compare-and-swap, ledger row, marker clear
    assert (ensure.count, ensure.sum) == (1, 4)
    spends = calls[(("balance_refill.operation", "spend"),)]
    assert isinstance(spends, HistogramDataPoint)
    assert spends.count == 6  # every spend call, refused ones too
    assert spends.min == 1  # a covered spend is one call

    sweep = points(got["balance_refill.sweep.duration"])
    [(key, point)] = sweep.items()
    assert key == (("balance_refill.sweep.dry_run", False),)
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 1
    [last] = total(got["balance_refill.sweep.last_success"]).values()
    assert (
        START + DUE <= START.fromtimestamp(last, START.tzinfo) < START + DUE + timedelta(minutes=1)
    )


async def test_contention_retries_and_storage_errors_are_counted(
    make_refiller: Make, clock: FakeClock, log: CallLog, otel: Otel
) -> None:
    """A compare-and-swap whose reply was lost is retried: one retry counted by
    operation; a call that fails for good counts one storage error named by the call; a
    dry-run sweep sets no last-success time."""
    provider, reader = otel
    policy = RefillPolicy(amount=10_000, interval="30d", start_balance=20_000)
    refiller = make_refiller(policy=policy, metrics=Metrics(provider))
    await refiller.spend("u", 15_000)
    clock.advance(DUE)
    lost: list[int] = []

    def lose(call: Call, index: int) -> BaseException | None:
        update = call.args[1] if len(call.args) > 1 else None
        if isinstance(update, dict) and "recentOps" in update.get("$push", {}) and not lost:
            lost.append(index)
            return AutoReconnect("reply lost")
        return None

    log.fail_after = lose
    assert (await refiller.ensure_balance("u")).refilled
    assert lost
    log.fail_after = None
    log.fail_before = lambda call, i: OperationFailure("down")
    with pytest.raises(StorageError):
        await refiller.ensure_balance("v")
    log.fail_before = None
    await refiller.sweep(dry_run=True)
    got = read(reader)
    assert total(got["balance_refill.contention.retries"]) == {
        (("balance_refill.operation", "refill"),): 1
    }
    assert got["balance_refill.contention.retries"].unit == "{retry}"
    assert total(got["balance_refill.storage.errors"]) == {
        (("balance_refill.call", "read-or-create balance"),): 1
    }
    assert got["balance_refill.storage.errors"].unit == "{error}"
    assert "balance_refill.sweep.last_success" not in got


async def test_metrics_without_an_sdk_record_nothing_and_change_nothing(
    make_refiller: Make,
) -> None:
    """With only the API (no provider configured) the instruments are no-ops: the
    operations behave as without metrics."""
    refiller = make_refiller(metrics=Metrics())
    state = await refiller.spend("u", 100)
    assert state.balance == 19_900
