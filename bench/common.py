"""Shared pieces of the benchmarks: the LibreChat setup, figures, the table, statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mongomock_motor import AsyncMongoMockClient

from balance_refill import RefillPolicy

# One chat message in every benchmark: 300 prompt credits + 700 completion credits.
PROMPT_CREDITS = 300
COMPLETION_CREDITS = 700
MESSAGE_COST = PROMPT_CREDITS + COMPLETION_CREDITS

# The `balance:` section of librechat.yaml every flow runs under (LibreChat's defaults,
# with balances and auto refill switched on).
LIBRECHAT_BALANCE: dict[str, Any] = {
    "enabled": True,
    "startBalance": 20_000,
    "autoRefillEnabled": True,
    "refillIntervalValue": 30,
    "refillIntervalUnit": "days",
    "refillAmount": 10_000,
}

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def librechat_policy() -> RefillPolicy:
    """Our policy with LibreChat's semantics (add mode, refill only when not covered)."""
    return RefillPolicy.from_librechat(LIBRECHAT_BALANCE)


def mock_db(name: str = "bench") -> Any:
    """A fresh tz-aware mongomock-motor database."""
    return AsyncMongoMockClient(tz_aware=True)[name]


def librechat_doc(user: Any, credits: int, last_refill: datetime) -> dict[str, Any]:
    """A balance document exactly as LibreChat (newer versions) stores it."""
    return {
        "_id": user,
        "user": user,
        "tokenCredits": credits,
        "autoRefillEnabled": True,
        "refillIntervalValue": LIBRECHAT_BALANCE["refillIntervalValue"],
        "refillIntervalUnit": LIBRECHAT_BALANCE["refillIntervalUnit"],
        "refillAmount": LIBRECHAT_BALANCE["refillAmount"],
        "lastRefill": last_refill,
    }


def due_last_refill(now: datetime) -> datetime:
    """A lastRefill whose 30-day period has elapsed at `now`."""
    return now - timedelta(days=31)


def recent_last_refill(now: datetime) -> datetime:
    """A lastRefill whose period has not elapsed at `now`."""
    return now - timedelta(days=1)


@dataclass
class Figure:
    """One printed figure. `met` is None when the figure has no goal."""

    name: str
    value: float | str
    unit: str = ""
    goal: str = ""
    met: bool | None = None

    def shown(self) -> str:
        value = self.value
        if isinstance(value, int):
            text = f"{value:,}"
        elif isinstance(value, float):
            text = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        else:
            text = value
        return f"{text} {self.unit}".rstrip()


@dataclass
class Section:
    """The figures of one benchmark, notes printed under the table, and raw data."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(
        self, name: str, value: float | str, unit: str = "", goal: str = "", met: bool | None = None
    ) -> None:
        self.figures.append(Figure(name, value, unit, goal, met))

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def value(self, name: str) -> float | str:
        return self.figure(name).value

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "figures": [asdict(f) for f in self.figures],
            "notes": self.notes,
            "data": self.data,
        }


def render(sections: Sequence[Section]) -> str:
    """Every figure of every section as one plain-text table, then the notes."""
    header = ("benchmark", "figure", "value", "goal", "met")
    rows: list[tuple[str, ...]] = []
    for section in sections:
        for i, fig in enumerate(section.figures):
            met = "" if fig.met is None else ("yes" if fig.met else "NO")
            rows.append((section.title if i == 0 else "", fig.name, fig.shown(), fig.goal, met))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths), *map(line, rows)]
    for section in sections:
        if section.notes:
            out += ["", f"[{section.title}]", *(f"  {note}" for note in section.notes)]
    return "\n".join(out)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return float(ordered[rank - 1])


def ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("inf")
