"""The exception hierarchy: one root, each subclass also a fitting built-in."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime


class BalanceRefillError(Exception):
    """Root of every error this library raises."""


class InvalidUserId(BalanceRefillError, ValueError):
    """A user id that is not a non-empty str, an int (not bool) or a bson.ObjectId."""


class InvalidAmount(BalanceRefillError, ValueError):
    """An amount that is not a finite number (an int or a float, not a bool) within 2**53,
    or that is zero or negative where the operation needs more."""


class InvalidArgument(BalanceRefillError, ValueError):
    """Any other bad argument to an operation (an empty actor, a bad limit, ...)."""


class ConfigurationError(BalanceRefillError, ValueError):
    """A refiller that cannot be built as asked: a policy of the wrong type, a clock that
    returns naive datetimes, an unknown `user_ids` mode, no place for the sweep's lease."""


class PolicyFileError(BalanceRefillError, ValueError):
    """A policy file that cannot be read or does not describe a valid policy."""


class UnknownTier(BalanceRefillError, KeyError):
    """A tier name the policy does not define."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InsufficientCredits(BalanceRefillError):
    """The available balance does not cover the amount, and no refill is due."""

    def __init__(
        self,
        user_id: object,
        *,
        balance: float,
        amount: float,
        next_refill_at: datetime | None,
    ) -> None:
        self.user_id = user_id
        self.balance = balance
        self.amount = amount
        self.next_refill_at = next_refill_at
        when = next_refill_at.isoformat() if next_refill_at else "never (auto refill is off)"
        super().__init__(
            f"user {user_id!r} has {balance} credits, needs {amount}; next refill: {when}"
        )


class IdempotencyConflict(BalanceRefillError, ValueError):
    """A request id reused with different arguments (as a payment API answers a reused
    idempotency key with a different body). Nothing was changed. `original` is what the
    first request with this id did (its amount, for a spend or a grant)."""

    def __init__(
        self,
        request_id: str,
        *,
        operation: str,
        original: object,
        given: object,
        attempted: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.operation = operation
        self.original = original
        self.given = given
        self.attempted = attempted or operation
        if self.attempted == operation:
            asks = f"asks for {given!r}"
        else:
            asks = f"is a {self.attempted} of {given!r}"
        super().__init__(
            f"request id {request_id!r} was already used for a {operation} of {original!r}; "
            f"this call {asks}. Nothing was changed: use a new request id for a new request"
        )


class UserNotFound(BalanceRefillError, LookupError):
    """A read-only or admin operation named a user with no balance document."""


class PolicyNotFound(BalanceRefillError, LookupError):
    """A policy version the policy store does not hold."""


class NoActivePolicy(BalanceRefillError, LookupError):
    """The policy store holds no active version yet (push one, then activate it)."""


class StorageError(BalanceRefillError, RuntimeError):
    """The database driver failed; the original error is chained as __cause__."""


class ContentionError(BalanceRefillError, RuntimeError):
    """An operation lost its compare-and-swap too many times in a row."""


class DuplicateBalances(BalanceRefillError, RuntimeError):
    """Some users own more than one balance document (old LibreChat databases)."""

    def __init__(self, duplicates: Mapping[object, int]) -> None:
        self.duplicates = dict(duplicates)
        shown = ", ".join(
            f"{user!r} ({n} documents)" for user, n in list(self.duplicates.items())[:20]
        )
        more = len(self.duplicates) - 20
        tail = f" and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(self.duplicates)} user(s) own more than one balance document: {shown}{tail}. "
            "The library reads and writes only the oldest (lowest _id) and never creates another; "
            "merge or delete the extra documents to silence this."
        )


class SweepLocked(BalanceRefillError, RuntimeError):
    """Another sweep holds the lease."""

    def __init__(self, holder: str, expires_at: datetime) -> None:
        self.holder = holder
        self.expires_at = expires_at
        super().__init__(f"a sweep holds the lease ({holder}) until {expires_at.isoformat()}")
