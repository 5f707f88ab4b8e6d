"""The policy page's preview: the last N days of this database's usage (LibreChat's
spend rows) replayed through the simulator, candidate against the active policy.
It only reads; the charts are the HTML report's (matplotlib SVG), shown as images."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from balance_refill.errors import ConfigurationError
from balance_refill.policy import AnyPolicy
from balance_refill.simulate import SimulationReport, Simulator
from balance_refill.usage import Demand, Tally, transaction_pages


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    src: str  # a data: URL (an SVG image: it runs no script and the CSP allows it)


@dataclass(frozen=True, slots=True)
class Preview:
    """Both runs, the side-by-side figures, the charts (or why there are none)."""

    days: int
    start: datetime
    end: datetime
    candidate: SimulationReport
    baseline: SimulationReport
    rows: list[Any]
    notes: list[str]
    charts: list[Chart] = field(default_factory=list)
    charts_missing: str | None = None


def _image(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _charts(candidate: SimulationReport, baseline: SimulationReport) -> list[Chart]:
    from balance_refill import report  # noqa: PLC0415 - matplotlib, on demand

    return [
        Chart("Credits granted per month", _image(report.chart_granted_per_month(candidate, baseline))),
        Chart("Share of users refused, per day", _image(report.chart_refused_per_day(candidate, baseline))),
        Chart("Distribution of end balances", _image(report.chart_end_balances(candidate, baseline))),
        Chart("Refills per tier", _image(report.chart_refills_per_tier(candidate, baseline))),
    ]  # fmt: skip


def _feed(runs: tuple[Simulator, Simulator], page: list[Demand]) -> None:
    for run in runs:
        run.feed(page)


async def preview(
    transactions: Any, candidate: AnyPolicy, baseline: AnyPolicy, *, days: int, now: datetime
) -> Preview:
    """Replay the spends of the last `days` days (one pass, a page at a time) through
    both policies. Writes nothing."""
    from balance_refill.report import summary  # noqa: PLC0415 - no matplotlib needed

    end = now
    start = end - timedelta(days=days)
    runs = (Simulator(candidate, start=start, end=end), Simulator(baseline, start=start, end=end))
    tally = Tally()
    async for page in transaction_pages(transactions, start=start, end=end, tally=tally):
        # The replay is CPU work: a page at a time in a thread keeps the server answering.
        await asyncio.to_thread(_feed, runs, page)
    cand, base = runs[0].report(), runs[1].report()
    notes = [
        f"LibreChat transactions of the last {days} days: {tally.describe()} "
        "(refill and grant rows are not demand)",
        "Users start as the library would create them; logins are not recorded in "
        "transactions, so refills happen at spends.",
    ]
    charts: list[Chart] = []
    missing = None
    try:
        charts = await asyncio.to_thread(_charts, cand, base)
    except ConfigurationError as exc:
        missing = str(exc)
    return Preview(days, start, end, cand, base, summary(cand, base), notes, charts, missing)
