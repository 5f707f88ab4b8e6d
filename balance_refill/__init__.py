"""Lazy, atomic, exactly-once credit refills for chat backends on MongoDB."""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    BalanceRefillError,
    ContentionError,
    DuplicateBalances,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    InvalidUserId,
    StorageError,
    SweepLocked,
    UnknownTier,
    UserNotFound,
)
from .periods import Calendar, Interval, add_months, is_due, next_refill_at, parse_interval
from .policy import RefillPolicy, TieredPolicy
from .refiller import BalanceRefiller
from .state import BalanceState
from .sweep import SweepReport

try:
    __version__ = version("balance_refill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BalanceRefillError",
    "BalanceRefiller",
    "BalanceState",
    "Calendar",
    "ContentionError",
    "DuplicateBalances",
    "InsufficientCredits",
    "Interval",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidUserId",
    "RefillPolicy",
    "StorageError",
    "SweepLocked",
    "SweepReport",
    "TieredPolicy",
    "UnknownTier",
    "UserNotFound",
    "__version__",
    "add_months",
    "is_due",
    "next_refill_at",
    "parse_interval",
]
