"""Ledger rows as the page shows them: any row, in any shape LibreChat or this library
writes (spends by prompt and completion, structured tokens, refills, admin changes,
missing or odd fields), becomes plain values and text; nothing here raises."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ._charts import number

KNOWN = {
    "_id", "user", "tokenType", "context", "rawAmount", "tokenValue", "rate", "createdAt",
    "updatedAt", "balanceBefore", "balanceAfter", "source", "actor", "reason", "tier",
    "previousTier", "tierPinned", "autoRefillEnabled", "mode", "trigger", "model",
    "conversationId", "messageId", "valueKey", "inputTokens", "writeTokens", "readTokens",
    "tenantId", "__v", "policyVersion",
}  # fmt: skip
MAX_TEXT = 160
MAX_EXTRA = 8
SPEND_TYPES = ("prompt", "completion")


def num(value: object) -> float | None:
    """A finite number, or None for anything else (bools, text, NaN, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        as_float = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(as_float) else None


def text(value: object) -> str:
    """Any value as short text (never raises)."""
    if value is None:
        return ""
    try:
        shown = value if isinstance(value, str) else str(value)
    except Exception:  # a value whose repr fails is still shown
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= MAX_TEXT else shown[: MAX_TEXT - 1] + "…"


def when(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass
class Row:
    """One ledger row, ready for the template."""

    id: str
    when: datetime | None
    what: str
    detail: str
    amount: float | None
    after: float | None = None
    rebuilt: bool = False  # `after` was reconstructed from the rows' amounts
    actor: str = ""
    reason: str = ""
    tier: str = ""
    extra: list[str] = field(default_factory=list)


def delta(row: Mapping[str, object]) -> float | None:
    """The credits a row changed: `tokenValue` (LibreChat's credits, negative for a spend),
    else `rawAmount`."""
    value = num(row.get("tokenValue"))
    return num(row.get("rawAmount")) if value is None else value


def _tokens(row: Mapping[str, object]) -> str:
    parts = []
    for key, label in (("inputTokens", "input"), ("writeTokens", "cache write"),
                       ("readTokens", "cache read")):  # fmt: skip
        value = num(row.get(key))
        if value is not None:
            parts.append(f"{number(abs(value))} {label}")
    if not parts:
        raw = num(row.get("rawAmount"))
        if raw is not None:
            parts.append(f"{number(abs(raw))} tokens")
    return ", ".join(parts)


def describe(row: Mapping[str, object]) -> Row:
    """The row as text and numbers; unknown fields are listed as text."""
    kind = row.get("tokenType")
    context = text(row.get("context"))
    details: list[str] = []
    if kind in SPEND_TYPES:
        what = f"{kind} spend"
        details += [text(row.get("model")) or "model unknown", _tokens(row)]
        rate = num(row.get("rate"))
        if rate is not None:
            details.append(f"rate {number(rate)}")
        if context and context != "message":
            details.append(context)
    else:
        what = context or text(kind) or "row"
        if row.get("autoRefillEnabled") is False:
            details.append("paused auto refill")
        elif row.get("autoRefillEnabled") is True:
            details.append("resumed auto refill")
        if row.get("tier") is not None and row.get("previousTier") is not None:
            details.append(f"tier {text(row.get('previousTier'))} → {text(row.get('tier'))}")
        if row.get("tierPinned") is True:
            details.append("pinned")
        for key in ("mode", "trigger", "model"):
            if row.get(key) is not None:
                details.append(text(row.get(key)))
        if row.get("policyVersion") is not None:
            details.append(f"policy v{text(row.get('policyVersion'))}")
    extra = [f"{key}: {text(row.get(key))}" for key in sorted(map(str, row)) if key not in KNOWN]
    return Row(
        id=text(row.get("_id")),
        when=when(row.get("createdAt")),
        what=what,
        detail=" · ".join(d for d in details if d),
        amount=delta(row),
        after=num(row.get("balanceAfter")),
        actor=text(row.get("actor")),
        reason=text(row.get("reason")),
        tier=text(row.get("tier")),
        extra=extra[:MAX_EXTRA]
        + ([f"… {len(extra) - MAX_EXTRA} more"] if len(extra) > MAX_EXTRA else []),
    )


def with_balances(rows: Sequence[Mapping[str, object]], balance: float) -> list[Row]:
    """Describe rows (newest first) with the balance after each: `balanceAfter` where the
    row has it, else rebuilt backwards from the current `balance` and the newer rows'
    amounts (LibreChat's spend rows have no `balanceAfter`)."""
    shown = []
    current: float | None = num(balance)
    for raw in rows:
        row = describe(raw)
        if row.after is None and current is not None:
            row.after, row.rebuilt = current, True
        before = num(raw.get("balanceBefore"))
        if before is None and row.after is not None:
            before = None if row.amount is None else row.after - row.amount
        current = before
        shown.append(row)
    return shown


def points(rows: Sequence[Row], now: datetime, balance: float) -> list[tuple[datetime, float]]:
    """The balance over time, oldest first, ending at `balance` now."""
    found = [
        (r.when, r.after) for r in reversed(rows) if r.when is not None and r.after is not None
    ]
    series: list[tuple[datetime, float]] = [
        (t, v) for t, v in found if t is not None and v is not None
    ]
    value = num(balance)
    if value is not None and (not series or series[-1][0] < now):
        series.append((now, value))
    return series
