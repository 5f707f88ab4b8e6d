"""What the library tells the host: frozen event dataclasses (`on_event=`).

    def notify(event: Event) -> None:            # or `async def`, or a list of callables
        if isinstance(event, LowBalance):
            ...

    refiller = BalanceRefiller(balances, policy, ledger=ledger, on_event=notify)

An event about a change is delivered only after the write that made the change has
committed (the balance document's compare-and-swap; its ledger row is written right after,
or settled by the next read), and exactly once per committed change: a compare-and-swap
that lost a race and was retried, or a write whose reply was lost and recognised on the
next read (`recentOps`), still gives one event. A write that failed, or an operation
refused, gives no change event (a refused spend gives `Refused`).

Delivery (see `BalanceRefiller`): a sync callback runs inline, right after the commit,
with its exceptions caught, logged and counted; an async callback (or any callable that
returns an awaitable) runs as a task, at most `max_pending` in flight (events beyond are
dropped, logged and counted), each cancelled after `event_timeout` seconds. A callback
never fails an operation; an async one never delays it; a sync one delays it by its own
run time, so keep sync callbacks quick.

The classes and their fields are the documented contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId

from ._validate import Credits, UserId
from .sweep import SweepReport


@dataclass(frozen=True, slots=True, kw_only=True)
class Refilled:
    """A refill committed: automatic (`operation="refill"`), by the sweep (`"sweep"`) or
    by hand (`"refill_now"`). `granted` is `balance_after - balance_before` (negative only
    for a `reset` that lowered the balance). `policy_version` is the stored policy version
    that decided it (None without a policy store); `ledger_row_id` the `_id` of its ledger
    row (None without a ledger)."""

    user: UserId
    tier: str
    mode: str
    granted: Credits
    balance_before: Credits
    balance_after: Credits
    policy_version: int | None
    ledger_row_id: ObjectId | None
    operation: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """A spend was refused for lack of credits (`InsufficientCredits`); nothing changed.
    `next_refill_at` is when the next automatic refill can happen (None: auto refill off)."""

    user: UserId
    needed: Credits
    available: Credits
    next_refill_at: datetime | None
    operation: str = "spend"


@dataclass(frozen=True, slots=True, kw_only=True)
class LowBalance:
    """A committed change took the balance from at or above the tier's `low_balance` level
    to below it (once per crossing: spends that stay below it give no further event)."""

    user: UserId
    tier: str
    balance: Credits
    level: Credits
    operation: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TierChanged:
    """The user's assigned tier changed: moved by the activity rules at a refill
    (`operation` "refill", "sweep", "refill_now"; `actor` None) or by `set_tier`."""

    user: UserId
    tier: str
    previous_tier: str
    operation: str
    actor: str | None
    ledger_row_id: ObjectId | None
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminChange:
    """An admin operation committed (`grant`, `set_balance`, `set_tier`,
    `set_auto_refill`, `refill_now`). A keyed retry that found the operation already
    applied gives no second event."""

    user: UserId
    operation: str
    actor: str
    reason: str | None
    granted: Credits
    balance_before: Credits
    balance_after: Credits
    policy_version: int | None
    ledger_row_id: ObjectId | None
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentionRetry:
    """A compare-and-swap found the document changed since it was read (another writer
    won, or this write's reply was lost): the operation reads and decides again.
    `attempt` counts from 1."""

    user: UserId
    operation: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepFinished:
    """A sweep returned its report (also a `dry_run` one: see `report.dry_run`)."""

    report: SweepReport
    duration: timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyActivated:
    """A stored policy version was made the active one (the policy store's `activate`).
    `previous` is the version active before (None: none was)."""

    version: int
    previous: int | None
    actor: str
    reason: str
    at: datetime


Event = (
    Refilled
    | Refused
    | LowBalance
    | TierChanged
    | AdminChange
    | ContentionRetry
    | SweepFinished
    | PolicyActivated
)
"""Every event type."""

Callback = Callable[[Event], None] | Callable[[Event], Awaitable[None]]
"""A sync or async callable taking one event."""

OnEvent = Callback | Sequence[Callback]
"""What `on_event=` takes: one callback or a list of them."""

__all__ = [
    "AdminChange",
    "Callback",
    "ContentionRetry",
    "Event",
    "LowBalance",
    "OnEvent",
    "PolicyActivated",
    "Refilled",
    "Refused",
    "SweepFinished",
    "TierChanged",
]
