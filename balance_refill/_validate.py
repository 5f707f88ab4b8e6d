"""Validation of user ids, amounts, texts and limits: nothing unchecked reaches a query."""

from __future__ import annotations

import math
import re
from typing import Literal

from bson import ObjectId

from .errors import ConfigurationError, InvalidAmount, InvalidArgument, InvalidUserId

UserId = str | int | ObjectId
"""The accepted user id types."""

Credits = int | float
"""A number of credits: LibreChat's `tokenCredits` is a JavaScript Number, often fractional."""

UserIdMode = Literal["auto", "objectid", "str"]
"""How user ids are stored: "auto" stores a 24-hex string as an ObjectId (as Mongoose
casts it) and keeps other strings and ints; "objectid" requires ObjectIds (or their hex);
"str" stores ObjectIds as their hex string and keeps strings and ints."""

USER_ID_MODES: tuple[UserIdMode, ...] = ("auto", "objectid", "str")

_HEX24 = re.compile(r"[0-9a-fA-F]{24}")

MAX_SAFE_INT = 2**53
"""LibreChat reads balances as JavaScript numbers: integers beyond 2**53 lose precision."""

MAX_ID_LENGTH = 1024


def check_user_id(user_id: object) -> UserId:
    """Return `user_id` if it is a non-empty str, an int (not bool) or an ObjectId."""
    if isinstance(user_id, ObjectId):
        return user_id
    if isinstance(user_id, bool):
        raise InvalidUserId(f"user id must not be a bool, got {user_id!r}")
    if isinstance(user_id, int):
        if abs(user_id) >= 2**63:
            raise InvalidUserId(f"user id {user_id} does not fit a 64-bit integer")
        return user_id
    if isinstance(user_id, str):
        if not user_id or not user_id.strip():
            raise InvalidUserId("user id must be a non-empty string")
        if user_id != user_id.strip():
            raise InvalidUserId(
                f"user id {describe(user_id)} has leading or trailing whitespace: it would be "
                f"another user than {describe(user_id.strip())}"
            )
        if len(user_id) > MAX_ID_LENGTH:
            raise InvalidUserId(
                f"user id is {len(user_id)} characters long (at most {MAX_ID_LENGTH})"
            )
        if "\x00" in user_id:
            raise InvalidUserId("user id must not contain NUL characters")
        return user_id
    raise InvalidUserId(
        f"user id must be a non-empty str, an int or a bson.ObjectId, got {type(user_id).__name__}: "
        f"{describe(user_id)}"
    )


def stored_user_id(user_id: object, mode: UserIdMode) -> UserId:
    """`user_id` checked and converted to the value stored in `user` (see `UserIdMode`)."""
    user = check_user_id(user_id)
    if mode == "auto":
        if isinstance(user, str) and _HEX24.fullmatch(user):
            return ObjectId(user)
        return user
    if mode == "objectid":
        if isinstance(user, ObjectId):
            return user
        if isinstance(user, str) and _HEX24.fullmatch(user):
            return ObjectId(user)
        raise InvalidUserId(
            f"user id must be an ObjectId or 24 hex digits (user_ids='objectid'), got {describe(user)}"
        )
    if isinstance(user, ObjectId):  # mode "str"
        return str(user)
    return user


def check_user_id_mode(mode: object) -> UserIdMode:
    for known in USER_ID_MODES:
        if mode == known and isinstance(mode, str):
            return known
    raise ConfigurationError(f"user_ids must be 'auto', 'objectid' or 'str', got {describe(mode)}")


def check_amount(
    amount: object, *, what: str = "amount", allow_zero: bool = False, allow_negative: bool = False
) -> Credits:
    """Return `amount` unchanged if it is a finite int or float within +/- 2**53."""
    if amount.__class__ is int and (0 if allow_zero else 1) <= amount <= MAX_SAFE_INT:
        return amount  # an int: the common case, in one test
    if isinstance(amount, float):
        if not math.isfinite(amount):
            raise InvalidAmount(f"{what} must be finite, got {amount!r}")
    elif isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(
            f"{what} must be a number (int or float), got {type(amount).__name__}: {describe(amount)}"
        )
    if abs(amount) > MAX_SAFE_INT:
        raise InvalidAmount(f"{what} {amount} is beyond 2**53, which LibreChat cannot represent")
    if amount < 0 and not allow_negative:
        raise InvalidAmount(f"{what} must not be negative, got {amount}")
    if amount == 0 and not allow_zero:
        raise InvalidAmount(f"{what} must not be zero")
    return amount


def check_text(value: object, *, what: str, max_length: int = 500) -> str:
    """Return a non-empty, bounded string (actor names, reasons, request ids)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise InvalidArgument(f"{what} is {len(value)} characters long (at most {max_length})")
    return value


def describe(value: object) -> str:
    """A short, safe rendering of a value for messages."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def check_limit(value: object, *, what: str, low: int, high: int) -> int:
    """Return `value` if it is an int (not bool) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be an int from {low} to {high}, got {describe(value)}")
    return value


def check_flag(value: object, *, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be True or False, got {describe(value)}")
    return value
