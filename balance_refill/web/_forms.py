"""The admin forms: parsing each field with a clear message, planning an action, and the
intent key that makes one intent apply once."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bson import ObjectId

from balance_refill import BalanceState
from balance_refill.policy import TieredPolicy

from ._charts import number

UserId = str | int | ObjectId
"""A user id as the library accepts and returns it."""

AMOUNT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)", re.ASCII)
MAX_AMOUNT_TEXT = 40  # characters: 2^53 has 16 digits; longer text is refused before parsing
MAX_REASON = 500
MAX_SAFE = 2**53

ACTIONS: dict[str, str] = {
    "grant": "Grant credits",
    "set-balance": "Set balance",
    "set-tier": "Set tier",
    "auto-refill": "Pause or resume auto refill",
    "refill-now": "Refill now",
}


class FieldErrors(Exception):
    """Messages for form fields (field name -> message)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__(dict(errors))
        self.errors = dict(errors)


def user_param(user_id: object) -> dict[str, str]:
    """The query parameters naming a user (ints are marked, strings and ObjectIds are text)."""
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        return {"id": str(user_id), "as": "int"}
    return {"id": str(user_id)}


def parse_user(raw: object, kind: object) -> str | int:
    """A user id from a form or query: text (a 24-hex text is an ObjectId to the library)
    or, with `as=int`, a number."""
    if not isinstance(raw, str) or not raw.strip():
        raise FieldErrors({"user": "Enter a user id, an email or a name."})
    raw = raw.strip()
    if kind == "int":
        if not re.fullmatch(r"-?[0-9]{1,19}", raw, re.ASCII):
            raise FieldErrors({"user": "A numeric id is digits only, e.g. 42."})
        return int(raw)
    return raw


def parse_amount(raw: object, *, negative: bool, zero: bool) -> int | float:
    """An amount in ASCII digits, at most 2^53; anything else is a message, never a 500."""
    if not isinstance(raw, str) or not raw.strip():
        raise FieldErrors({"amount": "Enter an amount."})
    text = raw.strip().replace("_", "")
    if len(text) > MAX_AMOUNT_TEXT:
        raise FieldErrors({"amount": "That amount is out of range (at most 2^53)."})
    if not AMOUNT.fullmatch(text):
        raise FieldErrors({"amount": "Write a number in digits only (0-9), e.g. 1500 or -250.5."})
    value: int | float = float(text) if "." in text else int(text)
    if abs(value) > MAX_SAFE:
        raise FieldErrors({"amount": "That amount is out of range (at most 2^53)."})
    if value < 0 and not negative:
        raise FieldErrors({"amount": "The balance cannot be negative."})
    if value == 0 and not zero:
        raise FieldErrors({"amount": "A grant of 0 changes nothing."})
    return value


def parse_reason(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise FieldErrors({"reason": "A reason is required: it is kept with the change."})
    if len(raw.strip()) > MAX_REASON:
        raise FieldErrors({"reason": f"Keep the reason under {MAX_REASON} characters."})
    return raw.strip()


@dataclass
class Planned:
    """A validated action, ready to confirm or apply."""

    action: str
    values: dict[str, object]
    summary: str
    hidden: dict[str, str] = field(default_factory=dict)


def plan(
    action: str, form: Mapping[str, object], state: BalanceState, tiers: TieredPolicy
) -> Planned:
    """Validate the form for `action` (every field's message at once)."""
    errors: dict[str, str] = {}
    values: dict[str, object] = {}

    def take(name: str, parse: Callable[[], object]) -> None:
        try:
            values[name] = parse()
        except FieldErrors as exc:
            errors.update(exc.errors)

    take("reason", lambda: parse_reason(form.get("reason")))
    if action == "grant":
        take("amount", lambda: parse_amount(form.get("amount"), negative=True, zero=False))
        values["allow_negative"] = form.get("allow_negative") == "on"
        amount = values.get("amount")
        if (
            isinstance(amount, int | float)
            and state.balance + amount < 0
            and not values["allow_negative"]
        ):
            errors["amount"] = (
                f"That would take the balance below zero ({number(state.balance)} "
                f"{number(amount)}). Tick “allow a negative balance” to do it anyway."
            )
    elif action == "set-balance":
        take("amount", lambda: parse_amount(form.get("amount"), negative=False, zero=True))
    elif action == "set-tier":
        tier = form.get("tier")
        if not isinstance(tier, str) or tier not in tiers.tiers:
            errors["tier"] = f"Choose one of the tiers: {', '.join(tiers.tiers)}."
        values["tier"] = tier
        pin = form.get("pin", "keep")
        if pin not in ("keep", "pin", "unpin"):
            errors["pin"] = "Choose keep, pin or unpin."
        values["pin"] = pin
    elif action == "auto-refill":
        enabled = form.get("enabled")
        if enabled not in ("on", "off"):
            errors["enabled"] = "Choose resume or pause."
        values["enabled"] = enabled
    if errors:
        raise FieldErrors(errors)
    hidden = {k: "on" if v is True else "" if v is False else str(v) for k, v in values.items()}
    return Planned(action, values, summary(action, values, state), hidden)


def summary(action: str, v: Mapping[str, object], state: BalanceState) -> str:
    balance = state.balance
    if action == "grant":
        amount = v["amount"]
        assert isinstance(amount, int | float)  # noqa: S101 - parsed above
        verb = "Grant" if amount > 0 else "Take back"
        return (
            f"{verb} {number(abs(amount))} credits: balance {number(balance)} → "
            f"{number(balance + amount)}"
            + (" (may go below zero)" if v.get("allow_negative") else "")
        )
    if action == "set-balance":
        amount = v["amount"]
        assert isinstance(amount, int | float)  # noqa: S101 - parsed above
        return f"Set the balance from {number(balance)} to {number(amount)} credits"
    if action == "set-tier":
        pin = {"keep": "pin unchanged", "pin": "and pin it", "unpin": "and unpin it"}
        return f"Move from tier {state.tier} to tier {v['tier']}, {pin[str(v['pin'])]}"
    if action == "auto-refill":
        return "Resume automatic refills" if v["enabled"] == "on" else "Pause automatic refills"
    return f"Refill now (balance {number(balance)}; the tier's amount and mode apply)"


def intent_key(user: object, planned: Planned, seen: str) -> str:
    """One key per intent: the user, the operation, its values (not the reason's wording)
    and the state version seen when the form was shown. A resubmitted or second-tab
    confirmation of the same intent gets the same key, so it is applied once; it is also
    the core's `request_id`."""
    values = sorted((k, v) for k, v in planned.hidden.items() if k != "reason")
    text = repr((type(user).__name__, str(user), planned.action, values, seen))
    return "web-" + hashlib.sha256(text.encode()).hexdigest()[:40]
