"""The simulation report: the side-by-side summary and the self-contained HTML page."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime

import pytest

from balance_refill import ConfigurationError, RefillPolicy, TieredPolicy, TierRule
from balance_refill.report import html_report, summary
from balance_refill.simulate import SimulationReport, simulate
from balance_refill.usage import Synthetic

POPULATION = Synthetic(users=60, days=40, start=datetime(2026, 1, 20, tzinfo=UTC), seed=2)


def run(policy: RefillPolicy | TieredPolicy) -> SimulationReport:
    return simulate(policy, POPULATION, start=POPULATION.start, end=POPULATION.end)


BASELINE = run(RefillPolicy(amount=10_000, interval="30d", start_balance=10_000))
CANDIDATE = run(
    TieredPolicy(
        tiers={
            "regular": RefillPolicy(amount=6_000, calendar="week", start_balance=10_000),
            "heavy": RefillPolicy(amount=20_000, calendar="week"),
        },
        default_tier="regular",
        rules=(TierRule(from_tier="regular", to_tier="heavy", min_usage=0.9),),
    )
)


def test_summary_is_side_by_side() -> None:
    """Each figure of the summary holds both runs' value, and the change between them."""
    rows = {row.figure: row for row in summary(CANDIDATE, BASELINE)}
    assert rows["refills"].baseline == BASELINE.totals.refills
    assert rows["refills"].candidate == CANDIDATE.totals.refills
    assert rows["refills"].change == CANDIDATE.totals.refills - BASELINE.totals.refills
    assert rows["users refused at least once"].candidate == CANDIDATE.totals.users_dry
    assert rows["credits granted"].baseline == BASELINE.totals.credits_granted


def test_the_page_is_self_contained_with_four_charts() -> None:
    """One page: four inline SVG charts, no script, no external resource (only SVG's
    namespace names), the notes and every month; the same input renders the same page."""
    page = html_report(CANDIDATE, BASELINE, notes=["from a <test>"], candidate_name="c.yaml")
    assert page.count("<svg") == 4
    assert "<script" not in page.lower()
    assert not re.search(r"\b(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert "@import" not in page
    assert "url(" not in page.replace("url(#", "")
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert "from a &lt;test&gt;" in page
    for title in (
        "Credits granted per month",
        "Share of users refused",
        "end balances",
        "Refills per tier",
    ):
        assert title in page
    for month in ("2026-01", "2026-02"):
        assert month in page
    assert (
        html_report(CANDIDATE, BASELINE, notes=["from a <test>"], candidate_name="c.yaml") == page
    )


def test_without_matplotlib_the_report_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the report extra, writing a report is a clear ConfigurationError."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigurationError, match=r"balance_refill\[report\]"):
        html_report(CANDIDATE, BASELINE)
