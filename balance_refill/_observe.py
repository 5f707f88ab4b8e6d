"""Events and metrics from the engine's hooks.

`Dispatcher` delivers events to the host's callbacks (`on_event=`) without letting them
fail or hold up an operation. `Observer` turns what the engine tells it (a committed
change, a lost compare-and-swap, a database call) into events and metrics, and wraps a
refiller's `ensure_balance`, `spend` and `sweep` on the instance to time them; it exists
only when the host asked for events or metrics, so without either the hot path pays
nothing but an `is None` test.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from bson import ObjectId

from . import _schema as S
from ._engine import Change
from ._validate import Credits, UserId
from .decide import UserState, assigned_tier
from .errors import ConfigurationError, InsufficientCredits
from .events import (
    AdminChange,
    Callback,
    ContentionRetry,
    Event,
    LowBalance,
    OnEvent,
    PolicyActivated,
    Refilled,
    Refused,
    SweepFinished,
    TierChanged,
)
from .policy import TieredPolicy
from .sweep import SweepReport

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

EVENT_TIMEOUT = 10.0
"""Seconds an async callback may run before it is cancelled."""
MAX_PENDING = 1_000
"""Async callbacks in flight at most; events beyond are dropped (logged and counted)."""

_CALLS: ContextVar[list[int] | None] = ContextVar("balance_refill_db_calls", default=None)
"""The database-call count of the timed operation running in this context."""

OPERATIONS = {"sweep refills": "sweep"}
"""Commit-loop names shown to the host under a plainer name."""

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class DeliveryStats:
    """What happened to the callbacks' calls: `delivered` (returned, or finished as a
    task), `failed` (raised), `timed_out` (cancelled after the timeout), `dropped` (not
    started: `max_pending` async callbacks were in flight)."""

    delivered: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0


def _callbacks(on_event: OnEvent | None) -> tuple[Callback, ...]:
    if on_event is None:
        return ()
    if callable(on_event):
        return (on_event,)
    found = tuple(on_event) if isinstance(on_event, list | tuple) else (on_event,)
    for callback in found:
        if not callable(callback):
            raise ConfigurationError(
                f"on_event takes a callable or a list of callables, got {callback!r}"
            )
    return found


def _name(callback: object) -> str:
    return getattr(callback, "__qualname__", None) or type(callback).__name__


def _fields(event: Event) -> dict[str, object]:
    """The structured log fields of an event (never an amount)."""
    return {
        "event": type(event).__name__,
        "user": getattr(event, "user", None),
        "operation": getattr(event, "operation", None),
    }


class Dispatcher:
    """Delivers events to the host's callbacks (`refiller.events`).

    A sync callback runs inline; its exception is caught, logged and counted. A callback
    that returns an awaitable (an `async def`) has it run as a task, kept referenced
    until it ends, cancelled after `timeout` seconds; at most `max_pending` run at once.
    So a callback never fails an operation, an async one never delays it, and a sync one
    delays it by its own run time only."""

    def __init__(
        self,
        on_event: OnEvent | None = None,
        *,
        timeout: float = EVENT_TIMEOUT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.callbacks = _callbacks(on_event)
        if not timeout > 0:
            raise ConfigurationError(f"event_timeout must be above 0 seconds, got {timeout!r}")
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be at least 1, got {max_pending!r}")
        self.timeout = timeout
        self.max_pending = max_pending
        self.stats = DeliveryStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    @property
    def pending(self) -> int:
        """Async callbacks still running."""
        return len(self._tasks)

    def emit(self, event: Event) -> None:
        """Hand `event` to every callback; never raises."""
        for callback in self.callbacks:
            try:
                result = callback(event)
            except Exception:
                self._failed(callback, event)
                continue
            if inspect.isawaitable(result):
                self._schedule(callback, event, result)
            else:
                self.stats.delivered += 1

    def _schedule(self, callback: Callback, event: Event, awaitable: Awaitable[object]) -> None:
        if len(self._tasks) >= self.max_pending:
            self.stats.dropped += 1
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started: no "never awaited" warning
            log.warning(
                "event %s dropped for %s: %d async callbacks still running",
                type(event).__name__, _name(callback), len(self._tasks), extra=_fields(event),
            )  # fmt: skip
            return
        task = asyncio.get_running_loop().create_task(self._run(callback, event, awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, callback: Callback, event: Event, awaitable: Awaitable[object]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await awaitable
        except TimeoutError:
            self.stats.timed_out += 1
            log.error(  # noqa: TRY400 - a timeout has no useful traceback
                "event callback %s on %s cancelled after %g s",
                _name(callback), type(event).__name__, self.timeout, extra=_fields(event),
            )  # fmt: skip
        except Exception:
            self._failed(callback, event)
        else:
            self.stats.delivered += 1

    def _failed(self, callback: Callback, event: Event) -> None:
        """Count and log the exception a callback raised on `event` (call in `except`)."""
        self.stats.failed += 1
        log.exception(
            "event callback %s failed on %s", _name(callback), type(event).__name__,
            extra=_fields(event),
        )  # fmt: skip

    async def drain(self) -> None:
        """Wait until no async callback is running (each ends within the timeout): call
        before the event loop stops, so that no notification is cut short."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))


