"""A simulation, candidate against baseline: the summary table and the HTML report.

`summary` is plain data (the CLI prints it as a table). `html_report` writes one
self-contained page: no script, no network fetch, the charts inline as SVG drawn by
matplotlib (the `report` extra: `pip install 'balance_refill[report]'`), imported only
when a report is written.
"""

from __future__ import annotations

import html
import io
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .simulate import SimulationReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BASELINE_COLOR = "#8a8f98"
CANDIDATE_COLOR = "#2563eb"


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One figure of both runs; `change` is candidate minus baseline (None: not a number
    to compare)."""

    figure: str
    baseline: float
    candidate: float

    @property
    def change(self) -> float:
        return self.candidate - self.baseline


def _median_balance(report: SimulationReport) -> float:
    values = [float(o.balance) for o in report.users.values()]
    return float(statistics.median(values)) if values else 0.0


def _share(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def summary(candidate: SimulationReport, baseline: SimulationReport) -> list[SummaryRow]:
    """The figures compared side by side (the CLI's table, the report's first table)."""

    def figures(r: SimulationReport) -> list[tuple[str, float]]:
        t = r.totals
        months = max(1, len(r.periods))
        return [
            ("credits granted", t.credits_granted),
            ("credits granted per month", round(t.credits_granted / months, 2)),
            ("refills", t.refills),
            ("spends refused", t.refused),
            ("users refused at least once", t.users_dry),
            ("users refused at least once (%)", _share(t.users_dry, t.users)),
            ("spends refused (%)", _share(t.refused, t.demands)),
            ("credits spent", round(t.spent, 2)),
            ("median end balance", round(_median_balance(r), 2)),
            ("users", t.users),
            ("spends asked", t.demands),
        ]

    return [
        SummaryRow(name, base, cand)
        for (name, base), (_, cand) in zip(figures(baseline), figures(candidate), strict=True)
    ]


# -- charts ----------------------------------------------------------------------------


def _matplotlib() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 - the report extra, on demand
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError(
            "the HTML report needs the report extra: pip install 'balance_refill[report]'"
        ) from exc
    return matplotlib, Figure


def _svg(fig: Figure) -> str:
    """The figure as inline SVG: no XML prolog, no metadata, ids stable between runs."""
    matplotlib, _ = _matplotlib()
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "balance_refill", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)


def _figure() -> tuple[Figure, Axes]:
    _, figure_class = _matplotlib()
    fig = figure_class(figsize=(7.5, 3.2), dpi=96)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _grouped_bars(
    ax: Axes, labels: Sequence[str], baseline: Sequence[float], candidate: Sequence[float]
) -> None:
    xs = range(len(labels))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], baseline, width, label="baseline", color=BASELINE_COLOR)
    ax.bar([x + width / 2 for x in xs], candidate, width, label="candidate", color=CANDIDATE_COLOR)
    ax.set_xticks(list(xs), list(labels))
    ax.legend(frameon=False)


def chart_granted_per_month(candidate: SimulationReport, baseline: SimulationReport) -> str:
    fig, ax = _figure()
    labels = [p.month.strftime("%Y-%m") for p in candidate.periods]
    _grouped_bars(
        ax,
        labels,
        [float(p.credits_granted) for p in baseline.periods],
        [float(p.credits_granted) for p in candidate.periods],
    )
    ax.set_ylabel("credits granted")
    ax.set_title("Credits granted per month", loc="left")
    return _svg(fig)


def chart_refused_per_day(candidate: SimulationReport, baseline: SimulationReport) -> str:
    fig, ax = _figure()
    for report, name, color in (
        (baseline, "baseline", BASELINE_COLOR),
        (candidate, "candidate", CANDIDATE_COLOR),
    ):
        days: Any = [d.day for d in report.days]  # matplotlib plots dates; its stubs say floats
        ax.plot(
            days,
            [100 * d.share_refused for d in report.days],
            label=name,
            color=color,
            linewidth=1.6,
        )
    ax.set_ylabel("% of active users refused")
    ax.set_title("Share of users refused, per day", loc="left")
    ax.legend(frameon=False)
    fig.autofmt_xdate()
    return _svg(fig)


def chart_end_balances(candidate: SimulationReport, baseline: SimulationReport) -> str:
    fig, ax = _figure()
    base = [float(o.balance) for o in baseline.users.values()]
    cand = [float(o.balance) for o in candidate.users.values()]
    values = base + cand
    if values and max(values) > min(values):
        ax.hist(
            [base, cand],
            bins=30,
            range=(min(values), max(values)),
            label=["baseline", "candidate"],
            color=[BASELINE_COLOR, CANDIDATE_COLOR],
        )
        ax.legend(frameon=False)
    else:
        ax.bar([0, 1], [len(base), len(cand)], color=[BASELINE_COLOR, CANDIDATE_COLOR])
        ax.set_xticks([0, 1], ["baseline", "candidate"])
    ax.set_xlabel("balance at the end")
    ax.set_ylabel("users")
    ax.set_title("Distribution of end balances", loc="left")
    return _svg(fig)


def chart_refills_per_tier(candidate: SimulationReport, baseline: SimulationReport) -> str:
    fig, ax = _figure()
    tiers = sorted(set(candidate.refills_by_tier) | set(baseline.refills_by_tier))
    _grouped_bars(
        ax,
        tiers,
        [float(baseline.refills_by_tier.get(t, 0)) for t in tiers],
        [float(candidate.refills_by_tier.get(t, 0)) for t in tiers],
    )
    ax.set_ylabel("refills")
    ax.set_title("Refills per tier", loc="left")
    return _svg(fig)


# -- the page ----------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f9fafb}
main{max-width:880px;margin:0 auto;padding:1rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e5e7eb;text-align:right}
th:first-child,td:first-child{text-align:left}
.up{color:#b91c1c}.down{color:#047857}
figure{margin:1rem 0;background:#fff;padding:.5rem;border:1px solid #e5e7eb}
figure svg{max-width:100%;height:auto}
.notes{color:#4b5563}
"""


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def html_report(
    candidate: SimulationReport,
    baseline: SimulationReport,
    *,
    title: str = "Policy simulation",
    candidate_name: str = "candidate",
    baseline_name: str = "baseline",
    notes: Sequence[str] = (),
) -> str:
    """The whole report as one HTML page (no script, no external resource)."""
    esc = html.escape
    rows = []
    for row in summary(candidate, baseline):
        change = row.change
        css = "" if not change else ("up" if change > 0 else "down")
        sign = "+" if change > 0 else ""
        rows.append(
            f"<tr><td>{esc(row.figure)}</td><td>{_number(row.baseline)}</td>"
            f"<td>{_number(row.candidate)}</td><td class='{css}'>{sign}{_number(change)}</td></tr>"
        )
    months = "".join(
        f"<tr><td>{c.month.strftime('%Y-%m')}</td><td>{_number(b.credits_granted)}</td>"
        f"<td>{_number(c.credits_granted)}</td><td>{b.refills:,}</td><td>{c.refills:,}</td>"
        f"<td>{b.refused:,}</td><td>{c.refused:,}</td><td>{b.users_dry:,}</td>"
        f"<td>{c.users_dry:,}</td></tr>"
        for b, c in zip(baseline.periods, candidate.periods, strict=False)
    )
    charts = [
        chart_granted_per_month(candidate, baseline),
        chart_refused_per_day(candidate, baseline),
        chart_end_balances(candidate, baseline),
        chart_refills_per_tier(candidate, baseline),
    ]
    window = f"{candidate.start:%Y-%m-%d %H:%M} to {candidate.end:%Y-%m-%d %H:%M} UTC"
    note_items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1>"
        f"<p>Candidate <b>{esc(candidate_name)}</b> against baseline <b>{esc(baseline_name)}</b>, "
        f"{candidate.events:,} events, {window}.</p>"
        f"<ul class='notes'>{note_items}</ul>"
        "<h2>Summary</h2><table><thead><tr><th>figure</th><th>baseline</th><th>candidate</th>"
        f"<th>change</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + "".join(f"<figure>{svg}</figure>" for svg in charts)
        + "<h2>Per month</h2><table><thead><tr><th>month</th><th>granted (base)</th>"
        "<th>granted (cand)</th><th>refills (base)</th><th>refills (cand)</th>"
        "<th>refused (base)</th><th>refused (cand)</th><th>users dry (base)</th>"
        f"<th>users dry (cand)</th></tr></thead><tbody>{months}</tbody></table>"
        "</main></body></html>"
    )
