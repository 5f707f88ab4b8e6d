"""OpenTelemetry metrics, the `otel` extra: `pip install 'balance_refill[otel]'`.

    from balance_refill.metrics import Metrics

    refiller = BalanceRefiller(balances, policy, ledger=ledger, metrics=Metrics())

`Metrics()` records on the global meter provider (`opentelemetry.metrics`), or on the
`meter_provider` given. This module needs only `opentelemetry-api`; the host installs
and configures the SDK and an exporter (Prometheus, OTLP). Without a configured SDK the
API's instruments do nothing. The instruments (names and units in OpenTelemetry's
semantic-convention style; attributes in brackets):

| name | kind | unit | attributes |
|---|---|---|---|
| `balance_refill.refills` | counter | `{refill}` | tier, refill mode, operation |
| `balance_refill.credits.granted` | counter | `{credit}` | source: refill, grant, correction |
| `balance_refill.spends` | counter | `{spend}` | |
| `balance_refill.spends.refused` | counter | `{spend}` | |
| `balance_refill.contention.retries` | counter | `{retry}` | operation |
| `balance_refill.storage.errors` | counter | `{error}` | call |
| `balance_refill.operation.duration` | histogram | `s` | operation (ensure_balance, spend), error.type |
| `balance_refill.db.calls` | histogram | `{call}` | operation |
| `balance_refill.sweep.duration` | histogram | `s` | dry run |
| `balance_refill.sweep.last_success` | gauge | `s` | (Unix time of the last sweep that wrote and had no errors) |

Attribute keys: `balance_refill.tier`, `balance_refill.refill.mode`,
`balance_refill.operation`, `balance_refill.source`, `balance_refill.call`,
`balance_refill.sweep.dry_run`, and `error.type` (the exception's class name).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import metrics as otel
from opentelemetry.metrics import MeterProvider

TIER = "balance_refill.tier"
MODE = "balance_refill.refill.mode"
OPERATION = "balance_refill.operation"
SOURCE = "balance_refill.source"
CALL = "balance_refill.call"
DRY_RUN = "balance_refill.sweep.dry_run"
ERROR_TYPE = "error.type"

DURATION_BUCKETS: Sequence[float] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: a hot-path call takes about a millisecond on a server."""
CALL_BUCKETS: Sequence[float] = (1, 2, 3, 4, 5, 6, 8, 10, 16)
SWEEP_BUCKETS: Sequence[float] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


def _version() -> str:
    try:
        return version("balance_refill")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


class Metrics:
    """The library's instruments on one meter (`balance_refill`). One object can serve
    several refillers; the refiller calls the `record_*` methods."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = otel.get_meter("balance_refill", _version(), meter_provider=meter_provider)
        self.refills = meter.create_counter(
            "balance_refill.refills", unit="{refill}", description="Refills committed."
        )
        self.granted = meter.create_counter(
            "balance_refill.credits.granted",
            unit="{credit}",
            description="Credits added, by source: refill, grant (admin) or correction "
            "(credits taken away by an admin, or by a reset refill).",
        )
        self.spends = meter.create_counter(
            "balance_refill.spends", unit="{spend}", description="Spend calls that succeeded."
        )
        self.refused = meter.create_counter(
            "balance_refill.spends.refused",
            unit="{spend}",
            description="Spends refused for lack of credits.",
        )
        self.retries = meter.create_counter(
            "balance_refill.contention.retries",
            unit="{retry}",
            description="Compare-and-swaps that found the document changed, and were retried.",
        )
        self.storage_errors = meter.create_counter(
            "balance_refill.storage.errors",
            unit="{error}",
            description="Database calls that failed for good (StorageError), by call.",
        )
        self.duration = meter.create_histogram(
            "balance_refill.operation.duration",
            unit="s",
            description="Duration of ensure_balance and spend.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.db_calls = meter.create_histogram(
            "balance_refill.db.calls",
            unit="{call}",
            description="Database calls made by one operation.",
            explicit_bucket_boundaries_advisory=CALL_BUCKETS,
        )
        self.sweep_duration = meter.create_histogram(
            "balance_refill.sweep.duration",
            unit="s",
            description="Duration of a sweep.",
            explicit_bucket_boundaries_advisory=SWEEP_BUCKETS,
        )
        self.sweep_last_success = meter.create_gauge(
            "balance_refill.sweep.last_success",
            unit="s",
            description="Unix time at which the last sweep that wrote and had no errors finished.",
        )

    def record_refill(self, tier: str, mode: str, operation: str, granted: float) -> None:
        self.refills.add(1, {TIER: tier, MODE: mode, OPERATION: operation})
        if granted > 0:
            self.granted.add(granted, {SOURCE: "refill"})
        elif granted < 0:
            self.granted.add(-granted, {SOURCE: "correction"})

    def record_admin_credits(self, granted: float) -> None:
        """An admin operation changed the balance by `granted` (refill_now is a refill)."""
        if granted > 0:
            self.granted.add(granted, {SOURCE: "grant"})
        elif granted < 0:
            self.granted.add(-granted, {SOURCE: "correction"})

    def record_operation(
        self, operation: str, seconds: float, calls: int, error: BaseException | None
    ) -> None:
        attributes = {OPERATION: operation}
        self.db_calls.record(calls, attributes)
        if error is not None:
            attributes = {**attributes, ERROR_TYPE: type(error).__name__}
        self.duration.record(seconds, attributes)

    def record_spend(self, refused: bool) -> None:
        (self.refused if refused else self.spends).add(1)

    def record_retry(self, operation: str) -> None:
        self.retries.add(1, {OPERATION: operation})

    def record_storage_error(self, call: str) -> None:
        self.storage_errors.add(1, {CALL: call})

    def record_sweep(self, seconds: float, dry_run: bool, succeeded_at: float | None) -> None:
        self.sweep_duration.record(seconds, {DRY_RUN: dry_run})
        if succeeded_at is not None:
            self.sweep_last_success.set(succeeded_at)


__all__ = ["Metrics"]