class Observer:
    """Events and metrics from the engine's and the store's hooks (the `Observer`
    protocols in `_engine` and `_store`)."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics | None) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics

    @classmethod
    def build(cls, dispatcher: Dispatcher, metrics: Metrics | None) -> Observer | None:
        """An observer, or None when there is nothing to observe for."""
        return cls(dispatcher, metrics) if dispatcher or metrics is not None else None

    # -- the engine's hooks ---------------------------------------------------------

    def committed(
        self,
        tiers: TieredPolicy,
        what: str,
        record: S.Record,
        change: Change,
        row_id: ObjectId | None,
    ) -> None:
        """`change`, decided on `record`, has committed (once per change)."""
        row = change.row
        if row is None:  # every change the library makes carries its ledger row
            return
        operation = OPERATIONS.get(what, what)
        before = _credits(row.get("balanceBefore"), record.state.balance)
        after_refill = _credits(row.get("balanceAfter"), before)
        version = change.policy_version
        actor = row.get("actor")
        at = row.get("createdAt")
        tier = row.get("tier")
        metrics = self.metrics
        if metrics is not None:
            if change.refilled:
                metrics.record_refill(
                    str(tier), str(row.get("mode")), operation, after_refill - before
                )
            elif actor is not None:
                metrics.record_admin_credits(change.granted)
        log.debug(
            "%s committed for user %r", operation, record.user,
            extra={"user": record.user, "operation": operation, "policy_version": version},
        )  # fmt: skip
        if not self.dispatcher or not isinstance(at, datetime):
            return
        emit = self.dispatcher.emit
        if change.refilled and isinstance(tier, str):
            emit(
                Refilled(
                    user=record.user, tier=tier, mode=str(row.get("mode")), granted=change.granted,
                    balance_before=before, balance_after=after_refill, policy_version=version,
                    ledger_row_id=row_id, operation=operation, at=at,
                )
            )  # fmt: skip
        previous = row.get("previousTier")
        if isinstance(previous, str) and isinstance(tier, str) and previous != tier:
            emit(
                TierChanged(
                    user=record.user, tier=tier, previous_tier=previous, operation=operation,
                    actor=actor if isinstance(actor, str) else None, ledger_row_id=row_id, at=at,
                )
            )  # fmt: skip
        if isinstance(actor, str):
            reason = row.get("reason")
            emit(
                AdminChange(
                    user=record.user, operation=operation, actor=actor,
                    reason=reason if isinstance(reason, str) else None, granted=change.granted,
                    balance_before=before, balance_after=after_refill, policy_version=version,
                    ledger_row_id=row_id, at=at,
                )
            )  # fmt: skip
        state = change.after if change.after is not None else record.state
        self._low(tiers, record.user, before, state, operation=operation, at=at)

    def retried(self, what: str, user: UserId, attempt: int) -> None:
        """A compare-and-swap of `what` found the document changed (attempt `attempt`)."""
        operation = OPERATIONS.get(what, what)
        log.debug(
            "%s for user %r: the document changed since it was read; deciding again",
            operation, user, extra={"user": user, "operation": operation, "attempt": attempt},
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.record_retry(operation)
        if self.dispatcher:
            self.dispatcher.emit(ContentionRetry(user=user, operation=operation, attempt=attempt))

    def charged(self, tiers: TieredPolicy, record: S.Record, amount: Credits, at: datetime) -> None:
        """A spend of `amount` was charged on `record` (read just before the charge)."""
        state = record.state
        if self.dispatcher and tiers.tiers[assigned_tier(tiers, state)].low_balance is not None:
            after = state._replace(balance=state.balance - amount)  # a spend keeps the tier
            self._low(tiers, record.user, state.balance, after, operation="spend", at=at)

    def _low(
        self,
        tiers: TieredPolicy,
        user: UserId,
        before: Credits,
        state: UserState,
        *,
        operation: str,
        at: datetime,
    ) -> None:
        tier = assigned_tier(tiers, state)
        level = tiers.tiers[tier].low_balance
        if level is not None and before >= level > state.balance:
            self.dispatcher.emit(
                LowBalance(
                    user=user, tier=tier, balance=state.balance, level=level,
                    operation=operation, at=at,
                )
            )  # fmt: skip

    def policy_activated(
        self, version: int, *, previous: int | None, actor: str, reason: str, at: datetime
    ) -> None:
        """The policy store activated `version` (call after the activation committed)."""
        log.info(
            "policy version %d activated by %s", version, actor,
            extra={"operation": "activate", "policy_version": version, "actor": actor},
        )  # fmt: skip
        if self.dispatcher:
            self.dispatcher.emit(
                PolicyActivated(
                    version=version, previous=previous, actor=actor, reason=reason, at=at
                )
            )

    # -- the store's hooks ----------------------------------------------------------

    def db_call(self, what: str) -> None:
        calls = _CALLS.get()
        if calls is not None:
            calls[0] += 1

    def storage_error(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.record_storage_error(what)

    # -- the refiller's operations --------------------------------------------------

    def instrument(self, refiller: object) -> None:
        """Wrap `refiller`'s `ensure_balance`, `spend` and `sweep` on the instance: time
        them and count their calls (metrics), report refused spends and finished sweeps."""
        wrappers: dict[str, Callable[[Any], Any]] = {
            "spend": self._spend,
            "sweep": self._sweep,
        }
        if self.metrics is not None:
            wrappers["ensure_balance"] = functools.partial(self._timed, "ensure_balance")
        for name, wrap in wrappers.items():
            setattr(refiller, name, wrap(getattr(refiller, name)))

    def _timed(self, operation: str, method: F) -> F:
        metrics = self.metrics
        assert metrics is not None  # noqa: S101 - only wrapped with metrics on

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            calls = [0]
            token = _CALLS.set(calls)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await method(*args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _CALLS.reset(token)
                metrics.record_operation(operation, time.perf_counter() - started, calls[0], error)

        return cast(F, timed)

    def _spend(self, method: F) -> F:
        inner = method if self.metrics is None else self._timed("spend", method)
        metrics = self.metrics

        @functools.wraps(method)
        async def spend(*args: Any, **kwargs: Any) -> Any:
            try:
                state = await inner(*args, **kwargs)
            except InsufficientCredits as exc:
                refused = exc
            else:
                if metrics is not None:
                    metrics.record_spend(refused=False)
                return state
            self.refused(refused)  # outside the handler: a callback's error chains nothing
            raise refused

        return cast(F, spend)

    def refused(self, exc: InsufficientCredits) -> None:
        """A spend was refused for lack of credits."""
        user = cast(UserId, exc.user_id)
        if self.metrics is not None:
            self.metrics.record_spend(refused=True)
        if self.dispatcher:
            self.dispatcher.emit(
                Refused(
                    user=user, needed=exc.amount, available=exc.balance,
                    next_refill_at=exc.next_refill_at,
                )
            )  # fmt: skip

    def _sweep(self, method: F) -> F:
        @functools.wraps(method)
        async def sweep(*args: Any, **kwargs: Any) -> Any:
            report: SweepReport = await method(*args, **kwargs)
            seconds = report.duration.total_seconds()
            if self.metrics is not None:
                succeeded = not report.dry_run and report.ok
                finished = (report.started_at + report.duration).timestamp()
                self.metrics.record_sweep(seconds, report.dry_run, finished if succeeded else None)
            if self.dispatcher:
                self.dispatcher.emit(SweepFinished(report=report, duration=report.duration))
            return report

        return cast(F, sweep)


def _credits(value: object, default: Credits) -> Credits:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return default


__all__: Sequence[str] = ["EVENT_TIMEOUT", "MAX_PENDING", "DeliveryStats", "Dispatcher", "Observer"]
