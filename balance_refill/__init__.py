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
from .policy import AdaptiveAmount, RefillPolicy, TieredPolicy, TierRule
from .policy_file import PolicyFileError, load_policy_file, load_policy_text
from .refiller import BalanceRefiller
from .state import BalanceState
from .sweep import SweepReport

try:
    __version__ = version("balance_refill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AdaptiveAmount",
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
    "PolicyFileError",
    "RefillPolicy",
    "StorageError",
    "SweepLocked",
    "SweepReport",
    "TierRule",
    "TieredPolicy",
    "UnknownTier",
    "UserNotFound",
    "__version__",
    "add_months",
    "is_due",
    "load_policy_file",
    "load_policy_text",
    "next_refill_at",
    "parse_interval",
]
