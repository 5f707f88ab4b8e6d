"""Lazy, atomic, exactly-once credit refills for chat backends on MongoDB.

The public API is re-exported here. Date maths for periods live in the documented
submodule `balance_refill.periods`; test helpers in `balance_refill.testing`.
"""

from importlib.metadata import PackageNotFoundError, version

from ._validate import UserId
from .errors import (
    BalanceRefillError,
    ConfigurationError,
    ContentionError,
    DuplicateBalances,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    InvalidUserId,
    PolicyFileError,
    StorageError,
    SweepLocked,
    UnknownTier,
    UserNotFound,
)
from .policy import AdaptiveAmount, RefillPolicy, TieredPolicy, TierRule
from .policy_file import load_policy_file
from .refiller import BalanceRefiller, IndexReport
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
    "ConfigurationError",
    "ContentionError",
    "DuplicateBalances",
    "IdempotencyConflict",
    "IndexReport",
    "InsufficientCredits",
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
    "UserId",
    "UserNotFound",
    "__version__",
    "load_policy_file",
]
